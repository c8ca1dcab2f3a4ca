//! Writing one stage: each object whose dry-run shows a change is applied (server-side),
//! concurrently; an apply conflict with imperative edits only is taken back as drift.

use std::collections::BTreeMap;

use futures::{StreamExt, stream};
use plumb_core::{Action, ChangeSet, Manifest, ObjectKey};
use serde_json::Value;

use super::prepare::{Prepared, Target};
use super::{Engine, Progress, SyncOptions};
use crate::cluster::{ApplyMode, Cluster, FIELD_MANAGER};
use crate::error::ObjectError;

/// The outcome of writing one object.
struct Written {
    action: Action,
    /// The object as the write returned it.
    live: Option<Value>,
    failure: Option<ObjectError>,
}

impl Written {
    fn unchanged() -> Self {
        Self {
            action: Action::Unchanged,
            live: None,
            failure: None,
        }
    }

    fn failed(f: ObjectError) -> Self {
        Self {
            action: Action::Failed,
            live: None,
            failure: Some(f),
        }
    }
}

impl<C: Cluster> Engine<C> {
    /// Applies one stage concurrently, reporting in apply order. Objects whose dry-run result
    /// equals the live object are not written. Failures are added to `failures`.
    pub(super) async fn apply_stage(
        &self,
        prep: &mut Prepared,
        manifests: &[Manifest],
        opts: &SyncOptions,
        progress: &dyn Progress,
        failures: &mut Vec<ObjectError>,
    ) -> ChangeSet {
        let prep_ref = &*prep;
        let mut results: Vec<(ObjectKey, Written)> =
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
            let message = written.failure.as_ref().map(|f| f.message.clone());
            failures.extend(written.failure);
            changes.push(key, written.action, message);
        }
        changes
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
            if plumb_core::unchanged(&predicted, live, FIELD_MANAGER) {
                return Written::unchanged();
            }
            // A controller may have written the object between the snapshot and the dry-run
            // (e.g. a Deployment's revision annotation): then the dry-run carries a newer
            // resourceVersion. Compare with a fresh read before calling it changed.
            let rv = |v: &Value| v["metadata"]["resourceVersion"].as_str().map(str::to_owned);
            if rv(&predicted) != rv(live)
                && let Ok(Some(fresh)) = self
                    .cluster
                    .get(
                        &target.resolved,
                        target.manifest.namespace(),
                        target.manifest.name(),
                    )
                    .await
                && plumb_core::unchanged(&predicted, &fresh, FIELD_MANAGER)
            {
                return Written::unchanged();
            }
        }
        match self.apply_one(target, opts, false).await {
            Ok(v) => Written {
                action: if target.live.is_some() {
                    Action::Configured
                } else {
                    Action::Created
                },
                live: Some(v),
                failure: None,
            },
            Err(f) => Written::failed(f),
        }
    }

    /// Server-side apply of one object (or its dry-run).
    ///
    /// Fields that another manager changed imperatively (an `Update`: `kubectl edit`, `scale`,
    /// `patch`) are drift and are taken back without `force_conflicts`; fields that another
    /// applier owns (an `Apply`: another GitOps tool, `kubectl apply --server-side`) conflict
    /// unless `force_conflicts` ([`plumb_core::only_imperative_managers`]).
    pub(super) async fn apply_one(
        &self,
        target: &Target,
        opts: &SyncOptions,
        dry_run: bool,
    ) -> Result<Value, ObjectError> {
        let m = &target.manifest;
        let mode = ApplyMode {
            force: opts.force_conflicts,
            dry_run,
        };
        let apply = |mode| {
            self.cluster
                .apply(&target.resolved, m.namespace(), m.name(), &m.object, mode)
        };
        let result = match apply(mode).await {
            Err(kube::Error::Api(status))
                if status.code == 409
                    && !opts.force_conflicts
                    && plumb_core::only_imperative_managers(
                        &status.message,
                        target.live.as_ref(),
                    ) =>
            {
                apply(ApplyMode {
                    force: true,
                    ..mode
                })
                .await
            }
            other => other,
        };
        result
            .map_err(|e| ObjectError::from_api(m.key(), m.source.clone(), e, !opts.force_conflicts))
    }
}
