//! What the agent sends the API server: nothing per object in a steady state, bounded
//! concurrency when much is healed at once.

use super::*;

#[tokio::test]
async fn steady_state_makes_no_per_object_requests() -> Result<()> {
    // The agent's client records every request it sends.
    let (counting, requests) = recording_client(kube::Config::infer().await?)?;
    let w = World::with_agent_client("steady", Some(counting)).await?;
    let first = w.commit(
        &[
            ("app/cm.yaml", &configmap("quiet", "1")),
            ("app/web.yaml", &deployment("web", 1)),
        ],
        w.signing(),
    )?;
    w.create_source("range").await?;
    // Re-apply every second: the agent must notice each time that nothing changed.
    w.create_sync_every("app", "correct", "1s").await?;
    w.wait_applied("app", &first).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    requests.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let seen = requests.lock().unwrap().clone();
    let reconciles = seen
        .iter()
        .filter(|r| r.starts_with("GET") && r.contains("/gitsources/repo"))
        .count();
    assert!(
        reconciles >= 3,
        "the Sync should have been reconciled every second: {seen:#?}"
    );
    let per_object: Vec<&String> = seen
        .iter()
        .filter(|r| r.contains("/configmaps") || r.contains("/deployments"))
        .filter(|r| !r.contains("watch=true"))
        .collect();
    assert!(
        per_object.is_empty(),
        "steady state made per-object requests: {per_object:#?}"
    );

    // And a manual change is still healed: the watch, not polling, does it.
    w.edit_by_hand("quiet", "noise").await?;
    w.wait_value("quiet", "1").await?;

    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_commit_outside_the_path_is_recorded_without_per_object_requests() -> Result<()> {
    let (counting, requests) = recording_client(kube::Config::infer().await?)?;
    let w = World::with_agent_client("elsewhere", Some(counting)).await?;
    let first = w.commit(
        &[
            ("app/cm.yaml", &configmap("mine", "1")),
            ("app/companion.yaml", &configmap("companion", "1")),
            ("other/cm.yaml", &configmap("theirs", "1")),
        ],
        w.signing(),
    )?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    w.wait_applied("app", &first).await?;

    // A commit that changes only another directory: the Sync takes the new revision (the audit
    // trail names it) without a request per object.
    requests.lock().unwrap().clear();
    let second = w.commit(&[("other/cm.yaml", &configmap("theirs", "2"))], w.signing())?;
    w.poke_source().await?;
    let sync = w.wait_applied("app", &second).await?;
    let st = sync.status.unwrap();
    assert_eq!(st.history[0].changes, "2 unchanged", "{:?}", st.history[0]);
    assert_eq!(st.history[0].result, "success");
    // None of the Sync's files changed: the revision is recorded without a render.
    let (_, _, message) = ready_condition(&w.syncs(), "app")
        .await?
        .unwrap_or_default();
    assert!(
        message.ends_with("(none of its files changed: not rendered)"),
        "{message}"
    );
    let per_object: Vec<String> = requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.contains("/configmaps") && !r.contains("watch=true"))
        // The GitSource reads its allowed signers on every fetch.
        .filter(|r| !r.contains("/configmaps/signers"))
        .cloned()
        .collect();
    assert!(
        per_object.is_empty(),
        "an unchanged rendering made per-object requests: {per_object:#?}"
    );

    // A commit inside the path is applied; the object it did not change, which the watch
    // has seen unchanged, is neither dry-run nor written.
    requests.lock().unwrap().clear();
    let third = w.commit(&[("app/cm.yaml", &configmap("mine", "3"))], w.signing())?;
    w.poke_source().await?;
    let sync = w.wait_applied("app", &third).await?;
    w.wait_value("mine", "3").await?;
    let st = sync.status.unwrap();
    assert_eq!(
        st.history[0].changes, "1 configured, 1 unchanged",
        "{:?}",
        st.history[0]
    );
    let seen = requests.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|r| r.starts_with("PATCH") && r.contains("/configmaps/mine")),
        "the changed ConfigMap was not applied: {seen:#?}"
    );
    // (The live state is still read: one GET here, one LIST per kind in larger Syncs.)
    let companion: Vec<&String> = seen
        .iter()
        .filter(|r| r.starts_with("PATCH") && r.contains("/configmaps/companion"))
        .collect();
    assert!(
        companion.is_empty(),
        "the unchanged object was dry-run or applied: {companion:#?}"
    );

    // A manual change, then a commit outside the path: the drift is healed either way.
    w.edit_by_hand("mine", "edited").await?;
    let fourth = w.commit(&[("other/cm.yaml", &configmap("theirs", "4"))], w.signing())?;
    w.poke_source().await?;
    w.wait_applied("app", &fourth).await?;
    w.wait_value("mine", "3").await?;

    w.stop().await;
    Ok(())
}

