//! `plumb agent`: the long-running reconciler.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use plumb_agent::context::AgentConfig;
use plumb_agent::metrics::Metrics;
use plumb_agent::runner::{AgentOptions, LeaderOptions};

use crate::cli::{Global, parse_duration};

/// Arguments of `plumb agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Reconcile only this namespace's GitSources and Syncs (default: all namespaces).
    #[arg(long)]
    pub watch_namespace: Option<String>,
    /// Serve /metrics, /healthz and /readyz here (`:8080` means all interfaces).
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = parse_addr)]
    pub metrics_addr: SocketAddr,
    /// Serve the webhook receiver (`POST /hook/<receiver>`) here, e.g. `:9292`.
    #[arg(long, value_parser = parse_addr)]
    pub webhook_addr: Option<SocketAddr>,
    /// Namespace of the webhook receivers' Secrets (`plumb-receiver-<name>`) and of the leader
    /// Lease (default: $POD_NAMESPACE, else plumb-system).
    #[arg(long, env = "POD_NAMESPACE", default_value = "plumb-system")]
    pub agent_namespace: String,
    /// Run for leadership on a Lease; only the leader reconciles.
    #[arg(long)]
    pub leader_elect: bool,
    /// Name of the leader Lease (default: plumb-agent; with --shard, plumb-agent-<shard name>,
    /// so that each shard elects its own leader).
    #[arg(long)]
    pub lease_name: Option<String>,
    /// Lease duration: how soon a standby takes over when the leader dies.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// This replica's identity (default: $POD_NAME, else host name and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Where repositories and artifacts are cached (default: ~/.cache/plumb/agent).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// How many GitSources and how many Syncs are reconciled at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: u16,
    /// Refuse Syncs that refer to GitSources or dependencies in other namespaces
    /// (`sourceRef.namespace`, `dependsOn[].namespace`). For multi-tenant clusters.
    #[arg(long)]
    pub no_cross_namespace_refs: bool,
    /// Apply Syncs that name no `serviceAccountName` as this ServiceAccount of the Sync's
    /// namespace (impersonation) instead of as the agent itself. For multi-tenant clusters,
    /// e.g. `default`: a tenant's Sync can then do only what that account may.
    #[arg(long, value_name = "NAME")]
    pub default_service_account: Option<String>,
    /// Permit GitSources whose url is a local path or a `file://` URL. They read the agent's
    /// own disk (including the repositories it caches for every namespace): only for
    /// single-tenant setups such as a laptop or the quickstart.
    #[arg(long)]
    pub allow_local_sources: bool,
    /// Reconcile only the GitSources, ChartSources and Syncs this label selector selects, e.g.
    /// `sharding.plumb.dev/key=shard1`, so that several agents share the work (as Flux's
    /// `--watch-label-selector`). Objects no agent's selector selects are reconciled by none:
    /// run one more agent with the complement, e.g. `!sharding.plumb.dev/key` or
    /// `sharding.plumb.dev/key notin (shard1,shard2)`. A Sync and its GitSource must be in the
    /// same shard (a Sync renders what its own agent fetched).
    #[arg(long, value_name = "SELECTOR")]
    pub shard: Option<String>,
    /// This shard's name, in its Lease (plumb-agent-<name>); default: derived from the
    /// --shard selector (`shard-` and a digest of it).
    #[arg(long, value_name = "NAME", requires = "shard", value_parser = parse_shard_name)]
    pub shard_name: Option<String>,
    #[command(flatten)]
    pub limits: crate::source::LimitArgs,
}

impl AgentArgs {
    /// The shard's name: `--shard-name`, else derived from the selector (the same selector
    /// always gives the same name; different selectors, complementary ones too, differ).
    pub fn shard_name(&self) -> Option<String> {
        let shard = self.shard.as_deref()?;
        Some(
            self.shard_name
                .clone()
                .unwrap_or_else(|| plumb_agent::runner::shard_name(shard)),
        )
    }

    /// The leader Lease: `--lease-name`, else plumb-agent, or plumb-agent-<shard name>.
    pub fn lease_name(&self) -> String {
        match (&self.lease_name, self.shard_name()) {
            (Some(name), _) => name.clone(),
            (None, Some(shard)) => format!("plumb-agent-{shard}"),
            (None, None) => "plumb-agent".to_owned(),
        }
    }
}

/// A shard name goes into a Lease name: lower-case letters, digits and `-`, at most 40.
fn parse_shard_name(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 40
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-');
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "invalid shard name {text:?}: use at most 40 lower-case letters, digits and '-' \
             (not first or last)"
        ))
    }
}

/// `:8080` is `0.0.0.0:8080`, as Go programs write it.
fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    let full = if text.starts_with(':') {
        format!("0.0.0.0{text}")
    } else {
        text.to_owned()
    };
    full.parse()
        .map_err(|e| format!("invalid address {text:?}: {e}"))
}

