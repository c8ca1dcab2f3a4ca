//! The measurements of one system: cold start, a reconcile request with nothing changed, the
//! requests at rest, manual edits undone, commit to applied.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::stream::BoxStream;
use futures::{StreamExt as _, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use kube::api::{ApiResource, DynamicObject, ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::systems::{Running, Workload, apply, is_ready, secret_resource};
use crate::agent::watch::{ObjectWatch, Probe};
use crate::cluster::{request_counts, settle_for};

/// What one system measured.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub ready: f64,
    pub written: Option<f64>,
    pub cpu: f64,
    pub cold_requests: i64,
    pub cold_own_requests: f64,
    pub peak_rss: f64,
    pub reconcile: f64,
    pub rest_per_minute: Option<f64>,
    pub edits: Vec<f64>,
    pub commits: Vec<f64>,
}

/// How the bench changes the repository (the system under test must not be the one to).
pub trait Repository {
    /// The commit the branch points at.
    fn head(&self) -> anyhow::Result<String>;
    /// Sets a new `REVISION` in app `app`'s ConfigMap, commits and pushes; returns the value.
    fn commit_change(&mut self, app: u32) -> anyhow::Result<String>;
}

/// The context of one system's run.
pub struct Run<'a> {
    pub client: &'a Client,
    pub w: &'a Workload,
    pub running: &'a mut Running,
    pub ticks: f64,
    pub objects: usize,
    pub per_sync: u32,
    pub apps: u32,
}

