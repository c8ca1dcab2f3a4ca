//! Writing one stage: each object whose dry-run shows a change is applied (server-side),
//! concurrently; an apply conflict with imperative edits only is taken back as drift.

use futures::{StreamExt, stream};
use plumb_core::{Action, ChangeSet, Manifest, ObjectKey};
use serde_json::Value;

use super::prepare::{Prepared, Target, summary, unchanged_on};
use super::{Engine, Progress, SyncOptions};
use crate::cluster::{ApplyMode, Cluster};
use crate::error::ObjectError;

/// The outcome of writing one object.
struct Written {
    action: Action,
    /// The [`summary`] of the object as the write returned it, as JSON.
    live: Option<String>,
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
        // Indices, not references, in the stream: its future must be Send for any caller.
        let mut results: Vec<(usize, ObjectKey, Written)> = stream::iter(0..manifests.len())
            .map(|i| async move {
                let m = &manifests[i];
                let key = m.key();
                let written = self.write(prep_ref, m, &key, opts).await;
                progress.done(&key, written.action);
                (i, key, written)
            })
            .buffer_unordered(opts.concurrency.max(1))
            .collect()
            .await;
        // Report in apply order, whatever order the writes finished in.
        results.sort_by_key(|(i, ..)| *i);
        let mut changes = ChangeSet::new();
        for (_, key, written) in results {
            if let Some(v) = written.live {
                prep.live.insert(key.clone(), v);
            }
            let message = written.failure.as_ref().map(|f| f.message.clone());
            failures.extend(written.failure);
            changes.push(key, written.action, message);
        }
        changes
    }

    /// Writes one object unless its dry-run result shows no change.
    async fn write(
        &self,
        prep: &Prepared,
        manifest: &Manifest,
        key: &ObjectKey,
        opts: &SyncOptions,
    ) -> Written {
        if prep.vouched.contains(key) {
            return Written::unchanged();
        }
        let _permit = self.budget.acquire().await;
        let live = prep.live_summary(key);
        let target = Target {
            manifest,
            resolved: &prep.kinds[key],
            live: live.as_ref(),
        };
        let changes = match prep.changes.get(key) {
            Some(changes) => *changes,
            // Not validated up front (its Namespace or CRD came with this sync): validate now.
            None => match self.apply_one(target, opts, true).await {
                Ok(predicted) => match prep
                    .live_full
                    .get(key)
                    .and_then(|f| serde_json::from_str::<Value>(f).ok())
                {
                    Some(live) => !unchanged_on(&self.cluster, target, &predicted, &live).await,
                    None => true,
                },
                Err(f) => return Written::failed(f),
            },
        };
        if !changes {
            return Written::unchanged();
        }
        match self.apply_one(target, opts, false).await {
            Ok(v) => Written {
                action: if target.live.is_some() {
                    Action::Configured
                } else {
                    Action::Created
                },
                live: Some(summary(v).to_string()),
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
        target: Target<'_>,
        opts: &SyncOptions,
        dry_run: bool,
    ) -> Result<Value, ObjectError> {
        let m = target.manifest;
        let mode = ApplyMode {
            force: opts.force_conflicts,
            dry_run,
        };
        let apply = |mode| {
            self.cluster
                .apply(target.resolved, m.namespace(), m.name(), &m.object, mode)
        };
        let result = match apply(mode).await {
            Err(kube::Error::Api(status))
                if status.code == 409
                    && !opts.force_conflicts
                    && plumb_core::only_imperative_managers(&status.message, target.live) =>
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
