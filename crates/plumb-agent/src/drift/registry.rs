//! The drift watch's decisions, without I/O: which objects are registered for which Sync and at
//! which revision, what a watched change means, which checks run now, later or not at all.
//!
//! Invariants (each has a unit test below):
//! - An object is registered at the newest revision written for it: a registration from an
//!   older apply (an older [`Ticket`]) never replaces one from a newer apply, and a partly
//!   failed apply moves only the objects it wrote.
//! - While a Sync is writing ([`Registry::begin_apply`] .. [`Registry::end_apply`]) a change
//!   to one of its objects is not checked (the writes may have read the object before the
//!   change) but deferred, and checked when the writes end; health waits come after. The
//!   exception: objects the writes leave alone because their registered manifest is what the
//!   new revision wants ([`Registry::exempt`]) are checked at once, as at rest.
//! - A change to an object no Sync has registered (any more) means nothing: an unregistered
//!   (deleted, suspended) Sync's objects are never healed.
//! - At most one check per object runs at a time; a change during a check runs it again.
//!
//! The payloads are opaque: `O` is what a check needs of one object (its manifest), `S` what
//! it needs of the Sync (client, mode).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use plumb_core::ObjectKey;

/// A Sync's identity: (namespace, name).
pub type SyncKey = (String, String);

/// The order in which applies started. A registration carries its apply's ticket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// What was last seen of one object: its change signature.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Seen {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `metadata.resourceVersion`.
    pub resource_version: Option<String>,
    /// The field managers of the spec and metadata (not the status), with their times, as
    /// [`Seen::managers_digest`]: compared as a set, held in 8 bytes per watched object rather
    /// than as names and times (a set costs several hundred bytes).
    pub managers: u64,
}

impl Seen {
    /// A digest of a set of (manager, time) pairs: equal sets give equal digests, in whatever
    /// order their pairs come; different sets differ (but for odds of 2^-64).
    pub fn managers_digest(managers: impl IntoIterator<Item = (String, String)>) -> u64 {
        use std::hash::{Hash, Hasher};
        let set: BTreeSet<(String, String)> = managers.into_iter().collect();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        set.hash(&mut hasher);
        hasher.finish()
    }
}

/// Whether the change from `prev` to `now` may be drift: the set of non-status field managers
/// changed, the generation grew, or (kinds without a generation) the resourceVersion changed.
/// Status-only churn of workloads is not.
pub fn is_candidate(prev: &Seen, now: &Seen) -> bool {
    if now.managers != prev.managers {
        return true;
    }
    match (prev.generation, now.generation) {
        (Some(a), Some(b)) if a > 0 && b > 0 => b > a,
        _ => now.resource_version != prev.resource_version,
    }
}

/// Whether the watch's `watched` state is older than `applied` (the state an apply's write
/// left): a higher generation, else a higher resourceVersion where both are numbers, as the API
/// server's are. Unknown order counts as not older.
fn is_behind(watched: &Seen, applied: &Seen) -> bool {
    match (watched.generation, applied.generation) {
        (Some(w), Some(a)) if w != a => w < a,
        _ => {
            let number = |s: &Seen| s.resource_version.as_deref()?.parse::<u64>().ok();
            matches!((number(watched), number(applied)), (Some(w), Some(a)) if w < a)
        }
    }
}

/// Which of a Sync's objects a registration covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every object the revision wants (its writes all succeeded): replaces what was registered,
    /// so objects the revision no longer wants are no longer healed. `rendered` is the digest
    /// of the revision's rendering.
    Complete {
        /// Digest of the rendered manifests.
        rendered: String,
    },
    /// Only the objects that were written (the apply partly failed): they move to the
    /// revision; every other registered object keeps the revision it was written at.
    Written,
}

/// One Sync's objects, as one apply (or comparison) left them.
#[derive(Clone, Debug)]
pub struct Registration<O, S> {
    /// The Sync.
    pub sync: SyncKey,
    /// The apply's ticket ([`Registry::begin_apply`] or [`Registry::ticket`]).
    pub ticket: Ticket,
    /// The revision the objects were written from.
    pub revision: String,
    /// Which objects this is.
    pub scope: Scope,
    /// The objects, by key.
    pub objects: BTreeMap<ObjectKey, O>,
    /// What a check needs of the Sync.
    pub shared: S,
}

