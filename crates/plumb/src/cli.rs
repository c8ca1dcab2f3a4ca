//! Command-line interface: argument parsing and dispatch onto the library crates.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::commands;

/// Plumb keeps Kubernetes clusters true to Git.
///
/// Exit codes: 0 success; 1 failure (for `diff`: differences found); 2 error (for `diff`).
#[derive(Debug, Parser)]
#[command(name = "plumb", version, about, long_about)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Path to the kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the manifests a directory renders to, as multi-document YAML.
    Render(RenderArgs),
    /// Apply a directory of manifests to the cluster as a named sync unit.
    ///
    /// Validates every object with a server-side dry-run first (nothing is written if one
    /// fails), applies with server-side apply in stages (CRDs and Namespaces first), skips
    /// objects that would not change, and with --prune deletes objects that left the
    /// directory, but only those this sync unit created. Fields changed by hand (kubectl
    /// edit, scale, patch) are drift and are set back to the directory's values; fields that
    /// another applier owns (kubectl apply --server-side, another GitOps tool) are a conflict.
    /// Exit 0 on success, 1 on any failure.
    Sync(SyncArgs),
    /// Show what `sync` would change, as a unified diff (Secret values masked).
    ///
    /// Exit 0: no differences; 1: differences; 2: error.
    Diff(DiffArgs),
    /// Check commit signatures of a local repository against allowed signers.
    ///
    /// Lists each checked commit with its signer and verdict. Exit 0 only if all pass.
    Verify(crate::source::VerifyArgs),
    /// Roll back the GitOps way: commit a revert of COMMIT on a local clone and push it.
    Revert(crate::source::RevertArgs),
    /// Run the agent: reconcile GitSources and Syncs continuously and heal drift.
    Agent(crate::agent::AgentArgs),
    #[command(flatten)]
    Manage(crate::manage::ManageCommand),
}

/// Arguments of `plumb render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Directory of manifests (plain YAML/JSON, a Kustomize directory, or a Helm chart).
    #[arg(required_unless_present = "chart_url", conflicts_with = "chart_url")]
    pub dir: Option<PathBuf>,
    #[command(flatten)]
    pub root: Root,
    #[command(flatten)]
    pub helm: HelmArgs,
    #[command(flatten)]
    pub charts: crate::charts::ChartRepoArgs,
    /// A chart's `.Release.Namespace` (default: `default`).
    #[arg(short, long, help_heading = "Helm charts (DIR holds Chart.yaml)")]
    pub namespace: Option<String>,
    /// The Kubernetes version a chart's `.Capabilities.KubeVersion` reports (e.g. v1.35.4;
    /// default: Helm's built-in one). `sync` and `diff` take it from the cluster.
    #[arg(
        long,
        value_name = "VERSION",
        help_heading = "Helm charts (DIR holds Chart.yaml)"
    )]
    pub kube_version: Option<String>,
    /// API versions a chart's `.Capabilities.APIVersions` holds besides Helm's built-in ones
    /// (`group/version` or `group/version/Kind`; repeatable or comma-separated). `sync` and
    /// `diff` take them from the cluster.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        help_heading = "Helm charts (DIR holds Chart.yaml)"
    )]
    pub api_versions: Vec<String>,
}

/// How a Helm chart renders (when the rendered directory holds `Chart.yaml`). Values
/// precedence, lowest first: the chart's values.yaml, --values files in order, --set-json in
/// order.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Helm charts (DIR holds Chart.yaml)")]
pub struct HelmArgs {
    /// A values file (repeatable; a later one wins). It must be inside the root; with --git
    /// the path is relative to the repository's root.
    #[arg(long = "values", value_name = "FILE")]
    pub values: Vec<PathBuf>,
    /// Set one value as JSON at a dotted path, e.g. `--set-json 'image.tag="v2"'` or
    /// `--set-json 'resources={"limits":{"cpu":"1"}}'` (repeatable; wins over --values).
    #[arg(long = "set-json", value_name = "PATH=JSON")]
    pub set_json: Vec<String>,
    /// The chart's `.Release.Name` (default: --name for sync and diff, the chart's name for
    /// render).
    #[arg(long, value_name = "NAME")]
    pub release_name: Option<String>,
    /// Render the CRDs in the chart's `crds/` directories too (applied first, as every CRD).
    #[arg(long)]
    pub include_crds: bool,
    /// Let the chart's `lookup` read the cluster (the kubeconfig's identity, read-only,
    /// through a loopback proxy Plumb runs for the render; Helm never sees a credential).
    /// Without it `lookup` returns nothing, as in `helm template`.
    #[arg(long)]
    pub lookup: bool,
}

