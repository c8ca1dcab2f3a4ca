//! Applying a rendered revision: the engine, the drift registration, detect-only mode.

use super::*;

/// How an apply ended, if not in an error.
pub(super) enum Applied {
    /// Applied (and healthy, with `wait`); the status is filled in.
    Done,
    /// Written, but the health wait was cancelled: it no longer mattered.
    Cancelled(Why),
}

/// Renders and applies; fills the status on success. The writes are an apply phase of the
/// drift watch ([`crate::drift::ApplyPhase`]: changes to the Sync's objects are checked once it
/// ends), from just before the first write until the written objects are registered, before
/// any health wait. Waiting for a render slot and rendering are not part of it: meanwhile a
/// change is healed at once, towards the revision registered, as at rest.
pub(super) async fn apply(
    sync: &Sync,
    ctx: &Context,
    ns: &str,
    name: &str,
    record: Arc<crate::artifacts::Artifact>,
    artifact: &SourceArtifact,
    st: &mut SyncStatus,
) -> Result<Applied> {
    let started = Instant::now();
    st.last_attempted_revision = Some(artifact.revision.clone());
    if unchanged_files(sync, ctx, ns, &record, artifact, st, started) {
        return Ok(Applied::Done);
    }
    // The rendering is held from here until its writes are registered: one of a bounded
    // number at once across all Syncs. A revision that waits inside the apply (waves, hooks)
    // could keep a slot for as long as its timeout, and gives it back now.
    let slot = ctx.renders.acquire().await;
    let render_started = Instant::now();
    let desired = super::helm::render(sync, ctx, ns, record).await?;
    let render_took = render_started.elapsed();
    let slot = (!super::waits_inside(&desired)).then_some(slot);
    let rendered = digest(&desired);

    // A new revision that renders exactly what was applied (a commit elsewhere in the
    // repository), with the same spec, no reconcile request, and the drift watch reporting
    // the objects unchanged since: the cluster already holds this revision. Record it without
    // a request per object.
    let skey = (ns.to_owned(), name.to_owned());
    let unrequested = requested_at(sync) == st.last_handled_reconcile_at;
    if vouched_rendering(sync, ctx, st, &skey).is_some_and(|(_, digest)| digest == rendered) {
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

    // The writes begin: from here the drift watch defers changes to the Sync's objects (and
    // first waits for corrections under way, which must not land after these writes), but
    // for those the plan leaves alone (see `ApplyPhase::progress`).
    let phase = ctx.drift.begin_apply(&skey).await;
    let (engine, inventory, mut opts) = engine_for(sync, ctx, ns, name, st)?;
    // Waves wait for health, hooks for completion, within the Sync's timeout; Helm's upgrade
    // hooks run once the Sync applied a revision.
    opts.timeout = timeout;
    opts.upgrade = Some(st.last_applied_revision.is_some() || !inventory.is_empty());
    // Objects the watch vouches for and whose manifest did not change need no dry-run; an
    // explicit reconcile request checks everything.
    if unrequested {
        opts.vouched = ctx.drift.vouched(&skey);
    }
    // A revision with waves or hooks waits inside the engine: what supersedes a health wait
    // (below) stops those waits too, and the engine reports what it did up to then.
    let source_key = super::source_key(&sync.spec.source_ref, ns);
    let applying = Applying::of(sync, source_key, &artifact.commit);
    let (cancel, cancelled) = tokio::sync::watch::channel(false);
    opts.cancel = Some(cancelled);
    let writes_started = Instant::now();
    // The engine tells the drift watch which objects these writes leave alone: a change to
    // one of those is healed at once, as at rest.
    let (superseded, report) = {
        let progress = phase.progress(sync.spec.drift, sync.spec.force, engine.client().clone());
        let run = engine.sync(desired, &inventory, &opts, &progress);
        tokio::pin!(run);
        tokio::select! {
            biased;
            report = &mut run => (None, report),
            why = ctx.supersede.superseded(&applying) => {
                let _ = cancel.send(true);
                (Some(why), run.await)
            }
        }
    };
    let mut report = report?;
    st.inventory = status::inventory_items(&report.inventory);
    st.pending_hooks = report.hooks.iter().map(hook_line).collect();
    let counts = report.changes.counts();

    // The writes are over: what they wrote is registered now (all of it, or after a partial
    // failure the objects that were written), so that a change made during the health wait
    // is healed at once, and towards this revision, never an older one.
    let applied_from = (artifact.revision.clone(), rendered);
    if let Err(e) = register_drift(
        sync,
        ctx,
        &engine,
        &mut report,
        applied_from,
        phase.ticket(),
    )
    .await
    {
        // This revision was (partly) written but cannot be registered (e.g. the API server
        // went away mid-apply): healing towards the older registered revision would undo
        // it, so the Sync's objects are not healed until a later apply registers them.
        ctx.drift.unregister(&skey);
        return Err(e);
    }
    phase.end();
    let writes_took = writes_started.elapsed();
    // What a health wait needs of the objects (most of them, and every spec, are not needed),
    // not the rendered manifests: the rendering, and its slot, end here.
    let awaited = if sync.spec.wait {
        plumb_kube::awaited(std::mem::take(&mut report.applied))
    } else {
        Vec::new()
    };
    report.applied = Vec::new();
    drop(slot);

    if let Some(failure) = report.error() {
        // Stopped because something newer came: recorded as cancelled, and that runs at once.
        if let Some(why) = superseded {
            return Ok(Applied::Cancelled(why));
        }
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
        let wait = engine.wait_healthy(&awaited, timeout);
        match ctx.supersede.unless_superseded(&applying, wait).await {
            Ok(healthy) => {
                healthy?;
            }
            Err(why) => return Ok(Applied::Cancelled(why)),
        }
    }

    tracing::debug!(
        revision = %artifact.revision,
        render_ms = render_took.as_millis() as u64,
        writes_ms = writes_took.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "apply timings"
    );
    let message = record_applied(st, sync, artifact, counts, "", started.elapsed());
    if report.changes.has_changes() {
        ctx.event(sync, false, "ReconciliationSucceeded", message)
            .await;
    }
    Ok(Applied::Done)
}

/// A new revision in which none of the files the Sync's render reads changed since the
/// revision it applied (a commit elsewhere in the repository; see [`super::inputs`]), with
/// the same spec, no reconcile request, and the drift watch reporting the objects applied
/// from that revision unchanged since: it would render exactly what the cluster holds.
/// Records the revision (in `st`, and in the drift registration) without rendering and
/// without a request per object; returns whether it did.
fn unchanged_files(
    sync: &Sync,
    ctx: &Context,
    ns: &str,
    record: &crate::artifacts::Artifact,
    artifact: &SourceArtifact,
    st: &mut SyncStatus,
    started: Instant,
) -> bool {
    let src = &sync.spec.source_ref;
    if sync.spec.helm.is_some() || src.kind.as_deref().unwrap_or("GitSource") != "GitSource" {
        return false;
    }
    let skey = (ns.to_owned(), sync.name_any());
    let Some((from, rendered)) = vouched_rendering(sync, ctx, st, &skey) else {
        return false;
    };
    let Some((_, applied_commit)) = from.rsplit_once(':') else {
        return false;
    };
    let src_ns = src.namespace.as_deref().unwrap_or(ns);
    let (Some(old), Some(new)) = (
        ctx.artifacts.files_of(src_ns, &src.name, applied_commit),
        ctx.artifacts.files_of(src_ns, &src.name, &record.commit),
    ) else {
        return false;
    };
    if !super::inputs::same_input(&old, &new, sync.spec.path.as_deref()) {
        return false;
    }
    if !ctx
        .drift
        .advance(&skey, &from, &rendered, &artifact.revision)
    {
        return false;
    }
    let counts = plumb_core::ChangeCounts {
        unchanged: st.inventory.len(),
        ..Default::default()
    };
    let note = " (none of its files changed: not rendered)";
    record_applied(st, sync, artifact, counts, note, started.elapsed());
    true
}

/// The revision and rendering digest the drift watch vouches for (registered completely, no
/// drift since), when `st` is the status of that very apply, for this generation, with no
/// newer reconcile request, and Ready: what a new revision may be recorded on without writes.
/// (A reconcile of a Sync read from the cache before that apply's own status write must not
/// overwrite it.)
fn vouched_rendering(
    sync: &Sync,
    ctx: &Context,
    st: &SyncStatus,
    skey: &crate::drift::SyncKey,
) -> Option<(String, String)> {
    if st.observed_generation != sync.metadata.generation
        || requested_at(sync) != st.last_handled_reconcile_at
        || !status::is_true(&st.conditions, types::READY)
    {
        return None;
    }
    ctx.drift
        .clean_rendering(skey)
        .filter(|(revision, _)| st.last_applied_revision.as_deref() == Some(revision.as_str()))
}

/// A health wait was cancelled (see [`Applied::Cancelled`]). When the agent stops, nothing is
/// written (the next leader applies again). Otherwise the history and an Event say that the
/// revision was written and why its wait ended, and the Sync is reconciled again at once.
pub(super) async fn cancelled(
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

/// A digest of rendered manifests: their JSON, in render order.
pub(super) fn digest(manifests: &[Manifest]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for m in manifests {
        h.update(serde_json::to_vec(&m.object).expect("a JSON value serialises"));
        h.update([0]);
    }
    format!("sha256:{:x}", h.finalize())
}

/// The engine (with the Sync's client), previous inventory and options a Sync applies with.
pub(crate) fn engine_for(
    sync: &Sync,
    ctx: &Context,
    ns: &str,
    name: &str,
    st: &SyncStatus,
) -> Result<(Engine, plumb_core::Inventory, SyncOptions)> {
    let client = ctx
        .client_for(ns, sync.spec.service_account_name.as_deref())
        .map_err(|source| Error::Api {
            context: "building an impersonating client".into(),
            source,
        })?;
    let engine = Engine::new(client)
        .sharing(ctx.discovery.clone())
        .budgeted(ctx.budget.clone());
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
    opts.concurrency = super::OBJECTS_PER_SYNC;
    Ok((engine, inventory, opts))
}

/// Hands the written objects to the drift watch, as of the apply with `ticket`: every desired
/// object when nothing failed, else only those written (or found unchanged).
/// `applied_from`: the revision and the digest of its rendering. Takes the report's
/// `live_meta` (parsed one object at a time as it is handed over).
pub(super) async fn register_drift(
    sync: &Sync,
    ctx: &Context,
    engine: &Engine,
    report: &mut plumb_kube::SyncReport,
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
    let resolver = engine.resolver().await?;
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
            client: engine.client().clone(),
            revision: applied_from.0,
            scope,
        },
        std::mem::take(&mut report.live_meta)
            .into_iter()
            .filter_map(|(k, json)| {
                Some((k, serde_json::from_str::<LiveSummary>(&json).ok()?.metadata))
            })
            .collect(),
    );
    Ok(())
}