/// One registered object.
#[derive(Clone, Debug)]
struct Object<O> {
    /// Shared by every object a registration wrote (one string per revision, not per object).
    revision: std::sync::Arc<str>,
    payload: O,
}

#[derive(Debug)]
struct Entry<O, S> {
    objects: BTreeMap<ObjectKey, Object<O>>,
    shared: S,
    ticket: Ticket,
    revision: String,
    /// The rendering digest, when the newest registration was complete.
    rendered: Option<String>,
}

/// What [`Registry::register`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Registered {
    /// Registered; these objects changed since the apply saw them and must be checked.
    Accepted {
        /// Objects to check now.
        check: Vec<ObjectKey>,
    },
    /// Refused: a newer apply registered already.
    Stale,
}

/// What to do about a change of one object ([`Registry::target`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Target<O, S> {
    /// No Sync has it registered: nothing.
    Unowned,
    /// Its Sync is writing: checked when the writes end.
    Deferred,
    /// Compare it with this (and, in correct mode, apply it). The caller must call
    /// [`Registry::check_done`] with `sync` afterwards.
    Check {
        /// Its Sync.
        sync: SyncKey,
        /// The revision the payload was written from.
        revision: String,
        /// The object.
        object: O,
        /// The Sync's part.
        shared: S,
    },
}

/// The registry. Not synchronised: the tracker holds it under one lock and does all I/O
/// outside it.
#[derive(Debug)]
pub struct Registry<O, S> {
    syncs: HashMap<SyncKey, Entry<O, S>>,
    owners: HashMap<ObjectKey, SyncKey>,
    seen: HashMap<ObjectKey, Seen>,
    /// Drifted objects per Sync (detect mode, or checks that keep failing), id -> reason.
    drifted: HashMap<SyncKey, BTreeMap<String, String>>,
    /// Objects with a check scheduled or running, and whether another change arrived meanwhile.
    in_flight: HashMap<ObjectKey, bool>,
    /// Checks holding a target right now, per Sync (between `target` and `check_done`).
    running: HashMap<SyncKey, usize>,
    /// Syncs writing right now: changes to their objects may be their own writes and prunes.
    writing: HashMap<SyncKey, usize>,
    /// Objects that changed while their Sync was writing.
    deferred: HashMap<SyncKey, BTreeSet<ObjectKey>>,
    /// Per writing Sync, the objects its writes leave alone ([`Registry::exempt`]).
    exempt: HashMap<SyncKey, BTreeSet<ObjectKey>>,
    next_ticket: u64,
}

impl<O, S> Default for Registry<O, S> {
    fn default() -> Self {
        Self {
            syncs: HashMap::new(),
            owners: HashMap::new(),
            seen: HashMap::new(),
            drifted: HashMap::new(),
            in_flight: HashMap::new(),
            running: HashMap::new(),
            writing: HashMap::new(),
            deferred: HashMap::new(),
            exempt: HashMap::new(),
            next_ticket: 0,
        }
    }
}

impl<O: Clone, S: Clone> Registry<O, S> {
    /// A ticket for a registration that is not an apply (a comparison after a restart).
    pub fn ticket(&mut self) -> Ticket {
        self.next_ticket += 1;
        Ticket(self.next_ticket)
    }

    /// `sync` starts writing: until [`Registry::end_apply`], changes to its objects are
    /// deferred. Returns the apply's ticket.
    pub fn begin_apply(&mut self, sync: &SyncKey) -> Ticket {
        *self.writing.entry(sync.clone()).or_insert(0) += 1;
        // Another apply's exemptions say nothing of what this one writes.
        self.exempt.remove(sync);
        self.ticket()
    }

