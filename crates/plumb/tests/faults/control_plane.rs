//! Drills 1 and 2: the API server or etcd down in the middle of an apply; and the same revert
//! bug without a fault (a revision failing its health wait).

use super::*;

/// What goes wrong in [`control_plane_fault_mid_apply`].
#[derive(Clone, Copy, Debug)]
enum PlaneFault {
    /// SIGKILL the API server, then start it again.
    KillApiServer,
    /// Stop etcd (SIGTERM), then start it again on its data directory.
    StopEtcd,
}

/// Whether [`control_plane_fault_mid_apply`] fails when drift correction sets objects the
/// failed apply wrote back to the previous revision (a known bug), or only reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NoRevert {
    Assert,
    Report,
}

/// Revision 1: `keep` (50) and `gone` (20). Revision 2 changes `keep`, drops `gone` and adds
/// 200 `new`: 250 writes and 20 prunes. The fault strikes as soon as the first `new` object is
/// written and is repaired once its effect shows.
async fn control_plane_fault_mid_apply(fault: PlaneFault, no_revert: NoRevert) -> Result<()> {
    let _one_at_a_time = PRIVATE_PLANE.lock().await;
    let started = Instant::now();
    let plane = PrivateControlPlane::up().await?;
    eprintln!("private control plane up in {:.1?}", started.elapsed());
    let prefix = match fault {
        PlaneFault::KillApiServer => "apiserver",
        PlaneFault::StopEtcd => "etcd",
    };
    let w = World::private(&plane, prefix).await?;
    let ns = w.ns().to_owned();
    let agent = w.spawn(&format!("{prefix}-agent")).await?;

    let keep1 = objects("keep", 50, "1");
    let gone = objects("gone", 20, "1");
    let first = w.commit(&union(&[keep1.clone(), gone.clone()]), None, &[])?;
    w.create_bystanders(&ns).await?;
    w.create_source().await?;
    w.create_sync(json!({})).await?;
    w.wait_applied(&first).await?;

    let before = w.uids(&ns).await?;
    let events = ConfigMapEvents::start(w.configmaps(&ns));
    let conditions = ConditionLog::start(w.syncs());
    let deletes_before = agent.requests("delete", "configmaps").await?;
    let failures_before = agent.sync_reconciles("failure").await?;
    let writes_before = agent.requests("apply", "configmaps").await?;

    let keep2 = objects("keep", 50, "2");
    let added = objects("new", 200, "2");
    let final_objects = union(&[keep2, added.clone()]);
    let second = w.commit(&final_objects, None, &[])?;
    w.poke_source().await?;
    events.wait_written("new-").await?;

    let fault_at = Instant::now();
    match fault {
        PlaneFault::KillApiServer => plane.kill(Component::ApiServer).await?,
        PlaneFault::StopEtcd => plane.stop(Component::Etcd).await?,
    }
    match fault {
        // The agent notices: its reconcile fails (and counts it; the API server that would
        // take the status is gone).
        PlaneFault::KillApiServer => {
            eventually("the agent to count a failed reconcile", WAIT, || async {
                Ok((agent.sync_reconciles("failure").await? > failures_before).then_some(()))
            })
            .await?;
        }
        // The API server notices: its etcd check fails.
        PlaneFault::StopEtcd => {
            let client = w.client().clone();
            eventually("the API server to report etcd down", WAIT, || {
                let client = client.clone();
                async move {
                    let req = http::Request::get("/readyz/etcd").body(Vec::new())?;
                    let answer =
                        tokio::time::timeout(Duration::from_secs(3), client.request_text(req))
                            .await;
                    Ok(matches!(answer, Ok(Err(_)) | Err(_)).then_some(()))
                }
            })
            .await?;
        }
    }
    // Writes are counted as they are sent: with etcd down they hang, so this stays below the
    // revision's total if the outage caught the apply before its last write.
    let sent_in_outage = agent.requests("apply", "configmaps").await? - writes_before;
    match fault {
        PlaneFault::KillApiServer => plane.start(Component::ApiServer).await?,
        PlaneFault::StopEtcd => plane.start(Component::Etcd).await?,
    }
    eprintln!(
        "{fault:?}: repaired {:.1?} after the fault",
        fault_at.elapsed()
    );

    let sync = w.wait_applied(&second).await?;
    eprintln!(
        "{fault:?}: converged {:.1?} after the fault",
        fault_at.elapsed()
    );

    // Nothing lost: exactly the final revision, with its values.
    assert_eq!(
        w.managed(&ns).await?,
        final_objects,
        "the managed ConfigMaps"
    );
    let st = sync.status.clone().unwrap_or_default();
    assert_eq!(st.inventory.len(), final_objects.len(), "inventory");
    // Nothing pruned wrongly: what stays kept its uid, no DELETED event for it, and the agent
    // sent as many DELETEs as Git removed objects.
    let after = w.uids(&ns).await?;
    let mut kept = names(&keep1);
    kept.extend(["bystander".to_owned(), "impostor".to_owned()]);
    assert_same_uids(&before, &after, &kept)?;
    let deleted = events.deleted_names();
    assert!(
        deleted.is_subset(&names(&gone)),
        "deleted besides the objects Git removed: {:?}",
        deleted.difference(&names(&gone)).collect::<Vec<_>>()
    );
    for name in gone.keys() {
        assert!(!after.contains_key(name), "{name} was not pruned");
    }
    let deletes = agent.requests("delete", "configmaps").await? - deletes_before;
    assert_eq!(deletes, gone.len() as f64, "DELETE requests the agent sent");
    // The fault struck mid-apply: writes of the revision were still to be sent when the
    // outage was confirmed, or some failed (only a failed apply writes more than its 250:
    // its failed writes again, and drift corrections).
    let redone = agent.requests("apply", "configmaps").await? - writes_before - 250.0;
    eprintln!(
        "{fault:?}: {sent_in_outage}/250 writes sent when the outage was confirmed; \
         {redone} writes beyond the revision's 250"
    );
    ensure!(
        sent_in_outage < 250.0 || redone > 0.0,
        "the fault did not land mid-apply: every write of the revision was sent and succeeded"
    );

    // Once an object of the new revision is written, it stays at the new revision.
    let reverted: Vec<(String, Vec<String>)> = keep1
        .keys()
        .chain(added.keys())
        .map(|n| (n.clone(), events.values_of(n)))
        .filter(|(_, values)| values.windows(2).any(|w| w[0] == "2" && w[1] == "1"))
        .collect();
    if !reverted.is_empty() {
        let message = format!(
            "{} objects written at the new revision were set back to the previous one \
             (values seen, in order): {:?}",
            reverted.len(),
            &reverted[..reverted.len().min(5)]
        );
        if no_revert == NoRevert::Assert {
            bail!("{message}");
        }
        eprintln!("{fault:?}: known bug (see a_failed_apply_is_not_reverted_...): {message}");
    }
    // What the Sync said meanwhile: applying the revision, then Ready with it, never Stalled.
    // (While the API server or etcd is down the agent cannot write a status at all: a failed
    // attempt shows on its /metrics, counted above, not in the Sync.)
    conditions
        .wait_for(0, &["Reconciling=True Progressing", &second])
        .await?;
    conditions
        .wait_for(0, &["Ready=True ReconciliationSucceeded", &second])
        .await?;
    let lines = conditions.lines();
    eprintln!("{fault:?}: the Sync's states:\n  {}", lines.join("\n  "));
    assert!(
        lines.iter().all(|l| !l.contains("Stalled=True")),
        "a transient outage stalled the Sync: {lines:#?}"
    );
    assert!(
        st.history.first().is_some_and(|h| h.result == "success"),
        "{:?}",
        st.history
    );

    agent.finish();
    plane.down()?;
    Ok(())
}

