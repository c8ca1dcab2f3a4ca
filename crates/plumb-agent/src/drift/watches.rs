//! The watches behind the drift tracker: one metadata watch per kind, and the check of one
//! object that a watch event (or a failed check) starts.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1;

use super::*;

impl DriftTracker {
    /// One kind's metadata watch, for the lifetime of the agent.
    pub(super) async fn watch(self, resolved: Resolved) {
        let api: Api<PartialObjectMeta<DynamicObject>> =
            Api::all_with(self.client.clone(), &resolved.resource);
        let config = watcher::Config::default().labels(SYNC_NAME_LABEL);
        let mut stream = watcher(api, config).default_backoff().boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) | Ok(Event::InitDone) => {}
                // The initial listing (and a relisting after a watch restart): objects seen
                // before are checked only if they changed meanwhile.
                Ok(Event::InitApply(obj)) | Ok(Event::Apply(obj)) => {
                    let key = key_of(&resolved, &obj);
                    let changed = self
                        .lock()
                        .registry
                        .observe(&key, signature_of(&obj.metadata));
                    if changed {
                        self.clone().check(key);
                    }
                }
                Ok(Event::Delete(obj)) => {
                    let key = key_of(&resolved, &obj);
                    let owned = self.lock().registry.deleted(&key);
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

    /// Runs a targeted check of `key`, at most one at a time per object.
    pub(super) fn check(self, key: ObjectKey) {
        if !self.lock().registry.begin_check(&key) {
            return;
        }
        // Called from drops too: without a runtime (shutting down) there is nothing to heal.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.lock().registry.end_check(&key);
            return;
        };
        runtime.spawn(async move {
            loop {
                // A failed check (e.g. its namespace is still terminating after a wipe) is
                // retried with backoff; if it keeps failing the Sync is marked dirty and
                // reconciled at once, applying everything and reporting what fails.
                let mut delay = Duration::from_secs(1);
                let mut attempts = 0;
                loop {
                    let passed = {
                        let _slot = self.check_slots.acquire().await;
                        self.check_once(&key).await
                    };
                    if passed {
                        break;
                    }
                    attempts += 1;
                    if attempts >= CHECK_ATTEMPTS {
                        let owner = self.lock().registry.mark_dirty(&key);
                        if let (Some(sync), Some(tx)) = (
                            owner,
                            self.dirty
                                .lock()
                                .expect("drift notifier lock poisoned")
                                .as_ref(),
                        ) {
                            let _ = tx.send(sync);
                        }
                        break;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
                if !self.lock().registry.end_check(&key) {
                    break;
                }
            }
        });
    }

    /// One targeted check; false when it failed and should be retried.
    pub(super) async fn check_once(&self, key: &ObjectKey) -> bool {
        // Only this object's entry is taken out of the lock, not the Sync's whole set.
        let target = self.lock().registry.target(key);
        let Target::Check {
            sync,
            revision,
            object,
            shared,
        } = target
        else {
            // Not registered, or deferred until its Sync's writes end.
            return true;
        };
        let _running = Running {
            tracker: self,
            sync: sync.clone(),
        };
        let manifest = match object.manifest() {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(object = %key, error = %e, "stored manifest unreadable");
                return true;
            }
        };
        let resolved = object.resolved.as_ref();
        let engine = Engine::new(shared.client);
        let correct = shared.mode == DriftMode::Correct;
        let sync_label = format!("{}/{}", sync.0, sync.1);
        match engine
            .check_object(&manifest, resolved, shared.force, correct)
            .await
        {
            Ok(check) => {
                let reason = match check.state {
                    ObjectState::TakenOver(owner) => {
                        tracing::info!(sync = %sync_label, object = %key, %owner, "taken over by another Sync; no longer corrected");
                        self.set_drift(&sync, key, None).await;
                        return true;
                    }
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
                    tracing::info!(sync = %sync_label, object = %key, reason, %revision, "drift corrected");
                    self.event(
                        &sync,
                        false,
                        "DriftCorrected",
                        format!(
                            "{key} was {reason} outside Git; applied again (revision {revision})"
                        ),
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
    pub(super) async fn set_drift(
        &self,
        sync: &SyncKey,
        key: &ObjectKey,
        reason: Option<&str>,
    ) -> bool {
        let Some(list) = self.lock().registry.set_drift(sync, key, reason) else {
            return false;
        };
        let list: Vec<_> = list
            .iter()
            .map(|(id, reason)| json!({ "id": id, "reason": reason }))
            .collect();
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

    pub(super) async fn event(&self, sync: &SyncKey, warning: bool, reason: &str, note: String) {
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

/// A check holding its target; releasing it lets a waiting apply or deletion go on.
pub(super) struct Running<'a> {
    tracker: &'a DriftTracker,
    sync: SyncKey,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.tracker.lock().registry.check_done(&self.sync);
        self.tracker
            .checks_done
            .send_modify(|n| *n = n.wrapping_add(1));
    }
}

pub(super) fn key_of(resolved: &Resolved, obj: &PartialObjectMeta<DynamicObject>) -> ObjectKey {
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

/// Annotations that Kubernetes' own controllers keep on the objects Plumb applies, and that
/// manifests do not set: the Deployment controller's revision (rewritten by every rollout),
/// the volume controllers' and the scheduler's on a PersistentVolumeClaim.
const CONTROLLER_ANNOTATIONS: [&str; 6] = [
    "deployment.kubernetes.io/revision",
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.beta.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/selected-node",
];

/// Whether a manager's fields are only [`CONTROLLER_ANNOTATIONS`]: its changes (a rollout's new
/// revision number) touch nothing a manifest sets, and are no reason for a drift check. A
/// manager that owns anything else (a hand edit of a label, say) counts as ever.
fn only_controller_annotations(fields: Option<&FieldsV1>) -> bool {
    let Some(serde_json::Value::Object(top)) = fields.map(|f| &f.0) else {
        return false;
    };
    let Some(serde_json::Value::Object(metadata)) = top.get("f:metadata") else {
        return false;
    };
    let Some(serde_json::Value::Object(annotations)) = metadata.get("f:annotations") else {
        return false;
    };
    top.len() == 1
        && metadata.len() == 1
        && annotations.keys().all(|k| {
            k == "."
                || k.strip_prefix("f:")
                    .is_some_and(|name| CONTROLLER_ANNOTATIONS.contains(&name))
        })
}

/// Managers that changed the object's spec or metadata (not its status, nor only
/// [`CONTROLLER_ANNOTATIONS`]), with their times.
pub(super) fn signature_of(meta: &ObjectMeta) -> Seen {
    let managers = Seen::managers_digest(
        meta.managed_fields
            .iter()
            .flatten()
            .filter(|m| {
                m.subresource
                    .as_deref()
                    .is_none_or(|s| s.is_empty() || s == "scale")
            })
            .filter(|m| !only_controller_annotations(m.fields_v1.as_ref()))
            .map(|m| {
                (
                    m.manager.clone().unwrap_or_default(),
                    m.time.as_ref().map(|t| t.0.to_string()).unwrap_or_default(),
                )
            }),
    );
    Seen {
        generation: meta.generation,
        resource_version: meta.resource_version.clone(),
        managers,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, Time};

    use super::*;

    fn entry(manager: &str, second: i64, fields: serde_json::Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.to_owned()),
            operation: Some("Update".to_owned()),
            time: Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + second).unwrap(),
            )),
            fields_v1: Some(FieldsV1(fields)),
            ..Default::default()
        }
    }

    fn meta(entries: Vec<ManagedFieldsEntry>) -> ObjectMeta {
        ObjectMeta {
            generation: Some(1),
            resource_version: Some("7".into()),
            managed_fields: Some(entries),
            ..Default::default()
        }
    }

    #[test]
    fn a_rollouts_revision_annotation_is_no_change_but_a_hand_edit_of_an_annotation_is() {
        let plumb = entry(
            "plumb",
            0,
            json!({ "f:metadata": { "f:labels": { "f:app": {} } }, "f:spec": { "f:replicas": {} } }),
        );
        let revision = |second| {
            entry(
                "kube-controller-manager",
                second,
                json!({ "f:metadata": { "f:annotations": {
                    ".": {}, "f:deployment.kubernetes.io/revision": {}
                } } }),
            )
        };
        let applied = signature_of(&meta(vec![plumb.clone(), revision(1)]));
        // The next rollout: the controller writes its annotation again, at a later time.
        assert_eq!(
            signature_of(&meta(vec![plumb.clone(), revision(2)])),
            applied
        );
        // Someone annotates by hand (another manager, or the controller's own entry owning
        // more than its annotation): a change, checked.
        let by_hand = entry(
            "kubectl-annotate",
            3,
            json!({ "f:metadata": { "f:annotations": { "f:team": {} } } }),
        );
        assert_ne!(
            signature_of(&meta(vec![plumb.clone(), revision(1), by_hand])),
            applied
        );
        let more = entry(
            "kube-controller-manager",
            3,
            json!({ "f:metadata": { "f:annotations": {
                "f:deployment.kubernetes.io/revision": {}, "f:team": {}
            } } }),
        );
        assert_ne!(signature_of(&meta(vec![plumb, more])), applied);
    }
}