    /// The writes of `sync` leave `keys` alone: each is registered with the manifest the
    /// revision being written wants, and the live object was that when the writes planned.
    /// Until the writes end a change to one of them is checked at once (towards its
    /// registered manifest, which is also the new revision's) instead of waiting for the
    /// writes, with `shared`, what the writes themselves use (the Sync's spec may have changed
    /// since it was registered: its mode, its identity). Only for a Sync with exactly one apply
    /// writing; objects registered differently are not exempt. Returns the exempt objects whose
    /// changes were deferred so far: check them now.
    pub fn exempt(
        &mut self,
        sync: &SyncKey,
        keys: &BTreeSet<ObjectKey>,
        shared: S,
    ) -> Vec<ObjectKey> {
        if self.writing.get(sync) != Some(&1) {
            return Vec::new();
        }
        let Some(entry) = self.syncs.get_mut(sync) else {
            return Vec::new();
        };
        entry.shared = shared;
        let keys: BTreeSet<ObjectKey> = keys
            .iter()
            .filter(|k| entry.objects.contains_key(*k) && self.owners.get(*k) == Some(sync))
            .cloned()
            .collect();
        let mut now = Vec::new();
        if let Some(deferred) = self.deferred.get_mut(sync) {
            deferred.retain(|key| {
                let exempt = keys.contains(key);
                if exempt {
                    now.push(key.clone());
                }
                !exempt
            });
        }
        self.exempt.insert(sync.clone(), keys);
        now
    }

    /// `sync`'s writes are over. Returns the objects that changed meanwhile: check them now,
    /// against what is registered.
    pub fn end_apply(&mut self, sync: &SyncKey) -> Vec<ObjectKey> {
        let Some(n) = self.writing.get_mut(sync) else {
            return Vec::new();
        };
        *n -= 1;
        if *n > 0 {
            return Vec::new();
        }
        self.writing.remove(sync);
        self.exempt.remove(sync);
        self.deferred
            .remove(sync)
            .unwrap_or_default()
            .into_iter()
            .collect()
    }

    /// Whether `sync` is writing.
    pub fn is_writing(&self, sync: &SyncKey) -> bool {
        self.writing.contains_key(sync)
    }

    /// Registers what an apply wrote. `seen` is each object's metadata signature as the apply
    /// left it: an object the watch has seen differently since is to be checked.
    pub fn register(
        &mut self,
        registration: Registration<O, S>,
        seen: BTreeMap<ObjectKey, Seen>,
    ) -> Registered {
        let Registration {
            sync,
            ticket,
            revision,
            scope,
            objects,
            shared,
        } = registration;
        if self.syncs.get(&sync).is_some_and(|e| e.ticket > ticket) {
            return Registered::Stale;
        }
        let shared_revision: std::sync::Arc<str> = revision.as_str().into();
        let written: BTreeMap<ObjectKey, Object<O>> = objects
            .into_iter()
            .map(|(key, payload)| {
                let object = Object {
                    revision: shared_revision.clone(),
                    payload,
                };
                (key, object)
            })
            .collect();
        let (objects, rendered) = match scope {
            Scope::Complete { rendered } => {
                self.drifted.remove(&sync);
                (written, Some(rendered))
            }
            Scope::Written => {
                let mut kept = self
                    .syncs
                    .remove(&sync)
                    .map(|e| e.objects)
                    .unwrap_or_default();
                if let Some(d) = self.drifted.get_mut(&sync) {
                    d.retain(|id, _| !written.keys().any(|k| k.to_string() == *id));
                }
                kept.extend(written);
                (kept, None)
            }
        };
        self.owners.retain(|_, owner| owner != &sync);
        for key in objects.keys() {
            self.owners.insert(key.clone(), sync.clone());
        }
        // A change deferred during these writes to an object whose state after them is known
        // (`seen`) is decided here, by comparing that state with the watch's latest: most are
        // the events of the apply's own writes, and checking each again at the end of the
        // writes would send a dry-run per written object (a rollout of many Deployments
        // queued such checks in front of real drift). The others stay deferred.
        if let Some(deferred) = self.deferred.get_mut(&sync) {
            deferred.retain(|key| !(seen.contains_key(key) && objects.contains_key(key)));
        }
        let mut check = Vec::new();
        for (key, applied) in seen {
            match self.seen.get(&key) {
                // A watch that starts later compares its first sight with the apply's result,
                // so an edit right after the apply is not taken for the applied state.
                None => {
                    self.seen.insert(key, applied);
                }
                // The watch has not seen this write yet (a loaded API server delivers its event
                // later): the write is the newest state known, and its event will match it.
                Some(watched) if is_behind(watched, &applied) => {
                    self.seen.insert(key, applied);
                }
                Some(watched) if objects.contains_key(&key) && is_candidate(&applied, watched) => {
                    check.push(key)
                }
                Some(_) => {}
            }
        }
        self.syncs.insert(
            sync,
            Entry {
                objects,
                shared,
                ticket,
                revision,
                rendered,
            },
        );
        Registered::Accepted { check }
    }

