//! `plumb-bench agent`: `plumb agent` as a process over a signed local repository of N apps
//! split into S Syncs.
//!
//! Measures the initial apply; API requests per minute in steady state (the agent's own
//! `plumb_api_requests_total`, with every Sync and the GitSource reconciled on a short
//! interval); drift-heal latency over E manual changes (ConfigMap edits, `scale`s, Service
//! deletions), each timed from the change to the watch event that shows it undone;
//! commit-to-applied latency from `git push` to the changed object in the cluster, with a
//! webhook and with polling; drift-heal latency while one commit rolls out every Deployment
//! (the Syncs applying it and waiting for its health); the agent's RSS (current and peak).

pub(crate) mod http;
mod measure;
mod setup;
pub(crate) mod watch;

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;

use self::measure::{DriftLatencies, RequestRates, RolloutDrift};
use self::setup::AgentBench;
use crate::cli::AgentArgs;
use crate::cluster::{delete_namespaces, settle_for};
use crate::metrics::BENCH_RESOURCES;
use crate::process::{clock_ticks, cpu_seconds, ensure_tools, plumb_binary, rss_mib};
use crate::stats::{max, percentile};
use crate::testenv::ControlPlane;

/// Everything the report shows.
struct Results {
    initial: f64,
    /// CPU seconds of the agents during the initial apply.
    initial_cpu: f64,
    rss_initial: (f64, f64),
    steady: RequestRates,
    drift: DriftLatencies,
    polling: Vec<f64>,
    webhook: Vec<f64>,
    /// Drift healed while every Deployment rolled out (`--rollout-edits` 0: none).
    rollout: Option<RolloutDrift>,
    rss_now: f64,
    rss_peak: f64,
}

/// Runs the agent benchmark and prints its report.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    ensure_tools()?;
    let plumb = plumb_binary()?;
    let plane = ControlPlane::find_or_start().await?;
    let workdir = tempfile::Builder::new()
        .prefix("plumb-bench-agent-")
        .tempdir()
        .context("cannot create a work directory")?;
    let mut bench = AgentBench::new(&args, &plane, plumb, workdir.path())?;
    let objects = bench.per_sync * args.syncs * 4;
    let result = tokio::select! {
        r = phases(&mut bench, objects) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if result.is_err() && bench.agent_started() {
        log!("agent log tail:\n{}", bench.agent_log_tail());
    }
    bench.stop_agent().await;
    // The agent is gone: nothing else would remove the finalizers of its Syncs and GitSource.
    if let Err(e) =
        plumb_testsupport::kube::release_plumb_finalizers(plane.client(), &bench.ns).await
    {
        log!(
            "warning: cannot release the finalizers in {}: {e:#}",
            bench.ns
        );
    }
    delete_namespaces(plane.client(), std::slice::from_ref(&bench.ns)).await;
    drop(bench);
    if args.keep_dir {
        let kept = workdir.keep();
        log!("work files kept in {}", kept.display());
    } else {
        drop(workdir);
    }
    plane.finish().await;
    print!("{}", report(&args, objects, &result?));
    Ok(())
}

