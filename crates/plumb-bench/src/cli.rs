//! Command line: `plumb-bench sync|agent|flux|source` and their flags.

use clap::{Args, Parser, Subcommand};

/// Benchmarks Plumb on the local control plane (`scripts/testenv`), which is started if it is
/// not running and then stopped again at the end.
#[derive(Parser, Debug)]
#[command(name = "plumb-bench", about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// plumb sync vs kubectl apply --server-side: cold and no-op, with the no-op's writes
    /// counted from the API server's apiserver_request_total and plumb's peak RSS.
    Sync(SyncArgs),
    /// The agent: drift healing, commit to applied, steady-state requests, memory.
    Agent(AgentArgs),
    /// Flux (source-controller and kustomize-controller, built by scripts/flux) against
    /// `plumb agent` on the same https repository: cold start, requests, CPU, memory, at rest,
    /// drift, commit to applied; and the API server's own ceiling for the same writes.
    Flux(FluxArgs),
    /// Fetch and verification of plumb-source against plain git (no cluster needed).
    Source,
}

/// Which systems `plumb-bench flux` runs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Flux,
    Plumb,
}

/// Flags of `plumb-bench flux`.
#[derive(Args, Debug)]
pub struct FluxArgs {
    /// Apps, 4 objects each (repeatable: one table per size; default 1000). The last line
    /// compares the first size.
    #[arg(long = "apps", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub apps: Vec<u32>,
    /// Kustomizations and Syncs the apps are split into (must divide every --apps).
    #[arg(long, default_value_t = 10)]
    pub syncs: u32,
    /// Reconciles at once: Flux's --concurrent, plumb agent's --concurrency.
    #[arg(long, default_value_t = 10)]
    pub concurrency: u32,
    /// Interval of the Git source and of every Kustomization and Sync.
    #[arg(long, default_value = "1m")]
    pub interval: String,
    /// Manual edits undone per system (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub edits: u32,
    /// Commits per system for commit to applied (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub commits: u32,
    /// Seconds of the at-rest window.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub rest: u64,
    /// The systems to run, in this order.
    #[arg(long, value_delimiter = ',', default_value = "flux,plumb")]
    pub systems: Vec<System>,
    /// Concurrency of the minimal client that measures the API server's own ceiling (0: skip).
    #[arg(long, default_value_t = 64)]
    pub ceiling_concurrency: usize,
    /// Where scripts/flux put Flux (bin/ and crds/); scripts/bench sets it.
    #[arg(long, env = "PLUMB_FLUX_DIR")]
    pub flux_dir: Option<std::path::PathBuf>,
    /// Keep the work directory (logs of every process).
    #[arg(long)]
    pub keep_dir: bool,
}

/// Flags of `plumb-bench sync`.
#[derive(Args, Debug)]
pub struct SyncArgs {
    /// Number of apps, 4 objects each (repeatable; default: 100 and 1000).
    #[arg(long = "apps", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub apps: Vec<u32>,
    /// Replicas of each Deployment. 0 keeps the measurement about applying: with replicas, the
    /// scheduler, kwok and the replica-set controller create thousands of pods on the same
    /// cores mid-run.
    #[arg(long, default_value_t = 0)]
    pub replicas: u32,
    /// Apps of the Helm chart (4 objects each: default 25, a chart of 100 objects) synced by
    /// `plumb sync` against `helm upgrade --install`, cold and no-op; 0 leaves the Helm row
    /// out. Needs `helm` on PATH.
    #[arg(long, default_value_t = 25)]
    pub chart_apps: u32,
    /// Keep the generated manifests.
    #[arg(long)]
    pub keep_dir: bool,
}

/// Flags of `plumb-bench agent`.
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Apps, 4 objects each.
    #[arg(long, default_value_t = 1000)]
    pub apps: u32,
    /// Syncs the apps are split into (must divide --apps).
    #[arg(long, default_value_t = 10)]
    pub syncs: u32,
    /// Replicas of each Deployment.
    #[arg(long, default_value_t = 0)]
    pub replicas: u32,
    /// Manual changes to heal.
    #[arg(long, default_value_t = 50)]
    pub edits: u32,
    /// Commits per commit-to-applied measurement.
    #[arg(long, default_value_t = 5)]
    pub commits: u32,
    /// Manual changes to heal while every Deployment rolls out (one commit gives all of them a
    /// new image); 0 skips the rollout.
    #[arg(long, default_value_t = 12)]
    pub rollout_edits: u32,
    /// GitSource polling and Sync intervals.
    #[arg(long, default_value = "30s")]
    pub interval: String,
    /// Seconds of the steady-state window.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub steady: u64,
    /// Namespace of the Syncs, the GitSource and the managed objects.
    #[arg(long, default_value = "bench-agent")]
    pub namespace: String,
    /// Agents, each a shard (`plumb agent --shard`): Sync `i` and a GitSource of its own go
    /// to shard `i mod N`. 1: one unsharded agent and one GitSource.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub shards: u32,
    /// Syncs each agent reconciles at once (`plumb agent --concurrency`).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Keep the repository and logs.
    #[arg(long)]
    pub keep_dir: bool,
}

impl Cli {
    /// Runs the chosen benchmark.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Sync(mut args) => {
                if args.apps.is_empty() {
                    args.apps = vec![100, 1000];
                }
                crate::sync::run(args).await
            }
            Command::Agent(args) => {
                anyhow::ensure!(
                    args.apps >= 1 && args.syncs >= 1 && args.apps % args.syncs == 0,
                    "--apps must be a positive multiple of --syncs"
                );
                crate::agent::run(args).await
            }
            Command::Flux(mut args) => {
                if args.apps.is_empty() {
                    args.apps = vec![1000];
                }
                anyhow::ensure!(
                    args.syncs >= 1 && args.apps.iter().all(|a| a % args.syncs == 0),
                    "every --apps must be a positive multiple of --syncs"
                );
                anyhow::ensure!(!args.systems.is_empty(), "--systems names none");
                crate::flux::run(args).await
            }
            Command::Source => crate::source::run().await,
        }
    }
}
