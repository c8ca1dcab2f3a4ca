//! Applying: signed commits applied and drift healed, detect mode, broken revisions, long
//! applies, conflicts between Syncs, and what the status reports.

use super::*;

#[tokio::test]
async fn agent_applies_signed_commits_and_heals_drift() -> Result<()> {
    let w = World::new("agent").await?;
    let first = w.commit(
        &[
            ("app/cm.yaml", &configmap("settings", "v1")),
            ("app/web.yaml", &deployment("web", 2)),
        ],
        w.signing(),
    )?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    let sync = w.wait_applied("app", &first).await?;
    let st = sync.status.unwrap();
    assert_eq!(st.history.len(), 1);
    assert!(
        st.history[0]
            .signer
            .as_deref()
            .unwrap()
            .contains("alice@example.com"),
        "{:?}",
        st.history
    );
    assert_eq!(st.inventory.len(), 2, "{:?}", st.inventory);
    w.wait_value("settings", "v1").await?;

    // A manual edit of a managed field is undone.
    w.edit_by_hand("settings", "edited by hand").await?;
    w.wait_value("settings", "v1").await?;

    // A deleted object comes back.
    w.configmaps()
        .delete("settings", &Default::default())
        .await?;
    w.wait_value("settings", "v1").await?;

    // kubectl scale is undone.
    let deployments: Api<Deployment> = Api::namespaced(w.client().clone(), w.ns());
    deployments
        .patch_scale(
            "web",
            &PatchParams {
                field_manager: Some("kubectl".into()),
                ..Default::default()
            },
            &Patch::Merge(json!({ "spec": { "replicas": 5 } })),
        )
        .await?;
    eventually("the Deployment to be scaled back to 2", WAIT, || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get("web").await?;
            Ok((d.spec.and_then(|s| s.replicas) == Some(2)).then_some(()))
        }
    })
    .await?;

    // A new signed commit is applied; removing a file prunes its object.
    w.wt().remove("app/web.yaml")?;
    let second = w.commit(
        &[("app/cm.yaml", &configmap("settings", "v2"))],
        w.signing(),
    )?;
    w.poke_source().await?;
    let sync = w.wait_applied("app", &second).await?;
    w.wait_value("settings", "v2").await?;
    assert!(
        deployments.get_opt("web").await?.is_none(),
        "web must be pruned"
    );
    let st = sync.status.unwrap();
    assert_eq!(st.history.len(), 2);
    assert_eq!(st.history[0].result, "success");

    // An unsigned commit is never applied: the source says why, the cluster keeps v2.
    let unsigned = w.commit(
        &[("app/cm.yaml", &configmap("settings", "v3-unsigned"))],
        &Signing::None,
    )?;
    w.poke_source().await?;
    let sources = w.sources();
    let message = eventually("the GitSource to refuse the unsigned commit", WAIT, || {
        let sources = sources.clone();
        async move {
            let gs = sources.get("repo").await?;
            let st = gs.status.unwrap_or_default();
            Ok(st
                .conditions
                .iter()
                .find(|c| {
                    c.type_ == "Ready" && c.status == "False" && c.reason == "VerificationFailed"
                })
                .map(|c| c.message.clone()))
        }
    })
    .await?;
    assert!(
        message.contains(&unsigned) && message.contains("unsigned"),
        "{message}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.wait_value("settings", "v2").await?;
    let st = w.syncs().get("app").await?.status.unwrap();
    assert!(st.last_applied_revision.unwrap().ends_with(&second));

    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn detect_mode_reports_drift_and_changes_nothing() -> Result<()> {
    let w = World::new("detect").await?;
    let first = w.commit(
        &[("app/cm.yaml", &configmap("watched", "from-git"))],
        w.signing(),
    )?;
    w.create_source("head").await?;
    w.create_sync("watch", "detect").await?;
    w.wait_applied("watch", &first).await?;

    w.edit_by_hand("watched", "edited").await?;
    let syncs = w.syncs();
    let drift = eventually("the Sync to report the drift", WAIT, || {
        let syncs = syncs.clone();
        async move {
            let st = syncs.get("watch").await?.status.unwrap_or_default();
            Ok((!st.drift.is_empty()).then_some(st.drift))
        }
    })
    .await?;
    assert_eq!(drift[0].id, format!("ConfigMap/{}/watched", w.ns()));
    assert_eq!(drift[0].reason, "modified");
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.wait_value("watched", "edited").await?;

    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_broken_revision_keeps_the_last_applied_state() -> Result<()> {
    let w = World::new("broken").await?;
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

    // b removed, and a file that does not parse: nothing is applied, nothing pruned.
    w.wt().remove("app/b.yaml")?;
    w.commit(
        &[
            ("app/a.yaml", &configmap("a", "2")),
            ("app/bad.yaml", "kind: [unclosed\n"),
        ],
        w.signing(),
    )?;
    w.poke_source().await?;
    let syncs = w.syncs();
    let message = eventually("the Sync to report the render failure", WAIT, || {
        let syncs = syncs.clone();
        async move {
            let st = syncs.get("app").await?.status.unwrap_or_default();
            Ok(st
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "RenderFailed")
                .map(|c| c.message.clone()))
        }
    })
    .await?;
    assert!(message.contains("bad.yaml"), "{message}");
    w.wait_value("a", "1").await?;
    assert!(
        w.configmaps().get_opt("b").await?.is_some(),
        "nothing may be pruned after a failure"
    );
    let st = w.syncs().get("app").await?.status.unwrap();
    assert!(st.last_applied_revision.unwrap().ends_with(&first));
    assert_eq!(st.history[0].result, "failure");

    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_long_apply_shows_as_reconciling_with_its_revision() -> Result<()> {
    let w = World::new("progress").await?;
    // Pods that no node accepts: the Deployment never becomes Available, so the health wait
    // holds the apply open.
    let stuck = deployment("stuck", 1).replace(
        "      containers:",
        "      nodeSelector: {plumb.dev/nowhere: \"true\"}\n      containers:",
    );
    let first = w.commit(&[("app/stuck.yaml", &stuck)], w.signing())?;
    w.create_source("range").await?;
    w.create_sync_spec(
        "app",
        json!({ "sourceRef": { "name": "repo" }, "path": "app", "wait": true, "timeout": "2m" }),
    )
    .await?;
    let syncs = w.syncs();
    eventually("the Sync to say it is applying the commit", WAIT, || {
        let syncs = syncs.clone();
        let first = first.clone();
        async move {
            let st = syncs.get("app").await?.status.unwrap_or_default();
            let reconciling = st.conditions.iter().find(|c| c.type_ == "Reconciling");
            let applying = reconciling.is_some_and(|c| {
                c.status == "True" && c.reason == "Progressing" && c.message.contains(&first)
            });
            let attempted = st
                .last_attempted_revision
                .as_deref()
                .is_some_and(|r| r.ends_with(&first));
            let ready = plumb_agent::status::is_true(&st.conditions, "Ready");
            Ok((applying && attempted && !ready).then_some(()))
        }
    })
    .await?;
    // The reconcile waits for health for minutes; a graceful stop cancels the wait.
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_edit_during_an_apply_is_healed_after_it() -> Result<()> {
    let w = World::new("during").await?;
    let first = w.commit(&[("app/cm.yaml", &configmap("steady", "1"))], w.signing())?;
    w.create_source("range").await?;
    w.create_sync_spec(
        "app",
        json!({ "sourceRef": { "name": "repo" }, "path": "app", "wait": true, "timeout": "2m" }),
    )
    .await?;
    w.wait_applied("app", &first).await?;

    // The next revision adds a Deployment whose pods fit only a node carrying a label no node
    // has yet: the apply (with its health wait) stays open until the test labels a node.
    let label = format!("plumb.dev/test-{}", w.ns());
    let held = deployment("held", 1).replace(
        "      containers:",
        &format!("      nodeSelector: {{{label}: \"true\"}}\n      containers:"),
    );
    let second = w.commit(&[("app/held.yaml", &held)], w.signing())?;
    w.poke_source().await?;
    let syncs = w.syncs();
    eventually("the Sync to start applying the second commit", WAIT, || {
        let syncs = syncs.clone();
        let second = second.clone();
        async move {
            let st = syncs.get("app").await?.status.unwrap_or_default();
            Ok(st
                .conditions
                .iter()
                .any(|c| c.type_ == "Reconciling" && c.message.contains(&second))
                .then_some(()))
        }
    })
    .await?;
    w.edit_by_hand("steady", "edited mid-apply").await?;
    // Give the edit's watch event time to reach the agent while the apply is still open.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(w.client().clone());
    let node = nodes
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .next()
        .and_then(|n| n.metadata.name)
        .ok_or_else(|| anyhow::anyhow!("the cluster has no nodes"))?;
    let set_label = |value: Option<&str>| json!({ "metadata": { "labels": { &label: value } } });
    nodes
        .patch(
            &node,
            &PatchParams::default(),
            &Patch::Merge(set_label(Some("true"))),
        )
        .await?;
    let applied = w.wait_applied("app", &second).await;
    nodes
        .patch(
            &node,
            &PatchParams::default(),
            &Patch::Merge(set_label(None)),
        )
        .await?;
    let sync = applied?;
    assert!(
        !sync.status.unwrap_or_default().history[0]
            .changes
            .is_empty(),
        "the second revision was applied"
    );
    // Nothing else will apply this Sync (interval 1h): the deferred drift check must.
    w.wait_value("steady", "1").await?;
    w.stop().await;
    Ok(())
}

/// A second Sync with the same manifests does not take over (and then fight over) the first
/// one's objects: it reports the conflict naming the owner, until it adopts them explicitly.
#[tokio::test]
async fn a_second_sync_claiming_the_same_objects_is_refused_unless_it_adopts() -> Result<()> {
    let w = World::new("claim").await?;
    let first = w.commit(
        &[("app/cm.yaml", &configmap("settings", "v1"))],
        w.signing(),
    )?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    w.wait_applied("app", &first).await?;
    w.create_sync("copy", "correct").await?;
    let syncs = w.syncs();
    let owner = format!("owned by sync {}/app", w.ns());
    eventually("the second Sync to report the conflict", WAIT, || {
        let (syncs, owner) = (syncs.clone(), owner.clone());
        async move {
            Ok(ready_condition(&syncs, "copy")
                .await?
                .filter(|(status, reason, message)| {
                    status == "False" && reason == "PlanFailed" && message.contains(&owner)
                })
                .map(|_| ()))
        }
    })
    .await?;
    let cm = w.configmaps().get("settings").await?;
    assert_eq!(
        cm.metadata.labels.unwrap_or_default()["plumb.dev/sync-name"],
        "app"
    );

    w.syncs()
        .patch(
            "copy",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "adopt": true } })),
        )
        .await?;
    w.wait_applied("copy", &first).await?;
    let cm = w.configmaps().get("settings").await?;
    assert_eq!(
        cm.metadata.labels.unwrap_or_default()["plumb.dev/sync-name"],
        "copy"
    );
    w.stop().await;
    Ok(())
}

