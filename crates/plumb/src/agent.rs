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
    /// Name of the leader Lease.
    #[arg(long, default_value = "plumb-agent")]
    pub lease_name: String,
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
    #[command(flatten)]
    pub limits: crate::source::LimitArgs,
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
        },
        metrics_addr: Some(args.metrics_addr),
        webhook_addr: args.webhook_addr,
        webhook_namespace: args.agent_namespace.clone(),
        leader: args.leader_elect.then(|| LeaderOptions {
            namespace: args.agent_namespace.clone(),
            lease_name: args.lease_name.clone(),
            lease_duration: args.lease_duration,
        }),
        metrics: Some(metrics),
    };
    tracing::info!(identity = %options.config.identity, "plumb agent starting");
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
