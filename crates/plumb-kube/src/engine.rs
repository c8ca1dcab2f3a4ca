//! One sync of a rendered revision: resolve, snapshot, plan, validate with a server-side
//! dry-run, apply in stages, prune what this sync owns and no longer wants.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt, stream};
use kube::api::{
    DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions, PropagationPolicy,
    TypeMeta,
};
use kube::{Api, Client};
use plumb_core::{
    Action, ChangeSet, HealthStatus, HealthVerdict, Inventory, InventoryEntry, Manifest, ObjectKey,
    PlanOptions, Stage, SyncId, health, same_state,
};
use serde_json::Value;

use crate::discovery::{Resolved, Resolver};
use crate::error::{ApiFailure, Error, Result, describe_api_error};

/// The field manager Plumb applies with.
pub const FIELD_MANAGER: &str = "plumb";

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
    /// Validate and report, write nothing.
    pub dry_run: bool,
    /// How many objects are applied at once within a stage.
    pub concurrency: usize,
    /// How long to wait for CRDs to become Established.
    pub crd_timeout: Duration,
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
            dry_run: false,
            concurrency: 8,
            crd_timeout: Duration::from_secs(60),
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
    /// The `metadata` of each applied object as the sync last saw it (returned by its write,
    /// or read before it when unchanged): what a watch compares later changes with.
    pub live_meta: BTreeMap<ObjectKey, Value>,
    /// Objects whose write failed for a transient reason (server error, throttling,
    /// timeout): a retry may pass. Every other failure is a refusal of the object itself.
    pub transient_failures: BTreeSet<ObjectKey>,
}

/// The outcome of writing one object.
struct Written {
    action: Action,
    message: Option<String>,
    /// The object as the write returned it.
    live: Option<Value>,
    /// Whether a failure may pass on retry.
    transient: bool,
}

impl Written {
    fn unchanged() -> Self {
        Self {
            action: Action::Unchanged,
            message: None,
            live: None,
            transient: false,
        }
    }

    fn failed(f: ApiFailure) -> Self {
        Self {
            action: Action::Failed,
            message: Some(f.message),
            live: None,
            transient: f.transient,
        }
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

/// How an object compares with its desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectState {
    /// As desired.
    InSync,
    /// Exists but differs (someone edited it).
    Modified,
    /// Does not exist (someone deleted it).
    Missing,
}

/// The outcome of [`Engine::check_object`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectCheck {
    /// What was found.
    pub state: ObjectState,
    /// Whether it was applied again.
    pub corrected: bool,
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
}

/// No progress reporting.
pub struct NoProgress;
impl Progress for NoProgress {}

/// The sync engine: Plumb's pipeline from rendered manifests to cluster state.
#[derive(Clone)]
pub struct Engine {
    client: Client,
}

/// A desired object, resolved against the cluster.
struct Target {
    manifest: Manifest,
    resolved: Resolved,
    live: Option<Value>,
}

/// Everything learned before the first write.
struct Prepared {
    resolver: Resolver,
    plan: plumb_core::Plan,
    targets: BTreeMap<ObjectKey, Target>,
    live: BTreeMap<ObjectKey, Value>,
    /// Server-side dry-run results of the objects that could be validated up front.
    dry_run: BTreeMap<ObjectKey, Value>,
    /// Objects known to be live as planned ([`SyncOptions::vouched`]): neither dry-run nor
    /// written.
    vouched: BTreeSet<ObjectKey>,
}

impl Engine {
    /// An engine talking to the cluster through `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Applies `desired` as the sync unit `opts.sync`, pruning (if asked) what `inventory` holds
    /// and `desired` no longer does.
    ///
    /// Nothing is written unless every object passes a server-side dry-run first (objects whose
    /// CRD or Namespace this same sync creates are validated right after that stage). Objects
    /// whose dry-run result equals the live object are reported unchanged without a write.
    /// Nothing is pruned when anything failed.
    pub async fn sync(
        &self,
        desired: Vec<Manifest>,
        inventory: &Inventory,
        opts: &SyncOptions,
        progress: &dyn Progress,
    ) -> Result<SyncReport> {
        let mut prep = self.prepare(desired, inventory, opts).await?;
        progress.start(prep.plan.apply_len() + prep.plan.prune.len());
        let mut changes = ChangeSet::new();

        if opts.dry_run {
            for m in prep.plan.manifests() {
                let key = m.key();
                let action = predicted_action(&prep, &key);
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
                applied: prep.plan.manifests().cloned().collect(),
                live_meta: BTreeMap::new(),
                transient_failures: BTreeSet::new(),
            });
        }

