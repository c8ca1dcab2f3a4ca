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
//! The drills found three agent bugs, fixed since and tested here: a failed apply set back to
//! the previous revision by drift correction; a Sync whose target namespace was deleted saying
//! Ready until its interval; a reconcile from a stale cached Sync writing over the status just
//! written (every status write now starts from the status as the API server has it).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use plumb_agent::api::{GitSource, RECONCILE_REQUEST_ANNOTATION, Sync};
use plumb_core::{SYNC_NAME_LABEL, SYNC_NAMESPACE_LABEL};
use plumb_testsupport::git::{GitServers, Repo, ServerOptions, Signing, WorkTree};
use plumb_testsupport::kube::{
    Component, PrivateControlPlane, TestNamespace, apply_crds, client, eventually,
};
use serde_json::json;
use tokio::task::JoinHandle;

/// How long a drill waits for any one step.
const WAIT: Duration = Duration::from_secs(90);
/// How many log lines of an agent a failing drill prints.
const LOG_TAIL_LINES: usize = 80;

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

// ---- /metrics over plain HTTP/1.0 (no client crate in the workspace) ----

fn free_addr() -> Result<SocketAddr> {
    // Bound and released at once: the agent binds it a moment later (`Agent::spawn` retries
    // if another process took it meanwhile).
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(listener.local_addr()?)
}

fn http_get_blocking(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no complete response from {addr}{path}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line in {head:?}"))?;
    Ok((status, body.to_owned()))
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || http_get_blocking(addr, &path)).await?
}