/// Invalid durations (values the CRD's pattern lets through but that do not parse) are
/// reported in the status, not only in the agent's log, and nothing is applied.
#[tokio::test]
async fn invalid_durations_are_reported_in_the_status() -> Result<()> {
    let w = World::new("durations").await?;
    w.commit(
        &[("app/cm.yaml", &configmap("settings", "v1"))],
        w.signing(),
    )?;
    let gs: GitSource = serde_json::from_value(json!({
        "apiVersion": "plumb.dev/v1alpha1", "kind": "GitSource",
        "metadata": { "name": "bad-interval" },
        "spec": { "url": w.url(), "interval": "99999999999999999999h" }
    }))?;
    w.sources().create(&PostParams::default(), &gs).await?;
    let (reason, message) = wait_source_refused(&w.sources(), "bad-interval").await?;
    assert_eq!(reason, "InvalidSpec", "{message}");
    assert!(message.contains("spec.interval"), "{message}");

    w.create_source("range").await?;
    w.create_sync_spec(
        "app",
        json!({ "sourceRef": { "name": "repo" }, "path": "app", "timeout": "99999999999999999999s" }),
    )
    .await?;
    let syncs = w.syncs();
    eventually("the Sync to report its timeout", WAIT, || {
        let syncs = syncs.clone();
        async move {
            Ok(ready_condition(&syncs, "app")
                .await?
                .filter(|(status, reason, message)| {
                    status == "False" && reason == "InvalidSpec" && message.contains("spec.timeout")
                })
                .map(|_| ()))
        }
    })
    .await?;
    assert!(w.configmaps().get_opt("settings").await?.is_none());
    w.stop().await;
    Ok(())
}