        report_prune_skipped(&prep.plan, &mut changes, progress);
        let stages = prep.plan.stages.clone();
        let mut failed = false;
        let mut transient_failures = BTreeSet::new();
        for (stage, manifests) in &stages {
            if failed {
                for m in manifests {
                    progress.done(&m.key(), Action::Skipped);
                    changes.push(
                        m.key(),
                        Action::Skipped,
                        Some("not applied: an earlier stage failed".to_owned()),
                    );
                }
                continue;
            }
            let stage_changes = self
                .apply_stage(
                    &mut prep,
                    manifests,
                    opts,
                    progress,
                    &mut transient_failures,
                )
                .await?;
            failed = stage_changes.has_failures();
            let crds_touched = stage_changes.entries.iter().any(|c| {
                c.key.kind == "CustomResourceDefinition"
                    && matches!(c.action, Action::Created | Action::Configured)
            });
            changes.extend(stage_changes);
            if *stage == Stage::Definitions && crds_touched && !failed {
                self.await_crds_established(manifests, opts.crd_timeout)
                    .await?;
                prep.resolver.refresh(self.client.clone()).await?;
                self.resolve_pending(&mut prep).await?;
            }
        }

        let mut inventory_out = prep.plan.new_inventory.clone();
        if failed {
            // Keep every previously owned object in the inventory, so that a later sync can still
            // prune it, and add whatever was written.
            let mut kept = inventory.clone();
            for c in &changes.entries {
                if matches!(
                    c.action,
                    Action::Created | Action::Configured | Action::Unchanged
                ) && let Some(t) = prep.targets.get(&c.key)
                {
                    kept.entries
                        .insert(InventoryEntry::from_manifest(&t.manifest));
                }
            }
            inventory_out = kept;
            for entry in &prep.plan.prune {
                progress.done(&entry.key, Action::Skipped);
                changes.push(
                    entry.key.clone(),
                    Action::Skipped,
                    Some("not pruned: the sync had failures".to_owned()),
                );
            }
        } else {
            for entry in &prep.plan.prune {
                let result = self.prune(&prep, entry).await;
                match result {
                    Ok(()) => {
                        progress.done(&entry.key, Action::Pruned);
                        changes.push(entry.key.clone(), Action::Pruned, None);
                    }
                    Err(message) => {
                        progress.done(&entry.key, Action::Failed);
                        changes.push(entry.key.clone(), Action::Failed, Some(message));
                        inventory_out.entries.insert(entry.clone());
                    }
                }
            }
        }