    /// Forgets `sync` (deleted or suspended): its objects are no longer checked, and its
    /// outstanding drift and deferred checks are dropped. Returns whether it was registered.
    pub fn unregister(&mut self, sync: &SyncKey) -> bool {
        self.owners.retain(|_, owner| owner != sync);
        self.drifted.remove(sync);
        self.deferred.remove(sync);
        self.exempt.remove(sync);
        self.syncs.remove(sync).is_some()
    }

    /// The watch saw `key` (created or changed) with signature `now`. Returns whether to check it.
    pub fn observe(&mut self, key: &ObjectKey, now: Seen) -> bool {
        // Every labelled object is remembered, owned yet or not: the event of our own create may
        // arrive before the Sync registers it, and the next change must still compare.
        let previous = self.seen.insert(key.clone(), now.clone());
        // First sight is the state just applied (or found): not drift.
        self.owners.contains_key(key) && previous.is_some_and(|prev| is_candidate(&prev, &now))
    }

    /// The watch saw `key` deleted. Returns whether to check it.
    pub fn deleted(&mut self, key: &ObjectKey) -> bool {
        self.seen.remove(key);
        self.owners.contains_key(key)
    }

    /// A check of `key` is wanted. Returns whether to start one; if one is scheduled or
    /// running already, it runs once more when it ends.
    pub fn begin_check(&mut self, key: &ObjectKey) -> bool {
        if let Some(again) = self.in_flight.get_mut(key) {
            *again = true;
            return false;
        }
        self.in_flight.insert(key.clone(), false);
        true
    }

    /// The check of `key` ended. Returns whether to run it again (a change arrived meanwhile).
    pub fn end_check(&mut self, key: &ObjectKey) -> bool {
        match self.in_flight.get_mut(key) {
            Some(again) if *again => {
                *again = false;
                true
            }
            _ => {
                self.in_flight.remove(key);
                false
            }
        }
    }

    /// What a check of `key` compares with, or why there is none.
    pub fn target(&mut self, key: &ObjectKey) -> Target<O, S> {
        let Some(sync) = self.owners.get(key).cloned() else {
            return Target::Unowned;
        };
        if self.writing.contains_key(&sync)
            && !self
                .exempt
                .get(&sync)
                .is_some_and(|keys| keys.contains(key))
        {
            self.deferred.entry(sync).or_default().insert(key.clone());
            return Target::Deferred;
        }
        let Some(entry) = self.syncs.get(&sync) else {
            return Target::Unowned;
        };
        let Some(object) = entry.objects.get(key) else {
            return Target::Unowned;
        };
        let target = Target::Check {
            sync: sync.clone(),
            revision: object.revision.to_string(),
            object: object.payload.clone(),
            shared: entry.shared.clone(),
        };
        *self.running.entry(sync).or_insert(0) += 1;
        target
    }

    /// A check that [`Registry::target`] started for `sync` is over.
    pub fn check_done(&mut self, sync: &SyncKey) {
        if let Some(n) = self.running.get_mut(sync) {
            *n -= 1;
            if *n == 0 {
                self.running.remove(sync);
            }
        }
    }

    /// How many checks of `sync`'s objects are running (a correction may be writing).
    pub fn checks_running(&self, sync: &SyncKey) -> usize {
        self.running.get(sync).copied().unwrap_or(0)
    }

