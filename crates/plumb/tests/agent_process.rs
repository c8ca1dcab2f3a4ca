//! `plumb agent` run as a process, the way a Deployment runs it, against the real control
//! plane and real Git repositories, for what needs a process: a SIGKILLed agent converging
//! after its restart on the same cache, a standby replica (`--leader-elect`) taking over from a
//! killed leader, SIGTERM during a long health wait (exit status, log, Lease released), and
//! `plumb uninstall` against a running agent (on a control plane of its own), and the agent
//! starting itself again with two allocator arenas.
//! What needs no process (metrics, health, the webhook receiver end to end) runs in-process in
//! the plumb-agent tests (`tests/agent/endpoints.rs`).
//!
//! The world and the agent process are [`plumb_testsupport::world`]'s: dropping an
//! [`AgentProcess`](plumb_testsupport::world::AgentProcess) (a failed assertion, an error)
//! kills it and prints the tail of its log.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use plumb_agent::api::Sync;
use plumb_testsupport::http;
use plumb_testsupport::kube::eventually;
use plumb_testsupport::world::{Agent, AgentSpec, Process, World};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn configmap(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: \"{value}\"\n"
    )
}

/// Starts this crate's `plumb` binary as `plumb agent`.
fn process() -> Process {
    Process::new(env!("CARGO_BIN_EXE_plumb"))
}

