//! Health waits: healing during them, towards the newest revision, and cancelling them.

use super::*;

#[tokio::test]
async fn a_change_during_a_health_wait_is_healed_at_once_towards_the_new_revision() -> Result<()> {
    let w = World::new("healwait").await?;
    let first = w.commit(&[("app/cm.yaml", &configmap("settings", "1"))], w.signing())?;
    w.create_source("range").await?;
    w.create_sync_spec("app", waiting_sync("10m")).await?;
    w.wait_applied("app", &first).await?;

    // The next revision changes the ConfigMap and adds a Deployment that never becomes
    // healthy: its health wait lasts ten minutes.
    let second = w.commit(
        &[
            ("app/cm.yaml", &configmap("settings", "2")),
            ("app/stuck.yaml", &stuck_deployment("stuck", 1)),
        ],
        w.signing(),
    )?;
    w.poke_source().await?;
    w.wait_applying("app", &second).await?;
    w.wait_value("settings", "2").await?;

    // During the wait: a deleted object comes back and an edit is undone, at once and with the
    // new revision's content.
    w.configmaps()
        .delete("settings", &Default::default())
        .await?;
    w.wait_value("settings", "2").await?;
    w.edit_by_hand("settings", "edited during the wait").await?;
    w.wait_value("settings", "2").await?;
    let st = w.syncs().get("app").await?.status.unwrap_or_default();
    assert!(
        applying(&st, &second),
        "the health wait should still be running: {:#?}",
        st.conditions
    );
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_heal_after_a_failed_health_wait_sets_the_newest_revision_written() -> Result<()> {
    use kube::runtime::watcher;

    let w = World::new("healnewest").await?;
    // Revision A: no replicas, so healthy at once; B: three replicas that never become
    // available, with a short wait.
    let first = w.commit(
        &[("app/web.yaml", &stuck_deployment("web", 0))],
        w.signing(),
    )?;
    w.create_source("range").await?;
    w.create_sync_spec("app", waiting_sync("5s")).await?;
    w.wait_applied("app", &first).await?;
    let second = w.commit(
        &[("app/web.yaml", &stuck_deployment("web", 3))],
        w.signing(),
    )?;
    w.poke_source().await?;
    let syncs = w.syncs();
    eventually("B's health wait to time out", WAIT, || {
        let syncs = syncs.clone();
        let second = second.clone();
        async move {
            let st = syncs.get("app").await?.status.unwrap_or_default();
            let failed = plumb_agent::status::ready(&st.conditions)
                .is_some_and(|c| c.status == "False" && c.reason == "HealthCheckFailed");
            let attempted = st
                .last_attempted_revision
                .is_some_and(|r| r.ends_with(&second));
            Ok((failed && attempted).then_some(()))
        }
    })
    .await?;

    // Every value the Deployment's replicas take from now on.
    let deployments: Api<Deployment> = Api::namespaced(w.client().clone(), w.ns());
    let values = std::sync::Arc::new(std::sync::Mutex::new(Vec::<i32>::new()));
    let (synced_tx, synced_rx) = oneshot::channel::<()>();
    let recorder = {
        let values = values.clone();
        let stream = watcher(
            deployments.clone(),
            watcher::Config::default().fields("metadata.name=web"),
        );
        tokio::spawn(async move {
            use futures::StreamExt;
            let mut stream = std::pin::pin!(stream);
            let mut synced = Some(synced_tx);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = synced.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(watcher::Event::Apply(d)) if synced.is_none() => {
                        if let Some(r) = d.spec.and_then(|s| s.replicas) {
                            values.lock().unwrap().push(r);
                        }
                    }
                    _ => {}
                }
            }
        })
    };
    synced_rx.await?;
    deployments
        .patch_scale(
            "web",
            &PatchParams {
                field_manager: Some("kubectl".into()),
                ..Default::default()
            },
            &Patch::Merge(json!({ "spec": { "replicas": 7 } })),
        )
        .await?;
    let seen = eventually("the scale to be healed", WAIT, || {
        let values = values.clone();
        async move {
            let v = values.lock().unwrap().clone();
            let healed = v.iter().skip_while(|r| **r != 7).skip(1).any(|r| *r != 7);
            Ok(healed.then_some(v))
        }
    })
    .await?;
    recorder.abort();
    // Status updates repeat a value: the sequence of distinct values is what matters.
    let mut after_scale: Vec<i32> = seen.iter().copied().skip_while(|r| *r != 7).collect();
    after_scale.dedup();
    assert_eq!(
        after_scale.get(1),
        Some(&3),
        "the scale must be healed to B's replicas (3), never A's (0): {seen:?}"
    );
    assert!(
        !after_scale.contains(&0),
        "the Deployment was set back to revision A: {seen:?}"
    );
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_new_revision_cancels_a_running_health_wait() -> Result<()> {
    let w = World::new("cancelrev").await?;
    let broken = stuck_in_a_long_wait(&w).await?;
    // The revert: the broken Deployment goes; applied long before the ten minutes are over.
    w.wt().remove("app/stuck.yaml")?;
    let revert = w.commit(&[("app/cm.yaml", &configmap("settings", "2"))], w.signing())?;
    w.poke_source().await?;
    w.wait_applied("app", &revert).await?;
    w.wait_value("settings", "2").await?;
    let deployments: Api<Deployment> = Api::namespaced(w.client().clone(), w.ns());
    assert!(deployments.get_opt("stuck").await?.is_none(), "not pruned");
    let notes = w.events("app", "HealthCheckCancelled").await?;
    assert!(
        notes
            .iter()
            .any(|n| n.contains(&broken) && n.contains("new revision") && n.contains(&revert)),
        "{notes:?}"
    );
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_spec_change_cancels_a_running_health_wait() -> Result<()> {
    let w = World::new("cancelspec").await?;
    let first = stuck_in_a_long_wait(&w).await?;
    // Turning the wait off: the revision is applied again at once, without waiting.
    let sync = w
        .syncs()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "wait": false } })),
        )
        .await?;
    let sync_now = w.wait_applied("app", &first).await?;
    assert_eq!(
        sync_now.status.unwrap_or_default().observed_generation,
        sync.metadata.generation
    );
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_reconcile_request_cancels_a_running_health_wait() -> Result<()> {
    let (client, requests) = recording_client(kube::Config::infer().await?)?;
    let w = World::with_agent_client("cancelreq", Some(client)).await?;
    stuck_in_a_long_wait(&w).await?;
    requests.lock().unwrap().clear();
    w.request_reconcile("app").await?;
    // A request applies everything again, each object dry-run first: long before the running
    // wait's ten minutes are over.
    eventually(
        "the requested apply to dry-run the Deployment",
        WAIT,
        || {
            let requests = requests.clone();
            async move {
                let seen = requests.lock().unwrap().clone();
                Ok(requests_for(&seen, "deployments/stuck")
                    .iter()
                    .any(|r| r.starts_with("PATCH") && r.contains("dryRun"))
                    .then_some(()))
            }
        },
    )
    .await?;
    w.stop().await;
    Ok(())
}