        let live_meta = prep
            .targets
            .iter()
            .filter_map(|(key, t)| Some((key.clone(), t.live.as_ref()?.get("metadata")?.clone())))
            .collect();
        Ok(SyncReport {
            changes,
            inventory: inventory_out,
            applied: prep.plan.manifests().cloned().collect(),
            live_meta,
            transient_failures,
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
        let prep = self.prepare(desired, inventory, opts).await?;
        let mut diffs = Vec::new();
        for m in prep.plan.manifests() {
            let key = m.key();
            let action = predicted_action(&prep, &key);
            if action == Action::Unchanged {
                continue;
            }
            let desired = prep
                .dry_run
                .get(&key)
                .cloned()
                .unwrap_or_else(|| m.object.clone());
            diffs.push(ObjectDiff {
                live: prep.live.get(&key).cloned(),
                desired: Some(desired),
                key,
                action,
            });
        }
        for entry in &prep.plan.prune {
            diffs.push(ObjectDiff {
                key: entry.key.clone(),
                action: Action::Pruned,
                live: prep.live.get(&entry.key).cloned(),
                desired: None,
            });
        }
        Ok(diffs)
    }

    /// Resolves, snapshots, plans and dry-runs. No writes.
    async fn prepare(
        &self,
        desired: Vec<Manifest>,
        inventory: &Inventory,
        opts: &SyncOptions,
    ) -> Result<Prepared> {
        let mut resolver = Resolver::new(self.client.clone()).await?;
        resolver.learn_crds(&desired);

        // Namespaces from discovery; unknown kinds are an error naming the manifest.
        let mut desired = desired;
        let mut resolved_by_key = BTreeMap::new();
        for m in &mut desired {
            let Some(resolved) = resolver.resolve(m) else {
                return Err(Error::UnknownKind {
                    object: Box::new(m.key()),
                    kind: m.kind().to_owned(),
                    api_version: m.api_version().to_owned(),
                    source_hint: m
                        .source
                        .as_ref()
                        .map(|s| format!(" (defined in {s})"))
                        .unwrap_or_default(),
                });
            };
            if resolved.namespaced {
                if m.namespace().is_none() {
                    let ns = opts
                        .target_namespace
                        .as_deref()
                        .unwrap_or(&opts.sync.namespace);
                    m.set_namespace(Some(ns));
                }
            } else {
                m.set_namespace(None);
            }
            resolved_by_key.insert(m.key(), resolved);
        }

        // Live snapshot of every desired object and every inventory entry.
        let mut wanted: Vec<(ObjectKey, Resolved)> = resolved_by_key
            .iter()
            .filter(|(_, r)| r.served)
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        for entry in &inventory.entries {
            if resolved_by_key.contains_key(&entry.key) {
                continue;
            }
            if let Some(r) =
                resolver.resolve_gvk(&entry.key.group, entry.version(), &entry.key.kind)
                && r.served
            {
                wanted.push((entry.key.clone(), r));
            }
        }
        let live = self.snapshot(wanted, opts.concurrency).await?;

        let plan = plumb_core::plan(
            desired,
            &live,
            inventory,
            &PlanOptions {
                sync: opts.sync.clone(),
                prune: opts.prune,
                allow_empty: opts.allow_empty,
                adopt: opts.adopt,
            },
        )?;

        let mut targets = BTreeMap::new();
        for m in plan.manifests() {
            let key = m.key();
            let resolved = resolved_by_key
                .get(&key)
                .cloned()
                .expect("every planned manifest was resolved above");
            targets.insert(
                key.clone(),
                Target {
                    manifest: m.clone(),
                    resolved,
                    live: live.get(&key).cloned(),
                },
            );
        }

        let vouched: BTreeSet<ObjectKey> = targets
            .iter()
            .filter(|(key, t)| {
                t.live.is_some()
                    && opts
                        .vouched
                        .get(*key)
                        .and_then(|json| serde_json::from_str::<Value>(json).ok())
                        .is_some_and(|applied| applied == t.manifest.object)
            })
            .map(|(key, _)| key.clone())
            .collect();

        // Validate everything the server can validate now. Objects in a Namespace this sync
        // creates, or of a kind a CRD of this sync defines, are validated after that stage.
        let new_namespaces: BTreeSet<&str> = targets
            .values()
            .filter(|t| t.manifest.kind() == "Namespace" && t.manifest.group().is_empty())
            .filter(|t| t.live.is_none())
            .map(|t| t.manifest.name())
            .collect();
        // Owned keys, not references, in the stream: its future must be Send for any caller.
        let checkable: Vec<ObjectKey> = targets
            .iter()
            .filter(|(k, t)| t.resolved.served && !vouched.contains(*k))
            .filter(|(_, t)| {
                t.manifest
                    .namespace()
                    .is_none_or(|ns| !new_namespaces.contains(ns))
            })
            .map(|(k, _)| k.clone())
            .collect();
        let targets_ref = &targets;
        let results: Vec<(ObjectKey, std::result::Result<Value, ApiFailure>)> =
            stream::iter(checkable)
                .map(|key| async move {
                    let result = self.apply_one(&targets_ref[&key], opts, true).await;
                    (key, result)
                })
                .buffer_unordered(opts.concurrency.max(1))
                .collect()
                .await;
        let mut dry_run = BTreeMap::new();
        let mut errors = Vec::new();
        let mut all_transient = true;
        for (key, result) in results {
            match result {
                Ok(mut v) => {
                    // Only compared after normalisation, which ignores managedFields: don't keep them.
                    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                        meta.remove("managedFields");
                    }
                    dry_run.insert(key, v);
                }
                Err(failure) => {
                    all_transient &= failure.transient;
                    errors.push(format!(
                        "  {}: {}",
                        describe_target(&targets[&key]),
                        failure.message
                    ))
                }
            }
        }
        if !errors.is_empty() {
            errors.sort();
            return Err(Error::DryRun {
                failures: errors,
                retryable: all_transient,
            });
        }

        Ok(Prepared {
            resolver,
            plan,
            targets,
            live,
            dry_run,
            vouched,
        })
    }

