//! The Sync reconciler: render the source's artifact, apply it with the engine, record the
//! audit trail, hand the applied objects to the drift tracker.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use plumb_core::{Manifest, SyncId};
use plumb_kube::discovery::Resolved;
use plumb_kube::{Engine, NoProgress, SyncOptions};

use crate::api::{DriftMode, GitSource, HistoryEntry, SourceArtifact, Sync, SyncStatus};
use crate::context::Context;
use crate::drift::{AppliedObject, Desired, Scope, Ticket};
use crate::error::{Error, Result};
use crate::gitsource::{own_artifact, requested_at};
use crate::metrics::{Outcome, ReconcileKind};
use crate::status::{self, types};
use crate::supersede::{Applying, Why};

/// Default re-apply interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(600);
/// Default timeout of health waits.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// How many history entries a Sync keeps.
pub const HISTORY_LIMIT: usize = 10;
/// How soon to look again while a dependency or the source is not ready.
mod apply;
mod helm;
mod inputs;
mod record;
mod slots;

pub(crate) use apply::engine_for;
use apply::{Applied, apply, cancelled, detect_only};
use record::{fail, hook_line, push_history, record_applied};
pub use slots::{RENDER_SLOTS, RenderSlot, RenderSlots};

const NOT_READY_RETRY: Duration = Duration::from_secs(5);

/// Objects one Sync dry-runs or writes at once: the Syncs holding a render slot together fill
/// the agent's object budget.
pub(crate) const OBJECTS_PER_SYNC: usize = crate::context::OBJECT_BUDGET / RENDER_SLOTS;

/// Whether applying `desired` waits inside the engine (for the health of a wave before the
/// next, or for hooks to complete), possibly for as long as the Sync's timeout: such a
/// revision does not keep a render slot while it applies.
pub(crate) fn waits_inside(desired: &[Manifest]) -> bool {
    use plumb_core::phases::{is_hook_annotated, wave_of_object};
    let mut waves = desired.iter().map(|m| wave_of_object(&m.object));
    let first = waves.next();
    desired.iter().any(|m| is_hook_annotated(&m.object)) || waves.any(|w| Some(w) != first)
}

