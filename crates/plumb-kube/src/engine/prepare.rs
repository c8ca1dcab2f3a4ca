//! Before the first write: resolve every kind, read the live state, plan, and validate every
//! object the server can validate yet with a server-side dry-run. Writes nothing.

use std::collections::{BTreeMap, BTreeSet};

use futures::{StreamExt, stream};
use plumb_core::{Action, Inventory, Manifest, ObjectKey, PlanOptions};
use serde_json::Value;

use super::{Engine, Progress, SyncOptions};
use crate::cluster::{Cluster, FIELD_MANAGER};
use crate::discovery::{Resolved, Resolver};
use crate::error::{Error, ObjectError, Result};

/// One object as a request needs it: its manifest, its kind, and what is known of its live
/// copy (a [`summary`], or the whole object where a comparison needs it).
#[derive(Clone, Copy)]
pub(super) struct Target<'a> {
    pub manifest: &'a Manifest,
    pub resolved: &'a Resolved,
    pub live: Option<&'a Value>,
}

/// Everything learned before the first write.
///
/// Memory: a sync of thousands of objects must not hold several trees of each. The plan owns
/// the manifests (nothing else copies them); of each live object only its [`summary`] is
/// kept, and its whole body (as compact JSON, a fraction of a `Value` tree) only until its
/// dry-run result has been compared with it; dry-run results are compared as they arrive and
/// dropped, at most [`SyncOptions::concurrency`] (and the engine's [`ObjectBudget`]) at once.
pub(super) struct Prepared {
    pub resolver: Resolver,
    pub plan: plumb_core::Plan,
    /// The kind of each planned object.
    pub kinds: BTreeMap<ObjectKey, Resolved>,
    /// The [`summary`] of each live object read (planned, or stale in the inventory), as
    /// compact JSON (a `Value` tree of a few small maps costs several KiB; its text a few
    /// hundred bytes); written objects get the summary of what their write returned.
    pub live: BTreeMap<ObjectKey, String>,
    /// Whole live objects (compact JSON) not compared with a dry-run result yet: those that
    /// could not be validated up front, or all of them when the caller keeps values.
    pub live_full: BTreeMap<ObjectKey, String>,
    /// Objects validated up front: whether applying them would change them (their dry-run
    /// result compared with the live object).
    pub changes: BTreeMap<ObjectKey, bool>,
    /// Server-side dry-run results, kept only when the caller keeps values (`diff`).
    pub dry_run: BTreeMap<ObjectKey, Value>,
    /// Objects known to be live as planned ([`SyncOptions::vouched`]): neither dry-run nor
    /// written.
    pub vouched: BTreeSet<ObjectKey>,
}

impl Prepared {
    /// What a sync would do with a planned object, judged from the snapshot and dry-run. An
    /// object that already looks as desired but that Plumb never applied is configured all
    /// the same ([`plumb_core::predicted_action`]).
    pub fn predicted_action(&self, key: &ObjectKey) -> Action {
        match (self.live.contains_key(key), self.changes.get(key)) {
            (false, _) => Action::Created,
            (true, _) if self.vouched.contains(key) => Action::Unchanged,
            (true, Some(false)) => Action::Unchanged,
            (true, _) => Action::Configured,
        }
    }

    /// A live object in full, if it was read and kept (`keep_values`).
    pub fn whole_live(&self, key: &ObjectKey) -> Option<Value> {
        serde_json::from_str(self.live_full.get(key)?).ok()
    }

    /// The [`summary`] of a live object, if it was read.
    pub fn live_summary(&self, key: &ObjectKey) -> Option<Value> {
        serde_json::from_str(self.live.get(key)?).ok()
    }
}

