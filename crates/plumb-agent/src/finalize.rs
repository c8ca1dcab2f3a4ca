//! Deleting Syncs and GitSources. Both carry the finalizer [`FINALIZER`], added by their first
//! reconcile, so that the agent sees every deletion, also one made while it was not running.
//!
//! A deleted **Sync** is unregistered from the drift watch at once (its objects are never
//! healed again). With `prune: true` (and not suspended) the objects of its inventory that
//! still carry its ownership labels are deleted, each only if it is still the object that was
//! checked (uid precondition): the engine's prune, with nothing desired. With `prune: false`,
//! or while suspended, the objects are left as they are, labels included, as Flux does: a Sync
//! of the same name created later adopts them. When deleting fails, it is retried a bounded
//! number of times ([`after_failed_attempt`]; fewer when the namespace itself is being
//! deleted, whose ServiceAccounts and bindings may already be gone); then the agent gives up
//! with a Warning Event naming what is left, and lets the Sync go, so that a namespace's
//! deletion never hangs on it.
//!
//! A deleted **GitSource** loses its artifacts: the directory, the agent's in-memory record and
//! its entry in the verified-commit ledger, so a GitSource created under the same name starts
//! afresh (a new range, a new fetch).
//!
//! Without a running agent nothing removes the finalizer: delete Syncs and GitSources before
//! uninstalling the agent, or remove the finalizer by hand.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use plumb_kube::NoProgress;
use serde_json::json;

use crate::api::{ChartSource, GitSource, Sync};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::gitsource::ledger_remove;

/// The finalizer on every Sync and GitSource the agent reconciled.
pub const FINALIZER: &str = "plumb.dev/finalizer";
/// How many times deleting a Sync's objects is tried before the agent gives up (about half a
/// minute of retries).
pub const DELETE_ATTEMPTS: u32 = 5;
/// The same when the Sync's namespace is being deleted: what lives in it goes anyway, and the
/// account the Sync applies as may be gone already.
pub const DELETE_ATTEMPTS_TERMINATING: u32 = 3;

/// What to do after a failed attempt to clean up after a deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again after this long.
    Retry(Duration),
    /// Stop trying: report what is left and remove the finalizer.
    GiveUp,
}

/// The policy after the `attempts`-th failed attempt (1-based): retries after 2 s, 4 s, 8 s,
/// ..., giving up at [`DELETE_ATTEMPTS`] ([`DELETE_ATTEMPTS_TERMINATING`] in a namespace being
/// deleted).
pub fn after_failed_attempt(attempts: u32, namespace_terminating: bool) -> Next {
    let limit = if namespace_terminating {
        DELETE_ATTEMPTS_TERMINATING
    } else {
        DELETE_ATTEMPTS
    };
    if attempts >= limit {
        return Next::GiveUp;
    }
    Next::Retry(Duration::from_secs(
        2u64 << attempts.saturating_sub(1).min(8),
    ))
}

/// Failed cleanup attempts per object uid (in memory: a restarted agent starts counting again,
/// which is still bounded).
#[derive(Default)]
pub struct Attempts(Mutex<HashMap<String, u32>>);

impl Attempts {
    fn failed(&self, uid: &str) -> u32 {
        let mut map = self.0.lock().expect("attempts lock poisoned");
        let n = map.entry(uid.to_owned()).or_insert(0);
        *n += 1;
        *n
    }

    fn forget(&self, uid: &str) {
        self.0.lock().expect("attempts lock poisoned").remove(uid);
    }
}

fn has_finalizer<K: Resource>(obj: &K) -> bool {
    obj.finalizers().iter().any(|f| f == FINALIZER)
}

fn api_for<K>(ctx: &Context, obj: &K) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default())
}

fn describe<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{} {}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

