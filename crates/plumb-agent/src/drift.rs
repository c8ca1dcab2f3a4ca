//! Instant drift detection: a metadata-only watch of every kind Plumb manages (label
//! `plumb.dev/sync-name` present), and a targeted check of exactly the object that changed.
//!
//! A change is a candidate when the object was deleted, its `generation` grew, its set of
//! non-status field managers changed, or (kinds without a generation) its resourceVersion
//! changed. Status-only churn of workloads is ignored. The check is one server-side dry-run of
//! that object's desired state against the live one; with `drift: correct` a drifted or deleted
//! object is applied again, with `detect` it is reported on the Sync. Nothing is requested in
//! steady state.
//!
//! A revision's objects are registered as soon as its writes end ([`ApplyPhase`]), before any
//! health wait: healing goes on during the wait, towards that revision. What is registered
//! where, and what a change means, is decided by the pure [`registry::Registry`]; this module
//! does the I/O around it (watches, checks, status writes, events).

pub mod registry;
mod watches;

use watches::signature_of;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use kube::core::{DynamicObject, PartialObjectMeta};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher::watcher};
use kube::{Api, Client};
use plumb_core::{Manifest, ObjectKey, SYNC_NAME_LABEL};
use plumb_kube::discovery::Resolved;
use plumb_kube::{Engine, ObjectState};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{DriftMode, DriftedObject, Sync};
use crate::metrics::Metrics;
use registry::{Registered, Registration, Registry, Seen, Target};
pub use registry::{Scope, SyncKey, Ticket};

/// How often a failing drift check is tried before the Sync is marked dirty (~1 minute).
const CHECK_ATTEMPTS: u32 = 7;
/// Most targeted checks running at once: a namespace wipe of thousands of objects must not
/// start thousands of dry-runs together (each object's checks are deduplicated already).
const MAX_CONCURRENT_CHECKS: usize = 16;
/// How long an apply (or a deletion) waits for running corrections of its objects to finish
/// before it writes: a correction holds an object's previous revision and must not land after
/// the new one. A check is a few requests; this only bounds a hung one.
const CHECKS_DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// One applied object, as a drift check needs it: its manifest as compact JSON (a parsed
/// `serde_json::Value` takes several times the memory, and is needed only when the object
/// drifts) and its resource, shared by every object of the kind.
#[derive(Clone)]
pub struct AppliedObject {
    json: Arc<str>,
    resolved: Arc<Resolved>,
}

impl AppliedObject {
    /// Keeps `manifest` (as applied) and its resource.
    pub fn new(manifest: &Manifest, resolved: Arc<Resolved>) -> Self {
        Self {
            json: manifest.object.to_string().into(),
            resolved,
        }
    }

    /// The manifest again.
    fn manifest(&self) -> Result<Manifest, serde_json::Error> {
        Ok(Manifest {
            object: serde_json::from_str(&self.json)?,
            source: None,
        })
    }
}

/// How a Sync's objects are checked: what every check of it shares.
#[derive(Clone)]
struct Checker {
    mode: DriftMode,
    force: bool,
    client: Client,
}

/// What one apply (or comparison) of a Sync hands to the drift tracker.
pub struct Desired {
    /// The objects, by key: every desired object ([`Scope::Complete`]) or the ones written.
    pub objects: BTreeMap<ObjectKey, AppliedObject>,
    /// Correct or only detect.
    pub mode: DriftMode,
    /// Take over fields another applier owns.
    pub force: bool,
    /// The client the Sync applies with (possibly impersonating).
    pub client: Client,
    /// The revision these objects were written from.
    pub revision: String,
    /// Which objects these are; a complete registration carries the digest of the rendered
    /// manifests: a new revision that renders the same digest has nothing to apply while the
    /// watch reports no drift.
    pub scope: Scope,
}

struct State {
    registry: Registry<AppliedObject, Checker>,
    watchers: HashMap<(String, String, String), JoinHandle<()>>,
}

/// Watches managed objects and heals (or reports) drift. Cheap to clone.
#[derive(Clone)]
pub struct DriftTracker {
    client: Client,
    metrics: Metrics,
    state: Arc<Mutex<State>>,
    /// Bumped whenever a check releases its target: what [`DriftTracker::drain`] waits on.
    checks_done: Arc<watch::Sender<u64>>,
    /// Bounds the checks running at once.
    check_slots: Arc<tokio::sync::Semaphore>,
    /// Where a Sync whose checks keep failing is sent for a full reconcile.
    dirty: Arc<Mutex<Option<tokio::sync::mpsc::UnboundedSender<SyncKey>>>>,
}

