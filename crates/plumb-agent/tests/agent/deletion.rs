//! Deleting Syncs and GitSources.

use super::*;

#[tokio::test]
async fn a_deleted_sync_with_prune_deletes_its_objects_and_is_healed_no_more() -> Result<()> {
    let (client, requests) = recording_client(kube::Config::infer().await?)?;
    let w = World::with_agent_client("delprune", Some(client)).await?;
    w.commit(
        &[("control/cm.yaml", &configmap("control", "1"))],
        w.signing(),
    )?;
    stuck_in_a_long_wait(&w).await?;
    w.create_sync_spec(
        "control",
        json!({ "sourceRef": { "name": "repo" }, "path": "control", "interval": "1h" }),
    )
    .await?;
    w.wait_value("control", "1").await?;
    let sync = w.syncs().get("app").await?;
    assert!(
        sync.metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == plumb_agent::finalize::FINALIZER),
        "{:?}",
        sync.metadata.finalizers
    );

    // Deleted during its ten-minute health wait: cleaned up at once.
    w.syncs().delete("app", &Default::default()).await?;
    w.wait_sync_gone("app", WAIT).await?;
    let deployments: Api<Deployment> = Api::namespaced(w.client().clone(), w.ns());
    assert!(w.configmaps().get_opt("settings").await?.is_none());
    assert!(deployments.get_opt("stuck").await?.is_none());
    let notes = w.events("app", "ObjectsDeleted").await?;
    assert!(notes.iter().any(|n| n.contains("2 pruned")), "{notes:?}");

    // The deletions were the last word: the drift watch re-created nothing.
    let mark = requests.lock().unwrap().len();
    w.drift_watch_caught_up().await?;
    let after = requests.lock().unwrap()[mark..].to_vec();
    assert!(
        requests_for(&after, "configmaps/settings").is_empty(),
        "{after:#?}"
    );
    assert!(w.configmaps().get_opt("settings").await?.is_none());
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_deleted_sync_without_prune_leaves_its_objects_and_is_healed_no_more() -> Result<()> {
    let (client, requests) = recording_client(kube::Config::infer().await?)?;
    let w = World::with_agent_client("delorphan", Some(client)).await?;
    let first = w.commit(
        &[
            ("app/cm.yaml", &configmap("kept", "1")),
            ("control/cm.yaml", &configmap("control", "1")),
        ],
        w.signing(),
    )?;
    w.create_source("range").await?;
    w.create_sync_spec(
        "app",
        json!({ "sourceRef": { "name": "repo" }, "path": "app", "interval": "1h" }),
    )
    .await?;
    w.create_sync_spec(
        "control",
        json!({ "sourceRef": { "name": "repo" }, "path": "control", "interval": "1h" }),
    )
    .await?;
    w.wait_applied("app", &first).await?;
    w.wait_applied("control", &first).await?;

    w.syncs().delete("app", &Default::default()).await?;
    w.wait_sync_gone("app", WAIT).await?;
    let kept = w.configmaps().get("kept").await?;
    assert_eq!(
        kept.metadata.labels.unwrap_or_default()[plumb_core::SYNC_NAME_LABEL],
        "app",
        "orphaned objects are left as they are, labels included"
    );
    let notes = w.events("app", "ObjectsOrphaned").await?;
    assert!(
        notes.iter().any(|n| n.contains("prune: false")),
        "{notes:?}"
    );

    // An edit of the orphan is not healed: no request for it, and it keeps the edit.
    w.edit_by_hand("kept", "mine now").await?;
    let mark = requests.lock().unwrap().len();
    w.drift_watch_caught_up().await?;
    let after = requests.lock().unwrap()[mark..].to_vec();
    assert!(
        requests_for(&after, "configmaps/kept").is_empty(),
        "the orphan was checked or healed: {after:#?}"
    );
    w.wait_value("kept", "mine now").await?;
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_sync_whose_objects_cannot_be_deleted_gives_up_and_lets_its_namespace_go() -> Result<()> {
    let w = World::new("delstuck").await?;
    let ns = w.ns().to_owned();
    // The Sync applies as an account that may write ConfigMaps but not delete them.
    let objects: Vec<serde_json::Value> = vec![
        json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "writer" } }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": { "name": "writer" },
            "rules": [{ "apiGroups": [""], "resources": ["configmaps"],
                        "verbs": ["get", "list", "watch", "create", "patch", "update"] }]
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": { "name": "writer" },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "writer" },
            "subjects": [{ "kind": "ServiceAccount", "name": "writer", "namespace": ns }]
        }),
    ];
    for o in objects {
        let o: kube::api::DynamicObject = serde_json::from_value(o)?;
        let gvk = kube::api::GroupVersionKind::try_from(o.types.as_ref().unwrap())?;
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
            w.client().clone(),
            &ns,
            &kube::api::ApiResource::from_gvk(&gvk),
        );
        api.create(&PostParams::default(), &o).await?;
    }
    let first = w.commit(
        &[
            ("app/cm.yaml", &configmap("sticky", "1")),
            ("other/cm.yaml", &configmap("other", "1")),
        ],
        w.signing(),
    )?;
    w.create_source("range").await?;
    let spec = |path: &str| {
        json!({ "sourceRef": { "name": "repo" }, "path": path, "prune": true, "interval": "1h",
                "serviceAccountName": "writer" })
    };
    w.create_sync_spec("app", spec("app")).await?;
    w.create_sync_spec("other", spec("other")).await?;
    w.wait_applied("app", &first).await?;
    w.wait_applied("other", &first).await?;

    // Deleting the objects is forbidden: bounded retries, then the Sync goes and says what it
    // left behind.
    w.syncs().delete("app", &Default::default()).await?;
    w.wait_sync_gone("app", WAIT).await?;
    let notes = w.events("app", "DeletionIncomplete").await?;
    assert!(
        notes
            .iter()
            .any(|n| n.contains("sticky") && n.contains("forbidden")),
        "{notes:?}"
    );
    assert!(w.configmaps().get_opt("sticky").await?.is_some());

    // Deleting the namespace is not blocked by a Sync that cannot clean up either.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(w.client().clone());
    namespaces.delete(&ns, &Default::default()).await?;
    eventually(&format!("namespace {ns} to be deleted"), 2 * WAIT, || {
        let namespaces = namespaces.clone();
        let ns = ns.clone();
        async move { Ok(namespaces.get_opt(&ns).await?.is_none().then_some(())) }
    })
    .await?;
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_deleted_git_source_takes_its_artifacts_and_a_new_one_starts_afresh() -> Result<()> {
    let w = World::without_agent("delsource").await?;
    let ns = w.ns().to_owned();
    let first = w.commit(&[("app/cm.yaml", &configmap("settings", "1"))], w.signing())?;
    let agent = w
        .start_agent("gs", |c| c.agent_namespace = Some(ns.clone()))
        .await?;
    w.create_source("range").await?;
    let sources = w.sources();
    eventually("the GitSource to store its artifact", WAIT, || {
        let sources = sources.clone();
        let first = first.clone();
        async move {
            let gs = sources.get("repo").await?;
            Ok(gs
                .status
                .and_then(|s| s.artifact)
                .filter(|a| a.commit == first)
                .map(|_| ()))
        }
    })
    .await?;
    let artifacts = w.cache_dir("gs").join("artifacts").join(&ns).join("repo");
    assert!(
        !files_under(&artifacts).is_empty(),
        "no artifact in {}",
        artifacts.display()
    );
    let ledger_entry = || {
        let cms = w.configmaps();
        let key = format!("{ns}.repo");
        async move {
            Ok::<_, anyhow::Error>(
                cms.get_opt(plumb_agent::gitsource::VERIFIED_LEDGER)
                    .await?
                    .and_then(|c| c.data)
                    .and_then(|mut d| d.remove(&key)),
            )
        }
    };
    assert_eq!(ledger_entry().await?.as_deref(), Some(first.as_str()));

    w.sources().delete("repo", &Default::default()).await?;
    eventually("the GitSource to be gone", WAIT, || {
        let sources = sources.clone();
        async move { Ok(sources.get_opt("repo").await?.is_none().then_some(())) }
    })
    .await?;
    assert!(!artifacts.exists(), "{:?}", files_under(&artifacts));
    assert_eq!(ledger_entry().await?, None);

    // A GitSource of the same name, on another repository (whose history does not hold the
    // first one's verified commit): verified from scratch, not refused as a rollback.
    let other = Repo::local("delsource-other")?;
    let other_wt = other.work_tree()?;
    other_wt.write("app/cm.yaml", configmap("settings", "other"))?;
    let fresh = other_wt.commit("other history", w.signing())?;
    other_wt.push()?;
    let gs: GitSource = serde_json::from_value(json!({
        "apiVersion": "plumb.dev/v1alpha1", "kind": "GitSource",
        "metadata": { "name": "repo" },
        "spec": {
            "url": other.file_url(), "ref": { "branch": "main" }, "interval": "1h",
            "verify": { "mode": "range", "allowedSignersRef": { "name": "signers", "key": "allowed_signers" } }
        }
    }))?;
    sources.create(&PostParams::default(), &gs).await?;
    let (status, reason, message) = eventually("the new GitSource to be fetched", WAIT, || {
        let sources = sources.clone();
        async move { source_condition(&sources, "repo", "Ready").await }
    })
    .await?;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "Succeeded"),
        "{message}"
    );
    assert!(message.contains(&fresh), "{message}");
    let _ = agent.stop().await;
    Ok(())
}
