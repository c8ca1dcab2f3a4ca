//! Instant drift detection: a metadata-only watch of every kind Plumb manages (label
//! `plumb.dev/sync-name` present), and a targeted check of exactly the object that changed.
//!
//! A change is a candidate when the object was deleted, its `generation` grew, its set of
//! non-status field managers changed, or (kinds without a generation) its resourceVersion
//! changed. Status-only churn of workloads is ignored. The check is one server-side dry-run of
//! that object's desired state against the live one; with `drift: correct` a drifted or deleted
//! object is applied again, with `detect` it is reported on the Sync. Nothing is requested in
//! steady state.

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
use tokio::task::JoinHandle;

use crate::api::{DriftMode, DriftedObject, Sync};
use crate::metrics::Metrics;

/// How often a failing drift check is tried before the Sync is marked dirty (~1 minute).
const CHECK_ATTEMPTS: u32 = 7;

/// A Sync's identity: (namespace, name).
pub type SyncKey = (String, String);

/// One applied object, as a drift check needs it: its manifest as compact JSON (a parsed
/// `serde_json::Value` takes several times the memory, and is needed only when the object
/// drifts) and its resource, shared by every object of the kind.
#[derive(Clone)]
pub struct AppliedObject {
    json: Box<str>,
    resolved: Arc<Resolved>,
}