/// A Sync's writes, from [`DriftTracker::begin_apply`] until [`ApplyPhase::end`] (or drop):
/// meanwhile, changes to its objects are deferred, then checked against what is registered by
/// then. End it as soon as the writes are over, after registering them: a health wait is not
/// part of it.
pub struct ApplyPhase {
    tracker: DriftTracker,
    sync: SyncKey,
    ticket: Ticket,
    ended: bool,
}

impl ApplyPhase {
    /// The ticket registrations of this apply carry.
    pub fn ticket(&self) -> Ticket {
        self.ticket
    }

    /// The engine's progress reporter for these writes: it tells the drift watch which objects
    /// the writes leave alone ([`Registry::exempt`]), so that a change to one of them is healed
    /// at once rather than after the writes, in `mode`, taking over fields with `force`, as
    /// `client`: what the writes use.
    pub fn progress(&self, mode: DriftMode, force: bool, client: Client) -> PhaseProgress<'_> {
        PhaseProgress {
            phase: self,
            checker: Checker {
                mode,
                force,
                client,
            },
        }
    }

    /// The writes are over: changes seen meanwhile are checked now.
    pub fn end(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let deferred = self.tracker.lock().registry.end_apply(&self.sync);
        for key in deferred {
            self.tracker.clone().check(key);
        }
    }
}

/// See [`ApplyPhase::progress`].
pub struct PhaseProgress<'a> {
    phase: &'a ApplyPhase,
    checker: Checker,
}

impl plumb_kube::Progress for PhaseProgress<'_> {
    fn planned(&self, vouched: &BTreeSet<ObjectKey>) {
        let phase = self.phase;
        let now = phase
            .tracker
            .lock()
            .registry
            .exempt(&phase.sync, vouched, self.checker.clone());
        for key in now {
            phase.tracker.clone().check(key);
        }
    }

    fn reports_waiting(&self) -> bool {
        false
    }
}

impl Drop for ApplyPhase {
    fn drop(&mut self) {
        // An apply that failed early or was cancelled: its writes are over too.
        self.finish();
    }
}

