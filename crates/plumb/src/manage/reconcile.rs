//! `plumb reconcile`, `plumb suspend`, `plumb resume`: ask the agent to act, and wait for it.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};
use plumb_agent::api::{ChartSource, GitSource, RECONCILE_REQUEST_ANNOTATION, Sync};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::time::Instant;

use super::{Kind, NamespaceArg, TimeoutArg, connect, ready};
use crate::cli::Global;

/// How often to look at the status while waiting.
const POLL: Duration = Duration::from_millis(500);

/// What one reconcile may take besides a Sync's health wait: fetching, rendering, dry-run and
/// apply. A Reconciling condition older than that (plus the health timeout) with no status
/// change is no longer taken as a sign of a busy agent.
const WORK_ALLOWANCE: Duration = Duration::from_secs(120);

/// What to reconcile.
#[derive(Debug, Subcommand)]
pub enum ReconcileCommand {
    /// A Sync: apply its source's current revision now.
    Sync(ReconcileSyncArgs),
    /// A GitSource: fetch now.
    #[command(alias = "gitsource")]
    Source(ReconcileSourceArgs),
    /// A ChartSource: look for a new version now.
    #[command(alias = "chartsource")]
    Chart(ReconcileSourceArgs),
}

/// Arguments of `plumb reconcile sync`.
#[derive(Debug, Args)]
pub struct ReconcileSyncArgs {
    /// Name of the Sync.
    pub name: String,
    /// Fetch the Sync's source (GitSource or ChartSource) first and wait for it, so that the
    /// newest revision is applied.
    #[arg(long)]
    pub with_source: bool,
    #[command(flatten)]
    pub namespace: NamespaceArg,
    #[command(flatten)]
    pub timeout: TimeoutArg,
}

/// Arguments of `plumb reconcile source`.
#[derive(Debug, Args)]
pub struct ReconcileSourceArgs {
    /// Name of the GitSource.
    pub name: String,
    #[command(flatten)]
    pub namespace: NamespaceArg,
    #[command(flatten)]
    pub timeout: TimeoutArg,
}

/// Arguments of `plumb suspend`.
#[derive(Debug, Args)]
pub struct SuspendArgs {
    /// `sync` or `source`.
    #[arg(value_enum)]
    pub kind: Kind,
    /// Its name.
    pub name: String,
    #[command(flatten)]
    pub namespace: NamespaceArg,
}

/// Arguments of `plumb resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// `sync` or `source`.
    #[arg(value_enum)]
    pub kind: Kind,
    /// Its name.
    pub name: String,
    #[command(flatten)]
    pub namespace: NamespaceArg,
    /// Do not wait for the agent to reconcile it.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub timeout: TimeoutArg,
}

/// When waiting ends, and how long it was allowed to take (for the message).
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Instant,
    total: Duration,
}

impl Deadline {
    fn after(total: Duration) -> Self {
        Deadline {
            at: Instant::now() + total,
            total,
        }
    }
}

/// What waiting needs to know of a Sync or GitSource.
trait Reconciled:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + DeserializeOwned
    + Serialize
{
    fn conditions(&self) -> &[Condition];
    fn last_handled(&self) -> Option<&str>;
    fn revision(&self) -> Option<&str>;
    fn suspended(&self) -> bool;
    /// The longest one reconcile of it may take (a Sync's health wait included).
    fn work_limit(&self) -> Duration {
        WORK_ALLOWANCE
    }
}

impl Reconciled for Sync {
    fn work_limit(&self) -> Duration {
        let health = if self.spec.wait {
            self.spec
                .timeout
                .as_deref()
                .and_then(|t| plumb_core::parse_duration(t).ok())
                .unwrap_or(plumb_agent::syncs::DEFAULT_TIMEOUT)
        } else {
            Duration::ZERO
        };
        health + WORK_ALLOWANCE
    }
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
    fn last_handled(&self) -> Option<&str> {
        self.status.as_ref()?.last_handled_reconcile_at.as_deref()
    }
    fn revision(&self) -> Option<&str> {
        self.status.as_ref()?.last_applied_revision.as_deref()
    }
    fn suspended(&self) -> bool {
        self.spec.suspend
    }
}

impl Reconciled for GitSource {
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
    fn last_handled(&self) -> Option<&str> {
        self.status.as_ref()?.last_handled_reconcile_at.as_deref()
    }
    fn revision(&self) -> Option<&str> {
        Some(self.status.as_ref()?.artifact.as_ref()?.revision.as_str())
    }
    fn suspended(&self) -> bool {
        self.spec.suspend
    }
}

impl Reconciled for ChartSource {
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
    fn last_handled(&self) -> Option<&str> {
        self.status.as_ref()?.last_handled_reconcile_at.as_deref()
    }
    fn revision(&self) -> Option<&str> {
        Some(self.status.as_ref()?.artifact.as_ref()?.revision.as_str())
    }
    fn suspended(&self) -> bool {
        self.spec.suspend
    }
}

