//! One sync of a rendered revision: resolve, snapshot, plan, validate with a server-side
//! dry-run, apply in stages, prune what this sync owns and no longer wants.
//!
//! The steps live in their own modules: [`prepare`] (resolve, snapshot, plan, dry-run; no
//! writes), `apply` (staged writes), `prune`, `wait` (CRDs, health) and `check` (one
//! object's drift). Every request goes through a [`Cluster`]; the unit tests in `tests` run
//! the safety rules against an in-memory one.

mod apply;
mod check;
mod phases;
mod prepare;
mod prune;
mod snapshot;
mod wait;

#[cfg(test)]
mod memory;
#[cfg(test)]
mod phases_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use plumb_core::{Action, ChangeSet, HealthVerdict, Inventory, Manifest, ObjectKey, SyncId};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::cluster::{Cluster, KubeCluster};
use crate::discovery::{Kinds, Resolver};
use crate::error::{Error, ObjectError, Result};

pub use check::{ObjectCheck, ObjectState};
pub use phases::HookRun;
pub use wait::awaited;

/// Options of one sync.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// The sync unit: owns the applied objects; its namespace is the default namespace of
    /// namespaced objects that name none, unless `target_namespace` is set.
    pub sync: SyncId,
    /// Namespace for namespaced objects that name none (default: the sync's namespace).
    pub target_namespace: Option<String>,
    /// Delete objects that left the desired state (only those this sync owns).
    pub prune: bool,
    /// Permit an empty desired state to prune everything.
    pub allow_empty: bool,
    /// Take over fields that another field manager owns.
    pub force_conflicts: bool,
    /// Take over objects that carry another Sync's ownership labels.
    pub adopt: bool,
    /// Mark applied objects with the sync's ownership labels (the default). Off for a
    /// one-off apply that owns nothing and prunes nothing (`plumb install`).
    pub own: bool,
    /// Validate and report, write nothing.
    pub dry_run: bool,
    /// How many objects are applied at once within a stage.
    pub concurrency: usize,
    /// How long to wait for CRDs to become Established.
    pub crd_timeout: Duration,
    /// How long a revision with several waves or with hooks may wait, in all, for each wave
    /// to become healthy before the next and for its hooks to complete (the Sync's timeout).
    pub timeout: Duration,
    /// Whether the sync unit applied a revision before (Helm's upgrade hooks run, not its
    /// install hooks); `None`: whether the previous inventory is not empty.
    pub upgrade: Option<bool>,
    /// The sync unit is being deleted: of `desired` (its last applied revision) only the
    /// `pre-delete` hooks run, then every owned object of the inventory is pruned, then the
    /// `post-delete` hooks run. Set `prune` and `allow_empty` with it.
    pub deleting: bool,
    /// Set to `true` when the revision no longer matters (a newer one, a spec change): a
    /// running wave or hook wait stops, later waves are skipped, nothing is pruned and no
    /// `fail` hook runs; the objects stopped are failures saying so.
    pub cancel: Option<tokio::sync::watch::Receiver<bool>>,
    /// Objects the caller vouches are live exactly as last applied, with that manifest as
    /// compact JSON (after namespace defaulting and ownership labels, as in
    /// [`SyncReport::applied`]). A planned object whose manifest is identical, and which
    /// exists, is reported unchanged without a dry-run or a write. The agent passes the
    /// objects its drift watch has seen unchanged since its last apply.
    pub vouched: BTreeMap<ObjectKey, String>,
}

impl SyncOptions {
    /// Defaults for a sync unit: no prune, no force, concurrency 8.
    pub fn new(sync: SyncId) -> Self {
        Self {
            sync,
            target_namespace: None,
            prune: false,
            allow_empty: false,
            force_conflicts: false,
            adopt: false,
            own: true,
            dry_run: false,
            concurrency: 8,
            crd_timeout: Duration::from_secs(60),
            timeout: Duration::from_secs(300),
            upgrade: None,
            deleting: false,
            cancel: None,
            vouched: BTreeMap::new(),
        }
    }
}

/// What a sync did.
#[derive(Debug, Clone)]
pub struct SyncReport {
    /// One entry per object: created, configured, unchanged, pruned, skipped or failed.
    pub changes: ChangeSet,
    /// The inventory to record for the next sync. After a failure it still holds every object
    /// that was in the previous inventory, so that nothing escapes a later prune.
    pub inventory: Inventory,
    /// The desired objects as applied (namespaces filled in, ownership labels set), in apply
    /// order: what a health wait looks at.
    pub applied: Vec<Manifest>,
    /// Each applied object as the sync last saw it (returned by its write, or read before it
    /// when unchanged), reduced to its `metadata` (`managedFields` without their field sets),
    /// as compact JSON `{"metadata": ...}`: what a watch compares later changes with. Text,
    /// not a `Value` tree (several KiB each): parse one at a time.
    pub live_meta: BTreeMap<ObjectKey, String>,
    /// Every object whose write or prune failed, every hook that failed, and every object
    /// of a wave that did not become healthy before the next one, in the order of `changes`.
    pub failures: Vec<ObjectError>,
    /// The hook objects that ran (or were skipped after a failure), in run order.
    pub hooks: Vec<HookRun>,
}