    /// Reads the live copy of `wanted`: one LIST per kind and namespace where many objects
    /// share them (a large sync costs a handful of requests, not one per object), single GETs
    /// otherwise.
    async fn snapshot(
        &self,
        wanted: Vec<(ObjectKey, Resolved)>,
        concurrency: usize,
    ) -> Result<BTreeMap<ObjectKey, Value>> {
        /// From this many objects of one kind in one namespace on, a LIST is cheaper.
        const LIST_FROM: usize = 5;
        type Group = (String, String, String, Option<String>);
        let mut groups: BTreeMap<Group, Vec<(ObjectKey, Resolved)>> = BTreeMap::new();
        for (key, r) in wanted {
            let ns = if r.namespaced {
                key.namespace.clone()
            } else {
                None
            };
            let g = (
                r.resource.group.clone(),
                r.resource.version.clone(),
                r.resource.plural.clone(),
                ns,
            );
            groups.entry(g).or_default().push((key, r));
        }
        let mut singles = Vec::new();
        let mut lists = Vec::new();
        for (_, members) in groups {
            if members.len() >= LIST_FROM {
                lists.push(members);
            } else {
                singles.extend(members);
            }
        }
        let mut live: BTreeMap<ObjectKey, Value> = stream::iter(singles)
            .map(|(key, r)| async move {
                let api = self.api(&r, key.namespace.as_deref());
                let obj = api.get_opt(&key.name).await.map_err(|source| Error::Api {
                    context: format!("reading {key}"),
                    source,
                })?;
                Ok::<_, Error>(obj.map(|o| (key, to_value(o))))
            })
            .buffer_unordered(concurrency.max(1) * 2)
            .try_filter_map(|x| async move { Ok(x) })
            .try_collect()
            .await?;
        for members in lists {
            let (first_key, r) = &members[0];
            let api = self.api(r, first_key.namespace.as_deref());
            let by_name: BTreeMap<&str, &ObjectKey> =
                members.iter().map(|(k, _)| (k.name.as_str(), k)).collect();
            let mut params = ListParams::default().limit(500);
            loop {
                let page = api.list(&params).await.map_err(|source| Error::Api {
                    context: format!("listing {} in {:?}", r.resource.plural, first_key.namespace),
                    source,
                })?;
                for mut obj in page.items {
                    let Some(key) = obj.metadata.name.as_deref().and_then(|n| by_name.get(n))
                    else {
                        continue;
                    };
                    // Listed items come without apiVersion and kind; the comparison needs them.
                    obj.types = Some(TypeMeta {
                        api_version: r.resource.api_version.clone(),
                        kind: r.resource.kind.clone(),
                    });
                    live.insert((*key).clone(), to_value(obj));
                }
                match page.metadata.continue_.filter(|c| !c.is_empty()) {
                    Some(token) => params = params.continue_token(&token),
                    None => break,
                }
            }
        }
        Ok(live)
    }