/// What the steps after a live object's comparison need of it: its `metadata` (labels and
/// annotations for ownership and waves, uid for the prune precondition, resourceVersion and
/// generation for the drift watch), with each `managedFields` entry reduced to who applied or
/// updated it and when (its field set, often most of the object, is dropped).
pub(super) fn summary(mut object: Value) -> Value {
    let mut metadata = object
        .get_mut("metadata")
        .map(Value::take)
        .unwrap_or(Value::Null);
    if let Some(fields) = metadata
        .get_mut("managedFields")
        .and_then(Value::as_array_mut)
    {
        for entry in fields {
            if let Some(entry) = entry.as_object_mut() {
                entry.remove("fieldsV1");
            }
        }
    }
    serde_json::json!({ "metadata": metadata })
}

/// What the plan reads of a live object ([`summary`] as JSON): its labels (ownership) and
/// annotations (waves), nothing else, so that the plan's view of thousands of live objects
/// stays small while it exists.
fn plan_view(summary: &str) -> Value {
    let mut summary: Value = serde_json::from_str(summary).unwrap_or(Value::Null);
    let mut metadata = serde_json::Map::new();
    for field in ["labels", "annotations"] {
        if let Some(v) = summary["metadata"].get_mut(field).map(Value::take) {
            metadata.insert(field.to_owned(), v);
        }
    }
    serde_json::json!({ "metadata": metadata })
}

/// Whether applying `manifest`, whose dry-run gave `predicted`, would change nothing on the
/// `live` object. A controller may have written the object between the snapshot and the
/// dry-run (e.g. a Deployment's revision annotation): then the dry-run carries a newer
/// resourceVersion, and a fresh read decides before the object is called changed.
pub(super) async fn unchanged_on<C: Cluster>(
    cluster: &C,
    target: Target<'_>,
    predicted: &Value,
    live: &Value,
) -> bool {
    if plumb_core::unchanged(predicted, live, FIELD_MANAGER) {
        return true;
    }
    let rv = |v: &Value| v["metadata"]["resourceVersion"].as_str().map(str::to_owned);
    if rv(predicted) == rv(live) {
        return false;
    }
    matches!(
        cluster
            .get(target.resolved, target.manifest.namespace(), target.manifest.name())
            .await,
        Ok(Some(fresh)) if plumb_core::unchanged(predicted, &fresh, FIELD_MANAGER)
    )
}

impl<C: Cluster> Engine<C> {
    /// Resolves, snapshots, plans and dry-runs. No writes. `keep_values`: keep every whole
    /// live object and dry-run result (for a diff); otherwise each is dropped once compared.
    pub(super) async fn prepare(
        &self,
        desired: Vec<Manifest>,
        inventory: &Inventory,
        opts: &SyncOptions,
        keep_values: bool,
        progress: &dyn Progress,
    ) -> Result<Prepared> {
        let resolver = self.resolver_for(&desired).await?;

        // Namespaces from discovery; unknown kinds are an error naming the manifest.
        let mut desired = desired;
        let mut resolved_by_key = BTreeMap::new();
        // Hook objects are read when they run, not in the snapshot.
        let mut hook_keys = BTreeSet::new();
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
            if plumb_core::phases::is_hook_annotated(&m.object) {
                hook_keys.insert(m.key());
            }
            resolved_by_key.insert(m.key(), resolved);
        }

        // Live snapshot of every desired object and every inventory entry: whole objects of
        // the desired ones (to compare with their dry-run results), summaries of the others.
        let mut wanted: Vec<(ObjectKey, Resolved)> = resolved_by_key
            .iter()
            .filter(|(k, r)| r.served && !hook_keys.contains(*k))
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        let compared: BTreeSet<ObjectKey> = wanted.iter().map(|(k, _)| k.clone()).collect();
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
        let (live, mut live_full) = self
            .snapshot(wanted, &opts.sync, opts.concurrency, |key| {
                keep_values || compared.contains(key)
            })
            .await?;