impl SyncReport {
    /// The error of a sync in which some objects failed ([`Error::Apply`]: which ones, and how
    /// many others were written; earlier stages are not rolled back), or `None`.
    pub fn error(&self) -> Option<Error> {
        if self.failures.is_empty() {
            return None;
        }
        let written = self
            .changes
            .entries
            .iter()
            .filter(|c| matches!(c.action, Action::Created | Action::Configured))
            .count();
        Some(Error::Apply {
            failures: self.failures.clone(),
            written,
        })
    }
}

/// One object's difference between the cluster and the desired state.
#[derive(Debug, Clone)]
pub struct ObjectDiff {
    /// The object.
    pub key: ObjectKey,
    /// What a sync would do with it.
    pub action: Action,
    /// The live object, if any.
    pub live: Option<Value>,
    /// What the server would make of the desired object (dry-run result); the manifest itself
    /// when the server cannot dry-run it yet (its CRD or Namespace is part of this sync).
    /// `None` for objects that would be pruned.
    pub desired: Option<Value>,
}

/// Receives each object's outcome as soon as it is known (progress bars, logs).
pub trait Progress: Sync {
    /// The number of objects the sync will handle.
    fn start(&self, _total: usize) {}
    /// One object is done.
    fn done(&self, _key: &ObjectKey, _action: Action) {}
    /// A health wait ([`Engine::wait_healthy_with`]) looked at every object again: `pending`
    /// are the verdicts of those not healthy yet (in the order given), of `total`.
    fn waiting(&self, _pending: &[(ObjectKey, HealthVerdict)], _total: usize) {}
    /// Whether [`Progress::waiting`] does anything: a health wait builds its list of pending
    /// objects on every event only for a reporter that shows it.
    fn reports_waiting(&self) -> bool {
        true
    }
    /// The plan is made: `vouched` are the planned objects the sync will neither validate nor
    /// write, known to be live exactly as planned ([`SyncOptions::vouched`]). Called once per
    /// sync (not a dry run), before any validation or write.
    fn planned(&self, _vouched: &BTreeSet<ObjectKey>) {}
}

/// No progress reporting.
pub struct NoProgress;
impl Progress for NoProgress {
    fn reports_waiting(&self) -> bool {
        false
    }
}

/// One discovery, shared by every engine that holds a clone: a sync, its health wait and
/// its drift registration resolve kinds with one discovery, and so do the agent's
/// concurrent reconciles. Reused while younger than its maximum age; a kind it does not know
/// makes the engine discover again once before calling the kind unknown, and applying CRDs
/// refreshes it.
#[derive(Clone)]
pub struct DiscoveryCache {
    state: Arc<Mutex<Option<Discovered>>>,
    max_age: Duration,
}

/// One discovery and when it ran.
type Discovered = (Instant, Arc<Kinds>);

impl DiscoveryCache {
    /// How long a discovery is reused by default.
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(30);

    /// An empty cache whose discoveries are reused for `max_age`.
    pub fn new(max_age: Duration) -> Self {
        Self {
            state: Arc::new(Mutex::new(None)),
            max_age,
        }
    }

    /// The cached kinds, discovering when there are none or they are too old. The flag says
    /// whether they were discovered by this call.
    async fn get<C: Cluster>(&self, cluster: &C) -> Result<(Arc<Kinds>, bool)> {
        let mut state = self.state.lock().await;
        if let Some((at, kinds)) = state.as_ref()
            && at.elapsed() < self.max_age
        {
            return Ok((kinds.clone(), false));
        }
        let kinds = Arc::new(cluster.discover().await?);
        *state = Some((Instant::now(), kinds.clone()));
        Ok((kinds, true))
    }

    /// Discovers again.
    async fn refresh<C: Cluster>(&self, cluster: &C) -> Result<Arc<Kinds>> {
        let mut state = self.state.lock().await;
        let kinds = Arc::new(cluster.discover().await?);
        *state = Some((Instant::now(), kinds.clone()));
        Ok(kinds)
    }
}

impl Default for DiscoveryCache {
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX_AGE)
    }
}

