//! Recording an outcome in the Sync's status: applied, failed, history.

use super::*;

/// Marks `artifact` applied with `counts`: revision, generation, Ready, a history entry.
/// Returns the Ready message (`note` is appended to it).
pub(super) fn record_applied(
    st: &mut SyncStatus,
    sync: &Sync,
    artifact: &SourceArtifact,
    counts: plumb_core::ChangeCounts,
    note: &str,
    took: Duration,
) -> String {
    let message = format!("applied revision {}: {counts}{note}", artifact.revision);
    if counts.created + counts.configured + counts.pruned > 0 {
        tracing::info!(revision = %artifact.revision, changes = %counts, "applied");
    } else {
        tracing::debug!(revision = %artifact.revision, "applied, nothing changed");
    }
    st.observed_generation = sync.metadata.generation;
    st.last_applied_revision = Some(artifact.revision.clone());
    st.drift.clear();
    status::set_condition(
        &mut st.conditions,
        types::READY,
        true,
        "ReconciliationSucceeded",
        &message,
        st.observed_generation,
    );
    status::remove_condition(&mut st.conditions, types::RECONCILING);
    status::remove_condition(&mut st.conditions, types::STALLED);
    push_history(st, artifact, "success", counts.to_string(), took, None);
    message
}

/// Records a failure: Ready=False with the reason, history, event, backoff. Nothing else in the
/// status changes: the last applied revision and inventory stay.
pub(super) async fn fail(
    sync: &Sync,
    ctx: &Context,
    mut st: SyncStatus,
    artifact: Option<&SourceArtifact>,
    error: Error,
    started: Instant,
) -> Result<Action> {
    let ns = sync.namespace().unwrap_or_default();
    let name = sync.name_any();
    let key = crate::context::backoff_key(sync);
    ctx.metrics
        .observe_reconcile(ReconcileKind::Sync, Outcome::Failure, started.elapsed());
    let message = error.to_string();
    tracing::warn!(object = %key, error = %message, "reconcile failed");
    for f in error.object_failures() {
        ctx.metrics.object_failed(&format!("{ns}/{name}"), f.kind);
        tracing::debug!(object = %key, target = %f.object, failure = %f.kind, "object failed");
    }
    st.observed_generation = sync.metadata.generation;
    st.last_handled_reconcile_at = requested_at(sync);
    status::set_failed(
        &mut st.conditions,
        error.reason(),
        &message,
        error.is_retryable(),
        st.observed_generation,
    );
    status::remove_condition(&mut st.conditions, types::RECONCILING);
    if let Some(a) = artifact {
        push_history(
            &mut st,
            a,
            "failure",
            String::new(),
            started.elapsed(),
            Some(message.clone()),
        );
    }
    ctx.event(sync, true, error.reason(), &message).await;
    ctx.write_status::<Sync>(&ns, &name, &st).await?;
    Ok(Action::requeue(ctx.backoff(&key)))
}

/// The history line of one hook run.
pub(super) fn hook_line(run: &plumb_kube::HookRun) -> String {
    let mut line = format!(
        "{} wave {} {}: {}",
        run.phase, run.wave, run.key, run.result
    );
    if let Some(note) = &run.message {
        line.push_str(": ");
        line.push_str(note);
    }
    line
}

/// Adds an entry to the history (the newest first; at most the last 10), with the hooks of
/// the apply under way (`pending_hooks`).
pub(super) fn push_history(
    st: &mut SyncStatus,
    artifact: &SourceArtifact,
    result: &str,
    changes: String,
    took: Duration,
    message: Option<String>,
) {
    st.history.insert(
        0,
        HistoryEntry {
            revision: artifact.revision.clone(),
            author: artifact.author.clone(),
            signer: artifact.signer.clone(),
            time: status::now_rfc3339(),
            result: result.to_owned(),
            changes,
            duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            message,
            hooks: std::mem::take(&mut st.pending_hooks),
        },
    );
    st.history.truncate(HISTORY_LIMIT);
}
