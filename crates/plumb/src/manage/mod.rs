//! Commands that manage the agent's resources: install, uninstall, bootstrap, create, get, reconcile, suspend, resume,
//! history, tree, events.

mod bootstrap;
mod create;
mod get;
mod inspect;
mod install;
mod reconcile;
mod uninstall;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use serde_json::Value;

use crate::cli::{Global, parse_duration};

/// Agent resource management commands.
#[derive(Debug, Subcommand)]
pub enum ManageCommand {
    /// Install the CRDs and the agent (Namespace, RBAC, Deployment, Service) into the cluster.
    ///
    /// Applies with server-side apply (field manager `plumb`), the CRDs first, waiting until
    /// they are Established. Running it again upgrades in place. Exit 0 on success, 1 on failure.
    Install(install::InstallArgs),
    /// Remove Plumb: every Sync and GitSource (through the running agent, which deletes the
    /// objects they applied unless --keep-objects), then the agent, then the CRDs.
    ///
    /// Exit 0 when everything is gone; 1 when the agent did not finish the deletions in time
    /// (then nothing else is removed).
    Uninstall(uninstall::UninstallArgs),
    /// Install the agent and point it at a Git repository that holds the cluster's manifests.
    ///
    /// Installs like `install`, then creates a GitSource for --git and a Sync (with prune) for
    /// --path, both named plumb-system in the agent's namespace. Commit the output of
    /// `plumb install --export` under --path and the agent keeps itself up to date from Git.
    Bootstrap(Box<bootstrap::BootstrapArgs>),
    /// Create or update a GitSource or a Sync (server-side apply), or print it with --export.
    #[command(subcommand)]
    Create(create::CreateCommand),
    /// List GitSources or Syncs with their readiness, revision and message.
    #[command(subcommand)]
    Get(get::GetCommand),
    /// Ask the agent for an immediate reconcile and wait for its result.
    ///
    /// While waiting, shows what the object's status says (Reconciling, Stalled or Ready). On
    /// timeout, says whether the agent is still working on it or no agent has handled it.
    /// Exit 0 when the object is Ready afterwards; 1 when it is not, or on timeout.
    #[command(subcommand)]
    Reconcile(reconcile::ReconcileCommand),
    /// Stop the agent from reconciling a Sync or GitSource (sets spec.suspend).
    Suspend(reconcile::SuspendArgs),
    /// Let the agent reconcile a suspended Sync or GitSource again, and wait for the result.
    ///
    /// Exit 0 when the object is Ready afterwards; 1 when it is not, or on timeout.
    Resume(reconcile::ResumeArgs),
    /// Show a Sync's recent applies: revision, author, signer, result, changes.
    History(inspect::HistoryArgs),
    /// Show the objects a Sync owns, grouped by namespace, with their live health.
    Tree(inspect::TreeArgs),
    /// Show the Kubernetes Events of a Sync and its GitSource, oldest first.
    Events(inspect::EventsArgs),
}

/// Runs one management command.
pub async fn run(global: &Global, command: ManageCommand) -> Result<ExitCode> {
    match command {
        ManageCommand::Install(args) => install::run(global, &args).await,
        ManageCommand::Uninstall(args) => uninstall::run(global, &args).await,
        ManageCommand::Bootstrap(args) => bootstrap::run(global, &args).await,
        ManageCommand::Create(cmd) => create::run(global, cmd).await,
        ManageCommand::Get(cmd) => get::run(global, cmd).await,
        ManageCommand::Reconcile(cmd) => reconcile::run(global, cmd).await,
        ManageCommand::Suspend(args) => reconcile::suspend(global, &args).await,
        ManageCommand::Resume(args) => reconcile::resume(global, &args).await,
        ManageCommand::History(args) => inspect::history(global, &args).await,
        ManageCommand::Tree(args) => inspect::tree(global, &args).await,
        ManageCommand::Events(args) => inspect::events(global, &args).await,
    }
}

/// The field manager of everything these commands write.
use plumb_kube::FIELD_MANAGER;

/// The namespace option of commands that address one namespace.
#[derive(Debug, Clone, Args)]
pub struct NamespaceArg {
    /// Namespace of the object (default: the kubeconfig context's namespace, else `default`).
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// Which kind a command addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// A Sync.
    Sync,
    /// A GitSource.
    #[value(alias = "gitsource")]
    Source,
    /// A ChartSource.
    #[value(alias = "chartsource")]
    Chart,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Sync => "Sync",
            Kind::Source => "GitSource",
            Kind::Chart => "ChartSource",
        }
    }
}

