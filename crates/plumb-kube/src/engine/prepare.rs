//! Before the first write: resolve every kind, read the live state, plan, and validate every
//! object the server can validate yet with a server-side dry-run. Writes nothing.

use std::collections::{BTreeMap, BTreeSet};

use futures::{StreamExt, stream};
use plumb_core::{Action, Inventory, Manifest, ObjectKey, PlanOptions};
use serde_json::Value;

use super::{Engine, SyncOptions};
use crate::cluster::Cluster;
use crate::discovery::{Resolved, Resolver};
use crate::error::{Error, ObjectError, Result};

/// A desired object, resolved against the cluster.
pub(super) struct Target {
    pub manifest: Manifest,
    pub resolved: Resolved,
    pub live: Option<Value>,
}

/// Everything learned before the first write.
pub(super) struct Prepared {
    pub resolver: Resolver,
    pub plan: plumb_core::Plan,
    pub targets: BTreeMap<ObjectKey, Target>,
    pub live: BTreeMap<ObjectKey, Value>,
    /// Server-side dry-run results of the objects that could be validated up front.
    pub dry_run: BTreeMap<ObjectKey, Value>,
    /// Objects known to be live as planned ([`SyncOptions::vouched`]): neither dry-run nor
    /// written.
    pub vouched: BTreeSet<ObjectKey>,
}

impl Prepared {
    /// What a sync would do with a planned object, judged from the snapshot and dry-run.
    pub fn predicted_action(&self, key: &ObjectKey) -> Action {
        plumb_core::predicted_action(
            self.live.get(key),
            self.dry_run.get(key),
            self.vouched.contains(key),
            crate::FIELD_MANAGER,
        )
    }
}

impl<C: Cluster> Engine<C> {
    /// Resolves, snapshots, plans and dry-runs. No writes.
    pub(super) async fn prepare(
        &self,
        desired: Vec<Manifest>,
        inventory: &Inventory,
        opts: &SyncOptions,
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

        // Live snapshot of every desired object and every inventory entry.
        let mut wanted: Vec<(ObjectKey, Resolved)> = resolved_by_key
            .iter()
            .filter(|(k, r)| r.served && !hook_keys.contains(*k))
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
                own: opts.own,
                upgrade: opts.upgrade.unwrap_or(!inventory.is_empty()),
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
        let results: Vec<(ObjectKey, std::result::Result<Value, ObjectError>)> =
            stream::iter(checkable)
                .map(|key| async move {
                    let result = self.apply_one(&targets_ref[&key], opts, true).await;
                    (key, result)
                })
                .buffer_unordered(opts.concurrency.max(1))
                .collect()
                .await;
        let mut dry_run = BTreeMap::new();
        // Hook objects are validated too (a create dry-run), where the server can yet.
        let mut failures = self.validate_hooks(&plan, &resolver, &new_namespaces).await;
        for (key, result) in results {
            match result {
                Ok(mut v) => {
                    // Only compared after normalisation, which ignores managedFields: don't keep them.
                    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                        meta.remove("managedFields");
                    }
                    dry_run.insert(key, v);
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
            targets,
            live,
            dry_run,
            vouched,
        })
    }

    /// After discovery learned new kinds: re-resolve targets that were not served, and read their
    /// live state.
    pub(super) async fn resolve_pending(&self, prep: &mut Prepared) -> Result<()> {
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
                self.cluster
                    .get(&resolved, key.namespace.as_deref(), &key.name)
                    .await
                    .map_err(|source| Error::Api {
                        context: format!("reading {key}"),
                        source,
                    })?
            } else {
                None
            };
            let t = prep.targets.get_mut(&key).expect("key taken from targets");
            t.resolved = resolved;
            t.live = live;
        }
        Ok(())
    }
}