async fn phases(bench: &mut AgentBench<'_>, objects: u32) -> anyhow::Result<Results> {
    let args = bench.args;
    log!(
        "repository: {} apps in {} Syncs ({objects} objects), signed",
        args.apps,
        args.syncs
    );
    bench.make_repo()?;
    bench.setup_cluster().await?;
    bench.start_agent().await?;
    log!(
        "initial apply through {} agent(s), concurrency {}",
        args.shards,
        args.concurrency
    );
    let ticks = clock_ticks().await;
    let cpu_before = cpu_sum(&bench.agent_pids()?, ticks)?;
    let initial = bench.initial().await?;
    let initial_cpu = cpu_sum(&bench.agent_pids()?, ticks)? - cpu_before;
    log!(
        "  all {} Syncs Ready in {initial:.1}s, {initial_cpu:.1} CPU seconds",
        args.syncs
    );
    let rss_initial = rss_sum(&bench.agent_pids()?)?;
    settle_for(
        bench.client(),
        Duration::from_secs(3),
        Duration::from_secs(120),
    )
    .await?;

    log!(
        "steady state: every Sync and the GitSource reconciled every {}, {}s window",
        args.interval,
        args.steady
    );
    bench.set_source_interval(&args.interval).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let steady = bench.steady_state(args.steady).await?;

    log!("drift: {} manual changes", args.edits);
    let drift = bench.drift_edits(args.edits).await?;

    log!(
        "commit to applied, polling every {}: {} commits",
        args.interval,
        args.commits
    );
    let polling = bench.commit_to_applied(args.commits, false).await?;

    log!(
        "commit to applied, webhook (GitSource interval 1h): {} commits",
        args.commits
    );
    bench.set_source_interval("1h").await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let webhook = bench.commit_to_applied(args.commits, true).await?;

    let rollout = if args.rollout_edits > 0 {
        log!(
            "drift during a rollout: one commit gives all {} Deployments a new image (webhook); \
             {} manual changes while the Syncs apply it",
            args.apps,
            args.rollout_edits
        );
        let rollout = bench
            .drift_during_rollout(args.rollout_edits, args.edits, "1.1.0")
            .await?;
        log!(
            "  every Sync Ready at the rollout's commit {:.1}s after the push",
            rollout.rollout
        );
        Some(rollout)
    } else {
        None
    };
    let (rss_now, rss_peak) = rss_sum(&bench.agent_pids()?)?;
    Ok(Results {
        initial,
        initial_cpu,
        rss_initial,
        steady,
        drift,
        polling,
        webhook,
        rollout,
        rss_now,
        rss_peak,
    })
}

/// Current and peak RSS (MiB), summed over the agents.
fn rss_sum(pids: &[u32]) -> anyhow::Result<(f64, f64)> {
    let mut sum = (0.0, 0.0);
    for pid in pids {
        let (now, peak) = rss_mib(*pid)?;
        sum.0 += now;
        sum.1 += peak;
    }
    Ok(sum)
}

/// CPU seconds so far, summed over the agents.
fn cpu_sum(pids: &[u32], ticks: f64) -> anyhow::Result<f64> {
    pids.iter()
        .try_fold(0.0, |sum, pid| Ok(sum + cpu_seconds(*pid, ticks)?))
}