/// A Kustomization reads outside its directory: a commit that changes only its base, outside
/// the Sync's path, is rendered and applied; one outside both is recorded without a render.
#[tokio::test]
async fn a_commit_to_a_kustomize_base_outside_the_path_is_applied() -> Result<()> {
    let w = World::new("kbase").await?;
    let kustomization = "resources:\n- ../base\n";
    let first = w.commit(
        &[
            ("overlay/kustomization.yaml", kustomization),
            ("base/kustomization.yaml", "resources:\n- cm.yaml\n"),
            ("base/cm.yaml", &configmap("based", "1")),
            ("elsewhere/cm.yaml", &configmap("other", "1")),
        ],
        w.signing(),
    )?;
    w.create_source("range").await?;
    w.create(w.sync("overlay").spec(json!({ "path": "overlay" })))
        .await?;
    w.wait_applied("overlay", &first).await?;
    w.wait_value("based", "1").await?;

    let second = w.commit(&[("base/cm.yaml", &configmap("based", "2"))], w.signing())?;
    w.poke_source().await?;
    let sync = w.wait_applied("overlay", &second).await?;
    w.wait_value("based", "2").await?;
    let st = sync.status.unwrap();
    assert_eq!(st.history[0].changes, "1 configured", "{:?}", st.history[0]);

    // Even a commit outside the base and the overlay renders a Kustomization again (what it
    // reads is not known without rendering it), which finds nothing to change.
    let third = w.commit(
        &[("elsewhere/cm.yaml", &configmap("other", "3"))],
        w.signing(),
    )?;
    w.poke_source().await?;
    w.wait_applied("overlay", &third).await?;
    let (_, _, message) = ready_condition(&w.syncs(), "overlay")
        .await?
        .unwrap_or_default();
    assert!(
        message.ends_with("(renders the objects already applied)"),
        "{message}"
    );
    w.stop().await;
    Ok(())
}

/// A client that tracks how many of its requests are in flight, and the most at once.
fn concurrency_client(
    config: kube::Config,
) -> Result<(Client, std::sync::Arc<std::sync::atomic::AtomicUsize>)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let now = std::sync::Arc::new(AtomicUsize::new(0));
    let peak = std::sync::Arc::new(AtomicUsize::new(0));
    let (up, down, top) = (now.clone(), now, peak.clone());
    let enter = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        let n = up.fetch_add(1, Ordering::SeqCst) + 1;
        top.fetch_max(n, Ordering::SeqCst);
        req
    });
    let leave = tower::util::MapResultLayer::new(move |result| {
        down.fetch_sub(1, Ordering::SeqCst);
        result
    });
    let client = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&leave)
        .with_layer(&enter)
        .build();
    Ok((client, peak))
}