/// Asks source `ns/name` of `kind` to fetch and waits; whether it ended Ready.
async fn reconcile_source<K: Reconciled>(
    client: &Client,
    kind: Kind,
    ns: &str,
    name: &str,
    deadline: Deadline,
) -> Result<bool> {
    let sources = Api::<K>::namespaced(client.clone(), ns);
    let source = get(&sources, ns, name).await?;
    refuse_suspended(&source, kind, ns)?;
    let source = request_and_wait(client, &source, deadline).await?;
    Ok(report(&source))
}

pub async fn run(global: &Global, command: ReconcileCommand) -> Result<ExitCode> {
    match command {
        ReconcileCommand::Sync(args) => {
            let (client, ns) = connect(global, args.namespace.namespace.as_deref()).await?;
            let deadline = Deadline::after(args.timeout.timeout);
            let syncs = Api::<Sync>::namespaced(client.clone(), &ns);
            let sync = get(&syncs, &ns, &args.name).await?;
            refuse_suspended(&sync, Kind::Sync, &ns)?;
            if args.with_source {
                let source_ns = sync.spec.source_ref.namespace.clone().unwrap_or(ns.clone());
                let name = &sync.spec.source_ref.name;
                let ready = if sync.spec.source_ref.kind.as_deref() == Some("ChartSource") {
                    reconcile_source::<ChartSource>(
                        &client,
                        Kind::Chart,
                        &source_ns,
                        name,
                        deadline,
                    )
                    .await?
                } else {
                    reconcile_source::<GitSource>(&client, Kind::Source, &source_ns, name, deadline)
                        .await?
                };
                if !ready {
                    return Ok(ExitCode::FAILURE);
                }
            }
            let sync = request_and_wait(&client, &sync, deadline).await?;
            Ok(exit(report(&sync)))
        }
        ReconcileCommand::Source(args) => {
            let (client, ns) = connect(global, args.namespace.namespace.as_deref()).await?;
            let deadline = Deadline::after(args.timeout.timeout);
            let ready =
                reconcile_source::<GitSource>(&client, Kind::Source, &ns, &args.name, deadline)
                    .await?;
            Ok(exit(ready))
        }
        ReconcileCommand::Chart(args) => {
            let (client, ns) = connect(global, args.namespace.namespace.as_deref()).await?;
            let deadline = Deadline::after(args.timeout.timeout);
            let ready =
                reconcile_source::<ChartSource>(&client, Kind::Chart, &ns, &args.name, deadline)
                    .await?;
            Ok(exit(ready))
        }
    }
}

pub async fn suspend(global: &Global, args: &SuspendArgs) -> Result<ExitCode> {
    let (client, ns) = connect(global, args.namespace.namespace.as_deref()).await?;
    let patch = json!({ "spec": { "suspend": true } });
    match args.kind {
        Kind::Sync => drop(patch_spec::<Sync>(&client, &ns, &args.name, &patch).await?),
        Kind::Source => drop(patch_spec::<GitSource>(&client, &ns, &args.name, &patch).await?),
        Kind::Chart => drop(patch_spec::<ChartSource>(&client, &ns, &args.name, &patch).await?),
    }
    println!("✔ {} {ns}/{} suspended", args.kind.name(), args.name);
    Ok(ExitCode::SUCCESS)
}

pub async fn resume(global: &Global, args: &ResumeArgs) -> Result<ExitCode> {
    let (client, ns) = connect(global, args.namespace.namespace.as_deref()).await?;
    let deadline = Deadline::after(args.timeout.timeout);
    let token = Timestamp::now().to_string();
    let patch = json!({
        "metadata": { "annotations": { RECONCILE_REQUEST_ANNOTATION: token } },
        "spec": { "suspend": false },
    });
    let kind = args.kind.name();
    println!("► resuming {kind} {ns}/{}", args.name);
    let ready = match args.kind {
        Kind::Sync => {
            patch_spec::<Sync>(&client, &ns, &args.name, &patch).await?;
            if args.no_wait {
                return Ok(ExitCode::SUCCESS);
            }
            report(&wait_handled::<Sync>(&client, &ns, &args.name, &token, deadline).await?)
        }
        Kind::Source => {
            patch_spec::<GitSource>(&client, &ns, &args.name, &patch).await?;
            if args.no_wait {
                return Ok(ExitCode::SUCCESS);
            }
            report(&wait_handled::<GitSource>(&client, &ns, &args.name, &token, deadline).await?)
        }
        Kind::Chart => {
            patch_spec::<ChartSource>(&client, &ns, &args.name, &patch).await?;
            if args.no_wait {
                return Ok(ExitCode::SUCCESS);
            }
            report(&wait_handled::<ChartSource>(&client, &ns, &args.name, &token, deadline).await?)
        }
    };
    Ok(exit(ready))
}