        let view: BTreeMap<ObjectKey, Value> = live
            .iter()
            .map(|(key, summary)| (key.clone(), plan_view(summary)))
            .collect();
        let plan = plumb_core::plan(
            desired,
            &view,
            inventory,
            &PlanOptions {
                sync: opts.sync.clone(),
                prune: opts.prune,
                allow_empty: opts.allow_empty,
                adopt: opts.adopt,
                own: opts.own,
                upgrade: opts.upgrade.unwrap_or(!inventory.is_empty()),
            },
        )?;
        drop(view);

        // Each planned manifest's kind (hooks and skipped objects are not planned objects).
        let kinds: BTreeMap<ObjectKey, Resolved> = plan
            .manifests()
            .map(|m| {
                let key = m.key();
                let resolved = resolved_by_key
                    .remove(&key)
                    .expect("every planned manifest was resolved above");
                (key, resolved)
            })
            .collect();
        drop(resolved_by_key);
        // Whole live copies of objects that are not planned (hooks) are not compared.
        live_full.retain(|key, _| keep_values || kinds.contains_key(key));

        let vouched: BTreeSet<ObjectKey> = plan
            .manifests()
            .filter(|m| {
                let key = m.key();
                live.contains_key(&key)
                    && opts
                        .vouched
                        .get(&key)
                        .and_then(|json| serde_json::from_str::<Value>(json).ok())
                        .is_some_and(|applied| applied == m.object)
            })
            .map(Manifest::key)
            .collect();
        if !keep_values {
            live_full.retain(|key, _| !vouched.contains(key));
        }
        if !opts.dry_run {
            progress.planned(&vouched);
        }

        // Validate everything the server can validate now. Objects in a Namespace this sync
        // creates, or of a kind a CRD of this sync defines, are validated after that stage.
        let new_namespaces: BTreeSet<&str> = plan
            .manifests()
            .filter(|m| m.kind() == "Namespace" && m.group().is_empty())
            .filter(|m| !live.contains_key(&m.key()))
            .map(Manifest::name)
            .collect();
        // Each checked object takes its whole live copy along, and drops it (and its dry-run
        // result) once compared: memory holds as many as run at once, not the whole sync.
        let planned: Vec<&Manifest> = plan.manifests().collect();
        // Indices and owned keys, not references, in the stream: its future must be Send for
        // any caller.
        let checkable: Vec<(usize, ObjectKey, Option<String>)> = planned
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let key = m.key();
                let checkable = kinds[&key].served
                    && !vouched.contains(&key)
                    && m.namespace().is_none_or(|ns| !new_namespaces.contains(ns));
                if !checkable {
                    return None;
                }
                let full = if keep_values {
                    live_full.get(&key).cloned()
                } else {
                    live_full.remove(&key)
                };
                Some((i, key, full))
            })
            .collect();
        let (planned_ref, kinds_ref, live_ref) = (&planned, &kinds, &live);
        let results: Vec<(ObjectKey, std::result::Result<Checked, ObjectError>)> =
            stream::iter(checkable)
                .map(|(i, key, full)| async move {
                    let _permit = self.budget.acquire().await;
                    let summary = live_ref
                        .get(&key)
                        .and_then(|s| serde_json::from_str::<Value>(s).ok());
                    let target = Target {
                        manifest: planned_ref[i],
                        resolved: &kinds_ref[&key],
                        live: summary.as_ref(),
                    };
                    let result = self.apply_one(target, opts, true).await;
                    let checked = match result {
                        Ok(predicted) => {
                            let live = full.and_then(|f| serde_json::from_str::<Value>(&f).ok());
                            let changes = match &live {
                                Some(live) => {
                                    !unchanged_on(&self.cluster, target, &predicted, live).await
                                }
                                None => true,
                            };
                            Ok(Checked {
                                changes,
                                predicted: keep_values.then(|| without_managed_fields(predicted)),
                            })
                        }
                        Err(failure) => Err(failure),
                    };
                    (key, checked)
                })
                .buffer_unordered(opts.concurrency.max(1))
                .collect()
                .await;
        drop(planned);
        let mut changes = BTreeMap::new();
        let mut dry_run = BTreeMap::new();
        // Hook objects are validated too (a create dry-run), where the server can yet.
        let mut failures = self.validate_hooks(&plan, &resolver, &new_namespaces).await;
        for (key, result) in results {
            match result {
                Ok(checked) => {
                    if let Some(v) = checked.predicted {
                        dry_run.insert(key.clone(), v);
                    }
                    changes.insert(key, checked.changes);
                }
                Err(failure) => failures.push(failure),
            }
        }
        if !failures.is_empty() {
            failures.sort_by(|a, b| a.object.cmp(&b.object));
            return Err(Error::DryRun { failures });
        }

        Ok(Prepared {
            resolver,
            plan,
            kinds,
            live,
            live_full,
            changes,
            dry_run,
            vouched,
        })
    }

    /// After discovery learned new kinds: re-resolve targets that were not served, and read their
    /// live state.
    pub(super) async fn resolve_pending(&self, prep: &mut Prepared) -> Result<()> {
        let pending: Vec<(ObjectKey, Resolved)> = prep
            .kinds
            .iter()
            .filter(|(_, r)| !r.served)
            .filter_map(|(key, r)| {
                let r = &r.resource;
                let resolved = prep.resolver.resolve_gvk(&r.group, &r.version, &r.kind)?;
                Some((key.clone(), resolved))
            })
            .collect();
        for (key, resolved) in pending {
            if resolved.served {
                let live = self
                    .cluster
                    .get(&resolved, key.namespace.as_deref(), &key.name)
                    .await
                    .map_err(|source| Error::Api {
                        context: format!("reading {key}"),
                        source,
                    })?;
                if let Some(live) = live {
                    prep.live_full.insert(key.clone(), live.to_string());
                    prep.live.insert(key.clone(), summary(live).to_string());
                }
            }
            prep.kinds.insert(key, resolved);
        }
        Ok(())
    }
}