/// An apply that fails after earlier stages were written says so (not "dry-run failed,
/// nothing was applied"), ends Reconciling, and its history entry names the signer.
#[tokio::test]
async fn a_failure_after_written_stages_says_what_was_written() -> Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

    let w = World::new("partial").await?;
    let group = format!("{}.plumb.test", w.ns());
    let crd = plumb_testsupport::kube::widget_crd_yaml(&group);
    // The Widget can only be validated once its CRD exists, i.e. after the first stage.
    let widget = format!(
        "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: big\n"
    );
    let commit = w.commit(
        &[("app/crd.yaml", &crd), ("app/widget.yaml", &widget)],
        w.signing(),
    )?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    let syncs = w.syncs();
    let failed = eventually("the Sync to fail on the Widget", WAIT, || {
        let syncs = syncs.clone();
        async move {
            let s = syncs.get("app").await?;
            let st = s.status.clone().unwrap_or_default();
            Ok(plumb_agent::status::ready(&st.conditions)
                .is_some_and(|c| c.status == "False" && c.reason != "DependencyNotReady")
                .then_some(s))
        }
    })
    .await?;
    let st = failed.status.unwrap_or_default();
    let ready = plumb_agent::status::ready(&st.conditions).expect("Ready");
    assert_eq!(ready.reason, "ApplyFailed", "{}", ready.message);
    assert!(
        ready.message.contains("1 object(s) failed to apply")
            && ready.message.contains("1 written")
            && ready.message.contains("Widget")
            && !ready.message.contains("nothing was applied"),
        "{}",
        ready.message
    );
    assert!(
        !st.conditions.iter().any(|c| c.type_ == "Reconciling"),
        "{:?}",
        st.conditions
    );
    // The Widget itself is invalid: retrying the same revision cannot help.
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == "Stalled" && c.status == "True")
    );
    let entry = &st.history[0];
    assert_eq!(entry.result, "failure");
    assert!(entry.revision.ends_with(&commit));
    assert!(
        entry
            .signer
            .as_deref()
            .is_some_and(|s| s.contains("alice@example.com")),
        "{entry:?}"
    );
    let crds: Api<CustomResourceDefinition> = Api::all(w.client().clone());
    let _ = crds
        .delete(&format!("widgets.{group}"), &Default::default())
        .await;
    w.stop().await;
    Ok(())
}

