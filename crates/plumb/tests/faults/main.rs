//! Fault drills: `plumb agent` (as a process) is at work when one thing breaks under it. Each
//! drill proves that the system converges on the final revision with nothing lost, that
//! nothing is pruned wrongly, and that the Sync's (or the GitSource's) conditions tell what
//! happened meanwhile.
//!
//! - the API server SIGKILLed in the middle of applying a 250-object revision, then restarted;
//! - etcd stopped in the middle of such an apply, then started again on its data directory;
//! - the Git server stopped in the middle of a fetch (its transfer slowed down so that the
//!   stop lands mid-pack), then restarted on the same ports;
//! - the agent SIGKILLed in the middle of a prune, then restarted on the same cache;
//! - the namespace a Sync applies into deleted under it: a Sync whose manifests hold the
//!   Namespace recreates it; one whose target namespace is not its own reports that.
//!
//! "Nothing pruned wrongly" is checked three ways: every object that stays in Git keeps its
//! uid across the fault (a deleted and re-created object would have a new one), a watch started
//! before the fault sees no DELETED event for it, and the agent's own count of the DELETE
//! requests it sent (`plumb_api_requests_total` on `/metrics`) matches the objects Git removed.
//! Two bystanders sit beside the Sync's objects and must survive too: one without labels and an
//! impostor carrying the Sync's ownership labels without ever having been in its inventory.
//!
//! The API server and etcd drills kill parts of a control plane of their own
//! ([`PrivateControlPlane`]; one at a time), never of the shared one other tests run on.
//!
//! The world and the agent process are [`plumb_testsupport::world`]'s; one test binary, a
//! module per drill.
//!
//! The drills found three agent bugs, fixed since and tested here: a failed apply set back to
//! the previous revision by drift correction; a Sync whose target namespace was deleted saying
//! Ready until its interval; a reconcile from a stale cached Sync writing over the status just
//! written (every status write now starts from the status as the API server has it).

mod agent_killed;
mod control_plane;
mod git_server;
mod namespace;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use plumb_agent::api::{GitSource, RECONCILE_REQUEST_ANNOTATION, Sync};
use plumb_core::{SYNC_NAME_LABEL, SYNC_NAMESPACE_LABEL};
use plumb_testsupport::git::{GitServers, ServerOptions, Signing};
use plumb_testsupport::http::counter;
use plumb_testsupport::kube::{Component, PrivateControlPlane, client, eventually};
use plumb_testsupport::world::{self, Agent, AgentProcess, AgentSpec, Process, Remote};
use serde_json::json;
use tokio::task::JoinHandle;

/// How long a drill waits for any one step.
const WAIT: Duration = Duration::from_secs(90);

/// One private control plane at a time: two at once, beside the shared one, would starve
/// 2 cores.
static PRIVATE_PLANE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---- revisions: ConfigMap name -> value ----

type Objects = BTreeMap<String, String>;

/// `count` ConfigMaps `<prefix>-000`.. holding `value`.
fn objects(prefix: &str, count: usize, value: &str) -> Objects {
    (0..count)
        .map(|i| (format!("{prefix}-{i:03}"), value.to_owned()))
        .collect()
}