/// A bound on the objects whose requests (a dry-run and its comparison with the live object,
/// or a write) run at once, shared by every engine that holds a clone: the agent's
/// concurrent Syncs together hold at most this many dry-run results and whole live objects,
/// however many Syncs apply at once. Without one, each sync is bounded by its
/// [`SyncOptions::concurrency`] alone.
#[derive(Clone, Default)]
pub struct ObjectBudget(Option<Arc<tokio::sync::Semaphore>>);

impl ObjectBudget {
    /// At most `objects` at once (at least one).
    pub fn new(objects: usize) -> Self {
        Self(Some(Arc::new(tokio::sync::Semaphore::new(objects.max(1)))))
    }

    /// Waits for a turn; the turn ends when the permit is dropped.
    async fn acquire(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let semaphore = self.0.clone()?;
        // Never closed: acquiring cannot fail.
        semaphore.acquire_owned().await.ok()
    }
}

/// The sync engine: Plumb's pipeline from rendered manifests to cluster state, over a
/// [`Cluster`] (the real one by default).
#[derive(Clone)]
pub struct Engine<C = KubeCluster> {
    cluster: C,
    discovery: DiscoveryCache,
    budget: ObjectBudget,
}

impl Engine<KubeCluster> {
    /// An engine talking to the cluster through `client`.
    pub fn new(client: kube::Client) -> Self {
        Self::with_cluster(KubeCluster::new(client))
    }

    /// The client.
    pub fn client(&self) -> &kube::Client {
        self.cluster.client()
    }
}

impl<C: Cluster> Engine<C> {
    /// An engine over `cluster`, with its own discovery cache.
    pub fn with_cluster(cluster: C) -> Self {
        Self {
            cluster,
            discovery: DiscoveryCache::default(),
            budget: ObjectBudget::default(),
        }
    }

    /// The same engine, resolving kinds through `cache` (shared with other engines).
    pub fn sharing(mut self, cache: DiscoveryCache) -> Self {
        self.discovery = cache;
        self
    }

    /// The same engine, bounding its requests by `budget` (shared with other engines).
    pub fn budgeted(mut self, budget: ObjectBudget) -> Self {
        self.budget = budget;
        self
    }

    /// The cluster.
    pub fn cluster(&self) -> &C {
        &self.cluster
    }

    /// The kinds the shared discovery found (discovering if it is empty or old).
    pub async fn kinds(&self) -> Result<Arc<Kinds>> {
        Ok(self.discovery.get(&self.cluster).await?.0)
    }

    /// A resolver over the shared discovery.
    pub async fn resolver(&self) -> Result<Resolver> {
        Ok(Resolver::from_kinds(
            self.discovery.get(&self.cluster).await?.0,
        ))
    }

    /// A resolver knowing the CRDs in `desired`, in which every kind of `desired` resolves
    /// if the cluster serves it: a kind the cached discovery does not know makes it discover
    /// again (once).
    async fn resolver_for(&self, desired: &[Manifest]) -> Result<Resolver> {
        let (kinds, fresh) = self.discovery.get(&self.cluster).await?;
        let mut resolver = Resolver::from_kinds(kinds);
        resolver.learn_crds(desired);
        if !fresh && desired.iter().any(|m| resolver.resolve(m).is_none()) {
            resolver.replace_kinds(self.discovery.refresh(&self.cluster).await?);
        }
        Ok(resolver)
    }

