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
use crate::drift::{AppliedObject, ApplyPhase, Desired, Scope, Ticket};
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
const NOT_READY_RETRY: Duration = Duration::from_secs(5);

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
    let seen = Seen {
        same_target: st.last_applied_revision.as_deref() == Some(artifact.revision.as_str())
            && st.observed_generation == sync.metadata.generation
            && request == st.last_handled_reconcile_at
            && status::is_true(&st.conditions, types::READY),
        detect: sync.spec.drift == DriftMode::Detect,
        registered: ctx.drift.is_registered(&skey),
        clean: ctx.drift.is_clean(&skey),
    };
    let step = next_step(&seen);
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
    let started = Instant::now();
    let phase = ctx.drift.begin_apply(&skey).await;
    let applied = apply(&sync, &ctx, &ns, &name, record, &artifact, &mut st, phase).await;
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

struct Prepared {
    /// The artifact to render, held from the check to the end of the render.
    record: Arc<crate::artifacts::Artifact>,
    artifact: SourceArtifact,
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
async fn prepare(sync: &Sync, ctx: &Context, ns: &str) -> Result<Prepared> {
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
    if src.kind.as_deref().is_some_and(|k| k != "GitSource") {
        return Err(Error::Spec(format!(
            "sourceRef.kind {:?} is not supported (only GitSource)",
            src.kind
        )));
    }
    let src_ns = src.namespace.as_deref().unwrap_or(ns);
    if src_ns != ns && !ctx.config.cross_namespace_refs {
        return Err(Error::Spec(format!(
            "sourceRef names GitSource {src_ns}/{}, in another namespace than {ns}; this agent \
             refuses cross-namespace references (--no-cross-namespace-refs): create the \
             GitSource in namespace {ns}",
            src.name
        )));
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

/// How an apply ended, if not in an error.
enum Applied {
    /// Applied (and healthy, with `wait`); the status is filled in.
    Done,
    /// Written, but the health wait was cancelled: it no longer mattered.
    Cancelled(Why),
}

/// Renders and applies; fills the status on success. `phase` marks the writes for the drift
/// watch: it ends (after the written objects are registered) before any health wait.
#[allow(clippy::too_many_arguments)]
async fn apply(
    sync: &Sync,
    ctx: &Context,
    ns: &str,
    name: &str,
    record: Arc<crate::artifacts::Artifact>,
    artifact: &SourceArtifact,
    st: &mut SyncStatus,
    phase: ApplyPhase,
) -> Result<Applied> {
    let started = Instant::now();
    st.last_attempted_revision = Some(artifact.revision.clone());
    // Held for the whole render; its digest is checked on disk first.
    let desired = crate::artifacts::render(record, sync.spec.path.clone()).await?;
    let rendered = digest(&desired);

    // A new revision that renders exactly what was applied (a commit elsewhere in the
    // repository), with the same spec, no reconcile request, and the drift watch reporting
    // the objects unchanged since: the cluster already holds this revision. Record it without
    // a request per object.
    let skey = (ns.to_owned(), name.to_owned());
    let unrequested = requested_at(sync) == st.last_handled_reconcile_at;
    if st.observed_generation == sync.metadata.generation
        && unrequested
        && status::is_true(&st.conditions, types::READY)
        && ctx
            .drift
            .clean_rendering(&skey)
            .is_some_and(|(revision, digest)| {
                // The status must be that of the registered apply: a reconcile of a Sync read
                // from the cache before that apply's own status write must not overwrite it.
                st.last_applied_revision.as_deref() == Some(revision.as_str()) && digest == rendered
            })
    {
        let counts = plumb_core::ChangeCounts {
            unchanged: st.inventory.len(),
            ..Default::default()
        };
        let note = " (renders the objects already applied)";
        // The registration now stands for this revision: a later reconcile of it (e.g. from a
        // cached Sync that predates this status write) compares with the newest revision.
        if let Some(from) = st.last_applied_revision.clone() {
            ctx.drift
                .advance(&skey, &from, &rendered, &artifact.revision);
        }
        record_applied(st, sync, artifact, counts, note, started.elapsed());
        return Ok(Applied::Done);
    }
    let timeout = duration("timeout", sync.spec.timeout.as_deref(), DEFAULT_TIMEOUT)?;

    // Say what is being applied before applying it: a long apply shows as Reconciling with
    // its revision (`kubectl get syncs`), not as the previous result.
    status::set_condition(
        &mut st.conditions,
        types::RECONCILING,
        true,
        "Progressing",
        format!("applying revision {}", artifact.revision),
        sync.metadata.generation,
    );
    ctx.write_status::<Sync>(ns, name, st).await?;

    let (client, engine, inventory, mut opts) = engine_for(sync, ctx, ns, name, st)?;
    // Objects the watch vouches for and whose manifest did not change need no dry-run; an
    // explicit reconcile request checks everything.
    if unrequested {
        opts.vouched = ctx.drift.vouched(&skey);
    }
    let report = engine.sync(desired, &inventory, &opts, &NoProgress).await?;
    st.inventory = status::inventory_items(&report.inventory);
    let counts = report.changes.counts();

    // The writes are over: what they wrote is registered now (all of it, or after a partial
    // failure the objects that were written), so that a change made during the health wait
    // is healed at once, and towards this revision, never an older one.
    let applied_from = (artifact.revision.clone(), rendered);
    if let Err(e) = register_drift(sync, ctx, client, &report, applied_from, phase.ticket()).await {
        // This revision was (partly) written but cannot be registered (e.g. the API server
        // went away mid-apply): healing towards the older registered revision would undo
        // it, so the Sync's objects are not healed until a later apply registers them.
        ctx.drift.unregister(&skey);
        return Err(e);
    }
    phase.end();

    if let Some(failure) = report.error() {
        return Err(Error::Kube(failure));
    }
    if sync.spec.wait {
        // What was written is recorded before the wait: a Sync deleted, or an agent stopped,
        // during the wait still knows what it owns.
        status::set_condition(
            &mut st.conditions,
            types::RECONCILING,
            true,
            "Progressing",
            format!(
                "applied revision {}; waiting up to {}s for its objects to become healthy",
                artifact.revision,
                timeout.as_secs()
            ),
            sync.metadata.generation,
        );
        ctx.write_status::<Sync>(ns, name, st).await?;
        // A new revision, a spec change, a request, the Sync's deletion or the agent stopping
        // make the wait moot: it is cancelled, and what superseded it runs at once.
        let src = &sync.spec.source_ref;
        let source_key = (
            src.namespace.clone().unwrap_or_else(|| ns.to_owned()),
            src.name.clone(),
        );
        let applying = Applying::of(sync, source_key, &artifact.commit);
        let wait = engine.wait_healthy(&report.applied, timeout);
        match ctx.supersede.unless_superseded(&applying, wait).await {
            Ok(healthy) => {
                healthy?;
            }
            Err(why) => return Ok(Applied::Cancelled(why)),
        }
    }

    let message = record_applied(st, sync, artifact, counts, "", started.elapsed());
    if report.changes.has_changes() {
        ctx.event(sync, false, "ReconciliationSucceeded", message)
            .await;
    }
    Ok(Applied::Done)
}

/// A health wait was cancelled (see [`Applied::Cancelled`]). When the agent stops, nothing is
/// written (the next leader applies again). Otherwise the history and an Event say that the
/// revision was written and why its wait ended, and the Sync is reconciled again at once.
async fn cancelled(
    sync: &Sync,
    ctx: &Context,
    mut st: SyncStatus,
    artifact: &SourceArtifact,
    why: Why,
    started: Instant,
) -> Result<Action> {
    let key = format!(
        "{}/{}",
        sync.namespace().unwrap_or_default(),
        sync.name_any()
    );
    let took = started.elapsed();
    tracing::info!(sync = %key, revision = %artifact.revision, %why, ?took, "health wait cancelled");
    if why == Why::ShuttingDown {
        return Ok(Action::await_change());
    }
    let message = format!(
        "revision {} was applied; its health wait was cancelled after {:.1}s: {why}",
        artifact.revision,
        took.as_secs_f64()
    );
    ctx.event(sync, false, "HealthCheckCancelled", &message)
        .await;
    if why != Why::Deleted {
        push_history(
            &mut st,
            artifact,
            "cancelled",
            String::new(),
            took,
            Some(message),
        );
        let ns = sync.namespace().unwrap_or_default();
        // Best effort: the reconcile that follows writes the status anyway.
        if let Err(e) = ctx.write_status::<Sync>(&ns, &sync.name_any(), &st).await {
            tracing::warn!(sync = %key, error = %e, "could not record the cancelled wait");
        }
    }
    Ok(Action::requeue(Duration::ZERO))
}

/// Marks `artifact` applied with `counts`: revision, generation, Ready, a history entry.
/// Returns the Ready message (`note` is appended to it).
fn record_applied(
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

/// A digest of rendered manifests: their JSON, in render order.
fn digest(manifests: &[Manifest]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for m in manifests {
        h.update(serde_json::to_vec(&m.object).expect("a JSON value serialises"));
        h.update([0]);
    }
    format!("sha256:{:x}", h.finalize())
}

/// The client, engine, previous inventory and options a Sync applies with.
pub(crate) fn engine_for(
    sync: &Sync,
    ctx: &Context,
    ns: &str,
    name: &str,
    st: &SyncStatus,
) -> Result<(kube::Client, Engine, plumb_core::Inventory, SyncOptions)> {
    let client = ctx
        .client_for(ns, sync.spec.service_account_name.as_deref())
        .map_err(|source| Error::Api {
            context: "building an impersonating client".into(),
            source,
        })?;
    let engine = Engine::new(client.clone()).sharing(ctx.discovery.clone());
    let (inventory, bad) = status::inventory_from_items(&st.inventory);
    if !bad.is_empty() {
        tracing::warn!(?bad, "ignoring unreadable inventory entries");
    }
    let mut opts = SyncOptions::new(SyncId::new(ns, name));
    opts.target_namespace = sync.spec.target_namespace.clone();
    opts.prune = sync.spec.prune;
    opts.allow_empty = sync.spec.allow_empty;
    opts.force_conflicts = sync.spec.force;
    opts.adopt = sync.spec.adopt;
    Ok((client, engine, inventory, opts))
}

/// Hands the written objects to the drift watch, as of the apply with `ticket`: every desired
/// object when nothing failed, else only those written (or found unchanged).
/// `applied_from`: the revision and the digest of its rendering.
async fn register_drift(
    sync: &Sync,
    ctx: &Context,
    client: kube::Client,
    report: &plumb_kube::SyncReport,
    applied_from: (String, String),
    ticket: Ticket,
) -> Result<()> {
    let ns = sync.namespace().unwrap_or_default();
    let name = sync.name_any();
    let (scope, written): (
        Scope,
        Option<std::collections::BTreeSet<&plumb_core::ObjectKey>>,
    ) = if report.changes.has_failures() {
        let written = report
            .changes
            .entries
            .iter()
            .filter(|c| {
                matches!(
                    c.action,
                    plumb_core::Action::Created
                        | plumb_core::Action::Configured
                        | plumb_core::Action::Unchanged
                )
            })
            .map(|c| &c.key)
            .collect();
        (Scope::Written, Some(written))
    } else {
        let rendered = applied_from.1.clone();
        (Scope::Complete { rendered }, None)
    };
    if written.as_ref().is_some_and(|w| w.is_empty()) {
        return Ok(());
    }
    let applied = report
        .applied
        .iter()
        .filter(|m| written.as_ref().is_none_or(|w| w.contains(&m.key())));
    let resolver = Engine::new(client.clone())
        .sharing(ctx.discovery.clone())
        .resolver()
        .await?;
    let mut kinds: HashMap<(&str, &str), Arc<Resolved>> = HashMap::new();
    let mut objects = BTreeMap::new();
    for m in applied {
        let resolved = match kinds.get(&(m.api_version(), m.kind())) {
            Some(r) => r.clone(),
            None => {
                let Some(r) = resolver.resolve(m) else {
                    continue;
                };
                let r = Arc::new(r);
                kinds.insert((m.api_version(), m.kind()), r.clone());
                r
            }
        };
        objects.insert(m.key(), AppliedObject::new(m, resolved));
    }
    if written.is_none() {
        ctx.metrics
            .set_managed_objects(&format!("{ns}/{name}"), objects.len());
    }
    ctx.drift.register(
        (ns.to_owned(), name.to_owned()),
        ticket,
        Desired {
            objects,
            mode: sync.spec.drift,
            force: sync.spec.force,
            client,
            revision: applied_from.0,
            scope,
        },
        report
            .live_meta
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), serde_json::from_value(v.clone()).ok()?)))
            .collect(),
    );
    Ok(())
}