/// Reconciles one Sync. Everything it logs, across every await, is in the span
/// `reconcile{kind=Sync object=...}`.
#[tracing::instrument(name = "reconcile", skip_all, fields(kind = "Sync", object = %crate::context::backoff_key(sync.as_ref())))]
pub async fn reconcile(sync: Arc<Sync>, ctx: Arc<Context>) -> Result<Action> {
    let ns = sync.namespace().unwrap_or_default();
    let name = sync.name_any();
    let skey = (ns.clone(), name.clone());
    let key = crate::context::backoff_key(sync.as_ref());
    if sync.metadata.deletion_timestamp.is_some() {
        return crate::finalize::sync_deleted(&sync, &ctx).await;
    }
    // Before anything else: from now on the agent sees this Sync's deletion.
    crate::finalize::ensure_finalizer(&ctx, sync.as_ref()).await?;
    if sync.spec.suspend {
        ctx.drift.unregister(&skey);
        return Ok(Action::await_change());
    }
    let st = sync.status.clone().unwrap_or_default();
    // An invalid interval is a failure of the Sync like any other: in its status, not only
    // in the agent's log.
    let interval = match duration("interval", sync.spec.interval.as_deref(), DEFAULT_INTERVAL)
        .and_then(|i| duration("timeout", sync.spec.timeout.as_deref(), DEFAULT_TIMEOUT).map(|_| i))
    {
        Ok(i) => i,
        Err(e) => {
            let st = current_status(&ctx, &ns, &name, st).await;
            return fail(&sync, &ctx, st, None, e, Instant::now()).await;
        }
    };
    let mut st = st;

    // Dependencies and the source first: waiting for them is not a failure of this Sync.
    let prepared = match prepare(&sync, &ctx, &ns).await {
        Ok(p) => p,
        Err(Error::NotReady(message)) => {
            let changed =
                status::ready(&st.conditions).map(|c| c.message.as_str()) != Some(message.as_str());
            if changed {
                // Written onto the status as the API server has it: the cached copy may
                // predate this agent's own last write (its inventory and history).
                let mut fresh = current_status(&ctx, &ns, &name, st).await;
                fresh.observed_generation = sync.metadata.generation;
                for type_ in [types::READY, types::RECONCILING] {
                    status::set_condition(
                        &mut fresh.conditions,
                        type_,
                        type_ == types::RECONCILING,
                        "DependencyNotReady",
                        &message,
                        fresh.observed_generation,
                    );
                }
                ctx.write_status::<Sync>(&ns, &name, &fresh).await?;
            }
            return Ok(Action::requeue(NOT_READY_RETRY));
        }
        Err(e) => {
            let st = current_status(&ctx, &ns, &name, st).await;
            return fail(&sync, &ctx, st, None, e, Instant::now()).await;
        }
    };
    let Prepared { record, artifact } = prepared;

    // Steady state: same revision, same spec, no request, and the drift watch holds the
    // applied objects: nothing to do and no requests (the watch reports any change). With
    // drift: detect, outstanding drift is reported, never applied over.
    let request = requested_at(sync.as_ref());
    let seen_with = |st: &SyncStatus| Seen {
        same_target: st.last_applied_revision.as_deref() == Some(artifact.revision.as_str())
            && st.observed_generation == sync.metadata.generation
            && request == st.last_handled_reconcile_at
            && status::is_true(&st.conditions, types::READY),
        detect: sync.spec.drift == DriftMode::Detect,
        registered: ctx.drift.is_registered(&skey),
        clean: ctx.drift.is_clean(&skey),
    };
    let step = next_step(&seen_with(&st));
    if step == Step::Nothing {
        return Ok(Action::requeue(interval));
    }
    if step == Step::DetectOnly {
        // After a restart in detect mode: compare, register, report; write nothing.
        let mut st = current_status(&ctx, &ns, &name, st).await;
        return match detect_only(&sync, &ctx, &ns, &name, record, &artifact, &mut st).await {
            Ok(()) => {
                ctx.write_status::<Sync>(&ns, &name, &st).await?;
                Ok(Action::requeue(interval))
            }
            Err(e) => fail(&sync, &ctx, st, Some(&artifact), e, Instant::now()).await,
        };
    }

    // An apply builds on the inventory and history in the status: take them as the API server
    // has them now. The watch cache may predate this agent's own last write (the apply whose
    // health wait was just cancelled recorded what it wrote).
    match fresh_status(&ctx, &ns, &name).await? {
        Some(fresh) => st = fresh,
        None => return Ok(Action::await_change()),
    }
    // A reconcile queued during the previous apply may run on a Sync from the cache that
    // predates that apply's last status write: the status as it is now may say the revision
    // is applied and Ready. Then there is nothing to do (applying again would add a second
    // history entry for the same revision).
    if next_step(&seen_with(&st)) == Step::Nothing {
        return Ok(Action::requeue(interval));
    }
    let started = Instant::now();
    let applied = apply(&sync, &ctx, &ns, &name, record, &artifact, &mut st).await;
    match applied {
        Ok(Applied::Cancelled(why)) => cancelled(&sync, &ctx, st, &artifact, why, started).await,
        Ok(Applied::Done) => {
            ctx.reset_backoff(&key);
            ctx.metrics
                .observe_reconcile(ReconcileKind::Sync, Outcome::Success, started.elapsed());
            st.last_handled_reconcile_at = request;
            ctx.write_status::<Sync>(&ns, &name, &st).await?;
            Ok(Action::requeue(interval))
        }
        Err(e) => fail(&sync, &ctx, st, Some(&artifact), e, started).await,
    }
}

pub(crate) struct Prepared {
    /// The artifact to render, held from the check to the end of the render.
    pub(crate) record: Arc<crate::artifacts::Artifact>,
    pub(crate) artifact: SourceArtifact,
}

/// What a reconcile found, for [`next_step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    /// The status records this revision applied, for this generation, with no newer reconcile
    /// request, and Ready.
    same_target: bool,
    /// `drift: detect`.
    detect: bool,
    /// The drift watch holds the Sync's objects.
    registered: bool,
    /// ... and has seen none of them drift since.
    clean: bool,
}

/// What a reconcile does once dependencies and the source are ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The cluster holds the revision and the watch vouches for it: no request at all.
    Nothing,
    /// detect mode, after a restart: compare and report, write nothing.
    DetectOnly,
    /// Apply the revision (new revision, spec change, request, drift, or unknown state).
    Apply,
}

