//! Replicas, suspend and resume, dependencies, service accounts, unreachable repositories,
//! an agent killed mid-apply.

use super::*;

#[tokio::test]
async fn with_two_replicas_only_the_leader_writes_and_the_standby_takes_over() -> Result<()> {
    use plumb_agent::runner::LeaderOptions;
    type Requests = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

    let w = World::without_agent("ha").await?;
    let first = w.commit(&[("app/cm.yaml", &configmap("ha", "1"))], w.signing())?;
    let ns = w.ns().to_owned();
    let cache = tempfile::tempdir()?;
    let config = kube::Config::infer().await?;
    let start =
        |identity: &str| -> Result<(oneshot::Sender<()>, tokio::task::JoinHandle<()>, Requests)> {
            let (client, requests) = recording_client(config.clone())?;
            let (tx, rx) = oneshot::channel::<()>();
            let options = AgentOptions {
                config: AgentConfig {
                    cache_dir: cache.path().join(identity),
                    namespace: Some(ns.clone()),
                    concurrency: 2,
                    cross_namespace_refs: true,
                    allow_local_sources: true,
                    default_service_account: None,
                    export_limits: Default::default(),
                    agent_namespace: None,
                    identity: identity.to_owned(),
                    shard: None,
                },
                metrics_addr: None,
                webhook_addr: None,
                webhook_namespace: ns.clone(),
                leader: Some(LeaderOptions {
                    namespace: ns.clone(),
                    lease_name: "plumb-agent".into(),
                    lease_duration: Duration::from_secs(3),
                }),
                metrics: None,
            };
            let kube_config = config.clone();
            let task = tokio::spawn(async move {
                let _ = run(client, kube_config, options, async move {
                    let _ = rx.await;
                })
                .await;
            });
            Ok((tx, task, requests))
        };
    let (stop_a, task_a, req_a) = start("replica-a")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (stop_b, task_b, req_b) = start("replica-b")?;

    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    w.wait_applied("app", &first).await?;

    let writes = |reqs: &Requests| {
        reqs.lock()
            .unwrap()
            .iter()
            .filter(|r| r.starts_with("PATCH") || r.starts_with("POST"))
            .filter(|r| {
                r.contains("/configmaps") || r.contains("/syncs") || r.contains("/gitsources")
            })
            .filter(|r| !r.contains("dryRun"))
            .count()
    };
    // replica-a started first and leads; replica-b only campaigns.
    assert!(writes(&req_a) > 0, "the leader applied nothing");
    assert_eq!(
        writes(&req_b),
        0,
        "the standby wrote: {:#?}",
        req_b.lock().unwrap()
    );

    // The leader stops (releasing the Lease); the standby takes over and applies the next commit.
    let _ = stop_a.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), task_a).await;
    let second = w.commit(&[("app/cm.yaml", &configmap("ha", "2"))], w.signing())?;
    w.poke_source().await?;
    w.wait_applied("app", &second).await?;
    w.wait_value("ha", "2").await?;
    assert!(writes(&req_b) > 0, "the standby never took over");

    let _ = stop_b.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), task_b).await;
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn suspend_stops_everything_and_resume_catches_up() -> Result<()> {
    let w = World::new("suspend").await?;
    let first = w.commit(&[("app/cm.yaml", &configmap("paused", "1"))], w.signing())?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    w.wait_applied("app", &first).await?;

    let suspend = |on: bool| json!({ "spec": { "suspend": on } });
    w.syncs()
        .patch("app", &PatchParams::default(), &Patch::Merge(suspend(true)))
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = w.commit(&[("app/cm.yaml", &configmap("paused", "2"))], w.signing())?;
    w.poke_source().await?;
    let sources = w.sources();
    eventually("the GitSource to fetch the new commit", WAIT, || {
        let sources = sources.clone();
        let second = second.clone();
        async move {
            let gs = sources.get("repo").await?;
            Ok(gs
                .status
                .and_then(|s| s.artifact)
                .filter(|a| a.commit == second)
                .map(|_| ()))
        }
    })
    .await?;
    // Neither the new revision nor drift correction happens while suspended.
    w.edit_by_hand("paused", "by hand").await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    w.wait_value("paused", "by hand").await?;
    let st = w.syncs().get("app").await?.status.unwrap();
    assert!(st.last_applied_revision.unwrap().ends_with(&first));

    w.syncs()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(suspend(false)),
        )
        .await?;
    w.wait_applied("app", &second).await?;
    w.wait_value("paused", "2").await?;
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn depends_on_waits_for_the_dependency() -> Result<()> {
    let w = World::new("deps").await?;
    let first = w.commit(
        &[
            ("base/cm.yaml", &configmap("base", "1")),
            ("app/cm.yaml", &configmap("app", "1")),
        ],
        w.signing(),
    )?;
    w.create_source("range").await?;
    // The dependent first: it must wait.
    w.create_sync_spec("app", json!({ "sourceRef": { "name": "repo" }, "path": "app", "interval": "1h", "dependsOn": [{ "name": "base" }] }))
        .await?;
    let syncs = w.syncs();
    let (status, reason, message) = eventually("the dependent Sync to wait", WAIT, || {
        let syncs = syncs.clone();
        async move { ready_condition(&syncs, "app").await }
    })
    .await?;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "DependencyNotReady"),
        "{message}"
    );
    assert!(message.contains("base"), "{message}");
    assert!(
        w.configmaps().get_opt("app").await?.is_none(),
        "applied before its dependency"
    );

    w.create_sync_spec(
        "base",
        json!({ "sourceRef": { "name": "repo" }, "path": "base", "interval": "1h" }),
    )
    .await?;
    w.wait_applied("base", &first).await?;
    w.wait_applied("app", &first).await?;
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_service_account_without_rights_fails_cleanly() -> Result<()> {
    let w = World::new("rbac").await?;
    let first = w.commit(&[("app/cm.yaml", &configmap("guarded", "1"))], w.signing())?;
    let sa: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({ "metadata": { "name": "limited" } }))?;
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(w.client().clone(), w.ns())
        .create(&PostParams::default(), &sa)
        .await?;
    w.create_source("range").await?;
    w.create_sync_spec(
        "app",
        json!({ "sourceRef": { "name": "repo" }, "path": "app", "interval": "1h", "serviceAccountName": "limited" }),
    )
    .await?;
    let syncs = w.syncs();
    let message = eventually("the Sync to fail on permissions", WAIT, || {
        let syncs = syncs.clone();
        async move {
            Ok(ready_condition(&syncs, "app")
                .await?
                .filter(|(s, _, _)| s == "False")
                .filter(|(_, r, _)| r != "DependencyNotReady")
                .map(|(_, _, m)| m))
        }
    })
    .await?;
    assert!(
        message.contains("forbidden") && message.contains("guarded"),
        "{message}"
    );
    assert!(
        message.contains("system:serviceaccount") && message.contains("limited"),
        "{message}"
    );
    assert!(w.configmaps().get_opt("guarded").await?.is_none());
    let _ = first;
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_unreachable_repository_keeps_the_cluster_and_recovers() -> Result<()> {
    let w = World::new("gitdown").await?;
    let first = w.commit(
        &[
            ("app/a.yaml", &configmap("a", "1")),
            ("app/b.yaml", &configmap("b", "1")),
        ],
        w.signing(),
    )?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    w.wait_applied("app", &first).await?;

    // The repository goes away (as a Git server that is down).
    let bare = w.repo().path().to_path_buf();
    let hidden = bare.with_extension("offline");
    std::fs::rename(&bare, &hidden)?;
    w.poke_source().await?;
    let sources = w.sources();
    let message = eventually("the GitSource to report the fetch failure", WAIT, || {
        let sources = sources.clone();
        async move {
            let st = sources.get("repo").await?.status.unwrap_or_default();
            Ok(st
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "FetchFailed")
                .map(|c| c.message.clone()))
        }
    })
    .await?;
    assert!(!message.is_empty());
    // Nothing was pruned or changed; the Sync keeps its revision.
    w.wait_value("a", "1").await?;
    w.wait_value("b", "1").await?;

    // It comes back, with a new commit: applied.
    std::fs::rename(&hidden, &bare)?;
    w.wt().remove("app/b.yaml")?;
    let second = w.commit(&[("app/a.yaml", &configmap("a", "2"))], w.signing())?;
    w.poke_source().await?;
    w.wait_applied("app", &second).await?;
    w.wait_value("a", "2").await?;
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_agent_killed_mid_apply_converges_after_restart_and_restores_a_wiped_namespace()
-> Result<()> {
    let mut w = World::new("restart").await?;
    let target = format!("{}-app", w.ns());
    let mut files = vec![(
        "app/ns.yaml".to_owned(),
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {target}\n"),
    )];
    for i in 0..30 {
        files.push((
            format!("app/cm-{i}.yaml"),
            configmap(&format!("cm-{i}"), "1").replace(
                "metadata:\n",
                &format!("metadata:\n  namespace: {target}\n"),
            ),
        ));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let first = w.commit(&refs, w.signing())?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    let in_target: Api<ConfigMap> = Api::namespaced(w.client().clone(), &target);
    // Kill the agent as soon as it has started writing.
    eventually("the agent to start applying", WAIT, || {
        let in_target = in_target.clone();
        async move {
            Ok((!in_target
                .list(&Default::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default()
                .is_empty())
            .then_some(()))
        }
    })
    .await?;
    if let Some(agent) = w.agent.take() {
        agent.abort().await;
    }
    // A new agent (fresh cache, no memory) converges.
    let restarted = World::restart_agent(&w, "restart-2").await?;
    w.agent = Some(restarted);
    w.wait_applied("app", &first).await?;
    assert_eq!(
        in_target.list(&Default::default()).await?.items.len(),
        30 + 1 /* kube-root-ca.crt */
    );

    // Disaster recovery drill: wipe the namespace; the agent restores everything.
    let started = std::time::Instant::now();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(w.client().clone())
        .delete(&target, &Default::default())
        .await?;
    eventually(
        "the wiped namespace to be restored",
        Duration::from_secs(120),
        || {
            let in_target = in_target.clone();
            async move {
                let n = in_target
                    .list(&Default::default())
                    .await
                    .map(|l| {
                        l.items
                            .iter()
                            .filter(|c| {
                                c.metadata
                                    .name
                                    .as_deref()
                                    .is_some_and(|n| n.starts_with("cm-"))
                            })
                            .count()
                    })
                    .unwrap_or(0);
                Ok((n == 30).then_some(()))
            }
        },
    )
    .await?;
    eprintln!(
        "DR drill: namespace {target} wiped and restored (30 objects) in {:.1?}",
        started.elapsed()
    );
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(w.client().clone())
        .delete(&target, &Default::default())
        .await;
    w.stop().await;
    Ok(())
}