impl AppliedObject {
    /// Keeps `manifest` (as applied) and its resource.
    pub fn new(manifest: &Manifest, resolved: Arc<Resolved>) -> Self {
        Self {
            json: manifest.object.to_string().into_boxed_str(),
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

/// What the drift tracker knows of one Sync.
#[derive(Clone)]
pub struct Desired {
    /// The applied objects, by key.
    pub objects: BTreeMap<ObjectKey, AppliedObject>,
    /// Correct or only detect.
    pub mode: DriftMode,
    /// Take over fields another applier owns.
    pub force: bool,
    /// The client the Sync applies with (possibly impersonating).
    pub client: Client,
    /// The revision these objects were applied from.
    pub revision: String,
    /// Digest of the rendered manifests these objects were applied from: a new revision that
    /// renders the same digest has nothing to apply while the watch reports no drift.
    pub rendered: String,
}

/// What was last seen of one object: the change signature.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Seen {
    generation: Option<i64>,
    resource_version: Option<String>,
    managers: BTreeSet<(String, String)>,
}

#[derive(Default)]
struct State {
    syncs: HashMap<SyncKey, Desired>,
    owners: HashMap<ObjectKey, SyncKey>,
    seen: HashMap<ObjectKey, Seen>,
    /// Drifted objects per Sync (detect mode), id -> reason.
    drifted: HashMap<SyncKey, BTreeMap<String, String>>,
    /// Objects with a check running, and whether another event arrived meanwhile.
    in_flight: HashMap<ObjectKey, bool>,
    /// Syncs being applied right now: their own writes and prunes are not drift.
    applying: HashMap<SyncKey, usize>,
    /// Objects that changed while their Sync was being applied: checked when the apply ends
    /// (the apply may have compared them before the change).
    deferred: HashMap<SyncKey, BTreeSet<ObjectKey>>,
    watchers: HashMap<(String, String, String), JoinHandle<()>>,
}

impl State {
    /// What `sync` registered, if it has no drift outstanding.
    fn clean(&self, sync: &SyncKey) -> Option<&Desired> {
        let desired = self.syncs.get(sync)?;
        self.drifted
            .get(sync)
            .is_none_or(|d| d.is_empty())
            .then_some(desired)
    }
}

/// Watches managed objects and heals (or reports) drift. Cheap to clone.
#[derive(Clone)]
pub struct DriftTracker {
    client: Client,
    metrics: Metrics,
    state: Arc<Mutex<State>>,
}

impl DriftTracker {
    /// A tracker; it watches nothing until [`DriftTracker::register`] is called.
    pub fn new(client: Client, metrics: Metrics) -> Self {
        Self {
            client,
            metrics,
            state: Arc::default(),
        }
    }

    /// Replaces what `sync` manages (after a successful apply) and makes sure every kind of it
    /// is watched. `seen` is each object's metadata as the apply left it: the watch compares
    /// later changes with it, and an object the watch already saw changed since is checked.
    pub fn register(&self, sync: SyncKey, desired: Desired, seen: BTreeMap<ObjectKey, ObjectMeta>) {
        let mut to_check = Vec::new();
        let mut state = self.lock();
        for (key, meta) in seen {
            let applied = signature_of(&meta);
            match state.seen.get(&key) {
                // A watch that starts later compares its first sight with the apply's result,
                // so an edit right after the apply is not taken for the applied state.
                None => {
                    state.seen.insert(key, applied);
                }
                Some(watched) if is_candidate(&applied, watched) => to_check.push(key),
                Some(_) => {}
            }
        }
        state.owners.retain(|_, owner| owner != &sync);
        for key in desired.objects.keys() {
            state.owners.insert(key.clone(), sync.clone());
        }
        let kinds: Vec<Arc<Resolved>> = desired
            .objects
            .values()
            .map(|o| o.resolved.clone())
            .collect();
        state.drifted.remove(&sync);
        state.syncs.insert(sync, desired);
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

    /// Marks `sync` as being applied: until [`DriftTracker::end_apply`], changes to its objects
    /// may be the apply's own (writes, prunes); they are checked when it ends.
    pub fn begin_apply(&self, sync: &SyncKey) {
        *self.lock().applying.entry(sync.clone()).or_insert(0) += 1;
    }

    /// Ends [`DriftTracker::begin_apply`]. Call after [`DriftTracker::register`] on success.
    /// Objects that changed during the apply are checked now, against what is registered.
    pub fn end_apply(&self, sync: &SyncKey) {
        let deferred = {
            let mut state = self.lock();
            let Some(n) = state.applying.get_mut(sync) else {
                return;
            };
            *n -= 1;
            if *n > 0 {
                return;
            }
            state.applying.remove(sync);
            state.deferred.remove(sync).unwrap_or_default()
        };
        for key in deferred {
            self.clone().check(key);
        }
    }

    /// Forgets a Sync (deleted or suspended).
    pub fn unregister(&self, sync: &SyncKey) {
        let mut state = self.lock();
        state.syncs.remove(sync);
        state.owners.retain(|_, owner| owner != sync);
        state.drifted.remove(sync);
        state.deferred.remove(sync);
    }

    /// Whether `sync` is registered and has no drift outstanding: then a periodic reconcile of
    /// an unchanged revision can skip the apply.
    pub fn is_clean(&self, sync: &SyncKey) -> bool {
        self.lock().clean(sync).is_some()
    }

    /// Whether `sync`'s applied objects are registered (after the agent's first apply or
    /// comparison of it).
    pub fn is_registered(&self, sync: &SyncKey) -> bool {
        self.lock().syncs.contains_key(sync)
    }

    /// The revision and rendering digest `sync` was last applied from, if it is registered and
    /// has no drift outstanding.
    pub fn clean_rendering(&self, sync: &SyncKey) -> Option<(String, String)> {
        self.lock()
            .clean(sync)
            .map(|d| (d.revision.clone(), d.rendered.clone()))
    }

    /// The applied manifests (compact JSON) of `sync` if it is registered and has no drift
    /// outstanding: what the watch has seen unchanged since they were applied (a change still
    /// being corrected is checked again when the next apply ends).
    pub fn vouched(&self, sync: &SyncKey) -> BTreeMap<ObjectKey, String> {
        self.lock()
            .clean(sync)
            .map(|d| {
                d.objects
                    .iter()
                    .map(|(key, o)| (key.clone(), o.json.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Records drift found outside the watch (a comparison after a restart).
    pub fn note_drift(&self, sync: SyncKey, id: String, reason: String) {
        self.lock()
            .drifted
            .entry(sync)
            .or_default()
            .insert(id, reason);
    }

    /// The drifted objects of `sync` (detect mode).
    pub fn drifted(&self, sync: &SyncKey) -> Vec<DriftedObject> {
        self.lock()
            .drifted
            .get(sync)
            .map(|d| {
                d.iter()
                    .map(|(id, reason)| DriftedObject {
                        id: id.clone(),
                        reason: reason.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
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

    /// One kind's metadata watch, for the lifetime of the agent.
    async fn watch(self, resolved: Resolved) {
        let api: Api<PartialObjectMeta<DynamicObject>> =
            Api::all_with(self.client.clone(), &resolved.resource);
        let config = watcher::Config::default().labels(SYNC_NAME_LABEL);
        let mut stream = watcher(api, config).default_backoff().boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) | Ok(Event::InitDone) => {}
                // The initial listing (and a relisting after a watch restart): objects seen
                // before are checked only if they changed meanwhile.
                Ok(Event::InitApply(obj)) | Ok(Event::Apply(obj)) => self.observe(&resolved, &obj),
                Ok(Event::Delete(obj)) => {
                    let key = key_of(&resolved, &obj);
                    let owned = {
                        let mut state = self.lock();
                        state.seen.remove(&key);
                        state.owners.contains_key(&key)
                    };
                    if owned {
                        self.clone().check(key);
                    }
                }
                Err(e) => {
                    tracing::warn!(kind = %resolved.resource.kind, error = %e, "drift watch error")
                }
            }
        }
    }

    fn observe(&self, resolved: &Resolved, obj: &PartialObjectMeta<DynamicObject>) {
        let key = key_of(resolved, obj);
        let seen = signature(obj);
        let changed = {
            let mut state = self.lock();
            // Remember every labelled object, owned yet or not: the event of our own create may
            // arrive before the Sync registers it, and the next change must still compare.
            let previous = state.seen.insert(key.clone(), seen.clone());
            // First sight is the state we just applied (or found): not drift.
            state.owners.contains_key(&key)
                && previous.is_some_and(|prev| is_candidate(&prev, &seen))
        };
        if changed {
            self.clone().check(key);
        }
    }

    /// Runs a targeted check of `key`, at most one at a time per object.
    fn check(self, key: ObjectKey) {
        {
            let mut state = self.lock();
            if let Some(again) = state.in_flight.get_mut(&key) {
                *again = true;
                return;
            }
            state.in_flight.insert(key.clone(), false);
        }
        tokio::spawn(async move {
            loop {
                // A failed check (e.g. its namespace is still terminating after a wipe) is
                // retried with backoff; if it keeps failing the Sync is marked dirty, so that its
                // next periodic reconcile applies everything instead of skipping.
                let mut delay = Duration::from_secs(1);
                let mut attempts = 0;
                while !self.check_once(&key).await {
                    attempts += 1;
                    if attempts >= CHECK_ATTEMPTS {
                        self.mark_dirty(&key);
                        break;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
                let mut state = self.lock();
                match state.in_flight.get(&key) {
                    Some(true) => {
                        state.in_flight.insert(key.clone(), false);
                    }
                    _ => {
                        state.in_flight.remove(&key);
                        break;
                    }
                }
            }
        });
    }

    /// Marks the Sync owning `key` as drifted (its check keeps failing).
    fn mark_dirty(&self, key: &ObjectKey) {
        let mut state = self.lock();
        if let Some(sync) = state.owners.get(key).cloned() {
            state
                .drifted
                .entry(sync)
                .or_default()
                .insert(key.to_string(), "check failed".to_owned());
        }
    }

    /// One targeted check; false when it failed and should be retried.
    async fn check_once(&self, key: &ObjectKey) -> bool {
        // Only this object's entry is taken out of the lock, not the Sync's whole set.
        let found = {
            let mut state = self.lock();
            // Its Sync is being applied: the apply may have read the object before this
            // change, so look again once it ends.
            if let Some(sync) = state.owners.get(key).cloned()
                && state.applying.contains_key(&sync)
            {
                state.deferred.entry(sync).or_default().insert(key.clone());
                return true;
            }
            state.owners.get(key).and_then(|s| {
                let d = state.syncs.get(s)?;
                let object = d.objects.get(key)?.clone();
                Some((s.clone(), object, d.mode, d.force, d.client.clone()))
            })
        };
        let Some((sync, object, mode, force, client)) = found else {
            return true;
        };
        let manifest = match object.manifest() {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(object = %key, error = %e, "stored manifest unreadable");
                return true;
            }
        };
        let resolved = object.resolved.as_ref();
        let engine = Engine::new(client);
        let correct = mode == DriftMode::Correct;
        let sync_label = format!("{}/{}", sync.0, sync.1);
        match engine
            .check_object(&manifest, resolved, force, correct)
            .await
        {
            Ok(check) => {
                let reason = match check.state {
                    ObjectState::InSync => None,
                    ObjectState::Modified => Some("modified"),
                    ObjectState::Missing => Some("deleted"),
                };
                let Some(reason) = reason else {
                    self.set_drift(&sync, key, None).await;
                    return true;
                };
                self.metrics.drift_detected(&sync_label);
                if check.corrected {
                    self.metrics.drift_corrected(&sync_label);
                    tracing::info!(sync = %sync_label, object = %key, reason, "drift corrected");
                    self.event(
                        &sync,
                        false,
                        "DriftCorrected",
                        format!("{key} was {reason} outside Git; applied again"),
                    )
                    .await;
                } else {
                    tracing::info!(sync = %sync_label, object = %key, reason, "drift detected");
                    if self.set_drift(&sync, key, Some(reason)).await {
                        self.event(
                            &sync,
                            true,
                            "DriftDetected",
                            format!(
                                "{key} was {reason} outside Git (drift: detect, not corrected)"
                            ),
                        )
                        .await;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(sync = %sync_label, object = %key, error = %e, "drift check failed");
                return false;
            }
        }
        true
    }

    /// Records (or clears) one object's drift and writes the Sync's `status.drift` when it
    /// changed. Returns whether it changed.
    async fn set_drift(&self, sync: &SyncKey, key: &ObjectKey, reason: Option<&str>) -> bool {
        let id = key.to_string();
        let list = {
            let mut state = self.lock();
            let entry = state.drifted.entry(sync.clone()).or_default();
            let changed = match reason {
                Some(r) => entry.insert(id, r.to_owned()).as_deref() != Some(r),
                None => entry.remove(&id).is_some(),
            };
            if !changed {
                return false;
            }
            entry
                .iter()
                .map(|(id, reason)| json!({ "id": id, "reason": reason }))
                .collect::<Vec<_>>()
        };
        let api: Api<Sync> = Api::namespaced(self.client.clone(), &sync.0);
        let patch = json!({ "status": { "drift": list } });
        if let Err(e) = api
            .patch_status(&sync.1, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(error = %e, "could not record drift in the Sync's status");
        }
        true
    }

    async fn event(&self, sync: &SyncKey, warning: bool, reason: &str, note: String) {
        let api: Api<Sync> = Api::namespaced(self.client.clone(), &sync.0);
        let Ok(Some(obj)) = api.get_opt(&sync.1).await else {
            return;
        };
        let recorder = kube::runtime::events::Recorder::new(
            self.client.clone(),
            kube::runtime::events::Reporter {
                controller: "plumb".into(),
                instance: None,
            },
        );
        let event = kube::runtime::events::Event {
            type_: if warning {
                kube::runtime::events::EventType::Warning
            } else {
                kube::runtime::events::EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(note),
            action: "DriftCheck".to_owned(),
            secondary: None,
        };
        use kube::Resource;
        if let Err(e) = recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, "could not publish a drift event");
        }
    }
}

fn key_of(resolved: &Resolved, obj: &PartialObjectMeta<DynamicObject>) -> ObjectKey {
    let namespace = if resolved.namespaced {
        obj.metadata.namespace.as_deref()
    } else {
        None
    };
    ObjectKey::new(
        &resolved.resource.group,
        &resolved.resource.kind,
        namespace,
        obj.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// Managers that changed the object's spec or metadata (not its status), with their times.
fn signature(obj: &PartialObjectMeta<DynamicObject>) -> Seen {
    signature_of(&obj.metadata)
}

fn signature_of(meta: &ObjectMeta) -> Seen {
    let managers = meta
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.subresource
                .as_deref()
                .is_none_or(|s| s.is_empty() || s == "scale")
        })
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.time.as_ref().map(|t| t.0.to_string()).unwrap_or_default(),
            )
        })
        .collect();
    Seen {
        generation: meta.generation,
        resource_version: meta.resource_version.clone(),
        managers,
    }
}

/// Whether the change from `prev` to `now` may be drift (see the module docs).
fn is_candidate(prev: &Seen, now: &Seen) -> bool {
    if now.managers != prev.managers {
        return true;
    }
    match (prev.generation, now.generation) {
        (Some(a), Some(b)) if a > 0 && b > 0 => b > a,
        _ => now.resource_version != prev.resource_version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(generation: Option<i64>, rv: &str, managers: &[(&str, &str)]) -> Seen {
        Seen {
            generation,
            resource_version: Some(rv.to_owned()),
            managers: managers
                .iter()
                .map(|(m, t)| ((*m).to_owned(), (*t).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn status_churn_of_a_generation_tracked_object_is_not_a_candidate() {
        let a = seen(Some(3), "100", &[("plumb", "t1")]);
        let b = seen(Some(3), "101", &[("plumb", "t1")]);
        assert!(!is_candidate(&a, &b));
    }

    #[test]
    fn spec_changes_and_foreign_managers_are_candidates() {
        let a = seen(Some(3), "100", &[("plumb", "t1")]);
        assert!(is_candidate(&a, &seen(Some(4), "101", &[("plumb", "t1")])));
        assert!(is_candidate(
            &a,
            &seen(Some(3), "101", &[("plumb", "t1"), ("kubectl-label", "t2")])
        ));
    }

    #[test]
    fn kinds_without_generation_compare_resource_versions() {
        let a = seen(None, "100", &[("plumb", "t1")]);
        assert!(is_candidate(&a, &seen(None, "101", &[("plumb", "t1")])));
        assert!(!is_candidate(&a, &seen(None, "100", &[("plumb", "t1")])));
    }
}