/// Adds [`FINALIZER`] to `obj` unless it carries it. (Not `kube::runtime::finalizer`: it
/// leaves the rest of the reconcile to the watch event of its patch, which the controllers'
/// predicate filters out, since the generation does not change.)
pub async fn ensure_finalizer<K>(ctx: &Context, obj: &K) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    if has_finalizer(obj) {
        return Ok(());
    }
    // The test makes a concurrent change of the list fail instead of being overwritten.
    let patch = if obj.finalizers().is_empty() {
        json!([
            { "op": "test", "path": "/metadata/finalizers", "value": null },
            { "op": "add", "path": "/metadata/finalizers", "value": [FINALIZER] },
        ])
    } else {
        json!([
            { "op": "test", "path": "/metadata/finalizers", "value": obj.finalizers() },
            { "op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER },
        ])
    };
    let patch = serde_json::from_value(patch).expect("a JSON patch");
    api_for(ctx, obj)
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
        .map_err(|source| Error::Api {
            context: format!("adding the finalizer {FINALIZER} to {}", describe(obj)),
            source,
        })?;
    Ok(())
}

/// Removes [`FINALIZER`] from `obj`: its deletion completes.
async fn remove_finalizer<K>(ctx: &Context, obj: &K) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let Some(i) = obj.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{i}");
    let patch = serde_json::from_value(json!([
        { "op": "test", "path": path, "value": FINALIZER },
        { "op": "remove", "path": path },
    ]))
    .expect("a JSON patch");
    match api_for(ctx, obj)
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::Api {
            context: format!("removing the finalizer {FINALIZER} from {}", describe(obj)),
            source,
        }),
    }
}

/// Reconciles one GitSource: its deletion here, everything else in
/// [`crate::gitsource::reconcile`]. Everything it logs, across every await, is in the span
/// `reconcile{kind=GitSource object=...}`.
#[tracing::instrument(name = "reconcile", skip_all, fields(kind = "GitSource", object = %crate::context::backoff_key(gs.as_ref())))]
pub async fn reconcile_source(gs: Arc<GitSource>, ctx: Arc<Context>) -> Result<Action> {
    if gs.metadata.deletion_timestamp.is_some() {
        return source_deleted(&gs, &ctx).await;
    }
    ensure_finalizer(&ctx, gs.as_ref()).await?;
    crate::gitsource::reconcile(gs, ctx).await
}

/// A GitSource is being deleted: forget and remove its artifacts, then let it go.
async fn source_deleted(gs: &GitSource, ctx: &Context) -> Result<Action> {
    if !has_finalizer(gs) {
        return Ok(Action::await_change());
    }
    let ns = gs.namespace().unwrap_or_default();
    let name = gs.name_any();
    let key = (ns.clone(), name.clone());
    // No Sync gets this source's artifact any more; one rendering it right now fails (and
    // so prunes nothing), since the directory goes below.
    ctx.artifacts.remove(&ns, &name);
    let dir = ctx.artifacts.source_dir(&ns, &name);
    let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("{}: {e}", dir.display()))
        }
        _ => Ok(()),
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    let ledger = ledger_remove(ctx, &ns, &name).await;
    let uid = gs.uid().unwrap_or_default();
    if removed.is_err() || !ledger {
        let what = match &removed {
            Err(e) => format!("removing its artifacts ({e})"),
            Ok(()) => "removing its entry from the verified-commit ledger".to_owned(),
        };
        let attempts = ctx.deletions.failed(&uid);
        match after_failed_attempt(attempts, false) {
            Next::Retry(delay) => {
                tracing::warn!(source = %key.1, %what, attempts, "GitSource deletion: retrying");
                return Ok(Action::requeue(delay));
            }
            Next::GiveUp => {
                let note = format!("gave up {what} after {attempts} attempts");
                ctx.event(gs, true, "DeletionIncomplete", note).await;
            }
        }
    }
    ctx.deletions.forget(&uid);
    ctx.supersede.forget_source(&key);
    remove_finalizer(ctx, gs).await?;
    tracing::info!(source = %format!("{ns}/{name}"), "GitSource deleted; its artifacts are removed");
    Ok(Action::await_change())
}

