//! Helpers of more than one topic: request recorders, conditions, health-wait fixtures.

use super::*;

pub(crate) async fn ready_condition(
    syncs: &Api<Sync>,
    name: &str,
) -> Result<Option<(String, String, String)>> {
    let st = syncs.get(name).await?.status.unwrap_or_default();
    Ok(st
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone())))
}

/// The `type_` condition of GitSource `name`: (status, reason, message).
pub(crate) async fn source_condition(
    sources: &Api<GitSource>,
    name: &str,
    type_: &str,
) -> Result<Option<(String, String, String)>> {
    let st = sources.get(name).await?.status.unwrap_or_default();
    Ok(st
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone())))
}

/// Waits until GitSource `name` is Ready=False and returns the condition's reason and message.
pub(crate) async fn wait_source_refused(
    sources: &Api<GitSource>,
    name: &str,
) -> Result<(String, String)> {
    eventually(&format!("GitSource {name} to be refused"), WAIT, || {
        let sources = sources.clone();
        async move {
            Ok(source_condition(&sources, name, "Ready")
                .await?
                .filter(|(s, _, _)| s == "False")
                .map(|(_, r, m)| (r, m)))
        }
    })
    .await
}

/// Every file under `dir` (recursively), relative to it.
pub(crate) fn files_under(dir: &Path) -> Vec<String> {
    pub(crate) fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(
                    path.strip_prefix(root)
                        .unwrap_or(&path)
                        .display()
                        .to_string(),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

/// A Deployment whose pods fit no node: it never becomes Available (with `replicas > 0`), so a
/// health wait for it lasts its whole timeout. Independent of node readiness.
pub(crate) fn stuck_deployment(name: &str, replicas: u32) -> String {
    deployment(name, replicas).replace(
        "      containers:",
        "      nodeSelector: {plumb.dev/nowhere: \"true\"}\n      containers:",
    )
}

/// A Sync of `app/` that waits for health, pruning.
pub(crate) fn waiting_sync(timeout: &str) -> serde_json::Value {
    json!({
        "sourceRef": { "name": "repo" }, "path": "app", "prune": true, "interval": "1h",
        "wait": true, "timeout": timeout
    })
}

impl World {
    /// Waits until Sync `sync` is applying `commit` (written or being written, health awaited)
    /// and not Ready with it.
    pub(crate) async fn wait_applying(&self, sync: &str, commit: &str) -> Result<()> {
        let syncs = self.syncs();
        eventually(
            &format!("Sync {sync} to be applying {commit}"),
            WAIT,
            || {
                let syncs = syncs.clone();
                async move {
                    let st = syncs.get(sync).await?.status.unwrap_or_default();
                    Ok(applying(&st, commit).then_some(()))
                }
            },
        )
        .await
    }

    /// Asks for a reconcile of Sync `sync` (what `plumb reconcile sync` does).
    pub(crate) async fn request_reconcile(&self, sync: &str) -> Result<String> {
        let token = format!("{}-{}", plumb_agent::status::now_rfc3339(), sync);
        let patch =
            json!({ "metadata": { "annotations": { RECONCILE_REQUEST_ANNOTATION: &token } } });
        self.syncs()
            .patch(sync, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(token)
    }

    /// Waits until Sync `sync` is gone (its finalizer removed).
    pub(crate) async fn wait_sync_gone(&self, sync: &str, within: Duration) -> Result<()> {
        let syncs = self.syncs();
        eventually(&format!("Sync {sync} to be gone"), within, || {
            let syncs = syncs.clone();
            async move { Ok(syncs.get_opt(sync).await?.is_none().then_some(())) }
        })
        .await
    }

    /// Proof that the drift watch has handled every ConfigMap change made before the call: a
    /// ConfigMap `control` of another Sync is edited and healed, twice. The watch of a kind
    /// delivers its events in order, so a check an earlier change started has run by then.
    pub(crate) async fn drift_watch_caught_up(&self) -> Result<()> {
        for round in ["one", "two"] {
            self.edit_by_hand("control", &format!("proof {round}"))
                .await?;
            self.wait_value("control", "1").await?;
        }
        Ok(())
    }

    /// The Events of this namespace about `name` with `reason`: their notes.
    pub(crate) async fn events(&self, name: &str, reason: &str) -> Result<Vec<String>> {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client().clone(), self.ns());
        Ok(events
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter_map(|e| e.note)
            .collect())
    }
}

/// Whether the status says `commit` is being applied (Reconciling, attempted) and not Ready.
pub(crate) fn applying(st: &plumb_agent::api::SyncStatus, commit: &str) -> bool {
    let progressing = st.conditions.iter().any(|c| {
        c.type_ == "Reconciling"
            && c.status == "True"
            && c.reason == "Progressing"
            && c.message.contains(commit)
    });
    let attempted = st
        .last_attempted_revision
        .as_deref()
        .is_some_and(|r| r.ends_with(commit));
    let applied = st
        .last_applied_revision
        .as_deref()
        .is_some_and(|r| r.ends_with(commit));
    progressing && attempted && !applied
}

/// Requests the agent sent (method and path) that name `resource/name`, watches aside.
pub(crate) fn requests_for(requests: &[String], resource_and_name: &str) -> Vec<String> {
    requests
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .filter(|r| {
            r.split('?')
                .next()
                .is_some_and(|path| path.ends_with(&format!("/{resource_and_name}")))
        })
        .cloned()
        .collect()
}

/// A Sync `app` whose first revision (returned) holds a ConfigMap and a Deployment that never
/// becomes healthy, with a ten-minute wait that is running when this returns.
pub(crate) async fn stuck_in_a_long_wait(w: &World) -> Result<String> {
    let first = w.commit(
        &[
            ("app/cm.yaml", &configmap("settings", "1")),
            ("app/stuck.yaml", &stuck_deployment("stuck", 1)),
        ],
        w.signing(),
    )?;
    w.create_source("range").await?;
    w.create_sync_spec("app", waiting_sync("10m")).await?;
    w.wait_applying("app", &first).await?;
    w.wait_value("settings", "1").await?;
    Ok(first)
}