    /// Records (`Some(reason)`) or clears (`None`) the drift of `key`. Returns the Sync's whole
    /// drift list when it changed; `None` when nothing changed or the Sync is not registered.
    pub fn set_drift(
        &mut self,
        sync: &SyncKey,
        key: &ObjectKey,
        reason: Option<&str>,
    ) -> Option<Vec<(String, String)>> {
        if !self.syncs.contains_key(sync) {
            return None;
        }
        let id = key.to_string();
        let entry = self.drifted.entry(sync.clone()).or_default();
        let changed = match reason {
            Some(r) => entry.insert(id, r.to_owned()).as_deref() != Some(r),
            None => entry.remove(&id).is_some(),
        };
        changed.then(|| {
            entry
                .iter()
                .map(|(id, reason)| (id.clone(), reason.clone()))
                .collect()
        })
    }

    /// Marks the Sync owning `key` drifted: its check keeps failing, so the next periodic
    /// reconcile must apply everything instead of skipping.
    /// Returns the Sync marked.
    pub fn mark_dirty(&mut self, key: &ObjectKey) -> Option<SyncKey> {
        let sync = self.owners.get(key).cloned()?;
        self.drifted
            .entry(sync.clone())
            .or_default()
            .insert(key.to_string(), "check failed".to_owned());
        Some(sync)
    }

    /// Records drift found outside the watch (a comparison after a restart).
    pub fn note_drift(&mut self, sync: SyncKey, id: String, reason: String) {
        self.drifted.entry(sync).or_default().insert(id, reason);
    }

    /// `sync`'s drifted objects, id -> reason.
    pub fn drifted(&self, sync: &SyncKey) -> Vec<(String, String)> {
        self.drifted
            .get(sync)
            .map(|d| d.iter().map(|(a, b)| (a.clone(), b.clone())).collect())
            .unwrap_or_default()
    }

    fn clean(&self, sync: &SyncKey) -> Option<&Entry<O, S>> {
        let entry = self.syncs.get(sync)?;
        self.drifted
            .get(sync)
            .is_none_or(|d| d.is_empty())
            .then_some(entry)
    }

    /// `sync`'s complete registration now stands for `revision` too: a revision that renders
    /// exactly what is registered (recorded without writes). Later comparisons use the newest
    /// revision; nothing else changes.
    pub fn advance(&mut self, sync: &SyncKey, from: &str, rendered: &str, revision: &str) -> bool {
        let Some(entry) = self.syncs.get_mut(sync) else {
            return false;
        };
        if entry.revision != from || entry.rendered.as_deref() != Some(rendered) {
            return false;
        }
        entry.revision = revision.to_owned();
        let shared: std::sync::Arc<str> = revision.into();
        for object in entry.objects.values_mut() {
            object.revision = shared.clone();
        }
        true
    }

    /// Whether `sync` is registered.
    pub fn is_registered(&self, sync: &SyncKey) -> bool {
        self.syncs.contains_key(sync)
    }

    /// Whether `sync` is registered with no drift outstanding.
    pub fn is_clean(&self, sync: &SyncKey) -> bool {
        self.clean(sync).is_some()
    }

    /// The revision and rendering digest of `sync`'s newest registration, if it was complete
    /// and no drift is outstanding.
    pub fn clean_rendering(&self, sync: &SyncKey) -> Option<(String, String)> {
        let entry = self.clean(sync)?;
        Some((entry.revision.clone(), entry.rendered.clone()?))
    }

    /// `sync`'s registered objects if no drift is outstanding: what the watch has seen
    /// unchanged since they were written.
    pub fn vouched(&self, sync: &SyncKey) -> Vec<(ObjectKey, O)> {
        self.clean(sync)
            .map(|e| {
                e.objects
                    .iter()
                    .map(|(k, o)| (k.clone(), o.payload.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The revision `key` is registered at, and for which Sync.
    pub fn registered_at(&self, key: &ObjectKey) -> Option<(&SyncKey, &str)> {
        let sync = self.owners.get(key)?;
        let object = self.syncs.get(sync)?.objects.get(key)?;
        Some((sync, &*object.revision))
    }
}

#[cfg(test)]
mod tests;