/// One object validated up front.
struct Checked {
    /// Whether applying would change it.
    changes: bool,
    /// Its dry-run result, if kept.
    predicted: Option<Value>,
}

/// A dry-run result without its `managedFields`: only compared after normalisation, which
/// ignores them.
fn without_managed_fields(mut v: Value) -> Value {
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    v
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_summary_keeps_the_metadata_later_steps_read_and_drops_the_rest() {
        let live = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "web", "namespace": "a", "uid": "u-1", "resourceVersion": "7",
                "generation": 3,
                "labels": { "plumb.dev/sync-name": "s" },
                "annotations": { "argocd.argoproj.io/sync-wave": "2" },
                "managedFields": [
                    { "manager": "plumb", "operation": "Apply", "apiVersion": "apps/v1",
                      "time": "2026-12-07T00:00:00Z", "fieldsType": "FieldsV1",
                      "fieldsV1": { "f:spec": { "f:replicas": {} } } },
                    { "manager": "kubectl", "operation": "Update", "subresource": "scale",
                      "fieldsV1": { "f:spec": { "f:replicas": {} } } }
                ]
            },
            "spec": { "replicas": 2 },
            "status": { "readyReplicas": 2 }
        });
        let s = summary(live.clone());
        assert_eq!(
            s.as_object().map(|o| o.len()),
            Some(1),
            "only metadata: {s}"
        );
        let mut expected = live["metadata"].clone();
        for entry in expected["managedFields"].as_array_mut().unwrap() {
            entry.as_object_mut().unwrap().remove("fieldsV1");
        }
        assert_eq!(s["metadata"], expected);
        // What the rules read of it still answers as of the whole object.
        assert!(plumb_core::applied_by(&s, "plumb"));
        assert!(plumb_core::only_imperative_managers(
            "conflict with \"kubectl\" using apps/v1: .spec.replicas",
            Some(&s)
        ));
        assert_eq!(plumb_core::phases::wave_of_object(&s), 2);
    }
}