#[tokio::test]
async fn api_server_killed_mid_apply_converges_without_wrong_prunes() -> Result<()> {
    control_plane_fault_mid_apply(PlaneFault::KillApiServer, NoRevert::Report).await
}

#[tokio::test]
async fn etcd_restarted_mid_apply_converges_without_wrong_prunes() -> Result<()> {
    control_plane_fault_mid_apply(PlaneFault::StopEtcd, NoRevert::Report).await
}

/// An apply cut off half-way (the API server killed) must not have its writes "corrected" back
/// to the previous revision by the drift watch (found by this drill: the checks deferred during
/// the apply ran against the old registration when the new one could not be made; now the Sync
/// is not healed until a later apply registers it). DESIGN.md: "healing ... always towards the
/// newest revision written".
#[tokio::test]
async fn a_failed_apply_is_not_reverted_to_the_previous_revision() -> Result<()> {
    control_plane_fault_mid_apply(PlaneFault::KillApiServer, NoRevert::Assert).await
}

/// The same bug without any fault, on the shared control plane: a revision whose health wait
/// times out (`wait: true`, a Deployment that cannot schedule) fails after writing its other
/// objects; drift correction then sets them back to the previous revision, and every retry
/// writes them forward again (seen: `keep-000` 2, 1, 2, 1, 2, 1, ... every few seconds).
#[tokio::test]
async fn a_revision_failing_its_health_wait_is_not_reverted() -> Result<()> {
    let w = World::shared("unhealthy", Remote::Local).await?;
    let ns = w.ns().to_owned();
    let agent = w.spawn("unhealthy-agent").await?;
    let first = w.commit(&objects("keep", 1, "1"), None, &[])?;
    w.create_source().await?;
    w.create_sync(json!({ "wait": true, "timeout": "5s" }))
        .await?;
    w.wait_applied(&first).await?;
    let events = ConfigMapEvents::start(w.configmaps(&ns));
    let stuck = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: stuck\nspec:\n  \
                 selector:\n    matchLabels: {app: stuck}\n  template:\n    metadata:\n      \
                 labels: {app: stuck}\n    spec:\n      nodeSelector: {no-such: node}\n      \
                 containers:\n      - {name: c, image: nginx}\n";
    let second = w.commit(
        &objects("keep", 1, "2"),
        None,
        &[("app/stuck.yaml", stuck.as_bytes())],
    )?;
    w.poke_source().await?;
    // Two failed attempts at the revision, each recorded in the history.
    let syncs = w.syncs();
    eventually("two failed health waits", WAIT, || {
        let syncs = syncs.clone();
        let second = second.clone();
        async move {
            let st = syncs.get("app").await?.status.unwrap_or_default();
            let failed = st
                .history
                .iter()
                .filter(|h| h.result == "failure" && h.revision.ends_with(&second))
                .count();
            Ok((failed >= 2).then_some(()))
        }
    })
    .await?;
    let values = events.values_of("keep-000");
    assert!(
        !values.windows(2).any(|w| w == ["2", "1"]),
        "keep-000 was set back to the previous revision: {values:?}"
    );
    agent.finish();
    Ok(())
}