/// Reconciles one ChartSource: its deletion here (its artifacts are removed), everything
/// else in [`crate::chartsource::reconcile`].
#[tracing::instrument(name = "reconcile", skip_all, fields(kind = "ChartSource", object = %crate::context::backoff_key(cs.as_ref())))]
pub async fn reconcile_chart_source(cs: Arc<ChartSource>, ctx: Arc<Context>) -> Result<Action> {
    if cs.metadata.deletion_timestamp.is_some() {
        if !has_finalizer(cs.as_ref()) {
            return Ok(Action::await_change());
        }
        let ns = cs.namespace().unwrap_or_default();
        let key = crate::chartsource::store_name(&cs.name_any());
        // Syncs rendering it right now fail (and so prune nothing): the directory goes.
        ctx.artifacts.remove(&ns, &key);
        let dir = ctx.artifacts.source_dir(&ns, &key);
        let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("{}: {e}", dir.display()))
            }
            _ => Ok(()),
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = removed {
            // Collected when the agent next stores an artifact of that name; not worth
            // holding the deletion for.
            tracing::warn!(error = %e, "ChartSource deleted; its artifacts could not be removed");
        }
        ctx.supersede.forget_source(&(ns, key));
        remove_finalizer(&ctx, cs.as_ref()).await?;
        return Ok(Action::await_change());
    }
    ensure_finalizer(&ctx, cs.as_ref()).await?;
    crate::chartsource::reconcile(cs, ctx).await
}

/// A Sync is being deleted: stop healing its objects, delete or leave them (`prune`), then let
/// it go. Called by [`crate::syncs::reconcile`].
pub async fn sync_deleted(sync: &Sync, ctx: &Context) -> Result<Action> {
    let ns = sync.namespace().unwrap_or_default();
    let name = sync.name_any();
    let skey = (ns.clone(), name.clone());
    // At once, and a correction already under way finishes first: it could otherwise
    // re-create an object right after its deletion.
    ctx.drift.unregister(&skey);
    ctx.drift.drain(&skey).await;
    ctx.metrics.forget_sync(&format!("{ns}/{name}"));
    if !has_finalizer(sync) {
        return Ok(Action::await_change());
    }
    // The inventory as the API server has it: an apply cancelled by this deletion recorded what
    // it wrote a moment ago, perhaps after the watch cache's copy.
    let Some(st) = crate::syncs::fresh_status(ctx, &ns, &name).await? else {
        return Ok(Action::await_change());
    };
    let uid = sync.uid().unwrap_or_default();
    let (reason, note) = if st.inventory.is_empty() {
        ("Deleted", "Sync deleted; it managed no objects".to_owned())
    } else if !sync.spec.prune {
        (
            "ObjectsOrphaned",
            format!(
                "Sync deleted with prune: false: its {} objects are left in the cluster as they are",
                st.inventory.len()
            ),
        )
    } else if sync.spec.suspend {
        (
            "ObjectsOrphaned",
            format!(
                "Sync deleted while suspended: its {} objects are left in the cluster as they are",
                st.inventory.len()
            ),
        )
    } else {
        match delete_owned(sync, ctx, &ns, &name, &st).await {
            Ok(counts) => (
                "ObjectsDeleted",
                format!("Sync deleted with prune: true: {counts}"),
            ),
            Err(message) => {
                let attempts = ctx.deletions.failed(&uid);
                let terminating = namespace_terminating(ctx, &ns).await;
                match after_failed_attempt(attempts, terminating) {
                    Next::Retry(delay) => {
                        let note = format!(
                            "deleting the Sync's objects failed (attempt {attempts}), retrying in \
                             {}s: {message}",
                            delay.as_secs()
                        );
                        tracing::warn!(sync = %format!("{ns}/{name}"), %note, "Sync deletion");
                        ctx.event(sync, true, "DeletionFailed", note).await;
                        return Ok(Action::requeue(delay));
                    }
                    Next::GiveUp => (
                        "DeletionIncomplete",
                        format!(
                            "gave up deleting the Sync's objects after {attempts} attempts{}; \
                             what could not be deleted is left in the cluster: {message}",
                            if terminating {
                                " (its namespace is being deleted)"
                            } else {
                                ""
                            }
                        ),
                    ),
                }
            }
        }
    };
    let warning = reason == "DeletionIncomplete";
    tracing::info!(sync = %format!("{ns}/{name}"), reason, %note, "Sync deleted");
    ctx.event(sync, warning, reason, note).await;
    ctx.deletions.forget(&uid);
    remove_finalizer(ctx, sync).await?;
    ctx.supersede.forget_sync(&skey);
    Ok(Action::await_change())
}