fn exit(ready: bool) -> ExitCode {
    if ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn get<K: Reconciled>(api: &Api<K>, ns: &str, name: &str) -> Result<K> {
    let kind = K::kind(&());
    api.get_opt(name)
        .await
        .with_context(|| format!("reading {kind} {ns}/{name}"))?
        .with_context(|| format!("{kind} {ns}/{name} not found"))
}

fn refuse_suspended<K: Reconciled>(obj: &K, kind: Kind, ns: &str) -> Result<()> {
    if obj.suspended() {
        let name = obj.meta().name.as_deref().unwrap_or_default();
        bail!(
            "{} {ns}/{name} is suspended: resume it with `plumb resume {} {name} -n {ns}`",
            kind.name(),
            match kind {
                Kind::Sync => "sync",
                Kind::Source => "source",
                Kind::Chart => "chart",
            }
        );
    }
    Ok(())
}

async fn patch_spec<K: Reconciled>(
    client: &Client,
    ns: &str,
    name: &str,
    patch: &serde_json::Value,
) -> Result<K> {
    let kind = K::kind(&());
    Api::<K>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(|e| match e {
            kube::Error::Api(ref s) if s.code == 404 => {
                anyhow::anyhow!("{kind} {ns}/{name} not found")
            }
            e => anyhow::Error::new(e).context(format!("patching {kind} {ns}/{name}")),
        })
}

/// Annotates `obj` with a new reconcile request and waits until the agent handled it.
async fn request_and_wait<K: Reconciled>(
    client: &Client,
    obj: &K,
    deadline: Deadline,
) -> Result<K> {
    let ns = obj.meta().namespace.clone().unwrap_or_default();
    let name = obj.meta().name.clone().unwrap_or_default();
    let token = Timestamp::now().to_string();
    let patch = json!({ "metadata": { "annotations": { RECONCILE_REQUEST_ANNOTATION: token } } });
    println!("► requesting a reconcile of {} {ns}/{name}", K::kind(&()));
    patch_spec::<K>(client, &ns, &name, &patch).await?;
    wait_handled(client, &ns, &name, &token, deadline).await
}

/// Polls until `status.lastHandledReconcileAt` is `token`, showing what the status says
/// meanwhile; on timeout, says as precisely as the status allows why the request is unhandled.
async fn wait_handled<K: Reconciled>(
    client: &Client,
    ns: &str,
    name: &str,
    token: &str,
    deadline: Deadline,
) -> Result<K> {
    let kind = K::kind(&());
    let api = Api::<K>::namespaced(client.clone(), ns);
    println!(
        "◎ waiting for the agent to reconcile {kind} {ns}/{name} (until its \
         status.lastHandledReconcileAt is {token})"
    );
    let mut display = WaitDisplay::new(&format!("{kind} {ns}/{name}"));
    let mut first_status = None;
    let mut changed = false;
    loop {
        let obj = get(&api, ns, name).await?;
        if obj.last_handled() == Some(token) {
            return Ok(obj);
        }
        let status = serde_json::to_value(&obj)?
            .get("status")
            .cloned()
            .unwrap_or_default();
        match &first_status {
            None => first_status = Some(status),
            Some(first) => changed |= *first != status,
        }
        let state = status_line(obj.conditions());
        display.show(&state);
        if Instant::now() >= deadline.at {
            let now = Timestamp::now();
            let stuck = diagnose(obj.conditions(), changed, now, obj.work_limit());
            let request = Request {
                kind: &kind,
                ns,
                name,
                token,
            };
            bail!(
                "{}",
                give_up_message(&stuck, &request, deadline.total, now, &state)
            );
        }
        let left = deadline.at.saturating_duration_since(Instant::now());
        tokio::time::sleep(POLL.min(left)).await;
    }
}

/// Shows what an object's status says while the CLI waits for the agent: on a terminal, a
/// spinner line updated in place; elsewhere a line on stderr each time it changes.
struct WaitDisplay {
    what: String,
    bar: Option<ProgressBar>,
    last: Option<String>,
}

impl WaitDisplay {
    fn new(what: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                    .expect("the template is valid"),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self {
            what: what.to_owned(),
            bar,
            last: None,
        }
    }

    fn show(&mut self, line: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{}: {line}", self.what));
            return;
        }
        if self.last.as_deref() != Some(line) {
            eprintln!("  {}: {line}", self.what);
            self.last = Some(line.to_owned());
        }
    }
}