impl Run<'_> {
    fn syncs(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.w.ctl,
            &self.running.system.kinds().sync,
        )
    }

    /// How many Kustomizations/Syncs are Ready with `commit` applied.
    async fn ready_at(&self, commit: &str) -> anyhow::Result<usize> {
        let list = self.syncs().list(&ListParams::default()).await?;
        Ok(list
            .items
            .iter()
            .filter(|s| {
                let status = &s.data["status"];
                is_ready(status)
                    && status["lastAppliedRevision"]
                        .as_str()
                        .is_some_and(|r| r.ends_with(commit))
            })
            .count())
    }

    /// Creates the Secret, the source and the Kustomizations/Syncs and waits until all are
    /// Ready at `commit`: seconds to Ready, seconds until every object was written, CPU
    /// seconds and API requests meanwhile.
    pub async fn cold(&mut self, commit: &str, m: &mut Measured) -> anyhow::Result<()> {
        let system = self.running.system;
        let kinds = system.kinds();
        let (secret, source, syncs) = system.objects(self.w);
        let namespaces: BTreeSet<String> = self.w.targets.iter().cloned().collect();
        let mut written = tokio::spawn(all_written(self.client.clone(), namespaces, self.objects));
        // The watches list first: let them, before anything is counted.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cpu_before = self.running.cpu_seconds(self.ticks)?;
        let requests_before = request_counts(self.client).await?;
        let own_before = self.running.client_requests().await?;
        let start = Instant::now();
        apply(self.client, &secret_resource(), &self.w.ctl, &secret).await?;
        apply(self.client, &kinds.source, &self.w.ctl, &source).await?;
        for s in &syncs {
            apply(self.client, &kinds.sync, &self.w.ctl, s).await?;
        }
        let deadline = start + Duration::from_secs(1800);
        let want = self.w.targets.len();
        loop {
            if self.ready_at(commit).await? == want {
                break;
            }
            self.running.check()?;
            if Instant::now() > deadline {
                bail!(
                    "not all {want} {}s Ready within 1800s; logs:\n{}",
                    kinds.sync.kind,
                    self.running.log_tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        m.ready = start.elapsed().as_secs_f64();
        m.cpu = self.running.cpu_seconds(self.ticks)? - cpu_before;
        let requests_after = request_counts(self.client).await?;
        m.cold_own_requests = self.running.client_requests().await? - own_before;
        m.cold_requests = requests_before.delta(&requests_after).total;
        m.written = match tokio::time::timeout(Duration::from_secs(5), &mut written).await {
            Ok(Ok(Some(at))) => Some(at.duration_since(start).as_secs_f64()),
            Ok(Ok(None)) | Ok(Err(_)) => None,
            Err(_) => {
                log!("  not every object was seen written (watch)");
                None
            }
        };
        written.abort();
        Ok(())
    }

    /// A reconcile request on every Kustomization/Sync, nothing changed: seconds until each
    /// has handled it and is Ready.
    pub async fn reconcile_request(&mut self) -> anyhow::Result<f64> {
        let token = format!("bench-{}", chrono_like_now());
        let kinds = self.running.system.kinds();
        let patch = Patch::Merge(json!({
            "metadata": { "annotations": { kinds.request_annotation: token } }
        }));
        let start = Instant::now();
        for s in 0..self.w.targets.len() {
            self.syncs()
                .patch(&Workload::name(s), &PatchParams::default(), &patch)
                .await
                .context("requesting a reconcile")?;
        }
        let deadline = start + Duration::from_secs(900);
        loop {
            let list = self.syncs().list(&ListParams::default()).await?;
            let done = list
                .items
                .iter()
                .filter(|s| {
                    let status = &s.data["status"];
                    status["lastHandledReconcileAt"].as_str() == Some(token.as_str())
                        && is_ready(status)
                })
                .count();
            if done == self.w.targets.len() {
                return Ok(start.elapsed().as_secs_f64());
            }
            self.running.check()?;
            if Instant::now() > deadline {
                bail!("the reconcile request was not handled within 900s");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The system's own API requests per minute over `seconds` with nothing changing.
    pub async fn at_rest(&mut self, seconds: u64) -> anyhow::Result<f64> {
        let before = self.running.client_requests().await?;
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        self.running.check()?;
        let after = self.running.client_requests().await?;
        Ok((after - before) * 60.0 / seconds as f64)
    }

    /// The namespace and name of app number `app`.
    fn app(&self, app: u32) -> (String, String) {
        let s = (app / self.per_sync) as usize;
        (self.w.targets[s].clone(), crate::apps::app_name(app))
    }

    /// `count` ConfigMap edits by another field manager; seconds until each is undone.
    pub async fn edits(&mut self, count: u32, interval: Duration) -> anyhow::Result<Vec<f64>> {
        let mut out = Vec::new();
        for n in 0..count {
            let (ns, name) = self.app((n * 37 + 5) % self.apps);
            let dynamic = Api::<DynamicObject>::namespaced_with(
                self.client.clone(),
                &ns,
                &ApiResource::erase::<ConfigMap>(&()),
            );
            let mut watch = ObjectWatch::open(dynamic, &name).await?;
            let start = Instant::now();
            Api::<ConfigMap>::namespaced(self.client.clone(), &ns)
                .patch(
                    &name,
                    &PatchParams {
                        field_manager: Some("kubectl-edit".into()),
                        ..Default::default()
                    },
                    &Patch::Merge(json!({ "data": { "LOG_LEVEL": "debug" } })),
                )
                .await
                .with_context(|| format!("editing ConfigMap {ns}/{name}"))?;
            let mut probe = Probe::LogLevel { edited: false };
            let what = format!("the edit of ConfigMap {ns}/{name} to be undone");
            let healed = watch
                .wait(&mut probe, &what, interval * 3 + Duration::from_secs(60))
                .await?;
            let seconds = healed.duration_since(start).as_secs_f64();
            log!("  edit of {ns}/{name} undone in {seconds:.2}s");
            out.push(seconds);
        }
        Ok(out)
    }

    /// `count` commits, each followed by a reconcile request of the source: seconds from the
    /// push to the changed ConfigMap in the cluster.
    pub async fn commits(
        &mut self,
        repo: &mut dyn Repository,
        count: u32,
    ) -> anyhow::Result<Vec<f64>> {
        let kinds = self.running.system.kinds();
        let sources =
            Api::<DynamicObject>::namespaced_with(self.client.clone(), &self.w.ctl, &kinds.source);
        let mut out = Vec::new();
        for n in 0..count {
            let app = (n * 53 + 11) % self.apps;
            let (ns, name) = self.app(app);
            let dynamic = Api::<DynamicObject>::namespaced_with(
                self.client.clone(),
                &ns,
                &ApiResource::erase::<ConfigMap>(&()),
            );
            let mut watch = ObjectWatch::open(dynamic, &name).await?;
            let revision = repo.commit_change(app)?;
            let start = Instant::now();
            let token = format!("bench-{}", chrono_like_now());
            let patch = Patch::Merge(json!({
                "metadata": { "annotations": { kinds.request_annotation: token } }
            }));
            sources
                .patch("bench", &PatchParams::default(), &patch)
                .await
                .context("requesting a reconcile of the source")?;
            let mut probe = Probe::Revision(revision.clone());
            let what = format!("{ns}/{name} at revision {revision}");
            let applied = watch
                .wait(&mut probe, &what, Duration::from_secs(600))
                .await?;
            let seconds = applied.duration_since(start).as_secs_f64();
            log!("  commit {revision} ({ns}/{name}): applied {seconds:.2}s after the push");
            out.push(seconds);
            // Let every Kustomization/Sync finish with this revision before the next one.
            let commit = repo.head()?;
            let deadline = Instant::now() + Duration::from_secs(600);
            while self.ready_at(&commit).await? < self.w.targets.len() {
                self.running.check()?;
                if Instant::now() > deadline {
                    bail!("not every {} applied {commit} within 600s", kinds.sync.kind);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Ok(out)
    }

    /// Waits until the control plane's own controllers are done with what was applied.
    pub async fn settle(&self) -> anyhow::Result<()> {
        settle_for(
            self.client,
            Duration::from_secs(3),
            Duration::from_secs(120),
        )
        .await
    }
}

/// A token that differs on every call (seconds and nanoseconds since the epoch).
fn chrono_like_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:09}", now.as_secs(), now.subsec_nanos())
}

type Names = BoxStream<'static, (&'static str, String, String)>;

/// The (kind, namespace, name) of every app object `K` seen (metadata watch, all namespaces).
fn names<K>(client: &Client, kind: &'static str) -> Names
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    // Metadata only: the names are all it needs.
    let api = Api::<PartialObjectMeta<K>>::all(client.clone());
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(move |event| async move {
            match event {
                Ok(Event::Apply(o) | Event::InitApply(o)) => Some((
                    kind,
                    o.metadata.namespace.unwrap_or_default(),
                    o.metadata.name.unwrap_or_default(),
                )),
                _ => None,
            }
        })
        .boxed()
}

/// When the `target`-th app object (ConfigMap, ServiceAccount, Service or Deployment named
/// `app-*`) in `namespaces` was first seen; `None` if the watches end first.
async fn all_written(
    client: Client,
    namespaces: BTreeSet<String>,
    target: usize,
) -> Option<Instant> {
    let mut events = stream::select_all([
        names::<ConfigMap>(&client, "ConfigMap"),
        names::<ServiceAccount>(&client, "ServiceAccount"),
        names::<Service>(&client, "Service"),
        names::<Deployment>(&client, "Deployment"),
    ]);
    let mut seen = HashSet::new();
    while let Some((kind, ns, name)) = events.next().await {
        if namespaces.contains(&ns) && name.starts_with("app-") {
            seen.insert((kind, ns, name));
            if seen.len() >= target {
                return Some(Instant::now());
            }
        }
    }
    None
}
