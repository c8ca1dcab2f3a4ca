//! Waiting: for the CRDs of a sync to be Established (before their custom resources are
//! validated), and for applied objects to become healthy.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::{FutureExt as _, StreamExt as _, stream};
use plumb_core::{
    HealthStatus, HealthVerdict, Manifest, ObjectKey, SYNC_NAME_LABEL, SYNC_NAMESPACE_LABEL, health,
};

use super::{Engine, NoProgress, Progress};
use crate::cluster::{Cluster, Selector, WatchEvent};
use crate::discovery::Resolved;
use crate::error::{Error, Result, is_transient};

impl<C: Cluster> Engine<C> {
    /// Waits until every CRD among `manifests` is Established.
    pub(super) async fn await_crds_established(
        &self,
        manifests: &[Manifest],
        timeout: Duration,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        for m in manifests
            .iter()
            .filter(|m| m.kind() == "CustomResourceDefinition")
        {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.cluster.await_crd_established(m.name(), left).await?;
        }
        Ok(())
    }

    /// Waits until every object in `objects` is healthy (or suspended), for at most `timeout`,
    /// without polling: objects of a kind that is healthy once present
    /// ([`plumb_core::healthy_once_present`]: ConfigMaps, Secrets, RBAC, ...) were just
    /// applied and are not looked at; the others are watched, one LIST and one WATCH per kind
    /// and namespace (selecting the sync's ownership labels when every object carries the same,
    /// or the one object's name), so that the wait costs no request per object and sees each
    /// change as it happens. Returns every object's verdict; on timeout, an error naming the
    /// objects that are not healthy and why. The objects must have been applied (a sync's
    /// [`super::SyncReport::applied`]).
    pub async fn wait_healthy(
        &self,
        objects: &[Manifest],
        timeout: Duration,
    ) -> Result<Vec<(ObjectKey, HealthVerdict)>> {
        self.wait_healthy_with(objects, timeout, &NoProgress).await
    }

    /// [`Engine::wait_healthy`], telling `progress` whenever a verdict changed which objects
    /// are still awaited and why ([`Progress::waiting`]).
    pub async fn wait_healthy_with(
        &self,
        objects: &[Manifest],
        timeout: Duration,
        progress: &dyn Progress,
    ) -> Result<Vec<(ObjectKey, HealthVerdict)>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut verdicts: Vec<HealthVerdict> = vec![HealthVerdict::missing(); objects.len()];
        let mut groups: BTreeMap<GroupKey, Group> = BTreeMap::new();
        let mut resolver = None;
        for (i, m) in objects.iter().enumerate() {
            if plumb_core::healthy_once_present(&m.object) {
                // Judged by its manifest: such kinds have no status to wait for.
                let verdict = health(&m.object);
                if verdict.status == HealthStatus::Healthy {
                    verdicts[i] = verdict;
                    continue;
                }
            }
            if resolver.is_none() {
                resolver = Some(self.resolver_for(objects).await?);
            }
            let Some(r) = resolver
                .as_ref()
                .and_then(|res| res.resolve(m))
                .filter(|r| r.served)
            else {
                // Not served: missing until the timeout says so.
                continue;
            };
            let namespace = m.namespace().filter(|_| r.namespaced).map(str::to_owned);
            let key = (
                r.resource.group.clone(),
                r.resource.version.clone(),
                r.resource.plural.clone(),
                namespace.clone(),
            );
            let group = groups.entry(key).or_insert_with(|| Group {
                resolved: r.clone(),
                namespace,
                members: BTreeMap::new(),
                listing: None,
                listed: false,
            });
            group
                .members
                .entry(m.name().to_owned())
                .or_default()
                .push(i);
        }
        let groups: Vec<Group> = groups.into_values().collect();
        let mut events = stream::select_all(groups.iter().enumerate().map(|(g, group)| {
            let selector = selector_for(group, objects);
            self.cluster
                .watch(&group.resolved, group.namespace.as_deref(), &selector)
                .map(move |e| (g, e))
        }));
        let mut groups = groups;
        let ready =
            |v: &HealthVerdict| matches!(v.status, HealthStatus::Healthy | HealthStatus::Suspended);
        // The keys and verdicts of every object, or of those not healthy yet (`pending`): the
        // latter built only to report them (each event would otherwise cost a key per awaited
        // object, quadratic in a Sync's size).
        let keyed =
            |verdicts: &[HealthVerdict], pending: bool| -> Vec<(ObjectKey, HealthVerdict)> {
                objects
                    .iter()
                    .zip(verdicts)
                    .filter(|(_, v)| !pending || !ready(v))
                    .map(|(m, v)| (m.key(), v.clone()))
                    .collect()
            };
        let reports = progress.reports_waiting();
        loop {
            let done = verdicts.iter().all(ready);
            // Until every watch has listed once, an object not seen yet is unknown, not
            // missing: report nothing rather than blame objects that exist.
            if reports && (done || groups.iter().all(|g| g.listed)) {
                progress.waiting(&keyed(&verdicts, true), objects.len());
            }
            if done {
                return Ok(keyed(&verdicts, false));
            }
            let next = match tokio::time::timeout_at(deadline, events.next()).await {
                Ok(Some(event)) => Some(event),
                // Every watch ended (none was needed, or a cluster that ends them): nothing
                // will change any more.
                Ok(None) => {
                    tokio::time::sleep_until(deadline).await;
                    None
                }
                Err(_) => None,
            };
            let Some(first) = next else {
                let unhealthy = keyed(&verdicts, true)
                    .iter()
                    .map(|(k, v)| format!("  {k}: {} ({})", v.status, v.reason))
                    .collect();
                return Err(Error::Unhealthy {
                    seconds: timeout.as_secs(),
                    unhealthy,
                    verdicts: keyed(&verdicts, false),
                });
            };
            // Everything that has arrived, then one report.
            let mut batch = vec![first];
            while let Some(Some(more)) = events.next().now_or_never() {
                batch.push(more);
            }
            for (g, event) in batch {
                groups[g].on(event, objects, &mut verdicts)?;
            }
        }
    }
}