/// Clears the spinner however the wait ends, before anything else is printed.
impl Drop for WaitDisplay {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// What the status says now, in one line: Reconciling while it is True, else Stalled while it
/// is True, else Ready.
fn status_line(conditions: &[Condition]) -> String {
    let is_true = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t && c.status == "True")
    };
    match is_true("Reconciling").or_else(|| is_true("Stalled")) {
        Some(c) => format!("{} ({}): {}", c.type_, c.reason, c.message),
        None => match ready(conditions) {
            Some(c) => format!("Ready={} ({}): {}", c.status, c.reason, c.message),
            None => "no status yet".to_owned(),
        },
    }
}

/// Why a reconcile request is still unhandled, as far as the status tells.
#[derive(Debug, PartialEq)]
enum Stuck<'a> {
    /// Reconciling is True, and the status changed while waiting or Reconciling began within
    /// the time one reconcile may take: the agent is working on it (a long apply, a health
    /// wait, a dependency) and handles the request when done.
    Busy(&'a Condition),
    /// Reconciling is True since longer than a reconcile may take, and nothing changed while
    /// waiting: the agent may have stopped in the middle.
    StaleReconciling(&'a Condition),
    /// The status changed while waiting, without Reconciling: an agent is at work, the request
    /// has not had its turn yet.
    Active,
    /// Nothing changed: no agent has looked at the object.
    Untouched,
}

fn diagnose(
    conditions: &[Condition],
    changed: bool,
    now: Timestamp,
    work_limit: Duration,
) -> Stuck<'_> {
    let reconciling = conditions
        .iter()
        .find(|c| c.type_ == "Reconciling" && c.status == "True");
    match reconciling {
        Some(c) => {
            let since = since(c, now);
            if changed || since <= work_limit {
                Stuck::Busy(c)
            } else {
                Stuck::StaleReconciling(c)
            }
        }
        None if changed => Stuck::Active,
        None => Stuck::Untouched,
    }
}

/// How long ago condition `c` last changed its status.
fn since(c: &Condition, now: Timestamp) -> Duration {
    let secs = now.as_second() - c.last_transition_time.0.as_second();
    Duration::from_secs(secs.max(0) as u64)
}

/// The request a message is about.
struct Request<'a> {
    kind: &'a str,
    ns: &'a str,
    name: &'a str,
    token: &'a str,
}

/// The error of a wait that timed out after `waited`; `state` is the [`status_line`].
fn give_up_message(
    stuck: &Stuck<'_>,
    r: &Request<'_>,
    waited: Duration,
    now: Timestamp,
    state: &str,
) -> String {
    let waited = super::human_duration(waited);
    let Request {
        kind,
        ns,
        name,
        token,
    } = r;
    let request = format!("the reconcile request ({RECONCILE_REQUEST_ANNOTATION}={token})");
    let is_agent_running = format!(
        "Is the agent running? Check `kubectl -n plumb-system get pods` (or run `plumb agent`), \
         then `plumb events {name} -n {ns}`"
    );
    match stuck {
        Stuck::Busy(c) => format!(
            "timed out after {waited}: the agent is still working on {kind} {ns}/{name} \
             (Reconciling for {}, {}: {}) and has not handled {request} yet; it does when that \
             is done. Wait longer with --timeout, or follow it with `plumb events {name} -n {ns}`",
            super::human_duration(since(c, now)),
            c.reason,
            c.message
        ),
        Stuck::StaleReconciling(c) => format!(
            "timed out after {waited}: {request} of {kind} {ns}/{name} is unhandled. Its status \
             says Reconciling for {} ({}: {}), longer than one reconcile of it may take, and did \
             not change while waiting: the agent may have stopped in the middle. \
             {is_agent_running}",
            super::human_duration(since(c, now)),
            c.reason,
            c.message
        ),
        Stuck::Active => format!(
            "timed out after {waited}: the agent updated the status of {kind} {ns}/{name} while \
             waiting ({state}) but has not handled {request} yet (it may be busy with other \
             objects). Wait longer with --timeout, or see `plumb events {name} -n {ns}`"
        ),
        Stuck::Untouched => format!(
            "timed out after {waited}: no agent has handled {request} of {kind} {ns}/{name}; its \
             status did not change while waiting ({state}). {is_agent_running}"
        ),
    }
}

/// Prints the outcome; true when Ready.
fn report<K: Reconciled>(obj: &K) -> bool {
    let kind = K::kind(&());
    let meta = obj.meta();
    let id = format!(
        "{kind} {}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    );
    let revision = obj.revision().unwrap_or("none");
    match ready(obj.conditions()) {
        Some(c) if c.status == "True" => {
            println!("✔ {id} is Ready at revision {revision}: {}", c.message);
            true
        }
        Some(c) => {
            println!(
                "✗ {id} is not Ready (Ready={}, reason {}): {}",
                c.status, c.reason, c.message
            );
            false
        }
        None => {
            println!("✗ {id} has no Ready condition yet");
            false
        }
    }
}

#[cfg(test)]
mod tests;