/// The decision of [`reconcile`], without I/O: see [`Step`].
fn next_step(seen: &Seen) -> Step {
    match seen {
        Seen {
            same_target: true,
            registered: true,
            detect,
            clean,
        } if *detect || *clean => Step::Nothing,
        Seen {
            same_target: true,
            detect: true,
            ..
        } => Step::DetectOnly,
        _ => Step::Apply,
    }
}

/// The status to write onto: as the API server has it now, else (unreadable) `cached`.
async fn current_status(ctx: &Context, ns: &str, name: &str, cached: SyncStatus) -> SyncStatus {
    match fresh_status(ctx, ns, name).await {
        Ok(Some(fresh)) => fresh,
        _ => cached,
    }
}

/// The status of Sync `ns/name` read from the API server; `None` when the Sync is gone.
pub(crate) async fn fresh_status(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Option<SyncStatus>> {
    let sync = Api::<Sync>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|source| Error::Api {
            context: format!("reading Sync {ns}/{name}"),
            source,
        })?;
    Ok(sync.map(|s| s.status.unwrap_or_default()))
}

/// Checks dependencies and finds the source's artifact.
pub(crate) async fn prepare(sync: &Sync, ctx: &Context, ns: &str) -> Result<Prepared> {
    for dep in &sync.spec.depends_on {
        let dep_ns = dep.namespace.as_deref().unwrap_or(ns);
        if dep_ns != ns && !ctx.config.cross_namespace_refs {
            return Err(Error::Spec(format!(
                "dependsOn names Sync {dep_ns}/{}, in another namespace than {ns}; this agent \
                 refuses cross-namespace references (--no-cross-namespace-refs)",
                dep.name
            )));
        }
        let other = Api::<Sync>::namespaced(ctx.client.clone(), dep_ns)
            .get_opt(&dep.name)
            .await
            .map_err(|source| Error::Api {
                context: format!("reading dependency Sync {dep_ns}/{}", dep.name),
                source,
            })?;
        let ready = other.as_ref().is_some_and(|o| {
            let st = o.status.clone().unwrap_or_default();
            st.observed_generation == o.metadata.generation
                && status::is_true(&st.conditions, types::READY)
        });
        if !ready {
            return Err(Error::NotReady(format!(
                "dependency Sync {dep_ns}/{} is not ready",
                dep.name
            )));
        }
    }
    let src = &sync.spec.source_ref;
    let kind = src.kind.as_deref().unwrap_or("GitSource");
    if kind != "GitSource" && kind != crate::chartsource::KIND {
        return Err(Error::Spec(format!(
            "sourceRef.kind {kind:?} is not supported (GitSource or ChartSource)"
        )));
    }
    let src_ns = src.namespace.as_deref().unwrap_or(ns);
    if src_ns != ns && !ctx.config.cross_namespace_refs {
        return Err(Error::Spec(format!(
            "sourceRef names {kind} {src_ns}/{}, in another namespace than {ns}; this agent \
             refuses cross-namespace references (--no-cross-namespace-refs): create the \
             {kind} in namespace {ns}",
            src.name
        )));
    }
    if kind == crate::chartsource::KIND {
        return prepare_chart(ctx, src_ns, &src.name).await;
    }
    let source = Api::<GitSource>::namespaced(ctx.client.clone(), src_ns)
        .get_opt(&src.name)
        .await
        .map_err(|source| Error::Api {
            context: format!("reading GitSource {src_ns}/{}", src.name),
            source,
        })?
        .ok_or_else(|| {
            Error::NotReady(format!("GitSource {src_ns}/{} does not exist", src.name))
        })?;
    let artifact = source
        .status
        .as_ref()
        .and_then(|s| s.artifact.clone())
        .ok_or_else(|| {
            Error::NotReady(format!(
                "GitSource {src_ns}/{} has no artifact yet",
                src.name
            ))
        })?;
    // Only what this agent fetched and verified itself is applied (the status may have been
    // written by anyone allowed to patch it).
    let record = own_artifact(ctx, &source, &artifact)?;
    Ok(Prepared { record, artifact })
}