fn union(parts: &[Objects]) -> Objects {
    parts
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn configmap_yaml(name: &str, value: &str, namespace: Option<&str>) -> String {
    let ns = namespace
        .map(|n| format!("  namespace: {n}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n{ns}data:\n  value: \"{value}\"\n"
    )
}

/// Bytes that do not compress (xorshift), so that a pack holding them is as large as they are.
fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

// ---- the agent's own counts, from /metrics ----

/// What a drill reads off an agent's `/metrics`.
trait Counts: Agent {
    /// Requests the agent sent for real (not dry-runs): `verb` on `resource`.
    async fn requests(&self, verb: &str, resource: &str) -> Result<f64> {
        let verb = format!("verb=\"{verb}\"");
        let resource = format!("resource=\"{resource}\"");
        Ok(counter(
            &self.metrics().await?,
            "plumb_api_requests_total",
            &[&verb, &resource, "dry_run=\"false\""],
        ))
    }

    /// Sync reconciles that ended with `result` (`success`, `failure`).
    async fn sync_reconciles(&self, result: &str) -> Result<f64> {
        let result = format!("result=\"{result}\"");
        Ok(counter(
            &self.metrics().await?,
            "plumb_reconciles_total",
            &["kind=\"Sync\"", &result],
        ))
    }
}

impl Counts for AgentProcess {}

// ---- the drill world ----

/// The shared world with a GitSource `repo` and Sync `app` (of `app/`, pruning, correcting
/// drift, interval 1h so that only events drive it) made on request. Agents (`plumb agent`
/// processes) share one cache directory, as restarts of one Pod do. Declare agents after the
/// world: they die before it goes.
struct World {
    inner: world::World,
}

impl std::ops::Deref for World {
    type Target = world::World;

    fn deref(&self) -> &world::World {
        &self.inner
    }
}

impl World {
    /// On the shared control plane (KUBECONFIG), in a namespace of its own.
    async fn shared(prefix: &str, remote: Remote<'_>) -> Result<Self> {
        Ok(Self {
            inner: world::World::with_remote(prefix, remote).await?,
        })
    }

    /// On a private control plane: its namespace goes with the control plane.
    async fn private(plane: &PrivateControlPlane, prefix: &str) -> Result<Self> {
        Ok(Self {
            inner: world::World::private(plane, prefix).await?,
        })
    }

    /// Starts `plumb agent` for this world's namespace (cache in the world's directory, shared
    /// by every agent of the world) and waits until `/healthz` answers.
    async fn spawn(&self, identity: &str) -> Result<AgentProcess> {
        let process = Process::new(env!("CARGO_BIN_EXE_plumb"));
        self.inner
            .spawn(&process, AgentSpec::new(identity).cache("cache"))
            .await
    }

    /// Commits `app/` holding exactly `objects` (ConfigMaps, in `namespace` if given) plus
    /// `extra` files (outside `app/`), and pushes.
    fn commit(
        &self,
        objects: &Objects,
        namespace: Option<&str>,
        extra: &[(&str, &[u8])],
    ) -> Result<String> {
        let wt = self.wt();
        if wt.path().join("app").exists() {
            wt.remove("app")?;
        }
        for (name, value) in objects {
            wt.write(
                format!("app/{name}.yaml"),
                configmap_yaml(name, value, namespace),
            )?;
        }
        for (path, content) in extra {
            wt.write(path, content)?;
        }
        let id = wt.commit("change", &Signing::None)?;
        wt.push()?;
        Ok(id)
    }

    async fn create_source(&self) -> Result<()> {
        self.create(self.git_source("repo")).await
    }

    async fn create_sync(&self, extra_spec: serde_json::Value) -> Result<()> {
        self.create(self.sync("app").spec(extra_spec)).await
    }

    fn sources(&self) -> Api<GitSource> {
        self.api()
    }

    fn syncs(&self) -> Api<Sync> {
        self.api()
    }

    fn configmaps(&self, namespace: &str) -> Api<ConfigMap> {
        Api::namespaced(self.client().clone(), namespace)
    }

    /// Waits until the Sync is Ready with `commit` applied.
    async fn wait_applied(&self, commit: &str) -> Result<Sync> {
        self.inner.wait_applied("app", commit, WAIT).await
    }

    /// The two bystanders, created by hand in `namespace`: `bystander` (no labels) and
    /// `impostor` (this Sync's ownership labels, never in its inventory).
    async fn create_bystanders(&self, namespace: &str) -> Result<()> {
        let api = self.configmaps(namespace);
        for (name, labels) in [
            ("bystander", json!({})),
            (
                "impostor",
                json!({ SYNC_NAME_LABEL: "app", SYNC_NAMESPACE_LABEL: self.ns() }),
            ),
        ] {
            let cm: ConfigMap = serde_json::from_value(json!({
                "metadata": { "name": name, "labels": labels },
                "data": { "value": "not from Git" }
            }))?;
            api.create(&PostParams::default(), &cm).await?;
        }
        Ok(())
    }

    /// The Sync's ConfigMaps in `namespace` (name -> value), bystanders left out.
    async fn managed(&self, namespace: &str) -> Result<Objects> {
        let list = self
            .configmaps(namespace)
            .list(&ListParams::default().labels(SYNC_NAME_LABEL))
            .await?;
        Ok(list
            .items
            .into_iter()
            .filter(|c| c.name_any() != "impostor")
            .map(|c| {
                let value = c
                    .data
                    .as_ref()
                    .and_then(|d| d.get("value"))
                    .cloned()
                    .unwrap_or_default();
                (c.name_any(), value)
            })
            .collect())
    }

    /// The uid of every ConfigMap in `namespace`, by name.
    async fn uids(&self, namespace: &str) -> Result<BTreeMap<String, String>> {
        let list = self
            .configmaps(namespace)
            .list(&ListParams::default())
            .await?;
        Ok(list
            .items
            .into_iter()
            .map(|c| (c.name_any(), c.uid().unwrap_or_default()))
            .collect())
    }
}

// ---- watches started before a fault ----

/// Every ConfigMap event in one namespace, from a watch that outlives API server restarts (it
/// lists again after reconnecting). Waiting on it reacts at once, not at the next poll.
struct ConfigMapEvents {
    seen: tokio::sync::watch::Receiver<Seen>,
    task: JoinHandle<()>,
}

#[derive(Default, Clone)]
struct Seen {
    /// Objects added or changed (name, value), in event order.
    written: Vec<(String, String)>,
    /// Names of objects deleted, in event order.
    deleted: Vec<String>,
}

impl ConfigMapEvents {
    fn start(api: Api<ConfigMap>) -> Self {
        let (tx, seen) = tokio::sync::watch::channel(Seen::default());
        let task = tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Apply(cm)) => {
                        let value = cm
                            .data
                            .as_ref()
                            .and_then(|d| d.get("value"))
                            .cloned()
                            .unwrap_or_default();
                        tx.send_modify(|s| s.written.push((cm.name_any(), value)));
                    }
                    Ok(watcher::Event::Delete(cm)) => {
                        tx.send_modify(|s| s.deleted.push(cm.name_any()));
                    }
                    _ => {}
                }
            }
        });
        Self { seen, task }
    }

    async fn wait(&self, what: &str, pred: impl Fn(&Seen) -> bool) -> Result<()> {
        let mut seen = self.seen.clone();
        tokio::time::timeout(WAIT, seen.wait_for(|s| pred(s)))
            .await
            .with_context(|| format!("timed out after {WAIT:?} waiting for {what}"))??;
        Ok(())
    }

    /// Waits until an object whose name starts with `prefix` was added or changed.
    async fn wait_written(&self, prefix: &str) -> Result<()> {
        self.wait(&format!("a ConfigMap {prefix}* to be written"), |s| {
            s.written.iter().any(|(n, _)| n.starts_with(prefix))
        })
        .await
    }

    /// Waits until `count` objects whose names start with `prefix` were deleted.
    async fn wait_deleted(&self, prefix: &str, count: usize) -> Result<()> {
        self.wait(
            &format!("{count} ConfigMaps {prefix}* to be deleted"),
            |s| s.deleted.iter().filter(|n| n.starts_with(prefix)).count() >= count,
        )
        .await
    }

    /// The values `name` was seen with, in order (consecutive repeats merged).
    fn values_of(&self, name: &str) -> Vec<String> {
        let mut values: Vec<String> = Vec::new();
        for (n, v) in &self.seen.borrow().written {
            if n == name && values.last() != Some(v) {
                values.push(v.clone());
            }
        }
        values
    }

    fn deleted_names(&self) -> BTreeSet<String> {
        self.seen.borrow().deleted.iter().cloned().collect()
    }
}