impl DriftTracker {
    /// A tracker; it watches nothing until [`DriftTracker::register`] is called.
    pub fn new(client: Client, metrics: Metrics) -> Self {
        Self {
            client,
            metrics,
            state: Arc::new(Mutex::new(State {
                registry: Registry::default(),
                watchers: HashMap::new(),
            })),
            checks_done: Arc::new(watch::Sender::new(0)),
            check_slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_CHECKS)),
            dirty: Arc::default(),
        }
    }

    /// Sends the key of every Sync whose checks keep failing (its namespace was deleted, say)
    /// to `tx`, for a full reconcile that reports what is wrong in its status.
    pub fn notify_dirty(&self, tx: tokio::sync::mpsc::UnboundedSender<SyncKey>) {
        *self.dirty.lock().expect("drift notifier lock poisoned") = Some(tx);
    }

    /// `sync` starts writing: changes to its objects are deferred until the returned phase
    /// ends. Waits (boundedly) for corrections of its objects already under way, so that none
    /// of them writes an older revision after this apply's writes.
    pub async fn begin_apply(&self, sync: &SyncKey) -> ApplyPhase {
        let ticket = self.lock().registry.begin_apply(sync);
        let phase = ApplyPhase {
            tracker: self.clone(),
            sync: sync.clone(),
            ticket,
            ended: false,
        };
        self.drain(sync).await;
        phase
    }

    /// A ticket for a registration that is no apply (a comparison after a restart).
    pub fn ticket(&self) -> Ticket {
        self.lock().registry.ticket()
    }

    /// Registers what an apply with `ticket` wrote (see [`Desired`]) and makes sure every kind
    /// of it is watched. `seen` is each object's metadata as the apply left it: the watch
    /// compares later changes with it, and an object the watch already saw changed since is
    /// checked. A registration from an older apply than the last registered is ignored.
    pub fn register(
        &self,
        sync: SyncKey,
        ticket: Ticket,
        desired: Desired,
        seen: BTreeMap<ObjectKey, ObjectMeta>,
    ) {
        let kinds: Vec<Arc<Resolved>> = desired
            .objects
            .values()
            .map(|o| o.resolved.clone())
            .collect();
        let registration = Registration {
            sync,
            ticket,
            revision: desired.revision,
            scope: desired.scope,
            objects: desired.objects,
            shared: Checker {
                mode: desired.mode,
                force: desired.force,
                client: desired.client,
            },
        };
        let seen = seen
            .iter()
            .map(|(k, m)| (k.clone(), signature_of(m)))
            .collect();
        let mut state = self.lock();
        let to_check = match state.registry.register(registration, seen) {
            Registered::Accepted { check } => check,
            Registered::Stale => {
                tracing::debug!("ignoring the registration of an older apply");
                return;
            }
        };
        for resolved in kinds {
            let r = &resolved.resource;
            let gvk = (r.group.clone(), r.version.clone(), r.kind.clone());
            if state.watchers.contains_key(&gvk) {
                continue;
            }
            let task = tokio::spawn(self.clone().watch(resolved.as_ref().clone()));
            state.watchers.insert(gvk, task);
        }
        drop(state);
        for key in to_check {
            self.clone().check(key);
        }
    }

    /// Forgets a Sync (deleted or suspended): from now on no change to its objects is checked.
    pub fn unregister(&self, sync: &SyncKey) {
        self.lock().registry.unregister(sync);
    }

    /// Waits until no check of `sync`'s objects is running (a correction that took its target
    /// before [`DriftTracker::unregister`] or [`DriftTracker::begin_apply`] may still write),
    /// for at most 10 s. Returns whether none is.
    pub async fn drain(&self, sync: &SyncKey) -> bool {
        let mut done = self.checks_done.subscribe();
        let deadline = tokio::time::Instant::now() + CHECKS_DRAIN_LIMIT;
        loop {
            if self.lock().registry.checks_running(sync) == 0 {
                return true;
            }
            match tokio::time::timeout_at(deadline, done.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    tracing::warn!(sync = %format!("{}/{}", sync.0, sync.1), "drift checks still running");
                    return false;
                }
            }
        }
    }

    /// Whether `sync` is registered and has no drift outstanding: then a periodic reconcile of
    /// an unchanged revision can skip the apply.
    pub fn is_clean(&self, sync: &SyncKey) -> bool {
        self.lock().registry.is_clean(sync)
    }

    /// Whether `sync`'s applied objects are registered (after the agent's first apply or
    /// comparison of it).
    pub fn is_registered(&self, sync: &SyncKey) -> bool {
        self.lock().registry.is_registered(sync)
    }

    /// See [`Registry::advance`].
    pub fn advance(&self, sync: &SyncKey, from: &str, rendered: &str, revision: &str) -> bool {
        self.lock().registry.advance(sync, from, rendered, revision)
    }

    /// The revision and rendering digest `sync` was last completely registered from, if it has
    /// no drift outstanding.
    pub fn clean_rendering(&self, sync: &SyncKey) -> Option<(String, String)> {
        self.lock().registry.clean_rendering(sync)
    }

    /// The registered manifests (compact JSON) of `sync` if it has no drift outstanding: what
    /// the watch has seen unchanged since they were written (a change still being corrected is
    /// checked again when the next apply's writes end).
    pub fn vouched(&self, sync: &SyncKey) -> BTreeMap<ObjectKey, String> {
        self.lock()
            .registry
            .vouched(sync)
            .into_iter()
            .map(|(key, o)| (key, o.json.to_string()))
            .collect()
    }

    /// Records drift found outside the watch (a comparison after a restart).
    pub fn note_drift(&self, sync: SyncKey, id: String, reason: String) {
        self.lock().registry.note_drift(sync, id, reason);
    }

    /// The drifted objects of `sync` (detect mode).
    pub fn drifted(&self, sync: &SyncKey) -> Vec<DriftedObject> {
        self.lock()
            .registry
            .drifted(sync)
            .into_iter()
            .map(|(id, reason)| DriftedObject { id, reason })
            .collect()
    }

    /// Stops every watch.
    pub fn shutdown(&self) {
        for (_, task) in self.lock().watchers.drain() {
            task.abort();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("drift state lock poisoned")
    }
}