/// What [`register_drift`] reads of [`plumb_kube::SyncReport::live_meta`].
#[derive(serde::Deserialize)]
struct LiveSummary {
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
}

/// drift: detect after a restart: a dry-run sync tells which objects differ; they are
/// reported, the objects registered with the drift watch, nothing written.
pub(super) async fn detect_only(
    sync: &Sync,
    ctx: &Context,
    ns: &str,
    name: &str,
    record: Arc<crate::artifacts::Artifact>,
    artifact: &SourceArtifact,
    st: &mut SyncStatus,
) -> Result<()> {
    let ticket = ctx.drift.ticket();
    // A dry run waits for nothing: the slot is held until the comparison is registered.
    let _slot = ctx.renders.acquire().await;
    let desired = super::helm::render(sync, ctx, ns, record).await?;
    let rendered = digest(&desired);
    let (engine, inventory, mut opts) = engine_for(sync, ctx, ns, name, st)?;
    opts.dry_run = true;
    opts.prune = false;
    let mut report = engine.sync(desired, &inventory, &opts, &NoProgress).await?;
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
    register_drift(sync, ctx, &engine, &mut report, applied_from, ticket).await?;
    for d in &st.drift {
        ctx.drift.note_drift(
            (ns.to_owned(), name.to_owned()),
            d.id.clone(),
            d.reason.clone(),
        );
    }
    Ok(())
}