/// The sum of every sample of counter `name` whose labels include all of `labels`
/// (`key="value"` each).
fn counter(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|rest| {
            let (labels_part, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels
                .iter()
                .all(|want| labels_part.split(',').any(|l| l == *want))
                .then(|| value.split(' ').next()?.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

// ---- the agent process ----

/// A running `plumb agent`. Dropping it kills the process (SIGKILL) and, unless
/// [`Agent::finish`] was called, prints the tail of its log: the drill failed.
struct Agent {
    identity: String,
    child: Child,
    log: PathBuf,
    metrics: SocketAddr,
    quiet: bool,
}

impl Agent {
    /// SIGKILL, as the OOM killer or a node failure would, and reap it.
    fn kill(&mut self) -> Result<()> {
        self.child
            .kill()
            .with_context(|| format!("killing agent {}", self.identity))?;
        let status = self.child.wait()?;
        eprintln!("agent {} killed: {status}", self.identity);
        Ok(())
    }

    async fn metrics(&self) -> Result<String> {
        let (status, body) = http_get(self.metrics, "/metrics").await?;
        ensure!(status == 200, "GET /metrics answered {status}: {body}");
        Ok(body)
    }

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

    /// Stops the agent at the end of a passing drill, without printing its log.
    fn finish(mut self) {
        self.quiet = true;
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("({e})"));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.quiet {
            eprintln!(
                "---- last {LOG_TAIL_LINES} log lines of agent {} ({}) ----\n{}\n---- end ----",
                self.identity,
                self.log.display(),
                self.log_tail()
            );
        }
    }
}

// ---- the drill world ----

/// Where the GitSource fetches from.
enum Remote<'a> {
    /// A local bare repository (`file://`, `--allow-local-sources`).
    Local,
    /// A repository on these servers, over plain http (`insecure: true`).
    Http(&'a GitServers),
}

/// A namespace with the CRDs, a Git repository, a GitSource `repo` and Sync `app` (of `app/`,
/// pruning, correcting drift, interval 1h so that only events drive it), and a directory for
/// the agents' cache and logs. Declare agents after the world: they die before it goes.
struct World {
    client: Client,
    kubeconfig: PathBuf,
    ns: String,
    url: String,
    insecure: bool,
    wt: WorkTree,
    dir: tempfile::TempDir,
    _repo: Repo,
    /// On the shared control plane: deletes the namespace on drop.
    _ns: Option<TestNamespace>,
}

impl World {
    /// On the shared control plane (KUBECONFIG), in a namespace of its own.
    async fn shared(prefix: &str, remote: Remote<'_>) -> Result<Self> {
        let client = client().await?;
        let kubeconfig = std::env::var_os("KUBECONFIG")
            .map(PathBuf::from)
            .context("KUBECONFIG is not set")?;
        let ns = TestNamespace::create(&client, prefix).await?;
        Self::build(
            client,
            kubeconfig,
            ns.name().to_owned(),
            Some(ns),
            prefix,
            remote,
        )
        .await
    }

    /// On a private control plane: its namespace goes with the control plane.
    async fn private(plane: &PrivateControlPlane, prefix: &str) -> Result<Self> {
        let client = plane.client().await?;
        let ns = format!("faults-{prefix}");
        let namespace: Namespace = serde_json::from_value(json!({ "metadata": { "name": ns } }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await?;
        let kubeconfig = plane.kubeconfig().to_path_buf();
        Self::build(client, kubeconfig, ns, None, prefix, Remote::Local).await
    }

    async fn build(
        client: Client,
        kubeconfig: PathBuf,
        ns: String,
        guard: Option<TestNamespace>,
        prefix: &str,
        remote: Remote<'_>,
    ) -> Result<Self> {
        apply_crds(
            &client,
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds.yaml"),
        )
        .await?;
        let (repo, url, insecure) = match remote {
            Remote::Local => {
                let repo = Repo::local(prefix)?;
                let url = repo.file_url();
                (repo, url, false)
            }
            Remote::Http(servers) => {
                let repo = servers.create_repo(prefix)?;
                (repo, servers.http_url(prefix), true)
            }
        };
        let wt = repo.work_tree()?;
        let dir = tempfile::Builder::new().prefix("plumb-faults-").tempdir()?;
        Ok(Self {
            client,
            kubeconfig,
            ns,
            url,
            insecure,
            wt,
            dir,
            _repo: repo,
            _ns: guard,
        })
    }

    /// Starts `plumb agent` for this world's namespace (cache in the world's directory, shared
    /// by every agent of the world) and waits until `/healthz` answers.
    async fn spawn(&self, identity: &str) -> Result<Agent> {
        let log = self.dir.path().join(format!("{identity}.log"));
        for attempt in 1..=3 {
            let metrics = free_addr()?;
            let out = File::options().create(true).append(true).open(&log)?;
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_plumb"));
            cmd.args(["-v", "agent", "--watch-namespace", &self.ns])
                .args(["--metrics-addr", &metrics.to_string()])
                .args(["--agent-namespace", &self.ns])
                .args(["--identity", identity])
                .arg("--cache-dir")
                .arg(self.dir.path().join("cache"))
                .args(["--concurrency", "4"])
                .arg("--allow-local-sources")
                .env("KUBECONFIG", &self.kubeconfig)
                .env("NO_COLOR", "1")
                .env_remove("POD_NAME")
                .env_remove("POD_NAMESPACE")
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            let child = cmd.spawn().context("starting plumb agent")?;
            let mut agent = Agent {
                identity: identity.to_owned(),
                child,
                log: log.clone(),
                metrics,
                quiet: false,
            };
            match wait_healthy(&mut agent).await {
                Ok(()) => return Ok(agent),
                Err(e) => {
                    let tail = agent.log_tail();
                    agent.quiet = true;
                    drop(agent);
                    if attempt < 3 && tail.contains("listening on") {
                        continue;
                    }
                    bail!("agent {identity} did not start: {e:#}\n---- its log ----\n{tail}");
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Commits `app/` holding exactly `objects` (ConfigMaps, in `namespace` if given) plus
    /// `extra` files (outside `app/`), and pushes.
    fn commit(
        &self,
        objects: &Objects,
        namespace: Option<&str>,
        extra: &[(&str, &[u8])],
    ) -> Result<String> {
        if self.wt.path().join("app").exists() {
            self.wt.remove("app")?;
        }
        for (name, value) in objects {
            self.wt.write(
                format!("app/{name}.yaml"),
                configmap_yaml(name, value, namespace),
            )?;
        }
        for (path, content) in extra {
            self.wt.write(path, content)?;
        }
        let id = self.wt.commit("change", &Signing::None)?;
        self.wt.push()?;
        Ok(id)
    }

    async fn create_source(&self) -> Result<()> {
        let gs: GitSource = serde_json::from_value(json!({
            "apiVersion": "plumb.dev/v1alpha1", "kind": "GitSource",
            "metadata": { "name": "repo" },
            "spec": { "url": self.url, "ref": { "branch": "main" }, "interval": "1h",
                      "insecure": self.insecure }
        }))?;
        self.sources().create(&PostParams::default(), &gs).await?;
        Ok(())
    }

    async fn create_sync(&self, extra_spec: serde_json::Value) -> Result<()> {
        let mut spec = json!({
            "sourceRef": { "name": "repo" }, "path": "app", "prune": true,
            "interval": "1h", "drift": "correct"
        });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
            spec.extend(extra.clone());
        }
        let sync: Sync = serde_json::from_value(json!({
            "apiVersion": "plumb.dev/v1alpha1", "kind": "Sync",
            "metadata": { "name": "app" }, "spec": spec
        }))?;
        self.syncs().create(&PostParams::default(), &sync).await?;
        Ok(())
    }

    fn sources(&self) -> Api<GitSource> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn syncs(&self) -> Api<Sync> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn configmaps(&self, namespace: &str) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Asks the GitSource to fetch now (what `plumb reconcile source` does).
    async fn poke_source(&self) -> Result<()> {
        let patch = json!({ "metadata": { "annotations": {
            RECONCILE_REQUEST_ANNOTATION: plumb_agent::status::now_rfc3339()
        } } });
        self.sources()
            .patch("repo", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Waits until the Sync is Ready with `commit` applied.
    async fn wait_applied(&self, commit: &str) -> Result<Sync> {
        let syncs = self.syncs();
        eventually(&format!("Sync app to apply {commit}"), WAIT, || {
            let syncs = syncs.clone();
            async move {
                let s = syncs.get("app").await?;
                let st = s.status.clone().unwrap_or_default();
                let applied = st
                    .last_applied_revision
                    .as_deref()
                    .is_some_and(|r| r.ends_with(commit));
                let ready = plumb_agent::status::is_true(&st.conditions, "Ready");
                Ok((applied && ready).then_some(s))
            }
        })
        .await
    }

    /// The two bystanders, created by hand in `namespace`: `bystander` (no labels) and
    /// `impostor` (this Sync's ownership labels, never in its inventory).
    async fn create_bystanders(&self, namespace: &str) -> Result<()> {
        let api = self.configmaps(namespace);
        for (name, labels) in [
            ("bystander", json!({})),
            (
                "impostor",
                json!({ SYNC_NAME_LABEL: "app", SYNC_NAMESPACE_LABEL: self.ns }),
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

/// Polls `/healthz` until it answers 200; fails early when the process exits.
async fn wait_healthy(agent: &mut Agent) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = agent.child.try_wait()? {
            bail!("the process exited: {status}");
        }
        if let Ok((200, _)) = http_get(agent.metrics, "/healthz").await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "/healthz on {} did not answer 200 within 30s",
                agent.metrics
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
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

// ---- drills 1 and 2: the API server or etcd down in the middle of an apply ----

/// What goes wrong in [`control_plane_fault_mid_apply`].
#[derive(Clone, Copy, Debug)]
enum PlaneFault {
    /// SIGKILL the API server, then start it again.
    KillApiServer,
    /// Stop etcd (SIGTERM), then start it again on its data directory.
    StopEtcd,
}

/// Whether [`control_plane_fault_mid_apply`] fails when drift correction sets objects the
/// failed apply wrote back to the previous revision (a known bug), or only reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NoRevert {
    Assert,
    Report,
}

/// Revision 1: `keep` (50) and `gone` (20). Revision 2 changes `keep`, drops `gone` and adds
/// 200 `new`: 250 writes and 20 prunes. The fault strikes as soon as the first `new` object is
/// written and is repaired once its effect shows.
async fn control_plane_fault_mid_apply(fault: PlaneFault, no_revert: NoRevert) -> Result<()> {
    let _one_at_a_time = PRIVATE_PLANE.lock().await;
    let started = Instant::now();
    let plane = PrivateControlPlane::up().await?;
    eprintln!("private control plane up in {:.1?}", started.elapsed());
    let prefix = match fault {
        PlaneFault::KillApiServer => "apiserver",
        PlaneFault::StopEtcd => "etcd",
    };
    let w = World::private(&plane, prefix).await?;
    let ns = w.ns.clone();
    let agent = w.spawn(&format!("{prefix}-agent")).await?;

    let keep1 = objects("keep", 50, "1");
    let gone = objects("gone", 20, "1");
    let first = w.commit(&union(&[keep1.clone(), gone.clone()]), None, &[])?;
    w.create_bystanders(&ns).await?;
    w.create_source().await?;
    w.create_sync(json!({})).await?;
    w.wait_applied(&first).await?;

    let before = w.uids(&ns).await?;
    let events = ConfigMapEvents::start(w.configmaps(&ns));
    let conditions = ConditionLog::start(w.syncs());
    let deletes_before = agent.requests("delete", "configmaps").await?;
    let failures_before = agent.sync_reconciles("failure").await?;
    let writes_before = agent.requests("apply", "configmaps").await?;

    let keep2 = objects("keep", 50, "2");
    let added = objects("new", 200, "2");
    let final_objects = union(&[keep2, added.clone()]);
    let second = w.commit(&final_objects, None, &[])?;
    w.poke_source().await?;
    events.wait_written("new-").await?;

    let fault_at = Instant::now();
    match fault {
        PlaneFault::KillApiServer => plane.kill(Component::ApiServer).await?,
        PlaneFault::StopEtcd => plane.stop(Component::Etcd).await?,
    }
    match fault {
        // The agent notices: its reconcile fails (and counts it; the API server that would
        // take the status is gone).
        PlaneFault::KillApiServer => {
            eventually("the agent to count a failed reconcile", WAIT, || async {
                Ok((agent.sync_reconciles("failure").await? > failures_before).then_some(()))
            })
            .await?;
        }
        // The API server notices: its etcd check fails.
        PlaneFault::StopEtcd => {
            let client = w.client.clone();
            eventually("the API server to report etcd down", WAIT, || {
                let client = client.clone();
                async move {
                    let req = http::Request::get("/readyz/etcd").body(Vec::new())?;
                    let answer =
                        tokio::time::timeout(Duration::from_secs(3), client.request_text(req))
                            .await;
                    Ok(matches!(answer, Ok(Err(_)) | Err(_)).then_some(()))
                }
            })
            .await?;
        }
    }
    // Writes are counted as they are sent: with etcd down they hang, so this stays below the
    // revision's total if the outage caught the apply before its last write.
    let sent_in_outage = agent.requests("apply", "configmaps").await? - writes_before;
    match fault {
        PlaneFault::KillApiServer => plane.start(Component::ApiServer).await?,
        PlaneFault::StopEtcd => plane.start(Component::Etcd).await?,
    }
    eprintln!(
        "{fault:?}: repaired {:.1?} after the fault",
        fault_at.elapsed()
    );

    let sync = w.wait_applied(&second).await?;
    eprintln!(
        "{fault:?}: converged {:.1?} after the fault",
        fault_at.elapsed()
    );

    // Nothing lost: exactly the final revision, with its values.
    assert_eq!(
        w.managed(&ns).await?,
        final_objects,
        "the managed ConfigMaps"
    );
    let st = sync.status.clone().unwrap_or_default();
    assert_eq!(st.inventory.len(), final_objects.len(), "inventory");
    // Nothing pruned wrongly: what stays kept its uid, no DELETED event for it, and the agent
    // sent as many DELETEs as Git removed objects.
    let after = w.uids(&ns).await?;
    let mut kept = names(&keep1);
    kept.extend(["bystander".to_owned(), "impostor".to_owned()]);
    assert_same_uids(&before, &after, &kept)?;
    let deleted = events.deleted_names();
    assert!(
        deleted.is_subset(&names(&gone)),
        "deleted besides the objects Git removed: {:?}",
        deleted.difference(&names(&gone)).collect::<Vec<_>>()
    );
    for name in gone.keys() {
        assert!(!after.contains_key(name), "{name} was not pruned");
    }
    let deletes = agent.requests("delete", "configmaps").await? - deletes_before;
    assert_eq!(deletes, gone.len() as f64, "DELETE requests the agent sent");
    // The fault struck mid-apply: writes of the revision were still to be sent when the
    // outage was confirmed, or some failed (only a failed apply writes more than its 250:
    // its failed writes again, and drift corrections).
    let redone = agent.requests("apply", "configmaps").await? - writes_before - 250.0;
    eprintln!(
        "{fault:?}: {sent_in_outage}/250 writes sent when the outage was confirmed; \
         {redone} writes beyond the revision's 250"
    );
    ensure!(
        sent_in_outage < 250.0 || redone > 0.0,
        "the fault did not land mid-apply: every write of the revision was sent and succeeded"
    );

    // Once an object of the new revision is written, it stays at the new revision.
    let reverted: Vec<(String, Vec<String>)> = keep1
        .keys()
        .chain(added.keys())
        .map(|n| (n.clone(), events.values_of(n)))
        .filter(|(_, values)| values.windows(2).any(|w| w[0] == "2" && w[1] == "1"))
        .collect();
    if !reverted.is_empty() {
        let message = format!(
            "{} objects written at the new revision were set back to the previous one \
             (values seen, in order): {:?}",
            reverted.len(),
            &reverted[..reverted.len().min(5)]
        );
        if no_revert == NoRevert::Assert {
            bail!("{message}");
        }
        eprintln!("{fault:?}: known bug (see a_failed_apply_is_not_reverted_...): {message}");
    }
    // What the Sync said meanwhile: applying the revision, then Ready with it, never Stalled.
    // (While the API server or etcd is down the agent cannot write a status at all: a failed
    // attempt shows on its /metrics, counted above, not in the Sync.)
    conditions
        .wait_for(0, &["Reconciling=True Progressing", &second])
        .await?;
    conditions
        .wait_for(0, &["Ready=True ReconciliationSucceeded", &second])
        .await?;
    let lines = conditions.lines();
    eprintln!("{fault:?}: the Sync's states:\n  {}", lines.join("\n  "));
    assert!(
        lines.iter().all(|l| !l.contains("Stalled=True")),
        "a transient outage stalled the Sync: {lines:#?}"
    );
    assert!(
        st.history.first().is_some_and(|h| h.result == "success"),
        "{:?}",
        st.history
    );

    agent.finish();
    plane.down()?;
    Ok(())
}

#[tokio::test]
async fn api_server_killed_mid_apply_converges_without_wrong_prunes() -> Result<()> {
    control_plane_fault_mid_apply(PlaneFault::KillApiServer, NoRevert::Report).await
}

#[tokio::test]
async fn etcd_restarted_mid_apply_converges_without_wrong_prunes() -> Result<()> {
    control_plane_fault_mid_apply(PlaneFault::StopEtcd, NoRevert::Report).await
}

/// An apply cut off half-way (the API server killed) must not have its writes "corrected" back
/// to the previous revision by the drift watch (found by this drill: the checks deferred during
/// the apply ran against the old registration when the new one could not be made; now the Sync
/// is not healed until a later apply registers it). DESIGN.md: "healing ... always towards the
/// newest revision written".
#[tokio::test]
async fn a_failed_apply_is_not_reverted_to_the_previous_revision() -> Result<()> {
    control_plane_fault_mid_apply(PlaneFault::KillApiServer, NoRevert::Assert).await
}

/// The same bug without any fault, on the shared control plane: a revision whose health wait
/// times out (`wait: true`, a Deployment that cannot schedule) fails after writing its other
/// objects; drift correction then sets them back to the previous revision, and every retry
/// writes them forward again (seen: `keep-000` 2, 1, 2, 1, 2, 1, ... every few seconds).
#[tokio::test]
async fn a_revision_failing_its_health_wait_is_not_reverted() -> Result<()> {
    let w = World::shared("unhealthy", Remote::Local).await?;
    let ns = w.ns.clone();
    let agent = w.spawn("unhealthy-agent").await?;
    let first = w.commit(&objects("keep", 1, "1"), None, &[])?;
    w.create_source().await?;
    w.create_sync(json!({ "wait": true, "timeout": "5s" }))
        .await?;
    w.wait_applied(&first).await?;
    let events = ConfigMapEvents::start(w.configmaps(&ns));
    let stuck = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: stuck\nspec:\n  \
                 selector:\n    matchLabels: {app: stuck}\n  template:\n    metadata:\n      \
                 labels: {app: stuck}\n    spec:\n      nodeSelector: {no-such: node}\n      \
                 containers:\n      - {name: c, image: nginx}\n";
    let second = w.commit(
        &objects("keep", 1, "2"),
        None,
        &[("app/stuck.yaml", stuck.as_bytes())],
    )?;
    w.poke_source().await?;
    // Two failed attempts at the revision, each recorded in the history.
    let syncs = w.syncs();
    eventually("two failed health waits", WAIT, || {
        let syncs = syncs.clone();
        let second = second.clone();
        async move {
            let st = syncs.get("app").await?.status.unwrap_or_default();
            let failed = st
                .history
                .iter()
                .filter(|h| h.result == "failure" && h.revision.ends_with(&second))
                .count();
            Ok((failed >= 2).then_some(()))
        }
    })
    .await?;
    let values = events.values_of("keep-000");
    assert!(
        !values.windows(2).any(|w| w == ["2", "1"]),
        "keep-000 was set back to the previous revision: {values:?}"
    );
    agent.finish();
    Ok(())
}

// ---- drill 3: the Git server stopped mid-fetch ----

#[tokio::test]
async fn git_server_stopped_mid_fetch_keeps_the_cluster_and_recovers() -> Result<()> {
    /// 4 MiB of pack at 1 MiB/s: the transfer takes about 4 s.
    const BLOB: usize = 1 << 20;
    let mut servers = GitServers::start_with(ServerOptions {
        rate_limit: Some(1 << 20),
    })?;
    let w = World::shared("gitstop", Remote::Http(&servers)).await?;
    let ns = w.ns.clone();
    let agent = w.spawn("gitstop-agent").await?;

    let keep1 = objects("keep", 20, "1");
    let gone = objects("gone", 10, "1");
    let first = w.commit(&union(&[keep1.clone(), gone.clone()]), None, &[])?;
    w.create_bystanders(&ns).await?;
    w.create_source().await?;
    w.create_sync(json!({})).await?;
    w.wait_applied(&first).await?;
    let before = w.uids(&ns).await?;
    let events = ConfigMapEvents::start(w.configmaps(&ns));
    let deletes_before = agent.requests("delete", "configmaps").await?;

    // The new revision carries large files outside the Sync's path.
    let blobs: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("blobs/blob-{i}.bin"), incompressible(BLOB, i + 1)))
        .collect();
    let extra: Vec<(&str, &[u8])> = blobs
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect();
    let keep2 = objects("keep", 20, "2");
    let second = w.commit(&keep2, None, &extra)?;
    w.poke_source().await?;

    // Stop the servers once a quarter of the pack is out.
    eventually("the Git server to be sending the pack", WAIT, || {
        let sent = servers.serving().unwrap_or(0);
        async move { Ok((sent >= BLOB as u64).then_some(sent)) }
    })
    .await?;
    servers.stop();
    let stopped_at = Instant::now();

    // The GitSource says so; the cluster keeps the last revision, nothing pruned.
    let sources = w.sources();
    let message = eventually("the GitSource to report the failed fetch", WAIT, || {
        let sources = sources.clone();
        async move {
            let st = sources.get("repo").await?.status.unwrap_or_default();
            Ok(st
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "FetchFailed")
                .map(|c| c.message.clone()))
        }
    })
    .await?;
    eprintln!("the GitSource reported: {message}");
    assert!(message.contains(&w.url), "{message}");
    let st = sources.get("repo").await?.status.unwrap_or_default();
    assert_eq!(
        st.artifact.map(|a| a.commit).as_deref(),
        Some(first.as_str()),
        "the artifact is still the last good fetch"
    );
    let sync_st = w.syncs().get("app").await?.status.unwrap_or_default();
    assert!(
        sync_st
            .last_applied_revision
            .as_deref()
            .is_some_and(|r| r.ends_with(&first))
            && plumb_agent::status::is_true(&sync_st.conditions, "Ready"),
        "the Sync keeps its revision: {:?}",
        sync_st.conditions
    );
    assert_eq!(
        w.managed(&ns).await?,
        union(&[keep1.clone(), gone.clone()]),
        "nothing changed or pruned on a failed fetch"
    );

    // The server comes back on the same ports: the source retries by itself.
    servers.restart()?;
    w.wait_applied(&second).await?;
    eprintln!(
        "fetched and applied {:.1?} after the server stopped",
        stopped_at.elapsed()
    );
    assert_eq!(w.managed(&ns).await?, keep2, "the managed ConfigMaps");
    let after = w.uids(&ns).await?;
    let mut kept = names(&keep1);
    kept.extend(["bystander".to_owned(), "impostor".to_owned()]);
    assert_same_uids(&before, &after, &kept)?;
    let deleted = events.deleted_names();
    assert_eq!(deleted, names(&gone), "deleted objects");
    let deletes = agent.requests("delete", "configmaps").await? - deletes_before;
    assert_eq!(deletes, gone.len() as f64, "DELETE requests the agent sent");
    let st = sources.get("repo").await?.status.unwrap_or_default();
    assert_eq!(
        st.artifact.map(|a| a.commit).as_deref(),
        Some(second.as_str())
    );

    agent.finish();
    Ok(())
}

// ---- drill 4: the agent SIGKILLed mid-prune ----

#[tokio::test]
async fn agent_killed_mid_prune_resumes_without_wrong_prunes() -> Result<()> {
    agent_killed_mid_prune(Strict::Report).await
}

/// Found by the drill above (about one run in three): right after the restarted agent recorded
/// the revision ("... 150 pruned"), another reconcile of the Sync, started from the agent's
/// cached copy of the Sync from before that status write, wrote its status over it (the
/// previous revision and inventory came back, the pruning apply's history entry was lost).
/// Every status write now starts from the status as the API server has it.
#[tokio::test]
async fn a_restarted_agent_never_writes_a_stale_status_over_its_own() -> Result<()> {
    agent_killed_mid_prune(Strict::Assert).await
}

/// Whether a drill fails on a known bug it observed, or only reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Strict {
    Assert,
    Report,
}

/// Revision 1: `keep` (20) and `gone` (200); revision 2 drops `gone`. The agent is SIGKILLed a
/// quarter through the prune and a new process takes over.
async fn agent_killed_mid_prune(strict: Strict) -> Result<()> {
    let w = World::shared("pruned", Remote::Local).await?;
    let ns = w.ns.clone();
    let mut first_agent = w.spawn("prune-1").await?;

    let keep = objects("keep", 20, "1");
    let gone = objects("gone", 200, "1");
    let first = w.commit(&union(&[keep.clone(), gone.clone()]), None, &[])?;
    w.create_bystanders(&ns).await?;
    w.create_source().await?;
    w.create_sync(json!({})).await?;
    w.wait_applied(&first).await?;
    let before = w.uids(&ns).await?;
    let events = ConfigMapEvents::start(w.configmaps(&ns));
    let conditions = ConditionLog::start(w.syncs());

    // Revision 2 keeps `keep` as it is and removes 200 objects.
    let second = w.commit(&keep, None, &[])?;
    w.poke_source().await?;
    // A quarter through the prune.
    events.wait_deleted("gone-", gone.len() / 4).await?;
    first_agent.kill()?;
    let remaining = w
        .managed(&ns)
        .await?
        .keys()
        .filter(|n| n.starts_with("gone-"))
        .count();
    eprintln!("killed mid-prune: {remaining}/{} left to prune", gone.len());
    ensure!(
        remaining > 0 && remaining < gone.len(),
        "the kill did not land mid-prune ({remaining} of {} left)",
        gone.len()
    );
    let st = w.syncs().get("app").await?.status.unwrap_or_default();
    assert!(
        st.last_applied_revision
            .as_deref()
            .is_some_and(|r| r.ends_with(&first)),
        "the killed agent never recorded the revision it was pruning for: {:?}",
        st.last_applied_revision
    );

    // A new process on the same cache directory (a container restart in the same pod).
    let second_agent = w.spawn("prune-2").await?;
    let sync = w.wait_applied(&second).await?;
    assert_eq!(w.managed(&ns).await?, keep, "the managed ConfigMaps");
    let after = w.uids(&ns).await?;
    let mut kept = names(&keep);
    kept.extend(["bystander".to_owned(), "impostor".to_owned()]);
    assert_same_uids(&before, &after, &kept)?;
    assert_eq!(events.deleted_names(), names(&gone), "deleted objects");
    // The restarted agent deleted only what was left (one DELETE of the killed agent may have
    // been in flight when it died).
    let deletes = second_agent.requests("delete", "configmaps").await?;
    assert!(
        deletes <= remaining as f64 && deletes + 1.0 >= remaining as f64,
        "the restarted agent sent {deletes} DELETEs for {remaining} objects left"
    );
    let st = sync.status.unwrap_or_default();
    assert_eq!(
        st.inventory.len(),
        keep.len(),
        "inventory: {:?}",
        st.inventory
    );
    conditions
        .wait_for(0, &["Reconciling=True Progressing", &second])
        .await?;
    let applied = conditions
        .wait_for(0, &["Ready=True", &second, "pruned"])
        .await?;

    // Whatever was queued meanwhile has run once a reconcile requested now is handled: then
    // the status never went back to the previous revision and the history keeps the prune.
    let requested = plumb_agent::status::now_rfc3339();
    let patch = json!({ "metadata": { "annotations": {
        RECONCILE_REQUEST_ANNOTATION: requested
    } } });
    w.syncs()
        .patch("app", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let syncs = w.syncs();
    let st = eventually("the requested reconcile to be handled", WAIT, || {
        let syncs = syncs.clone();
        let requested = requested.clone();
        async move {
            let st = syncs.get("app").await?.status.unwrap_or_default();
            let handled = st.last_handled_reconcile_at.as_deref() == Some(requested.as_str());
            Ok(handled.then_some(st))
        }
    })
    .await?;
    let lines = conditions.lines();
    eprintln!("the Sync's states:\n  {}", lines.join("\n  "));
    let old_ready =
        format!("Ready=True ReconciliationSucceeded \"applied revision branch main@sha1:{first}");
    let regressed = lines
        .iter()
        .skip_while(|l| **l != applied)
        .any(|l| l.starts_with(&old_ready));
    let pruned_recorded = st
        .history
        .iter()
        .any(|h| h.revision.ends_with(&second) && h.changes.contains("pruned"));
    if regressed || !pruned_recorded {
        let history: Vec<String> = st
            .history
            .iter()
            .map(|h| format!("{}: {}", h.revision, h.changes))
            .collect();
        let message = format!(
            "a stale status was written over the applied one (went back to {first}: \
             {regressed}; the history keeps the prune: {pruned_recorded}): {history:?}"
        );
        if strict == Strict::Assert {
            bail!("{message}");
        }
        eprintln!(
            "known bug (see a_restarted_agent_never_writes_a_stale_status_over_its_own): {message}"
        );
    }

    second_agent.finish();
    first_agent.finish();
    Ok(())
}

// ---- drill 5: the target namespace deleted under a Sync ----

/// Deletes namespace `name`; returns its uid.
async fn delete_namespace(client: &Client, name: &str) -> Result<String> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let uid = namespaces.get(name).await?.uid().unwrap_or_default();
    namespaces.delete(name, &Default::default()).await?;
    Ok(uid)
}

/// Waits until namespace `name` is gone (the namespace controller emptied it).
async fn wait_namespace_gone(client: &Client, name: &str) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    eventually(&format!("namespace {name} to be gone"), WAIT, || {
        let namespaces = namespaces.clone();
        async move { Ok(namespaces.get_opt(name).await?.is_none().then_some(())) }
    })
    .await
}

#[tokio::test]
async fn a_deleted_namespace_in_the_manifests_is_recreated_with_its_objects() -> Result<()> {
    let w = World::shared("nsback", Remote::Local).await?;
    let target = format!("{}-app", w.ns);
    let agent = w.spawn("nsback-agent").await?;
    let app = objects("cm", 20, "1");
    // The Namespace is part of the revision.
    let ns_yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {target}\n");
    let first = w.commit(
        &app,
        Some(&target),
        &[("app/namespace.yaml", ns_yaml.as_bytes())],
    )?;
    w.create_source().await?;
    w.create_sync(json!({})).await?;
    w.wait_applied(&first).await?;
    let cleanup = TargetNamespace(target.clone());

    let old_uid = delete_namespace(&w.client, &target).await?;
    let namespaces: Api<Namespace> = Api::all(w.client.clone());
    let new_uid = eventually("the namespace to come back", WAIT, || {
        let namespaces = namespaces.clone();
        let old_uid = old_uid.clone();
        let target = target.clone();
        async move {
            Ok(namespaces
                .get_opt(&target)
                .await?
                .and_then(|n| n.uid())
                .filter(|uid| *uid != old_uid))
        }
    })
    .await?;
    eventually("every object to come back", WAIT, || async {
        Ok((w.managed(&target).await? == app).then_some(()))
    })
    .await?;
    eprintln!("namespace {target} re-created ({old_uid} -> {new_uid}) with its 20 objects");
    // The namespace controller deleted the objects; the agent deleted nothing.
    assert_eq!(agent.requests("delete", "configmaps").await?, 0.0);
    assert_eq!(agent.requests("delete", "namespaces").await?, 0.0);
    let st = w.syncs().get("app").await?.status.unwrap_or_default();
    assert!(plumb_agent::status::is_true(&st.conditions, "Ready"));
    assert_eq!(
        st.inventory.len(),
        app.len() + 1,
        "inventory: {:?}",
        st.inventory
    );
    agent.finish();
    drop(cleanup);
    Ok(())
}

/// How the Sync learns that its target namespace is gone, in
/// [`deleted_target_namespace_outside_the_manifests`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Notice {
    /// By itself: the drift watch sees every object deleted.
    Watch,
    /// From a reconcile request (`plumb reconcile sync`) once the namespace is gone.
    Request,
}

/// A Sync with `targetNamespace` (a namespace it does not own: not in its manifests) loses
/// the namespace. It must not create it; it must say which namespace is missing, keep its
/// inventory, delete nothing, and restore its objects once the namespace is back.
async fn deleted_target_namespace_outside_the_manifests(notice: Notice) -> Result<()> {
    let prefix = match notice {
        Notice::Watch => "nsgone",
        Notice::Request => "nsgonereq",
    };
    let w = World::shared(prefix, Remote::Local).await?;
    let target = format!("{}-app", w.ns);
    let namespace: Namespace = serde_json::from_value(json!({ "metadata": { "name": target } }))?;
    let namespaces: Api<Namespace> = Api::all(w.client.clone());
    namespaces
        .create(&PostParams::default(), &namespace)
        .await?;
    let cleanup = TargetNamespace(target.clone());
    let agent = w.spawn(&format!("{prefix}-agent")).await?;
    let app = objects("cm", 20, "1");
    let first = w.commit(&app, None, &[])?;
    w.create_source().await?;
    w.create_sync(json!({ "targetNamespace": target })).await?;
    w.wait_applied(&first).await?;
    let conditions = ConditionLog::start(w.syncs());

    delete_namespace(&w.client, &target).await?;
    wait_namespace_gone(&w.client, &target).await?;
    if notice == Notice::Request {
        let patch = json!({ "metadata": { "annotations": {
            RECONCILE_REQUEST_ANNOTATION: plumb_agent::status::now_rfc3339()
        } } });
        w.syncs()
            .patch("app", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    // The Sync does not create a namespace it does not own: it says which one is missing.
    let line = conditions.wait_for(0, &["Ready=False", &target]).await?;
    eprintln!("the Sync reported: {line}");
    assert!(
        namespaces.get_opt(&target).await?.is_none(),
        "the Sync created a namespace it does not own"
    );
    let st = w.syncs().get("app").await?.status.unwrap_or_default();
    assert_eq!(st.inventory.len(), app.len(), "the inventory is kept");
    assert_eq!(agent.requests("delete", "configmaps").await?, 0.0);

    // The namespace is back (its owner re-created it): the Sync restores its objects.
    let since = conditions.lines().len();
    namespaces
        .create(&PostParams::default(), &namespace)
        .await?;
    eventually("every object to come back", WAIT, || async {
        Ok((w.managed(&target).await? == app).then_some(()))
    })
    .await?;
    conditions.wait_for(since, &["Ready=True", &first]).await?;
    eprintln!("the Sync's states:\n  {}", conditions.lines().join("\n  "));
    assert_eq!(agent.requests("delete", "configmaps").await?, 0.0);
    agent.finish();
    drop(cleanup);
    Ok(())
}

#[tokio::test]
async fn a_deleted_target_namespace_outside_the_manifests_is_reported_on_request() -> Result<()> {
    deleted_target_namespace_outside_the_manifests(Notice::Request).await
}

/// The drift watch sees every object of the Sync deleted and its checks fail with "namespaces
/// ... not found"; after its retries (~1 minute) the Sync is reconciled at once and reports
/// the missing namespace, instead of saying Ready until its interval (found by this drill).
#[tokio::test]
async fn a_deleted_target_namespace_outside_the_manifests_is_reported() -> Result<()> {
    deleted_target_namespace_outside_the_manifests(Notice::Watch).await
}

/// Deletes a namespace (on the shared control plane) that a drill made beside its
/// TestNamespace, also when the drill fails.
struct TargetNamespace(String);

impl Drop for TargetNamespace {
    fn drop(&mut self) {
        let name = self.0.clone();
        // Drop cannot be async and the test's runtime is blocked here: delete from a thread
        // with a runtime and a client of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let client = client().await?;
                let _ = Api::<Namespace>::all(client)
                    .delete(&name, &Default::default())
                    .await;
                anyhow::Ok(())
            })
        })
        .join();
    }
}