/// The environment variable through which glibc's allocator takes its number of arenas.
pub const MALLOC_ARENA_MAX: &str = "MALLOC_ARENA_MAX";

/// Starts the agent again, once, in this same process with `MALLOC_ARENA_MAX=2`, unless that
/// variable is set (to any value: the operator's choice stands). Returns only when it did
/// not, or could not (then glibc's default holds, and a warning says so).
///
/// Why: glibc's allocator gives each thread that allocates an arena of its own (up to eight
/// per core) and each arena keeps much of what it held at its peak. The agent allocates on
/// every runtime and blocking thread (renders, applies, watches), so most of its anonymous
/// memory was free memory kept in arenas: with two arenas the agent at 5,000 objects used a
/// fifth less (README, Benchmarks). glibc reads the limit only when a process starts, and
/// setting it later would take an `unsafe` call (`mallopt`), which Plumb's code does not
/// make; hence the new start, before any thread exists. The pid, arguments, open files and
/// signal dispositions stay the same (it is an `exec`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn with_few_malloc_arenas() {
    use std::os::unix::process::CommandExt as _;
    if std::env::var_os(MALLOC_ARENA_MAX).is_some() {
        return;
    }
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let error = std::process::Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .env(MALLOC_ARENA_MAX, "2")
        .exec();
    eprintln!(
        "warning: could not start again with {MALLOC_ARENA_MAX}=2 ({error}); going on with \
         glibc's default number of allocator arenas"
    );
}

/// Other C libraries: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn with_few_malloc_arenas() {}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(global: &Global, args: &AgentArgs) -> Result<ExitCode> {
    let kube_config = plumb_kube::config(global.kubeconfig.as_deref(), global.context.as_deref())
        .await
        .context("connecting to the cluster")?;
    // Every request the agent sends is counted in `plumb_api_requests`.
    let metrics = Metrics::new();
    let client = metrics
        .client(kube_config.clone())
        .context("building a client")?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "plumb".to_owned());
        format!("{host}-{}", std::process::id())
    });
    let cache_dir = args.cache_dir.clone().unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(".cache/plumb/agent")
    });
    std::fs::create_dir_all(&cache_dir)
        .with_context(|| format!("creating the cache directory {}", cache_dir.display()))?;
    let options = AgentOptions {
        config: AgentConfig {
            cache_dir,
            namespace: args.watch_namespace.clone(),
            concurrency: args.concurrency.max(1),
            cross_namespace_refs: !args.no_cross_namespace_refs,
            allow_local_sources: args.allow_local_sources,
            default_service_account: args
                .default_service_account
                .clone()
                .filter(|sa| !sa.is_empty()),
            agent_namespace: Some(args.agent_namespace.clone()),
            export_limits: args.limits.export_limits(),
            identity,
            shard: args.shard.clone().filter(|s| !s.trim().is_empty()),
        },
        metrics_addr: Some(args.metrics_addr),
        webhook_addr: args.webhook_addr,
        webhook_namespace: args.agent_namespace.clone(),
        leader: args.leader_elect.then(|| LeaderOptions {
            namespace: args.agent_namespace.clone(),
            lease_name: args.lease_name(),
            lease_duration: args.lease_duration,
        }),
        metrics: Some(metrics),
    };
    tracing::info!(
        identity = %options.config.identity,
        shard = args.shard_name().as_deref().unwrap_or("(all)"),
        "plumb agent starting"
    );
    plumb_agent::runner::run(client, kube_config, options, shutdown_signal()).await?;
    tracing::info!("plumb agent stopped");
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    fn args(flags: &[&str]) -> AgentArgs {
        Cli::try_parse_from(std::iter::once("agent").chain(flags.iter().copied()))
            .expect("valid flags")
            .agent
    }

    #[test]
    fn each_shard_elects_on_a_lease_of_its_own() {
        assert_eq!(args(&[]).lease_name(), "plumb-agent");
        assert_eq!(args(&["--lease-name", "x"]).lease_name(), "x");
        let named = args(&["--shard", "k=a", "--shard-name", "one"]);
        assert_eq!(named.lease_name(), "plumb-agent-one");
        // Derived: stable for a selector, different for its complement (which runs beside it).
        let a = args(&["--shard", "k=a"]).lease_name();
        assert_eq!(a, args(&["--shard", "k=a"]).lease_name());
        assert_ne!(a, args(&["--shard", "k!=a"]).lease_name());
        assert!(a.starts_with("plumb-agent-shard-"), "{a}");
        assert!(
            Cli::try_parse_from(["agent", "--shard-name", "one"]).is_err(),
            "--shard-name needs --shard"
        );
        assert!(
            Cli::try_parse_from(["agent", "--shard", "k=a", "--shard-name", "Not/Valid"]).is_err()
        );
    }
}