/// Output formats (one enum for every command).
pub use crate::cli::Output as Format;

/// A connected client and the namespace to work in.
async fn connect(global: &Global, namespace: Option<&str>) -> Result<(Client, String)> {
    let client = plumb_kube::client(global.kubeconfig.as_deref(), global.context.as_deref())
        .await
        .context("cannot build a Kubernetes client (check --kubeconfig, --context, KUBECONFIG)")?;
    let ns = namespace
        .map(str::to_owned)
        .unwrap_or_else(|| client.default_namespace().to_owned());
    Ok((client, ns))
}

/// The namespace to put into an exported object: `-n`, else the kubeconfig context's, else
/// `default`. Never contacts the cluster (and works without a kubeconfig).
async fn namespace_offline(global: &Global, namespace: Option<&str>) -> String {
    if let Some(ns) = namespace {
        return ns.to_owned();
    }
    match plumb_kube::client(global.kubeconfig.as_deref(), global.context.as_deref()).await {
        Ok(client) => client.default_namespace().to_owned(),
        Err(_) => "default".to_owned(),
    }
}

/// Parses a duration flag and keeps its text for the spec (e.g. `5m`).
fn duration_text(text: &str) -> Result<String, String> {
    parse_duration(text).map(|_| text.to_owned())
}

/// The default wait of `reconcile` and `resume`.
const DEFAULT_TIMEOUT: &str = "2m";

/// The timeout flag of waiting commands.
#[derive(Debug, Clone, Args)]
pub struct TimeoutArg {
    /// How long to wait for the agent (e.g. 30s, 2m).
    #[arg(long, default_value = DEFAULT_TIMEOUT, value_parser = parse_duration)]
    pub timeout: Duration,
}

/// The `Ready` condition, if any.
fn ready(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == "Ready")
}

/// `True`, `False` or `Unknown` (no Ready condition yet).
fn ready_status(conditions: &[Condition]) -> &str {
    ready(conditions).map_or("Unknown", |c| c.status.as_str())
}

/// A revision for tables: `main@sha1:0123456789abcdef...` becomes `main@sha1:0123456789ab`.
fn short_revision(revision: &str) -> String {
    match revision.rsplit_once(':') {
        Some((prefix, hash)) if hash.len() > 12 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            format!("{prefix}:{}", &hash[..12])
        }
        _ if revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()) => {
            revision[..12].to_owned()
        }
        _ => revision.to_owned(),
    }
}

/// How long ago `time` was, kubectl style (`45s`, `12m`, `3h`, `5d`).
fn age(time: &Timestamp) -> String {
    let secs = Timestamp::now().as_second() - time.as_second();
    human_duration(Duration::from_secs(secs.max(0) as u64))
}

/// A duration in the largest unit that fits (`45s`, `12m`, `3h`, `5d`).
fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Writes `text` to stdout; a closed pipe (`plumb install --export | head`) is not an error.
fn write_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("writing to stdout"))
        }
        _ => Ok(()),
    }
}

/// Prints objects as JSON (one value, or a `List`) or YAML documents.
fn print_objects(format: Format, items: Vec<Value>) -> Result<()> {
    let text = match format {
        Format::Json => {
            let list = serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": items });
            serde_json::to_string_pretty(&list)? + "\n"
        }
        Format::Yaml | Format::Table => yaml_documents(&items),
    };
    write_stdout(&text)
}

/// Multi-document YAML, each document starting with `---`.
fn yaml_documents<'a>(docs: impl IntoIterator<Item = &'a Value>) -> String {
    docs.into_iter()
        .map(|d| format!("---\n{}", plumb_core::to_yaml(d)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_revisions() {
        assert_eq!(
            short_revision("main@sha1:0123456789abcdef0123456789abcdef01234567"),
            "main@sha1:0123456789ab"
        );
        assert_eq!(
            short_revision("0123456789abcdef0123456789abcdef01234567"),
            "0123456789ab"
        );
        assert_eq!(short_revision("v1.2.3"), "v1.2.3");
        assert_eq!(short_revision("main@sha1:abc"), "main@sha1:abc");
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(Duration::from_secs(5)), "5s");
        assert_eq!(human_duration(Duration::from_secs(600)), "10m");
        assert_eq!(human_duration(Duration::from_secs(3 * 3600)), "3h");
        assert_eq!(human_duration(Duration::from_secs(5 * 86_400)), "5d");
    }
}