    /// Applies `desired` as the sync unit `opts.sync`, pruning (if asked) what `inventory` holds
    /// and `desired` no longer does.
    ///
    /// Nothing is written unless every object passes a server-side dry-run first (objects whose
    /// CRD or Namespace this same sync creates are validated right after that stage). Objects
    /// whose dry-run result equals the live object are reported unchanged without a write.
    /// Nothing is pruned when anything failed.
    ///
    /// Hooks and waves (`plumb_core::phases`): the `pre`, `main` and `post` waves run in order,
    /// each after the previous one is healthy and its hooks completed (within
    /// [`SyncOptions::timeout`] in all); the prune follows the main phase; a failure skips
    /// every later wave and runs the `fail` hooks. Hook objects are validated with the rest
    /// and never enter the inventory.
    pub async fn sync(
        &self,
        desired: Vec<Manifest>,
        inventory: &Inventory,
        opts: &SyncOptions,
        progress: &dyn Progress,
    ) -> Result<SyncReport> {
        let desired = if opts.deleting {
            phases::delete_hooks_only(desired)
        } else {
            desired
        };
        let mut prep = self
            .prepare(desired, inventory, opts, false, progress)
            .await?;
        let hook_count: usize = prep.plan.sync_steps().map(|s| s.hooks.len()).sum();
        progress.start(prep.plan.apply_len() + prep.plan.prune.len() + hook_count);
        let mut changes = ChangeSet::new();
        report_not_run(&prep.plan, &mut changes);

        if opts.dry_run {
            for (step, h) in prep
                .plan
                .sync_steps()
                .flat_map(|s| s.hooks.iter().map(move |h| (s, h)))
            {
                // Skipped, not created: a dry run runs no hook (and drift detection, which
                // reads a dry run's creations as deleted objects, must not count hooks).
                let key = phases::hook_key(&h.manifest);
                progress.done(&key, Action::Skipped);
                changes.push(
                    key,
                    Action::Skipped,
                    Some(format!(
                        "dry run: would run as a {} hook (wave {})",
                        step.phase, step.wave
                    )),
                );
            }
            for m in prep.plan.manifests() {
                let key = m.key();
                let action = prep.predicted_action(&key);
                progress.done(&key, action);
                changes.push(key, action, Some("dry run".to_owned()));
            }
            for entry in &prep.plan.prune {
                progress.done(&entry.key, Action::Pruned);
                changes.push(
                    entry.key.clone(),
                    Action::Pruned,
                    Some("dry run".to_owned()),
                );
            }
            report_prune_skipped(&prep.plan, &mut changes, progress);
            return Ok(SyncReport {
                changes,
                inventory: inventory.clone(),
                applied: into_manifests(prep.plan),
                live_meta: BTreeMap::new(),
                failures: Vec::new(),
                hooks: Vec::new(),
            });
        }

        report_prune_skipped(&prep.plan, &mut changes, progress);
        let mut failures = Vec::new();
        let mut hooks = Vec::new();
        // Phase by phase, wave by wave, stage by stage; prune after the main phase.
        let failed = self
            .run_phases(
                &mut prep,
                opts,
                progress,
                &mut changes,
                &mut failures,
                &mut hooks,
            )
            .await?;
        let inventory_out = plumb_core::inventory_after(inventory, &prep.plan, &changes, failed);

        let live_meta = prep
            .kinds
            .keys()
            .filter_map(|key| Some((key.clone(), prep.live.remove(key)?)))
            .collect();
        Ok(SyncReport {
            changes,
            inventory: inventory_out,
            applied: into_manifests(prep.plan),
            live_meta,
            failures,
            hooks,
        })
    }

    /// What a sync would change, object by object, including objects it would prune. Writes
    /// nothing. Unchanged objects are left out.
    pub async fn diff(
        &self,
        desired: Vec<Manifest>,
        inventory: &Inventory,
        opts: &SyncOptions,
    ) -> Result<Vec<ObjectDiff>> {
        let prep = self
            .prepare(desired, inventory, opts, true, &NoProgress)
            .await?;
        let mut diffs = Vec::new();
        for m in prep.plan.manifests() {
            let key = m.key();
            let action = prep.predicted_action(&key);
            if action == Action::Unchanged {
                continue;
            }
            let desired = prep
                .dry_run
                .get(&key)
                .cloned()
                .unwrap_or_else(|| m.object.clone());
            diffs.push(ObjectDiff {
                live: prep.whole_live(&key),
                desired: Some(desired),
                key,
                action,
            });
        }
        for entry in &prep.plan.prune {
            diffs.push(ObjectDiff {
                key: entry.key.clone(),
                action: Action::Pruned,
                live: prep.whole_live(&entry.key),
                desired: None,
            });
        }
        Ok(diffs)
    }
}

/// The plan's resources in apply order, moved out of it.
fn into_manifests(plan: plumb_core::Plan) -> Vec<Manifest> {
    plan.steps
        .into_iter()
        .flat_map(|s| s.stages.into_iter().flat_map(|(_, ms)| ms))
        .collect()
}

/// Rendered objects that are not applied at all, and why (`argocd.argoproj.io/hook: Skip`, a
/// Helm test hook, an install hook on an upgrade).
fn report_not_run(plan: &plumb_core::Plan, changes: &mut ChangeSet) {
    for (m, why) in &plan.not_run {
        changes.push(phases::hook_key(m), Action::Skipped, Some(why.clone()));
    }
}

/// Stale objects that are not deleted, and why (not owned by this sync, already gone, ...).
fn report_prune_skipped(plan: &plumb_core::Plan, changes: &mut ChangeSet, progress: &dyn Progress) {
    for (entry, why) in &plan.prune_skipped {
        progress.done(&entry.key, Action::Skipped);
        changes.push(
            entry.key.clone(),
            Action::Skipped,
            Some(format!("not pruned: {why}")),
        );
    }
}
