//! `plumb reconcile`, `plumb suspend`, `plumb resume`: ask the agent to act, and wait for it.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};
use plumb_agent::api::{GitSource, RECONCILE_REQUEST_ANNOTATION, Sync};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::time::Instant;

use super::{Kind, NamespaceArg, TimeoutArg, connect, ready};
use crate::cli::Global;

/// How often to look at the status while waiting.
const POLL: Duration = Duration::from_millis(500);

/// What to reconcile.
#[derive(Debug, Subcommand)]
pub enum ReconcileCommand {
    /// A Sync: apply its source's current revision now.
    Sync(ReconcileSyncArgs),
    /// A GitSource: fetch now.
    #[command(alias = "gitsource")]
    Source(ReconcileSourceArgs),
}

/// Arguments of `plumb reconcile sync`.
#[derive(Debug, Args)]
pub struct ReconcileSyncArgs {
    /// Name of the Sync.
    pub name: String,
    /// Fetch the Sync's GitSource first (and wait for it), so that the newest commit is applied.
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
{
    fn conditions(&self) -> &[Condition];
    fn last_handled(&self) -> Option<&str>;
    fn revision(&self) -> Option<&str>;
    fn suspended(&self) -> bool;
}

impl Reconciled for Sync {
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
                let sources = Api::<GitSource>::namespaced(client.clone(), &source_ns);
                let source = get(&sources, &source_ns, &sync.spec.source_ref.name).await?;
                refuse_suspended(&source, Kind::Source, &source_ns)?;
                let source = request_and_wait(&client, &source, deadline).await?;
                if !report(&source) {
                    return Ok(ExitCode::FAILURE);
                }
            }
            let sync = request_and_wait(&client, &sync, deadline).await?;
            Ok(exit(report(&sync)))
        }
        ReconcileCommand::Source(args) => {
            let (client, ns) = connect(global, args.namespace.namespace.as_deref()).await?;
            let deadline = Deadline::after(args.timeout.timeout);
            let sources = Api::<GitSource>::namespaced(client.clone(), &ns);
            let source = get(&sources, &ns, &args.name).await?;
            refuse_suspended(&source, Kind::Source, &ns)?;
            let source = request_and_wait(&client, &source, deadline).await?;
            Ok(exit(report(&source)))
        }
    }
}

pub async fn suspend(global: &Global, args: &SuspendArgs) -> Result<ExitCode> {
    let (client, ns) = connect(global, args.namespace.namespace.as_deref()).await?;
    let patch = json!({ "spec": { "suspend": true } });
    match args.kind {
        Kind::Sync => drop(patch_spec::<Sync>(&client, &ns, &args.name, &patch).await?),
        Kind::Source => drop(patch_spec::<GitSource>(&client, &ns, &args.name, &patch).await?),
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

/// Polls until `status.lastHandledReconcileAt` is `token`.
async fn wait_handled<K: Reconciled>(
    client: &Client,
    ns: &str,
    name: &str,
    token: &str,
    deadline: Deadline,
) -> Result<K> {
    let kind = K::kind(&());
    let api = Api::<K>::namespaced(client.clone(), ns);
    println!("◎ waiting for the agent to reconcile {kind} {ns}/{name}");
    loop {
        let obj = get(&api, ns, name).await?;
        if obj.last_handled() == Some(token) {
            return Ok(obj);
        }
        if Instant::now() >= deadline.at {
            let waited = super::human_duration(deadline.total);
            let hint = match ready(obj.conditions()) {
                Some(c) => format!(
                    "; its Ready condition is {} ({}): {}",
                    c.status, c.reason, c.message
                ),
                None => String::new(),
            };
            bail!(
                "timed out after {waited} waiting for the agent to handle the reconcile request \
                 of {kind} {ns}/{name} (annotation {RECONCILE_REQUEST_ANNOTATION}={token}){hint}. \
                 Is the agent running? Check `kubectl -n plumb-system get pods` (or run `plumb \
                 agent`), then `plumb events {name} -n {ns}`"
            );
        }
        let left = deadline.at.saturating_duration_since(Instant::now());
        tokio::time::sleep(POLL.min(left)).await;
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