/// Deleting 120 managed objects at once starts a drift check for each: they are healed, but
/// never with more than a bounded number of requests in flight at a time.
#[tokio::test]
async fn a_mass_deletion_is_healed_with_bounded_concurrency() -> Result<()> {
    let (client, peak) = concurrency_client(kube::Config::infer().await?)?;
    let w = World::with_agent_client("mass", Some(client)).await?;
    let files: Vec<(String, String)> = (0..120)
        .map(|i| {
            (
                format!("app/cm-{i:03}.yaml"),
                configmap(&format!("cm-{i:03}"), "1"),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let first = w.commit(&refs, w.signing())?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    w.wait_applied("app", &first).await?;
    peak.store(0, std::sync::atomic::Ordering::SeqCst);
    w.configmaps()
        .delete_collection(
            &Default::default(),
            &kube::api::ListParams::default().labels("plumb.dev/sync-name=app"),
        )
        .await?;
    for i in [0, 60, 119] {
        w.wait_value(&format!("cm-{i:03}"), "1").await?;
    }
    let cms = w.configmaps();
    eventually("all 120 ConfigMaps to be back", WAIT, || {
        let cms = cms.clone();
        async move {
            let n = cms
                .list(&kube::api::ListParams::default().labels("plumb.dev/sync-name=app"))
                .await?
                .items
                .len();
            Ok((n == 120).then_some(()))
        }
    })
    .await?;
    let most = peak.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("at most {most} requests in flight");
    // 16 checks, plus the agent's watches, lease and status traffic.
    assert!(most <= 24, "{most} requests were in flight at once");
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn no_more_syncs_than_the_render_slots_hold_a_rendering_at_once() -> Result<()> {
    let w = World::new("slots").await?;
    // Four Syncs (the agent reconciles four at once) of 30 objects each, all started together
    // by the source's first artifact: two render and apply at once, the others wait for a slot.
    let syncs = ["one", "two", "three", "four"];
    let files: Vec<(String, String)> = syncs
        .iter()
        .flat_map(|s| {
            (0..30).map(move |i| {
                (
                    format!("{s}/cm-{i}.yaml"),
                    configmap(&format!("{s}-{i}"), "1"),
                )
            })
        })
        .collect();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let first = w.commit(&files, w.signing())?;
    for s in syncs {
        w.create(w.sync(s).spec(serde_json::json!({ "path": s })))
            .await?;
    }
    w.create_source("range").await?;
    for s in syncs {
        w.wait_applied(s, &first).await?;
    }
    assert_eq!(
        w.gauge("plumb_sync_renderings_held_max").await?,
        Some(plumb_agent::syncs::RENDER_SLOTS as f64)
    );
    assert_eq!(w.gauge("plumb_sync_renderings_held").await?, Some(0.0));
    w.stop().await;
    Ok(())
}

/// A rollout sends no drift check of its own: neither for the events of the apply's own writes
/// (seen during the writes, decided by their registration) nor for the Deployment
/// controller's bookkeeping. Each used to cost a dry-run per written Deployment after the
/// apply, queued in front of real drift: about twice the apply's own dry-runs.
#[tokio::test]
async fn a_rollout_sends_no_drift_check_for_its_own_writes_or_the_revision_annotation() -> Result<()>
{
    const N: usize = 20;
    let (counting, requests) = recording_client(kube::Config::infer().await?)?;
    let w = World::with_agent_client("revision", Some(counting)).await?;
    let names: Vec<String> = (0..N).map(|i| format!("web-{i:02}")).collect();
    let files = |image: &str| -> Vec<(String, String)> {
        names
            .iter()
            .map(|n| {
                (
                    format!("app/{n}.yaml"),
                    deployment(n, 0).replace("nginx:1.27", image),
                )
            })
            .collect()
    };
    let commit = |files: &[(String, String)]| {
        let files: Vec<(&str, &str)> = files
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_str()))
            .collect();
        w.commit(&files, w.signing())
    };
    let first = commit(&files("nginx:1.27"))?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    w.wait_applied("app", &first).await?;
    let deployments: Api<Deployment> = w.api();
    let all_at_revision = |revision: &'static str| {
        let deployments = deployments.clone();
        async move {
            let list = deployments.list(&Default::default()).await?;
            let done = list.items.iter().all(|d| {
                d.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("deployment.kubernetes.io/revision"))
                    .map(String::as_str)
                    == Some(revision)
            });
            Ok((list.items.len() == N && done).then_some(()))
        }
    };
    eventually("the controller to write revision 1", WAIT, || {
        all_at_revision("1")
    })
    .await?;

    // A rollout of all of them: a new image, applied; the controller writes revision 2.
    let second = commit(&files("nginx:1.28"))?;
    w.poke_source().await?;
    w.wait_applied("app", &second).await?;
    eventually("the controller to write revision 2", WAIT, || {
        all_at_revision("2")
    })
    .await?;
    // Proof that the watch of Deployments handled every event so far: a later hand change of
    // one of them is healed (events of a kind come in order), twice.
    for replicas in [3, 4] {
        deployments
            .patch(
                "web-00",
                &PatchParams {
                    field_manager: Some("kubectl-scale".into()),
                    ..Default::default()
                },
                &Patch::Merge(json!({ "spec": { "replicas": replicas } })),
            )
            .await?;
        eventually("the scaled Deployment to be healed", WAIT, || {
            let deployments = deployments.clone();
            async move {
                let web = deployments.get("web-00").await?;
                Ok((web.spec.and_then(|s| s.replicas) == Some(0)).then_some(()))
            }
        })
        .await?;
    }
    // Each apply dry-runs each Deployment once, and each hand change costs its check (three
    // dry-runs: the check, then the forced correction's). A check after each write would add
    // one per Deployment and rollout (66 here before); a loaded API server may deliver a
    // write's event so late that a few are checked anyway.
    let seen = requests.lock().unwrap().clone();
    let dry_runs = seen
        .iter()
        .filter(|r| {
            r.starts_with("PATCH") && r.contains("/deployments/web-") && r.contains("dryRun")
        })
        .count();
    let expected = 2 * N + 2 * 3;
    assert!(
        dry_runs >= 2 * N && dry_runs <= expected + N / 4,
        "{dry_runs} dry-runs of the Deployments, expected {expected} (two applies of {N} and \
         two hand changes)"
    );
    w.stop().await;
    Ok(())
}