/// A fetch that finds nothing new still verifies (and records the signer of) the tip, so a
/// later apply of the same revision keeps the signer in its history entry.
#[tokio::test]
async fn a_retry_of_the_same_revision_keeps_the_signer_in_history() -> Result<()> {
    let w = World::new("resigned").await?;
    let first = w.commit(
        &[("app/cm.yaml", &configmap("settings", "v1"))],
        w.signing(),
    )?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    w.wait_applied("app", &first).await?;
    // The source fetches again: nothing new in range mode.
    let before = w
        .sources()
        .get("repo")
        .await?
        .status
        .and_then(|s| s.last_fetch_time);
    w.poke_source().await?;
    let sources = w.sources();
    eventually("the GitSource to fetch again", WAIT, || {
        let (sources, before) = (sources.clone(), before.clone());
        async move {
            let st = sources.get("repo").await?.status.unwrap_or_default();
            Ok((st.last_fetch_time != before).then_some(()))
        }
    })
    .await?;
    let artifact = w
        .sources()
        .get("repo")
        .await?
        .status
        .unwrap_or_default()
        .artifact;
    assert!(
        artifact
            .as_ref()
            .and_then(|a| a.signer.as_deref())
            .is_some_and(|s| s.contains("alice")),
        "{artifact:?}"
    );
    // And the Sync applies the same revision again on request.
    let patch = json!({ "metadata": { "annotations": {
        RECONCILE_REQUEST_ANNOTATION: plumb_agent::status::now_rfc3339()
    } } });
    w.syncs()
        .patch("app", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let syncs = w.syncs();
    let st = eventually("a second history entry", WAIT, || {
        let syncs = syncs.clone();
        async move {
            let st = syncs.get("app").await?.status.unwrap_or_default();
            Ok((st.history.len() >= 2).then_some(st))
        }
    })
    .await?;
    assert!(
        st.history[0]
            .signer
            .as_deref()
            .is_some_and(|s| s.contains("alice")),
        "{:?}",
        st.history[0]
    );
    w.stop().await;
    Ok(())
}

/// A new revision's artifact links the files the commit did not change from the artifact it
/// replaces (the same inode, never written again), and writes the changed ones; what the
/// Sync applies is the new revision's.
#[tokio::test]
async fn a_new_revision_writes_only_the_files_its_commit_changed() -> Result<()> {
    let w = World::new("reuse").await?;
    let first = w.commit(
        &[
            ("app/cm.yaml", &configmap("settings", "v1")),
            ("app/other.yaml", &configmap("other", "same")),
        ],
        w.signing(),
    )?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    w.wait_applied("app", &first).await?;
    let artifacts = w
        .cache_dir("test-reuse")
        .join("artifacts")
        .join(w.ns())
        .join("repo");
    let artifact_of = |commit: &str| -> Result<std::path::PathBuf> {
        std::fs::read_dir(&artifacts)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{commit}.")))
            })
            .ok_or_else(|| anyhow::anyhow!("no artifact of {commit} in {}", artifacts.display()))
    };
    let ino = |path: &std::path::Path| -> Result<u64> {
        use std::os::unix::fs::MetadataExt as _;
        Ok(std::fs::symlink_metadata(path)?.ino())
    };
    let old = artifact_of(&first)?;
    let (old_other, old_cm) = (
        ino(&old.join("app/other.yaml"))?,
        ino(&old.join("app/cm.yaml"))?,
    );

    let second = w.commit(
        &[("app/cm.yaml", &configmap("settings", "v2"))],
        w.signing(),
    )?;
    w.poke_source().await?;
    w.wait_applied("app", &second).await?;
    w.wait_value("settings", "v2").await?;
    let new = artifact_of(&second)?;
    assert_eq!(
        ino(&new.join("app/other.yaml"))?,
        old_other,
        "unchanged: linked"
    );
    assert_ne!(ino(&new.join("app/cm.yaml"))?, old_cm, "changed: written");
    assert!(
        std::fs::read_to_string(new.join("app/cm.yaml"))?.contains("v2"),
        "the changed file holds the new content"
    );
    Ok(())
}