impl HelmArgs {
    /// Whether any Helm setting was given.
    pub fn given(&self) -> bool {
        !self.values.is_empty()
            || !self.set_json.is_empty()
            || self.release_name.is_some()
            || self.include_crds
            || self.lookup
    }
}

/// The boundary nothing rendered may come from outside of.
#[derive(Debug, Args)]
pub struct Root {
    /// Files may be read only inside this directory (Kustomize bases included). Default: the
    /// Git work tree that holds DIR, else DIR itself.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

/// Which sync unit, and where its objects go.
#[derive(Debug, Args)]
pub struct Target {
    /// Directory of manifests (plain YAML/JSON, a Kustomize directory, or a Helm chart).
    #[arg(
        required_unless_present_any = ["git", "chart_url"],
        conflicts_with_all = ["git", "chart_url"]
    )]
    pub dir: Option<PathBuf>,
    #[command(flatten)]
    pub git: crate::source::GitArgs,
    #[command(flatten)]
    pub root: Root,
    #[command(flatten)]
    pub helm: HelmArgs,
    #[command(flatten)]
    pub charts: crate::charts::ChartRepoArgs,
    /// Name of the sync unit: it owns what it applies, and prunes only what it owns.
    #[arg(long)]
    pub name: String,
    /// Namespace of the sync unit: where its inventory lives and where namespaced objects
    /// without a namespace go (default: the context's namespace, else `default`).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Permit --prune when the directory renders no objects at all.
    #[arg(long)]
    pub allow_empty: bool,
}

/// Output formats of every command that prints a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A human-readable table.
    Table,
    /// JSON for scripts.
    Json,
    /// YAML.
    Yaml,
}

impl Output {
    /// `value` as pretty JSON or YAML (a table is the caller's own; it gets YAML here).
    pub fn render(self, value: &serde_json::Value) -> anyhow::Result<String> {
        Ok(match self {
            Output::Json => serde_json::to_string_pretty(value)? + "\n",
            Output::Yaml | Output::Table => plumb_core::to_yaml(value),
        })
    }
}

/// Arguments of `plumb sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub target: Target,
    /// Delete objects that this sync unit applied before and the directory no longer holds.
    #[arg(long)]
    pub prune: bool,
    /// Wait until every applied object is healthy, showing the ones still awaited and why.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (e.g. 90s, 5m); also how long, in all, the waves of a revision
    /// with sync waves or hooks wait for health and for their hooks to complete.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Take over fields that another applier owns instead of failing on the conflict.
    #[arg(long)]
    pub force_conflicts: bool,
    /// Take over objects that another sync unit (or Sync) owns instead of refusing them.
    #[arg(long)]
    pub adopt: bool,
    /// Validate with the server and report what would change; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How many objects are validated and applied at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Arguments of `plumb diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    #[command(flatten)]
    pub target: Target,
    /// Compare as if --prune were given to sync (show objects that would be deleted).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub prune: bool,
}

/// Parses durations for flags (see [`plumb_core::parse_duration`]).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    plumb_core::parse_duration(text)
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let agent = matches!(cli.command, Command::Agent(_));
    if agent {
        // Before any thread exists (see the function).
        crate::agent::with_few_malloc_arenas();
    }
    crate::logging::init(cli.global.verbose, agent);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(commands::run(cli))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