/// The artifact of ChartSource `ns/name`, as [`prepare`] gives it.
async fn prepare_chart(ctx: &Context, ns: &str, name: &str) -> Result<Prepared> {
    let source = Api::<crate::api::ChartSource>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|source| Error::Api {
            context: format!("reading ChartSource {ns}/{name}"),
            source,
        })?
        .ok_or_else(|| Error::NotReady(format!("ChartSource {ns}/{name} does not exist")))?;
    let artifact = source
        .status
        .as_ref()
        .and_then(|s| s.artifact.clone())
        .ok_or_else(|| Error::NotReady(format!("ChartSource {ns}/{name} has no artifact yet")))?;
    // Only what this agent fetched itself is applied (the status may have been written by
    // anyone allowed to patch it).
    let (record, artifact) = crate::chartsource::own_artifact(ctx, &source, &artifact)?;
    Ok(Prepared { record, artifact })
}

/// The key under which the supersede tracker follows the Sync's source: (namespace, name),
/// the name of a ChartSource being [`crate::chartsource::store_name`].
pub(crate) fn source_key(src: &crate::api::SourceReference, sync_ns: &str) -> (String, String) {
    let ns = src.namespace.clone().unwrap_or_else(|| sync_ns.to_owned());
    if src.kind.as_deref() == Some(crate::chartsource::KIND) {
        (ns, crate::chartsource::store_name(&src.name))
    } else {
        (ns, src.name.clone())
    }
}

fn duration(field: &str, text: Option<&str>, default: Duration) -> Result<Duration> {
    match text {
        Some(t) => {
            plumb_core::parse_duration(t).map_err(|e| Error::Spec(format!("spec.{field}: {e}")))
        }
        None => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(same_target: bool, detect: bool, registered: bool, clean: bool) -> Seen {
        Seen {
            same_target,
            detect,
            registered,
            clean,
        }
    }

    #[test]
    fn chart_sources_are_tracked_apart_from_git_sources_of_the_same_name() {
        use crate::api::SourceReference;
        let git = SourceReference {
            kind: None,
            name: "app".into(),
            namespace: None,
        };
        let chart = SourceReference {
            kind: Some("ChartSource".into()),
            name: "app".into(),
            namespace: Some("other".into()),
        };
        assert_eq!(source_key(&git, "ns"), ("ns".into(), "app".into()));
        assert_eq!(
            source_key(&chart, "ns"),
            ("other".into(), "chartsource_app".into())
        );
    }

    #[test]
    fn a_revision_with_several_waves_or_a_hook_waits_inside_its_apply() {
        let m = |annotations: serde_json::Value| {
            Manifest::from_value(
                serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "a", "annotations": annotations}}),
                None,
            )
            .expect("valid")
        };
        let wave = |w: &str| m(serde_json::json!({ "argocd.argoproj.io/sync-wave": w }));
        assert!(!waits_inside(&[]));
        assert!(!waits_inside(&[m(serde_json::json!({})), wave("0")]));
        assert!(!waits_inside(&[wave("2"), wave("2")]), "one wave");
        assert!(waits_inside(&[m(serde_json::json!({})), wave("1")]));
        assert!(waits_inside(&[m(
            serde_json::json!({ "helm.sh/hook": "pre-install" })
        )]));
    }

    #[test]
    fn the_next_step_of_a_sync() {
        // Applied, watched and clean: nothing, in either mode.
        assert_eq!(next_step(&seen(true, false, true, true)), Step::Nothing);
        assert_eq!(next_step(&seen(true, true, true, true)), Step::Nothing);
        // Detect mode reports drift, never applies over it.
        assert_eq!(next_step(&seen(true, true, true, false)), Step::Nothing);
        // After a restart (nothing watched) detect mode compares; correct mode applies.
        assert_eq!(next_step(&seen(true, true, false, false)), Step::DetectOnly);
        assert_eq!(next_step(&seen(true, false, false, false)), Step::Apply);
        // Drift outstanding in correct mode: apply.
        assert_eq!(next_step(&seen(true, false, true, false)), Step::Apply);
        // A new revision, spec change or request: apply, in both modes.
        for detect in [false, true] {
            for registered in [false, true] {
                for clean in [false, true] {
                    assert_eq!(
                        next_step(&seen(false, detect, registered, clean)),
                        Step::Apply
                    );
                }
            }
        }
    }
}