/// What a health wait ([`Engine::wait_healthy`]) needs of applied objects, in a fraction of
/// their memory: objects that are healthy once present, judged by their manifest as the wait
/// judges them, are left out, and the others are reduced to their apiVersion, kind, name,
/// namespace and labels (their health is read from the live object the wait watches). An
/// object whose reduced form the wait would judge differently (a Service of type
/// LoadBalancer), and a CustomResourceDefinition (the wait learns kinds from it), stay whole.
/// Waiting on the result succeeds or times out exactly as waiting on `objects` does, naming
/// the same objects; only the verdicts of the objects left out are not reported.
pub fn awaited(objects: Vec<Manifest>) -> Vec<Manifest> {
    objects
        .into_iter()
        .filter_map(|m| {
            let once_present = plumb_core::healthy_once_present(&m.object);
            if once_present && health(&m.object).status == HealthStatus::Healthy {
                return None;
            }
            if once_present || m.kind() == "CustomResourceDefinition" {
                return Some(m);
            }
            let mut metadata = serde_json::Map::new();
            metadata.insert("name".into(), m.name().into());
            if let Some(ns) = m.namespace() {
                metadata.insert("namespace".into(), ns.into());
            }
            if let Some(labels) = m.object["metadata"].get("labels") {
                metadata.insert("labels".into(), labels.clone());
            }
            let reduced = serde_json::json!({
                "apiVersion": m.api_version(),
                "kind": m.kind(),
                "metadata": metadata,
            });
            if plumb_core::healthy_once_present(&reduced) {
                return Some(m);
            }
            Some(Manifest {
                object: reduced,
                source: m.source,
            })
        })
        .collect()
}

/// Objects of one kind in one namespace: `(group, version, plural, namespace)`.
type GroupKey = (String, String, String, Option<String>);

/// The watched objects of one kind in one namespace.
struct Group {
    resolved: Resolved,
    namespace: Option<String>,
    /// Object name -> indices into the awaited objects (one, unless listed twice).
    members: BTreeMap<String, Vec<usize>>,
    /// While a listing runs: the names it reported so far.
    listing: Option<BTreeSet<String>>,
    /// Whether a listing has completed once.
    listed: bool,
}

impl Group {
    /// Updates `verdicts` from one event of this group's watch.
    fn on(
        &mut self,
        event: std::result::Result<WatchEvent, kube::Error>,
        objects: &[Manifest],
        verdicts: &mut [HealthVerdict],
    ) -> Result<()> {
        match event {
            Ok(WatchEvent::Listing) => self.listing = Some(BTreeSet::new()),
            Ok(WatchEvent::Present(obj)) => {
                let name = obj["metadata"]["name"].as_str().unwrap_or_default();
                if let Some(listing) = &mut self.listing {
                    listing.insert(name.to_owned());
                }
                for &i in self.members.get(name).into_iter().flatten() {
                    verdicts[i] = health(&obj);
                }
            }
            Ok(WatchEvent::Listed) => {
                let listed = self.listing.take().unwrap_or_default();
                for (name, members) in &self.members {
                    if !listed.contains(name) {
                        for &i in members {
                            verdicts[i] = HealthVerdict::missing();
                        }
                    }
                }
                self.listed = true;
            }
            Ok(WatchEvent::Deleted(obj)) => {
                let name = obj["metadata"]["name"].as_str().unwrap_or_default();
                for &i in self.members.get(name).into_iter().flatten() {
                    verdicts[i] = HealthVerdict::missing();
                }
            }
            Err(e) => {
                let first = self.members.values().flatten().next().copied();
                let what = first.map_or_else(String::new, |i| objects[i].key().to_string());
                // Refused before the first listing (no permission to list or watch): waiting
                // longer would not help.
                if !self.listed && !is_transient(&e) {
                    return Err(Error::Api {
                        context: format!(
                            "watching {} in {} for the health of {what}",
                            self.resolved.resource.plural,
                            self.namespace.as_deref().unwrap_or("all namespaces")
                        ),
                        source: e,
                    });
                }
                tracing::debug!(kind = %self.resolved.resource.kind, error = %e, "health watch error; watching again");
            }
        }
        Ok(())
    }
}

/// What a group's watch selects: the one object by name, or the ownership labels that every
/// object of the group carries with the same values, or everything.
fn selector_for(group: &Group, objects: &[Manifest]) -> Selector {
    if group.members.len() == 1
        && let Some(name) = group.members.keys().next()
    {
        return Selector {
            labels: None,
            fields: Some(format!("metadata.name={name}")),
        };
    }
    let label = |i: usize, key: &str| -> Option<String> {
        objects[i].object["metadata"]["labels"][key]
            .as_str()
            .map(str::to_owned)
    };
    let mut indices = group.members.values().flatten().copied();
    let Some(first) = indices.next() else {
        return Selector::default();
    };
    let mut labels = Vec::new();
    for key in [SYNC_NAME_LABEL, SYNC_NAMESPACE_LABEL] {
        let Some(value) = label(first, key) else {
            return Selector::default();
        };
        if group
            .members
            .values()
            .flatten()
            .any(|&i| label(i, key).as_ref() != Some(&value))
        {
            return Selector::default();
        }
        labels.push(format!("{key}={value}"));
    }
    Selector {
        labels: Some(labels.join(",")),
        fields: None,
    }
}