    /// Applies one stage concurrently. Objects whose dry-run result equals the live object are
    /// not written.
    async fn apply_stage(
        &self,
        prep: &mut Prepared,
        manifests: &[Manifest],
        opts: &SyncOptions,
        progress: &dyn Progress,
        transient: &mut BTreeSet<ObjectKey>,
    ) -> Result<ChangeSet> {
        let prep_ref = &*prep;
        let results: Vec<(ObjectKey, Written)> =
            stream::iter(manifests.iter().map(Manifest::key).collect::<Vec<_>>())
                .map(|key| async move {
                    let target = &prep_ref.targets[&key];
                    let written = self.write(prep_ref, target, opts).await;
                    progress.done(&key, written.action);
                    (key, written)
                })
                .buffer_unordered(opts.concurrency.max(1))
                .collect()
                .await;
        let mut results = results;
        // Report in apply order, whatever order the writes finished in.
        let order: BTreeMap<ObjectKey, usize> = manifests
            .iter()
            .enumerate()
            .map(|(i, m)| (m.key(), i))
            .collect();
        results.sort_by_key(|(k, ..)| order[k]);
        let mut changes = ChangeSet::new();
        for (key, written) in results {
            if let (Some(v), Some(t)) = (written.live, prep.targets.get_mut(&key)) {
                t.live = Some(v);
            }
            if written.transient {
                transient.insert(key.clone());
            }
            changes.push(key, written.action, written.message);
        }
        Ok(changes)
    }

    /// Writes one object unless its dry-run result shows no change.
    async fn write(&self, prep: &Prepared, target: &Target, opts: &SyncOptions) -> Written {
        let key = target.manifest.key();
        if prep.vouched.contains(&key) {
            return Written::unchanged();
        }
        let predicted = match prep.dry_run.get(&key) {
            Some(v) => v.clone(),
            // Not validated up front (its Namespace or CRD came with this sync): validate now.
            None => match self.apply_one(target, opts, true).await {
                Ok(v) => v,
                Err(f) => return Written::failed(f),
            },
        };
        if let Some(live) = &target.live {
            if same_state(&predicted, live) {
                return Written::unchanged();
            }
            // A controller may have written the object between the snapshot and the dry-run
            // (e.g. a Deployment's revision annotation): then the dry-run carries a newer
            // resourceVersion. Compare with a fresh read before calling it changed.
            let rv = |v: &Value| v["metadata"]["resourceVersion"].as_str().map(str::to_owned);
            if rv(&predicted) != rv(live)
                && let Ok(Some(fresh)) = self
                    .api(&target.resolved, target.manifest.namespace())
                    .get_opt(target.manifest.name())
                    .await
                && same_state(&predicted, &to_value(fresh))
            {
                return Written::unchanged();
            }
        }
        match self.apply_one(target, opts, false).await {
            Ok(v) => {
                let action = if target.live.is_some() {
                    Action::Configured
                } else {
                    Action::Created
                };
                Written {
                    action,
                    message: None,
                    live: Some(v),
                    transient: false,
                }
            }
            Err(f) => Written::failed(f),
        }
    }

    /// Server-side apply of one object (or its dry-run); errors as user-facing text.
    ///
    /// Fields that another manager changed imperatively (an `Update`: `kubectl edit`, `scale`,
    /// `patch`) are drift and are taken back without `force_conflicts`; fields that another
    /// applier owns (an `Apply`: another GitOps tool, `kubectl apply --server-side`) conflict
    /// unless `force_conflicts`.
    async fn apply_one(
        &self,
        target: &Target,
        opts: &SyncOptions,
        dry_run: bool,
    ) -> std::result::Result<Value, ApiFailure> {
        let m = &target.manifest;
        let api = self.api(&target.resolved, m.namespace());
        let mut params = PatchParams::apply(FIELD_MANAGER);
        if opts.force_conflicts {
            params = params.force();
        }
        if dry_run {
            params = params.dry_run();
        }
        let result = match api.patch(m.name(), &params, &Patch::Apply(&m.object)).await {
            Err(kube::Error::Api(status))
                if status.code == 409
                    && !opts.force_conflicts
                    && only_imperative_managers(&status.message, target.live.as_ref()) =>
            {
                api.patch(m.name(), &params.force(), &Patch::Apply(&m.object))
                    .await
            }
            other => other,
        };
        result
            .map(to_value)
            .map_err(|e| ApiFailure::new(&e, !opts.force_conflicts))
    }