impl Drop for ConfigMapEvents {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The Sync's conditions as they change, one line per distinct state, from a watch that
/// outlives API server restarts.
struct ConditionLog {
    lines: tokio::sync::watch::Receiver<Vec<String>>,
    task: JoinHandle<()>,
}

impl ConditionLog {
    fn start(api: Api<Sync>) -> Self {
        let (tx, lines) = tokio::sync::watch::channel(Vec::<String>::new());
        let task = tokio::spawn(async move {
            let config = watcher::Config::default().fields("metadata.name=app");
            let mut stream = watcher(api, config).default_backoff().boxed();
            while let Some(event) = stream.next().await {
                let (Ok(watcher::Event::Apply(sync)) | Ok(watcher::Event::InitApply(sync))) = event
                else {
                    continue;
                };
                let line = summarize(&sync);
                tx.send_if_modified(|lines| {
                    let new = lines.last() != Some(&line);
                    if new {
                        lines.push(line);
                    }
                    new
                });
            }
        });
        Self { lines, task }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.borrow().clone()
    }

    /// Waits until a state line from the `since`th on contains every one of `parts`;
    /// returns it.
    async fn wait_for(&self, since: usize, parts: &[&str]) -> Result<String> {
        let matches = |l: &String| parts.iter().all(|p| l.contains(p));
        let mut lines = self.lines.clone();
        let found = tokio::time::timeout(
            WAIT,
            lines.wait_for(|ls| ls.iter().skip(since).any(matches)),
        )
        .await
        .with_context(|| {
            format!(
                "timed out after {WAIT:?} waiting for a Sync state with {parts:?}; states:\n  {}",
                self.lines().join("\n  ")
            )
        })??
        .iter()
        .skip(since)
        .find(|l| matches(l))
        .cloned()
        .unwrap_or_default();
        Ok(found)
    }
}

impl Drop for ConditionLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `Ready=True ReconciliationSucceeded "applied ..." | Reconciling=True ...`, by type.
fn summarize(sync: &Sync) -> String {
    let st = sync.status.clone().unwrap_or_default();
    let mut conditions: Vec<String> = st
        .conditions
        .iter()
        .map(|c| {
            let message: String = c.message.chars().take(200).collect();
            format!("{}={} {} {message:?}", c.type_, c.status, c.reason)
        })
        .collect();
    conditions.sort();
    conditions.join(" | ")
}

/// Fails unless every name in `kept` still has the uid it had in `before`.
fn assert_same_uids(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    kept: &BTreeSet<String>,
) -> Result<()> {
    for name in kept {
        let was = before
            .get(name)
            .with_context(|| format!("{name} had no uid"))?;
        match after.get(name) {
            Some(now) if now == was => {}
            Some(now) => bail!("{name} was deleted and re-created (uid {was} -> {now})"),
            None => bail!("{name} was deleted"),
        }
    }
    Ok(())
}

fn names(objects: &Objects) -> BTreeSet<String> {
    objects.keys().cloned().collect()
}