fn report(args: &AgentArgs, objects: u32, r: &Results) -> String {
    let all_drift: Vec<f64> = r
        .drift
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .collect();
    let per_object: f64 = r
        .steady
        .iter()
        .filter(|((verb, resource, _), _)| {
            let main = resource.split('/').next().unwrap_or_default();
            BENCH_RESOURCES.contains(&main) && verb != "watch"
        })
        .fold(0.0, |sum, (_, v)| sum + v);
    // Not `sum()`: the empty sum of f64 is -0.0, printed "-0".
    let total = r.steady.iter().fold(0.0, |sum, (_, v)| sum + v);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Agent: {} apps ({objects} objects) in {} Syncs, one SSH-signed repository (range \
         verification), drift: correct; {} agent(s){}, concurrency {}",
        args.apps,
        args.syncs,
        args.shards,
        if args.shards > 1 {
            " (one shard each)"
        } else {
            ""
        },
        args.concurrency
    );
    out.push('\n');
    out.push_str("| measurement | result |\n|---|---:|\n");
    let _ = writeln!(
        out,
        "| initial apply through the agent (all Syncs Ready) | {:.1} s |",
        r.initial
    );
    let _ = writeln!(
        out,
        "| CPU seconds of the initial apply (all agents) | {:.1} |",
        r.initial_cpu
    );
    let _ = writeln!(
        out,
        "| drift healed, p50 / p95 / max ({} manual changes) | {:.2} / {:.2} / {:.2} s |",
        all_drift.len(),
        percentile(&all_drift, 50.0),
        percentile(&all_drift, 95.0),
        max(&all_drift)
    );
    for (kind, values) in &r.drift {
        if !values.is_empty() {
            let _ = writeln!(
                out,
                "| &nbsp;&nbsp;{kind}, p50 ({}) | {:.2} s |",
                values.len(),
                percentile(values, 50.0)
            );
        }
    }
    if let Some(rollout) = &r.rollout {
        let _ = writeln!(
            out,
            "| drift healed during a rollout of every Deployment, p50 / p99 / max ({} manual \
             changes{}) | {:.2} / {:.2} / {:.2} s |",
            rollout.during.len(),
            if rollout.after > 0 {
                "; one more healed after the rollout, not counted"
            } else {
                ""
            },
            percentile(&rollout.during, 50.0),
            percentile(&rollout.during, 99.0),
            max(&rollout.during)
        );
        let _ = writeln!(
            out,
            "| the rollout: push (webhook) to every Sync Ready, {} Deployments with a new image | \
             {:.1} s |",
            args.apps, rollout.rollout
        );
    }
    let _ = writeln!(
        out,
        "| commit to applied, webhook, p50 / max ({} commits) | {:.2} / {:.2} s |",
        r.webhook.len(),
        percentile(&r.webhook, 50.0),
        max(&r.webhook)
    );
    let _ = writeln!(
        out,
        "| commit to applied, polling every {}, p50 / max ({} commits) | {:.2} / {:.2} s |",
        args.interval,
        r.polling.len(),
        percentile(&r.polling, 50.0),
        max(&r.polling)
    );
    let _ = writeln!(
        out,
        "| steady state: API requests per minute, all | {total:.1} |"
    );
    let _ = writeln!(
        out,
        "| steady state: per-object requests per minute | {per_object:.0} |"
    );
    let _ = writeln!(
        out,
        "| agent RSS after the initial apply / at the end / peak (sum of the agents) | {:.0} / \
         {:.0} / {:.0} MiB |",
        r.rss_initial.0, r.rss_now, r.rss_peak
    );
    out.push('\n');
    let _ = writeln!(
        out,
        "Steady-state requests per minute by verb and resource (plumb_api_requests_total, {}s \
         window):",
        args.steady
    );
    let mut steady = r.steady.clone();
    // Stable: equal rates keep the order of the agent's metrics.
    steady.sort_by(|a, b| b.1.total_cmp(&a.1));
    for ((verb, resource, dry), value) in &steady {
        let dry_note = if dry == "true" { " (dry-run)" } else { "" };
        let _ = writeln!(out, "  {verb} {resource}{dry_note}: {value:.1}");
    }
    let during = r
        .rollout
        .as_ref()
        .filter(|r| !r.during.is_empty())
        .map(|r| {
            format!(
                ", during a rollout p99: {:.2}s",
                percentile(&r.during, 99.0)
            )
        })
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "drift heal p95: {:.2}s{during}; steady-state per-object requests/min: {per_object:.0}; \
         agent peak RSS: {:.0} MiB",
        percentile(&all_drift, 95.0),
        r.rss_peak
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_per_object_request_prints_zero() {
        let args = AgentArgs {
            apps: 50,
            syncs: 2,
            replicas: 0,
            edits: 3,
            commits: 1,
            rollout_edits: 2,
            interval: "30s".into(),
            steady: 60,
            namespace: "bench-agent".into(),
            shards: 1,
            concurrency: 4,
            keep_dir: false,
        };
        let results = Results {
            initial: 2.0,
            initial_cpu: 1.0,
            rss_initial: (28.0, 29.0),
            steady: vec![(("get".into(), "gitsources".into(), "false".into()), 20.0)],
            drift: vec![
                ("edit ConfigMap", vec![0.02]),
                ("scale Deployment", vec![0.06]),
                ("delete Service", vec![]),
            ],
            polling: vec![29.5],
            webhook: vec![1.5],
            rollout: None,
            rss_now: 29.0,
            rss_peak: 30.4,
        };
        let out = report(&args, 200, &results);
        assert!(
            out.contains("| steady state: per-object requests per minute | 0 |"),
            "{out}"
        );
        assert!(!out.contains("delete Service, p50"), "{out}");
        assert_eq!(
            out.lines().last(),
            Some(
                "drift heal p95: 0.06s; steady-state per-object requests/min: 0; agent peak RSS: 30 MiB"
            )
        );

        let results = Results {
            rollout: Some(RolloutDrift {
                during: vec![0.05, 0.4],
                after: 1,
                rollout: 31.26,
            }),
            ..results
        };
        let out = report(&args, 200, &results);
        assert!(
            out.contains(
                "| drift healed during a rollout of every Deployment, p50 / p99 / max (2 manual \
                 changes; one more healed after the rollout, not counted) | 0.05 / 0.40 / 0.40 s |"
            ),
            "{out}"
        );
        assert!(
            out.contains("50 Deployments with a new image | 31.3 s |"),
            "{out}"
        );
        assert!(
            out.lines().last().is_some_and(
                |l| l.starts_with("drift heal p95: 0.06s, during a rollout p99: 0.40s;")
            ),
            "{out}"
        );
    }
}