    /// Deletes one stale object, only if it is still the very object that was checked for
    /// ownership (same uid).
    async fn prune(
        &self,
        prep: &Prepared,
        entry: &InventoryEntry,
    ) -> std::result::Result<(), String> {
        let Some(r) = prep
            .resolver
            .resolve_gvk(&entry.key.group, entry.version(), &entry.key.kind)
        else {
            return Err(format!("kind {} is no longer served", entry.key.kind));
        };
        let api = self.api(&r, entry.key.namespace.as_deref());
        let uid = prep
            .live
            .get(&entry.key)
            .and_then(|v| v["metadata"]["uid"].as_str())
            .map(str::to_owned);
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&entry.key.name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(describe_api_error(&e, false)),
        }
    }

    /// Waits until every CRD among `manifests` is Established.
    async fn await_crds_established(
        &self,
        manifests: &[Manifest],
        timeout: Duration,
    ) -> Result<()> {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let names: Vec<&str> = manifests
            .iter()
            .filter(|m| m.kind() == "CustomResourceDefinition")
            .map(|m| m.name())
            .collect();
        let deadline = tokio::time::Instant::now() + timeout;
        for name in names {
            loop {
                let crd = api.get_opt(name).await.map_err(|source| Error::Api {
                    context: format!("reading CustomResourceDefinition {name}"),
                    source,
                })?;
                let established = crd
                    .and_then(|c| c.status)
                    .and_then(|s| s.conditions)
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    });
                if established {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::Timeout {
                        what: format!("CustomResourceDefinition {name} to become Established"),
                        seconds: timeout.as_secs(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// After discovery learned new kinds: re-resolve targets that were not served, and read their
    /// live state.
    async fn resolve_pending(&self, prep: &mut Prepared) -> Result<()> {
        let keys: Vec<ObjectKey> = prep
            .targets
            .iter()
            .filter(|(_, t)| !t.resolved.served)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let Some(resolved) = prep.resolver.resolve(&prep.targets[&key].manifest) else {
                continue;
            };
            let live = if resolved.served {
                self.api(&resolved, key.namespace.as_deref())
                    .get_opt(&key.name)
                    .await
                    .map_err(|source| Error::Api {
                        context: format!("reading {key}"),
                        source,
                    })?
                    .map(to_value)
            } else {
                None
            };
            let t = prep.targets.get_mut(&key).expect("key taken from targets");
            t.resolved = resolved;
            t.live = live;
        }
        Ok(())
    }

    /// Compares one applied object with its desired state, cheaply: one server-side dry-run
    /// (which also reads the live object). With `correct`, a drifted or deleted object is
    /// applied again. This is the drift path: it touches only the object that changed.
    pub async fn check_object(
        &self,
        manifest: &Manifest,
        resolved: &Resolved,
        force_conflicts: bool,
        correct: bool,
    ) -> Result<ObjectCheck> {
        let key = manifest.key();
        let api = self.api(resolved, manifest.namespace());
        let live = api
            .get_opt(manifest.name())
            .await
            .map_err(|source| Error::Api {
                context: format!("reading {key}"),
                source,
            })?
            .map(to_value);
        let target = Target {
            manifest: manifest.clone(),
            resolved: resolved.clone(),
            live: live.clone(),
        };
        let mut opts = SyncOptions::new(SyncId::new("", ""));
        opts.force_conflicts = force_conflicts;
        let state = match &live {
            None => ObjectState::Missing,
            Some(live) => {
                let predicted =
                    self.apply_one(&target, &opts, true)
                        .await
                        .map_err(|f| Error::DryRun {
                            failures: vec![format!("  {key}: {}", f.message)],
                            retryable: f.transient,
                        })?;
                if same_state(&predicted, live) {
                    return Ok(ObjectCheck {
                        state: ObjectState::InSync,
                        corrected: false,
                    });
                }
                ObjectState::Modified
            }
        };
        if !correct {
            return Ok(ObjectCheck {
                state,
                corrected: false,
            });
        }
        self.apply_one(&target, &opts, false)
            .await
            .map_err(|f| Error::Apply {
                failures: vec![format!("  {key}: {}", f.message)],
                written: 0,
                retryable: f.transient,
            })?;
        Ok(ObjectCheck {
            state,
            corrected: true,
        })
    }

    /// Waits until every object in `objects` is healthy (or suspended), polling, for at most
    /// `timeout`. Returns every object's verdict; on timeout, an error naming the objects that are
    /// not healthy and why.
    pub async fn wait_healthy(
        &self,
        objects: &[Manifest],
        timeout: Duration,
    ) -> Result<Vec<(ObjectKey, HealthVerdict)>> {
        self.wait_healthy_with(objects, timeout, &NoProgress).await
    }

    /// [`Engine::wait_healthy`], telling `progress` after every look which objects are still
    /// awaited and why ([`Progress::waiting`]).
    pub async fn wait_healthy_with(
        &self,
        objects: &[Manifest],
        timeout: Duration,
        progress: &dyn Progress,
    ) -> Result<Vec<(ObjectKey, HealthVerdict)>> {
        let resolver = Resolver::new(self.client.clone()).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let verdicts: Vec<(ObjectKey, HealthVerdict)> = stream::iter(0..objects.len())
                .map(|i| {
                    let resolver = &resolver;
                    let m = &objects[i];
                    async move {
                        let key = m.key();
                        let verdict = match resolver.resolve(m).filter(|r| r.served) {
                            None => HealthVerdict::missing(),
                            Some(r) => match self.api(&r, m.namespace()).get_opt(m.name()).await {
                                Ok(Some(obj)) => health(&to_value(obj)),
                                Ok(None) => HealthVerdict::missing(),
                                Err(e) => {
                                    return Err(Error::Api {
                                        context: format!("reading {key}"),
                                        source: e,
                                    });
                                }
                            },
                        };
                        Ok((key, verdict))
                    }
                })
                .buffered(16)
                .try_collect()
                .await?;
            let ready = |v: &HealthVerdict| {
                matches!(v.status, HealthStatus::Healthy | HealthStatus::Suspended)
            };
            let pending: Vec<(ObjectKey, HealthVerdict)> = verdicts
                .iter()
                .filter(|(_, v)| !ready(v))
                .cloned()
                .collect();
            progress.waiting(&pending, verdicts.len());
            if pending.is_empty() {
                return Ok(verdicts);
            }
            if tokio::time::Instant::now() >= deadline {
                let unhealthy = pending
                    .iter()
                    .map(|(k, v)| format!("  {k}: {} ({})", v.status, v.reason))
                    .collect();
                return Err(Error::Unhealthy {
                    seconds: timeout.as_secs(),
                    unhealthy,
                    verdicts,
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn api(&self, r: &Resolved, namespace: Option<&str>) -> Api<DynamicObject> {
        match (r.namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &r.resource),
            _ => Api::all_with(self.client.clone(), &r.resource),
        }
    }
}

/// Whether every field manager named in an apply conflict message changed the object only
/// through `Update` operations (imperative edits), never through `Apply`.
fn only_imperative_managers(message: &str, live: Option<&Value>) -> bool {
    let managers: Vec<&str> = message
        .split("with \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    let Some(entries) = live.and_then(|l| l["metadata"]["managedFields"].as_array()) else {
        return false;
    };
    !managers.is_empty()
        && managers.iter().all(|name| {
            let ops: Vec<&str> = entries
                .iter()
                .filter(|e| e["manager"].as_str() == Some(name))
                .filter_map(|e| e["operation"].as_str())
                .collect();
            !ops.is_empty() && ops.iter().all(|op| *op == "Update")
        })
}

/// What a sync would do with a planned object, judged from the snapshot and dry-run.
fn predicted_action(prep: &Prepared, key: &ObjectKey) -> Action {
    match (prep.live.get(key), prep.dry_run.get(key)) {
        (None, _) => Action::Created,
        (Some(_), _) if prep.vouched.contains(key) => Action::Unchanged,
        (Some(live), Some(dry)) if same_state(dry, live) => Action::Unchanged,
        (Some(_), _) => Action::Configured,
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

fn describe_target(t: &Target) -> String {
    match &t.manifest.source {
        Some(s) => format!("{} ({s})", t.manifest.key()),
        None => t.manifest.key().to_string(),
    }
}

fn to_value(obj: DynamicObject) -> Value {
    serde_json::to_value(obj).expect("a DynamicObject always serialises to JSON")
}