/// Deletes the objects of the Sync's inventory that still carry its ownership labels (each
/// with its uid as precondition): the engine's prune of an empty desired state. Returns what
/// was done, or what failed.
async fn delete_owned(
    sync: &Sync,
    ctx: &Context,
    ns: &str,
    name: &str,
    st: &crate::api::SyncStatus,
) -> std::result::Result<plumb_core::ChangeCounts, String> {
    let (engine, inventory, mut opts) =
        crate::syncs::engine_for(sync, ctx, ns, name, st).map_err(|e| e.to_string())?;
    opts.prune = true;
    opts.allow_empty = true;
    // The pre-delete and post-delete hooks of the last applied revision run around the prune
    // (the engine takes nothing else of it).
    opts.deleting = true;
    let desired = match last_applied(sync, ctx, ns, st).await {
        Ok(desired) => desired,
        Err(why) => {
            tracing::info!(sync = %format!("{ns}/{name}"), %why, "no delete hooks run");
            Vec::new()
        }
    };
    opts.timeout = sync
        .spec
        .timeout
        .as_deref()
        .and_then(|t| plumb_core::parse_duration(t).ok())
        .unwrap_or(crate::syncs::DEFAULT_TIMEOUT);
    let report = engine
        .sync(desired, &inventory, &opts, &NoProgress)
        .await
        .map_err(|e| e.to_string())?;
    let failed: Vec<String> = report
        .changes
        .entries
        .iter()
        .filter(|c| c.action == plumb_core::Action::Failed)
        .map(|c| format!("{}: {}", c.key, c.message.clone().unwrap_or_default()))
        .collect();
    if !failed.is_empty() {
        return Err(failed.join("; "));
    }
    Ok(report.changes.counts())
}

/// The manifests of the revision the Sync last applied, when its source still holds exactly
/// that revision (verified, as for an apply); else why not.
async fn last_applied(
    sync: &Sync,
    ctx: &Context,
    ns: &str,
    st: &crate::api::SyncStatus,
) -> std::result::Result<Vec<plumb_core::Manifest>, String> {
    let Some(applied) = st.last_applied_revision.as_deref() else {
        return Err("no revision was applied".to_owned());
    };
    let prepared = crate::syncs::prepare(sync, ctx, ns)
        .await
        .map_err(|e| e.to_string())?;
    if prepared.artifact.revision != applied {
        return Err(format!(
            "the source holds revision {}, not the last applied {applied}",
            prepared.artifact.revision
        ));
    }
    crate::artifacts::render(prepared.record, sync.spec.path.clone())
        .await
        .map_err(|e| e.to_string())
}

async fn namespace_terminating(ctx: &Context, ns: &str) -> bool {
    Api::<Namespace>::all(ctx.client.clone())
        .get_opt(ns)
        .await
        .ok()
        .flatten()
        .is_some_and(|n| n.metadata.deletion_timestamp.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_deletions_are_retried_a_bounded_number_of_times() {
        let delays: Vec<Next> = (1..=DELETE_ATTEMPTS)
            .map(|n| after_failed_attempt(n, false))
            .collect();
        assert_eq!(
            delays,
            [2, 4, 8, 16]
                .map(|s| Next::Retry(Duration::from_secs(s)))
                .into_iter()
                .chain([Next::GiveUp])
                .collect::<Vec<_>>()
        );
        assert_eq!(
            after_failed_attempt(DELETE_ATTEMPTS + 3, false),
            Next::GiveUp
        );
    }

    #[test]
    fn a_terminating_namespace_gives_up_sooner() {
        assert_eq!(
            after_failed_attempt(1, true),
            Next::Retry(Duration::from_secs(2))
        );
        assert_eq!(
            after_failed_attempt(DELETE_ATTEMPTS_TERMINATING, true),
            Next::GiveUp
        );
        assert!(matches!(
            after_failed_attempt(DELETE_ATTEMPTS_TERMINATING, false),
            Next::Retry(_)
        ));
    }

    #[test]
    fn attempts_are_counted_per_object_and_forgotten() {
        let a = Attempts::default();
        assert_eq!(a.failed("u1"), 1);
        assert_eq!(a.failed("u1"), 2);
        assert_eq!(a.failed("u2"), 1);
        a.forget("u1");
        assert_eq!(a.failed("u1"), 1);
    }
}