#[tokio::test]
async fn killed_agent_process_converges_after_restart() -> Result<()> {
    const MANY: usize = 150;
    let w = World::new("kill").await?;
    let mut agent = w
        .spawn(&process(), AgentSpec::new("kill-1").cache("cache"))
        .await?;
    let first = w.commit(&[("app/cm.yaml", &configmap("base", "1"))], w.signing())?;
    w.create(w.git_source("repo").verify("range")).await?;
    w.create(w.sync("app")).await?;
    w.wait_applied::<Sync>("app", &first, WAIT).await?;
    // At its default log level a deployed agent says what it fetched and applied, inside the
    // span of the reconcile that did it.
    let log = std::fs::read_to_string(agent.log_path())?;
    let applied = log
        .lines()
        .find(|l| l.contains(r#""message":"applied""#))
        .with_context(|| format!("no `applied` line at the default level:\n{log}"))?;
    assert!(
        applied.contains(r#""level":"INFO""#)
            && applied.contains(r#""name":"reconcile""#)
            && applied.contains(r#""kind":"Sync""#)
            && applied.contains(&first[..12]),
        "{applied}"
    );
    assert!(log.contains("fetched and verified a new revision"), "{log}");

    let files: Vec<(String, String)> = (0..MANY)
        .map(|i| {
            let name = format!("bulk-{i:03}");
            (format!("app/{name}.yaml"), configmap(&name, "2"))
        })
        .collect();
    let mut refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let base = configmap("base", "2");
    refs.push(("app/cm.yaml", &base));
    let second = w.commit(&refs, w.signing())?;
    w.poke_source().await?;

    // SIGKILL as soon as the agent starts writing the new revision.
    let cms = w.configmaps();
    let deadline = Instant::now() + WAIT;
    loop {
        if cms.get_opt("bulk-000").await?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the agent never started applying {second}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.kill()?;
    let bulk = |items: &[ConfigMap]| {
        items
            .iter()
            .filter(|c| c.name_any().starts_with("bulk-"))
            .count()
    };
    let at_kill = bulk(&cms.list(&ListParams::default()).await?.items);
    let st = w.api::<Sync>().get("app").await?.status.unwrap_or_default();
    eprintln!(
        "killed with {at_kill}/{MANY} new ConfigMaps applied; lastApplied {:?}",
        st.last_applied_revision
    );

    // A new process on the same cache directory (what a container restart in the same pod
    // sees) converges.
    let restarted = w
        .spawn(&process(), AgentSpec::new("kill-2").cache("cache"))
        .await?;
    let sync = w.wait_applied::<Sync>("app", &second, WAIT).await?;
    let items = cms.list(&ListParams::default()).await?.items;
    assert_eq!(bulk(&items), MANY, "not every new ConfigMap exists");
    for c in items.iter().filter(|c| c.name_any().starts_with("bulk-")) {
        assert_eq!(
            c.data
                .as_ref()
                .and_then(|d| d.get("value"))
                .map(String::as_str),
            Some("2"),
            "{}",
            c.name_any()
        );
    }
    w.wait_value("base", "2").await?;
    let st = sync.status.unwrap_or_default();
    assert_eq!(
        st.inventory.len(),
        MANY + 1,
        "inventory: {:?}",
        st.inventory
    );

    restarted.finish();
    agent.finish();
    Ok(())
}

#[tokio::test]
async fn two_agent_processes_fail_over() -> Result<()> {
    let w = World::new("failover").await?;
    let lease = format!("plumb-agent-{}", w.suffix());
    let spec = |identity: &str| AgentSpec::new(identity).lease(&lease);
    let mut a = w.spawn(&process(), spec("replica-a")).await?;
    let mut b = w.spawn(&process(), spec("replica-b")).await?;

    let first = w.commit(&[("app/cm.yaml", &configmap("ha", "1"))], w.signing())?;
    w.create(w.git_source("repo").verify("range")).await?;
    w.create(w.sync("app")).await?;
    w.wait_applied::<Sync>("app", &first, WAIT).await?;

    let leases: Api<Lease> = Api::namespaced(w.client().clone(), w.ns());
    let holder = || {
        let leases = leases.clone();
        let lease = lease.clone();
        async move {
            Ok::<_, anyhow::Error>(
                leases
                    .get_opt(&lease)
                    .await?
                    .and_then(|l| l.spec)
                    .and_then(|s| s.holder_identity),
            )
        }
    };
    let leader = holder().await?.context("the Lease has no holder")?;
    let (dead, survivor) = match leader.as_str() {
        "replica-a" => (&mut a, &mut b),
        "replica-b" => (&mut b, &mut a),
        other => bail!("the Lease is held by {other:?}, not by one of the agents"),
    };
    // Only the leader reconciles: the standby has counted no reconcile.
    let standby_metrics = http::get(survivor.metrics_addr(), "/metrics").await?.body;
    assert!(
        !standby_metrics.contains("reconciles_total{"),
        "the standby reconciled:\n{standby_metrics}"
    );
    let leader_metrics = http::get(dead.metrics_addr(), "/metrics").await?.body;
    assert!(
        leader_metrics.contains(r#"plumb_reconciles_total{kind="Sync",result="success"}"#),
        "the leader did not count its reconcile:\n{leader_metrics}"
    );
    let standby_ready = http::get(survivor.metrics_addr(), "/readyz").await?;
    assert_eq!(standby_ready.status, 200, "a standby is ready to take over");

    // The leader dies without releasing the Lease; a new commit arrives.
    dead.kill()?;
    let killed = Instant::now();
    let second = w.commit(&[("app/cm.yaml", &configmap("ha", "2"))], w.signing())?;
    let survivor_id = survivor.identity().to_owned();
    if holder().await?.as_deref() == Some(survivor_id.as_str()) {
        // Took over before the push: its startup fetch may have missed the commit.
        w.poke_source().await?;
    }
    eventually(
        &format!("{survivor_id} to take the Lease"),
        Duration::from_secs(30),
        || {
            let holder = holder();
            let survivor_id = survivor_id.clone();
            async move { Ok((holder.await?.as_deref() == Some(survivor_id.as_str())).then_some(())) }
        },
    )
    .await?;
    eprintln!(
        "{survivor_id} took over {:.1?} after the kill",
        killed.elapsed()
    );
    w.wait_applied::<Sync>("app", &second, WAIT).await?;
    w.wait_value("ha", "2").await?;
    eprintln!(
        "the survivor applied the new commit {:.1?} after the kill",
        killed.elapsed()
    );

    a.finish();
    b.finish();
    Ok(())
}

/// `value` with the label `key: value` added to its metadata.
fn labelled(mut object: serde_json::Value, key: &str, value: &str) -> serde_json::Value {
    object["metadata"]["labels"] = json!({ key: value });
    object
}

/// The Syncs an agent's `/metrics` says it manages (`plumb_managed_objects{sync=...}`), sorted.
fn managed_syncs(metrics: &str) -> Vec<String> {
    let mut syncs: Vec<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("plumb_managed_objects{sync=\""))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect();
    syncs.sort();
    syncs
}

#[tokio::test]
async fn two_shards_each_reconcile_only_their_own_syncs() -> Result<()> {
    const KEY: &str = "sharding.plumb.dev/key";
    let w = World::new("shards").await?;
    // Shard `a`, and its complement: everything else, unlabelled objects included. Each
    // shard elects its own leader.
    let shard_a = AgentSpec::new("shard-a")
        .shard(&format!("{KEY}=a"))
        .lease(&format!("plumb-agent-a-{}", w.suffix()));
    let rest = AgentSpec::new("shard-rest")
        .shard(&format!("{KEY} notin (a)"))
        .lease(&format!("plumb-agent-rest-{}", w.suffix()));
    let a = w.spawn(&process(), shard_a).await?;
    let b = w.spawn(&process(), rest).await?;

    let commit = w.commit(
        &[
            ("a/cm.yaml", &configmap("in-a", "1")),
            ("b/cm.yaml", &configmap("in-b", "1")),
            ("c/cm.yaml", &configmap("in-c", "1")),
        ],
        w.signing(),
    )?;
    // A Sync and its GitSource are in the same shard: a Sync renders what its agent fetched.
    for (name, shard) in [("a", Some("a")), ("b", Some("b")), ("c", None)] {
        let source = w.git_source(&format!("repo-{name}")).verify("range").json();
        let sync = w
            .sync(&format!("app-{name}"))
            .spec(json!({ "sourceRef": { "name": format!("repo-{name}") }, "path": name }))
            .json();
        match shard {
            Some(shard) => {
                w.create(labelled(source, KEY, shard)).await?;
                w.create(labelled(sync, KEY, shard)).await?;
            }
            None => {
                w.create(source).await?;
                w.create(sync).await?;
            }
        }
    }
    for name in ["app-a", "app-b", "app-c"] {
        w.wait_applied::<Sync>(name, &commit, WAIT).await?;
    }
    for cm in ["in-a", "in-b", "in-c"] {
        w.wait_value(cm, "1").await?;
    }

    // Each agent manages the Syncs of its shard, and only those.
    let ns = w.ns();
    let expect_a = vec![format!("{ns}/app-a")];
    let expect_rest = vec![format!("{ns}/app-b"), format!("{ns}/app-c")];
    let metrics_a = eventually("shard a's metrics to show its Sync", WAIT, || async {
        let m = http::get(a.metrics_addr(), "/metrics").await?.body;
        Ok((!managed_syncs(&m).is_empty()).then_some(m))
    })
    .await?;
    let metrics_rest = eventually(
        "the other shard's metrics to show its Syncs",
        WAIT,
        || async {
            let m = http::get(b.metrics_addr(), "/metrics").await?.body;
            Ok((managed_syncs(&m).len() >= 2).then_some(m))
        },
    )
    .await?;
    assert_eq!(managed_syncs(&metrics_a), expect_a, "shard a:\n{metrics_a}");
    assert_eq!(
        managed_syncs(&metrics_rest),
        expect_rest,
        "the other shard:\n{metrics_rest}"
    );

    // Both lead at once, each on its shard's Lease.
    let leases: Api<Lease> = Api::namespaced(w.client().clone(), w.ns());
    for (lease, identity) in [("a", "shard-a"), ("rest", "shard-rest")] {
        let name = format!("plumb-agent-{lease}-{}", w.suffix());
        let holder = leases
            .get(&name)
            .await?
            .spec
            .and_then(|s| s.holder_identity);
        assert_eq!(holder.as_deref(), Some(identity), "Lease {name}");
    }

    // A manual change is healed by the shard that owns the Sync.
    w.edit_by_hand("in-c", "edited").await?;
    w.wait_value("in-c", "1").await?;
    let corrected = format!("plumb_drift_corrected_total{{sync=\"{ns}/app-c\"}} 1");
    eventually("the other shard to count its correction", WAIT, || async {
        let m = http::get(b.metrics_addr(), "/metrics").await?.body;
        Ok(m.contains(&corrected).then_some(()))
    })
    .await?;

    a.finish();
    b.finish();
    Ok(())
}

#[tokio::test]
async fn the_agent_runs_with_two_malloc_arenas_as_the_process_it_was_started_as() -> Result<()> {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        // The agent keeps an operator's setting, and this test's would be inherited.
        eprintln!("MALLOC_ARENA_MAX is set for the tests: nothing to check");
        return Ok(());
    }
    let w = World::new("arenas").await?;
    // Started without the variable (it answers its health endpoint before this returns).
    let agent = w.spawn(&process(), AgentSpec::new("arenas-1")).await?;
    // The same pid runs with it: the agent started itself again in place, before any thread.
    let environ = std::fs::read(format!("/proc/{}/environ", agent.pid()))?;
    let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    assert!(
        vars.contains(&&b"MALLOC_ARENA_MAX=2"[..]),
        "the agent's environment: {:?}",
        String::from_utf8_lossy(&environ)
    );
    agent.finish();
    Ok(())
}

#[tokio::test]
async fn an_invalid_shard_selector_stops_the_agent_at_start() -> Result<()> {
    let w = World::new("badshard").await?;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args([
            "agent",
            "--watch-namespace",
            w.ns(),
            "--agent-namespace",
            w.ns(),
        ])
        .args(["--metrics-addr", "127.0.0.1:0", "--shard", "key in (a"])
        .arg("--cache-dir")
        .arg(w.dir().join("cache"))
        .env("KUBECONFIG", w.kubeconfig())
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .output();
    let out = tokio::time::timeout(WAIT, out)
        .await
        .context("the agent did not exit")??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it ran: {stderr}");
    assert!(
        stderr.contains("--shard label selector \"key in (a\""),
        "the error does not name the selector: {stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_during_a_long_health_wait_exits_at_once_and_releases_the_lease() -> Result<()> {
    let w = World::new("sigterm").await?;
    let lease = format!("plumb-agent-{}", w.suffix());
    let mut agent = w
        .spawn(&process(), AgentSpec::new("waiter").lease(&lease))
        .await?;
    // A Deployment whose pods fit no node never becomes Available: a ten-minute health wait.
    let stuck = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: stuck
spec:
  replicas: 1
  selector:
    matchLabels: {app: stuck}
  template:
    metadata:
      labels: {app: stuck}
    spec:
      nodeSelector: {plumb.dev/nowhere: \"true\"}
      containers:
      - name: app
        image: nginx:1.27
";
    let first = w.commit(
        &[
            ("app/cm.yaml", &configmap("settings", "1")),
            ("app/stuck.yaml", stuck),
        ],
        w.signing(),
    )?;
    w.create(w.git_source("repo").verify("range")).await?;
    w.create(w.sync("app").with_spec(json!({
        "sourceRef": { "name": "repo" }, "path": "app", "interval": "1h",
        "wait": true, "timeout": "10m"
    })))
    .await?;
    let syncs = w.api::<Sync>();
    eventually("the Sync to wait for health", WAIT, || {
        let syncs = syncs.clone();
        let first = first.clone();
        async move {
            let st = syncs.get("app").await?.status.unwrap_or_default();
            Ok(st
                .conditions
                .iter()
                .any(|c| {
                    c.type_ == "Reconciling"
                        && c.message.contains(&first)
                        && c.message.contains("waiting up to 600s")
                })
                .then_some(()))
        }
    })
    .await?;
    let leases: Api<Lease> = Api::namespaced(w.client().clone(), w.ns());
    let holder = || {
        let leases = leases.clone();
        let lease = lease.clone();
        async move {
            Ok::<_, anyhow::Error>(
                leases
                    .get_opt(&lease)
                    .await?
                    .and_then(|l| l.spec)
                    .and_then(|s| s.holder_identity),
            )
        }
    };
    assert_eq!(holder().await?.as_deref(), Some("waiter"));

    // Well within the kubelet's default grace period (30 s) before it sends SIGKILL: the wait
    // is cancelled, the Lease released, the process gone.
    let (status, took) = agent.terminate(Duration::from_secs(20)).await?;
    eprintln!("the agent exited {took:.1?} after SIGTERM, during a 10-minute health wait");
    assert!(status.success(), "{status}\n{}", agent.log_tail());
    // Cancelled, not abandoned after the shutdown grace period.
    let log = std::fs::read_to_string(agent.log_path())?;
    assert!(
        log.contains("health wait cancelled") && !log.contains("abandoning"),
        "{}",
        agent.log_tail()
    );
    assert_eq!(
        holder().await?,
        None,
        "the Lease must be released (a standby takes over at once)"
    );
    agent.finish();
    Ok(())
}

/// `plumb uninstall` against a running agent, on a control plane of its own (it deletes the
/// CRDs): with `--keep-objects` the agent orphans what the Sync applied (same object, same
/// uid); without, the agent deletes it; then the CRDs go.
#[tokio::test]
async fn uninstall_keeps_or_deletes_what_the_syncs_applied() -> Result<()> {
    let plane = plumb_testsupport::kube::PrivateControlPlane::up().await?;
    let w = World::private(&plane, "uninstall").await?;
    let agent = w.spawn(&process(), AgentSpec::new("uninstall-1")).await?;
    let kubeconfig = plane
        .kubeconfig()
        .to_str()
        .context("kubeconfig path")?
        .to_owned();
    let uninstall = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_plumb"));
        cmd.args(["--kubeconfig", &kubeconfig, "uninstall"])
            .args(extra);
        if !extra.contains(&"--timeout") {
            cmd.args(["--timeout", "60s"]);
        }
        cmd.output().expect("plumb runs")
    };
    let show = |out: &std::process::Output| {
        format!(
            "{}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };

    let commit = w.commit(&[("app/cm.yaml", &configmap("settings", "1"))], w.signing())?;
    w.create(w.git_source("repo")).await?;
    w.create(w.sync("app")).await?;
    w.wait_applied::<Sync>("app", &commit, WAIT).await?;
    let cms = w.configmaps();
    let uid = cms.get("settings").await?.uid();

    // Without a running agent nothing handles the deletions: it says so and removes nothing
    // else (the CRDs stay). The deletion stays pending, as asked (keeping the objects): the
    // next agent finishes it, and the ConfigMap is left as it is.
    agent.stop().await?;
    let out = uninstall(&["--keep-objects", "--keep-crds", "--timeout", "3s"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}/app", w.ns()))
            && err.contains("is it running?")
            && err.contains("an agent that starts later finishes it"),
        "{err}"
    );
    let crds = Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(w.client().clone());
    assert!(crds.get_opt("syncs.plumb.dev").await?.is_some());
    let _agent = w.spawn(&process(), AgentSpec::new("uninstall-2")).await?;

    let out = uninstall(&["--keep-objects", "--keep-crds"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        w.api::<Sync>()
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
    );
    assert_eq!(cms.get("settings").await?.uid(), uid, "kept as it was");

    // Again, now deleting what the Sync applied (a Sync of the same name adopts it first).
    w.create(w.git_source("repo")).await?;
    w.create(w.sync("app")).await?;
    w.wait_applied::<Sync>("app", &commit, WAIT).await?;
    let out = uninstall(&[]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("CustomResourceDefinition syncs.plumb.dev deleted"),
        "{}",
        show(&out)
    );
    eventually("the Sync's ConfigMap to be deleted", WAIT, || {
        let cms = cms.clone();
        async move { Ok(cms.get_opt("settings").await?.is_none().then_some(())) }
    })
    .await?;
    Ok(())
}

/// An agent whose cluster lacks one of its CRDs (here ChartSource: e.g. the agent upgraded by
/// its image tag before the CRDs were) still applies its Git Syncs, says which watch fails, and
/// retries that watch with backoff rather than in a loop of requests.
#[tokio::test]
async fn a_missing_crd_is_retried_with_backoff_and_the_other_syncs_work() -> Result<()> {
    let plane = plumb_testsupport::kube::PrivateControlPlane::up().await?;
    let w = World::private(&plane, "nocrd").await?;
    let crds = Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(w.client().clone());
    crds.delete("chartsources.plumb.dev", &Default::default())
        .await?;
    eventually("the ChartSource CRD to be gone", WAIT, || {
        let crds = crds.clone();
        async move {
            Ok(crds
                .get_opt("chartsources.plumb.dev")
                .await?
                .is_none()
                .then_some(()))
        }
    })
    .await?;
    let agent = w.spawn(&process(), AgentSpec::new("nocrd-1")).await?;
    let commit = w.commit(&[("app/cm.yaml", &configmap("settings", "1"))], w.signing())?;
    w.create(w.git_source("repo")).await?;
    w.create(w.sync("app")).await?;
    w.wait_applied::<Sync>("app", &commit, WAIT).await?;

    // The ChartSource watches (the ChartSource controller's and the Sync controller's) have
    // each failed a few times by now; without backoff they would have sent thousands of lists.
    let lists = |metrics: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("plumb_api_requests_total{")
                    && l.contains(r#"verb="list""#)
                    && l.contains(r#"resource="chartsources""#)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let metrics = eventually("a few failed lists of ChartSources", WAIT, || async {
        let m = agent.metrics().await?;
        Ok((lists(&m) >= 4.0).then_some(m))
    })
    .await?;
    let failed = lists(&metrics);
    assert!(
        failed <= 30.0,
        "{failed} lists of the missing ChartSource kind: the watch is not backing off"
    );
    let log = std::fs::read_to_string(agent.log_path())?;
    assert!(
        log.lines()
            .any(|l| l.contains("watch failed; retrying with backoff") && l.contains("ChartSource")),
        "no warning naming the failing watch:\n{log}"
    );
    Ok(())
}