/// drift: detect after a restart: a dry-run sync tells which objects differ; they are
/// reported, the objects registered with the drift watch, nothing written.
async fn detect_only(
    sync: &Sync,
    ctx: &Context,
    ns: &str,
    name: &str,
    record: Arc<crate::artifacts::Artifact>,
    artifact: &SourceArtifact,
    st: &mut SyncStatus,
) -> Result<()> {
    let ticket = ctx.drift.ticket();
    // Held for the whole render; its digest is checked on disk first.
    let desired = crate::artifacts::render(record, sync.spec.path.clone()).await?;
    let rendered = digest(&desired);
    let (client, engine, inventory, mut opts) = engine_for(sync, ctx, ns, name, st)?;
    opts.dry_run = true;
    opts.prune = false;
    let report = engine.sync(desired, &inventory, &opts, &NoProgress).await?;
    st.drift = report
        .changes
        .entries
        .iter()
        .filter_map(|c| {
            let reason = match c.action {
                plumb_core::Action::Created => "deleted",
                plumb_core::Action::Configured => "modified",
                _ => return None,
            };
            Some(crate::api::DriftedObject {
                id: c.key.to_string(),
                reason: reason.to_owned(),
            })
        })
        .collect();
    let applied_from = (artifact.revision.clone(), rendered);
    register_drift(sync, ctx, client, &report, applied_from, ticket).await?;
    for d in &st.drift {
        ctx.drift.note_drift(
            (ns.to_owned(), name.to_owned()),
            d.id.clone(),
            d.reason.clone(),
        );
    }
    Ok(())
}

/// Records a failure: Ready=False with the reason, history, event, backoff. Nothing else in the
/// status changes: the last applied revision and inventory stay.
async fn fail(
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
    status::set_condition(
        &mut st.conditions,
        types::READY,
        false,
        error.reason(),
        &message,
        st.observed_generation,
    );
    status::remove_condition(&mut st.conditions, types::RECONCILING);
    if error.is_retryable() {
        status::remove_condition(&mut st.conditions, types::STALLED);
    } else {
        status::set_condition(
            &mut st.conditions,
            types::STALLED,
            true,
            error.reason(),
            &message,
            st.observed_generation,
        );
    }
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

fn push_history(
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
        },
    );
    st.history.truncate(HISTORY_LIMIT);
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
