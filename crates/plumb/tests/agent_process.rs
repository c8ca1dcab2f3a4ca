//! `plumb agent` run as a process, the way a Deployment runs it, against the real control
//! plane and real Git repositories: signed commits applied and drift healed, `/metrics`,
//! `/healthz` and `/readyz` served, a SIGKILLed agent converging after its restart, the webhook
//! receiver refusing a bad signature and fetching on a good one, and a standby replica taking
//! over from a killed leader.
//!
//! Every agent is a child process guarded by [`Agent`]: dropping the guard (a failed assertion,
//! an error) kills it and prints the tail of its log, so a failing test leaves no agent behind
//! and shows what the agent was doing.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hmac::{Hmac, Mac};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use plumb_agent::api::{GitSource, RECONCILE_REQUEST_ANNOTATION, Sync};
use plumb_agent::webhook::RECEIVER_ANNOTATION;
use plumb_testsupport::git::{KeyType, Repo, Signing, SshSigner, WorkTree};
use plumb_testsupport::kube::{TestNamespace, apply_crds, client, eventually};
use serde_json::{Value, json};
use sha2::Sha256;

const WAIT: Duration = Duration::from_secs(60);
/// How many log lines of an agent a failing test prints.
const LOG_TAIL_LINES: usize = 60;

fn configmap(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: \"{value}\"\n"
    )
}

fn free_addr() -> Result<SocketAddr> {
    // Bound and released at once: the agent binds it a moment later. Another process may take
    // it in between; `World::spawn` then retries with another port.
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(listener.local_addr()?)
}

// ---- a minimal HTTP/1.1 client over std::net (no client crate in the workspace) ----

struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

fn http_blocking(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.set_write_timeout(Some(Duration::from_secs(20)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to {method} {path}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| {
            format!(
                "no complete response head: {:?}",
                String::from_utf8_lossy(&raw)
            )
        })?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut content = raw[split + 4..].to_vec();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        content = dechunk(&content)?;
    }
    Ok(Reply {
        status,
        body: String::from_utf8_lossy(&content).into_owned(),
    })
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if raw.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

async fn http(
    addr: SocketAddr,
    method: &'static str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply> {
    let path = path.to_owned();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    let body = body.to_vec();
    tokio::task::spawn_blocking(move || http_blocking(addr, method, &path, &headers, &body)).await?
}

async fn get(addr: SocketAddr, path: &str) -> Result<Reply> {
    http(addr, "GET", path, &[], b"").await
}

/// `sha256=<hex HMAC-SHA256(body, token)>`, the generic receiver's `X-Signature`.
fn hmac_signature(token: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(digest.len() * 2);
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    format!("sha256={hex}")
}

// ---- the agent process ----

/// How to start one agent process.
#[derive(Default)]
struct AgentSpec {
    /// `--identity`; also names the log file.
    identity: String,
    /// Directory under the world's temporary directory used as `--cache-dir`
    /// (default: the identity).
    cache: Option<String>,
    /// Serve the webhook receiver on a free port.
    webhook: bool,
    /// `--leader-elect` on this Lease (in the test namespace).
    lease: Option<String>,
}

/// A running `plumb agent` process. Dropping it kills the process (SIGKILL) and, unless
/// [`Agent::finish`] was called, prints the tail of its log: the test failed.
struct Agent {
    identity: String,
    child: Child,
    log: PathBuf,
    metrics: SocketAddr,
    webhook: Option<SocketAddr>,
    quiet: bool,
}

impl Agent {
    /// SIGKILL, as the kernel's OOM killer or a node failure would; the guard (and its log)
    /// stays for the failure report.
    fn kill(&mut self) -> Result<()> {
        self.child
            .kill()
            .with_context(|| format!("killing agent {}", self.identity))?;
        let status = self.child.wait()?;
        eprintln!("agent {} killed: {status}", self.identity);
        Ok(())
    }

    /// SIGTERM, as the kubelet sends it when a Pod is deleted (a rollout, a drain); returns
    /// the exit status and how long the process took to exit, failing after `within`.
    async fn terminate(
        &mut self,
        within: Duration,
    ) -> Result<(std::process::ExitStatus, Duration)> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .context("running kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {} failed: {status}", self.child.id());
        }
        let sent = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok((status, sent.elapsed()));
            }
            if sent.elapsed() > within {
                bail!(
                    "agent {} still running {within:?} after SIGTERM",
                    self.identity
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the agent at the end of a passing test, without printing its log.
    fn finish(mut self) {
        self.quiet = true;
    }

    fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.quiet {
            eprintln!(
                "---- last {LOG_TAIL_LINES} log lines of agent {} ({}) ----\n{}\n---- end of agent {} log ----",
                self.identity,
                self.log.display(),
                self.log_tail(),
                self.identity
            );
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(unreadable: {e})"));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

// ---- the test world ----

/// A namespace, the CRDs, a Git repository with an allowed signer, and a temporary directory for
/// the agents' caches and logs. Agents are started with [`World::spawn`]; declare them after the
/// world so that they are killed before the namespace is deleted.
struct World {
    client: Client,
    ns: TestNamespace,
    repo: Repo,
    wt: WorkTree,
    signing: Signing,
    dir: tempfile::TempDir,
}

impl World {
    async fn new(prefix: &str) -> Result<Self> {
        let client = client().await?;
        apply_crds(
            &client,
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds.yaml"),
        )
        .await?;
        let ns = TestNamespace::create(&client, prefix).await?;
        let repo = Repo::local(prefix)?;
        let wt = repo.work_tree()?;
        let alice = SshSigner::generate(KeyType::Ed25519, "alice@example.com")?;
        let signers: ConfigMap = serde_json::from_value(json!({
            "metadata": { "name": "signers" },
            "data": { "allowed_signers": format!("{}\n", alice.allowed_signers_line()) }
        }))?;
        Api::<ConfigMap>::namespaced(client.clone(), ns.name())
            .create(&PostParams::default(), &signers)
            .await?;
        let dir = tempfile::Builder::new()
            .prefix("plumb-agent-process-")
            .tempdir()?;
        Ok(Self {
            client,
            ns,
            repo,
            wt,
            signing: Signing::Ssh(alice),
            dir,
        })
    }

    /// The random part of the namespace name: unique per test run.
    fn suffix(&self) -> &str {
        self.ns.name().rsplit('-').next().expect("a suffix")
    }

    /// Starts `plumb agent` scoped to this world's namespace and waits until `/healthz` answers.
    async fn spawn(&self, spec: AgentSpec) -> Result<Agent> {
        let cache = self
            .dir
            .path()
            .join(spec.cache.as_deref().unwrap_or(&spec.identity));
        let log = self.dir.path().join(format!("{}.log", spec.identity));
        let kubeconfig = std::env::var_os("KUBECONFIG").context(
            "KUBECONFIG is not set: `eval \"$(scripts/testenv env)\"` after `scripts/testenv up`",
        )?;
        for attempt in 1..=3 {
            let metrics = free_addr()?;
            let webhook = if spec.webhook {
                Some(free_addr()?)
            } else {
                None
            };
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_plumb"));
            cmd.args(["-v", "agent", "--watch-namespace", self.ns.name()])
                .args(["--metrics-addr", &metrics.to_string()])
                .args(["--agent-namespace", self.ns.name()])
                .args(["--identity", &spec.identity])
                .arg("--cache-dir")
                .arg(&cache)
                .args(["--concurrency", "4"])
                // The test repositories are local.
                .arg("--allow-local-sources");
            if let Some(addr) = webhook {
                cmd.args(["--webhook-addr", &addr.to_string()]);
            }
            if let Some(lease) = &spec.lease {
                cmd.args(["--leader-elect", "--lease-name", lease])
                    .args(["--lease-duration", "4s"]);
            }
            // Appending: a retried start keeps the earlier attempt's lines.
            let out = File::options()
                .create(true)
                .append(true)
                .open(&log)
                .with_context(|| format!("opening {}", log.display()))?;
            cmd.env("KUBECONFIG", &kubeconfig)
                .env("NO_COLOR", "1")
                .env_remove("POD_NAME")
                .env_remove("POD_NAMESPACE")
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            let child = cmd.spawn().context("starting plumb agent")?;
            let mut agent = Agent {
                identity: spec.identity.clone(),
                child,
                log: log.clone(),
                metrics,
                webhook,
                quiet: false,
            };
            match wait_healthy(&mut agent).await {
                Ok(()) => return Ok(agent),
                Err(e) => {
                    let tail = agent.log_tail();
                    agent.quiet = true;
                    drop(agent);
                    if attempt < 3 && tail.contains("listening on") {
                        eprintln!("agent {}: port taken, retrying: {e:#}", spec.identity);
                        continue;
                    }
                    bail!(
                        "agent {} did not start: {e:#}\n---- its log ----\n{tail}",
                        spec.identity
                    );
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    fn commit(&self, files: &[(&str, &str)]) -> Result<String> {
        for (path, content) in files {
            self.wt.write(path, content)?;
        }
        let id = self.wt.commit("change", &self.signing)?;
        self.wt.push()?;
        Ok(id)
    }

    /// A GitSource `repo` on the branch `main`, every new commit verified against the allowed
    /// signers; `receiver` annotates it for a webhook receiver.
    async fn create_source(&self, receiver: Option<&str>) -> Result<()> {
        let mut annotations = BTreeMap::new();
        if let Some(r) = receiver {
            annotations.insert(RECEIVER_ANNOTATION, r);
        }
        let gs: GitSource = serde_json::from_value(json!({
            "apiVersion": "plumb.dev/v1alpha1", "kind": "GitSource",
            "metadata": { "name": "repo", "annotations": annotations },
            "spec": {
                "url": self.repo.file_url(), "ref": { "branch": "main" }, "interval": "1h",
                "verify": { "mode": "range", "allowedSignersRef": { "name": "signers", "key": "allowed_signers" } }
            }
        }))?;
        self.sources().create(&PostParams::default(), &gs).await?;
        Ok(())
    }

    /// A Sync `app` with `spec`.
    async fn create_sync_spec(&self, spec: Value) -> Result<()> {
        let sync: Sync = serde_json::from_value(json!({
            "apiVersion": "plumb.dev/v1alpha1", "kind": "Sync",
            "metadata": { "name": "app" },
            "spec": spec
        }))?;
        self.syncs().create(&PostParams::default(), &sync).await?;
        Ok(())
    }

    /// A Sync `app` of the source's `app/` directory, pruning, correcting drift.
    async fn create_sync(&self) -> Result<()> {
        let sync: Sync = serde_json::from_value(json!({
            "apiVersion": "plumb.dev/v1alpha1", "kind": "Sync",
            "metadata": { "name": "app" },
            "spec": {
                "sourceRef": { "name": "repo" }, "path": "app", "prune": true,
                "interval": "1h", "drift": "correct"
            }
        }))?;
        self.syncs().create(&PostParams::default(), &sync).await?;
        Ok(())
    }

    fn sources(&self) -> Api<GitSource> {
        Api::namespaced(self.client.clone(), self.ns.name())
    }
    fn syncs(&self) -> Api<Sync> {
        Api::namespaced(self.client.clone(), self.ns.name())
    }
    fn configmaps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), self.ns.name())
    }

    /// Asks the GitSource to fetch now (what `plumb reconcile source` and a webhook do).
    async fn poke_source(&self) -> Result<()> {
        let patch = json!({ "metadata": { "annotations": {
            RECONCILE_REQUEST_ANNOTATION: plumb_agent::status::now_rfc3339()
        } } });
        self.sources()
            .patch("repo", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Waits until the Sync `app` is Ready with `commit` applied.
    async fn wait_applied(&self, commit: &str, within: Duration) -> Result<Sync> {
        let syncs = self.syncs();
        eventually(&format!("Sync app to apply {commit}"), within, || {
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

    async fn wait_value(&self, name: &str, value: &str) -> Result<()> {
        let cms = self.configmaps();
        eventually(&format!("ConfigMap {name} to hold {value:?}"), WAIT, || {
            let cms = cms.clone();
            async move {
                Ok(cms
                    .get_opt(name)
                    .await?
                    .and_then(|c| c.data)
                    .is_some_and(|d| d.get("value").map(String::as_str) == Some(value))
                    .then_some(()))
            }
        })
        .await
    }

    /// The commit of the GitSource's artifact and the time of its last fetch.
    async fn fetched(&self) -> Result<(Option<String>, Option<String>)> {
        let st = self.sources().get("repo").await?.status.unwrap_or_default();
        Ok((st.artifact.map(|a| a.commit), st.last_fetch_time))
    }
}

/// Polls `/healthz` until it answers 200; fails early when the process exits.
async fn wait_healthy(agent: &mut Agent) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = agent.child.try_wait()? {
            bail!("the process exited: {status}");
        }
        if let Ok(reply) = get(agent.metrics, "/healthz").await
            && reply.status == 200
        {
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

/// The value of the sample `series` (name and labels, exactly as exposed) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.split(' ').next())
            .and_then(|v| v.parse().ok())
    })
}

// ---- the tests ----

#[tokio::test]
async fn agent_process_applies_a_signed_commit_and_serves_metrics() -> Result<()> {
    let w = World::new("proc").await?;
    let agent = w
        .spawn(AgentSpec {
            identity: "proc-agent".into(),
            ..Default::default()
        })
        .await?;

    let first = w.commit(&[("app/cm.yaml", &configmap("settings", "v1"))])?;
    w.create_source(None).await?;
    w.create_sync().await?;
    let sync = w.wait_applied(&first, WAIT).await?;
    let st = sync.status.unwrap_or_default();
    assert!(
        st.history
            .first()
            .and_then(|h| h.signer.as_deref())
            .is_some_and(|s| s.contains("alice@example.com")),
        "the applied commit's signer is recorded: {:?}",
        st.history
    );
    w.wait_value("settings", "v1").await?;

    // A manual edit by another field manager is undone.
    w.configmaps()
        .patch(
            "settings",
            &PatchParams {
                field_manager: Some("kubectl-edit".into()),
                ..Default::default()
            },
            &Patch::Merge(json!({ "data": { "value": "edited by hand" } })),
        )
        .await?;
    w.wait_value("settings", "v1").await?;

    // The endpoints a Deployment's probes and Prometheus use.
    for path in ["/healthz", "/readyz"] {
        let reply = get(agent.metrics, path).await?;
        assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
    }
    let sync_label = format!("{}/app", w.ns.name());
    // The drift counter is bumped just after the re-apply: give it a moment.
    let addr = agent.metrics;
    let text = eventually(
        "/metrics to count the reconcile and the drift",
        WAIT,
        || {
            let sync_label = sync_label.clone();
            async move {
                let reply = get(addr, "/metrics").await?;
                anyhow::ensure!(reply.status == 200, "GET /metrics: {}", reply.status);
                let counted = reply
                    .body
                    .contains(r#"plumb_reconciles_total{kind="Sync",result="success"}"#)
                    && reply
                        .body
                        .contains(&format!(r#"drift_corrected_total{{sync="{sync_label}"}}"#));
                Ok(counted.then_some(reply.body))
            }
        },
    )
    .await?;
    assert!(
        !text.contains("plumb_plumb_"),
        "metric names carry a doubled prefix:\n{text}"
    );
    let reconciles = sample(
        &text,
        r#"plumb_reconciles_total{kind="Sync",result="success"}"#,
    );
    assert!(
        reconciles.is_some_and(|n| n >= 1.0),
        "no successful Sync reconcile in:\n{text}"
    );
    let corrected = sample(
        &text,
        &format!(r#"plumb_drift_corrected_total{{sync="{sync_label}"}}"#),
    );
    assert!(
        corrected.is_some_and(|n| n >= 1.0),
        "the healed edit is not counted:\n{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"plumb_managed_objects{{sync="{sync_label}"}}"#)
        ),
        Some(1.0),
        "managed objects:\n{text}"
    );
    assert!(
        text.contains("plumb_reconcile_duration_seconds_count"),
        "{text}"
    );

    agent.finish();
    Ok(())
}

#[tokio::test]
async fn killed_agent_process_converges_after_restart() -> Result<()> {
    const MANY: usize = 150;
    let w = World::new("kill").await?;
    let mut agent = w
        .spawn(AgentSpec {
            identity: "kill-1".into(),
            cache: Some("cache".into()),
            ..Default::default()
        })
        .await?;
    let first = w.commit(&[("app/cm.yaml", &configmap("base", "1"))])?;
    w.create_source(None).await?;
    w.create_sync().await?;
    w.wait_applied(&first, WAIT).await?;

    let files: Vec<(String, String)> = (0..MANY)
        .map(|i| {
            let name = format!("bulk-{i:03}");
            (format!("app/{name}.yaml"), configmap(&name, "2"))
        })
        .collect();
    let mut refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let base = configmap("base", "2");
    refs.push(("app/cm.yaml", &base));
    let second = w.commit(&refs)?;
    w.poke_source().await?;

    // SIGKILL as soon as the agent starts writing the new revision.
    let cms = w.configmaps();
    let deadline = Instant::now() + WAIT;
    loop {
        if cms.get_opt("bulk-000").await?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the agent never started applying {second}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.kill()?;
    let bulk = |items: &[ConfigMap]| {
        items
            .iter()
            .filter(|c| c.name_any().starts_with("bulk-"))
            .count()
    };
    let at_kill = bulk(&cms.list(&ListParams::default()).await?.items);
    let st = w.syncs().get("app").await?.status.unwrap_or_default();
    eprintln!(
        "killed with {at_kill}/{MANY} new ConfigMaps applied; lastApplied {:?}",
        st.last_applied_revision
    );

    // A new process on the same cache directory (what a container restart in the same pod
    // sees) converges.
    let restarted = w
        .spawn(AgentSpec {
            identity: "kill-2".into(),
            cache: Some("cache".into()),
            ..Default::default()
        })
        .await?;
    let sync = w.wait_applied(&second, WAIT).await?;
    let items = cms.list(&ListParams::default()).await?.items;
    assert_eq!(bulk(&items), MANY, "not every new ConfigMap exists");
    for c in items.iter().filter(|c| c.name_any().starts_with("bulk-")) {
        assert_eq!(
            c.data
                .as_ref()
                .and_then(|d| d.get("value"))
                .map(String::as_str),
            Some("2"),
            "{}",
            c.name_any()
        );
    }
    w.wait_value("base", "2").await?;
    let st = sync.status.unwrap_or_default();
    assert_eq!(
        st.inventory.len(),
        MANY + 1,
        "inventory: {:?}",
        st.inventory
    );

    restarted.finish();
    agent.finish();
    Ok(())
}

#[tokio::test]
async fn webhook_process_rejects_bad_hmac_and_triggers_on_good() -> Result<()> {
    const TOKEN: &str = "a shared webhook secret";
    let w = World::new("hook").await?;
    // Receivers trigger annotated GitSources in every namespace: a name of this run only.
    let receiver = format!("hook-{}", w.suffix());
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": format!("plumb-receiver-{receiver}") },
        "stringData": { "type": "generic", "token": TOKEN },
    }))?;
    Api::<Secret>::namespaced(w.client.clone(), w.ns.name())
        .create(&PostParams::default(), &secret)
        .await?;
    let agent = w
        .spawn(AgentSpec {
            identity: "hook-agent".into(),
            webhook: true,
            ..Default::default()
        })
        .await?;
    let hook = agent.webhook.context("the webhook address")?;
    // The webhook port (the one Git hosts reach) serves hooks only: no metrics, no health.
    for path in ["/metrics", "/healthz", "/readyz"] {
        let reply = get(hook, path).await?;
        assert_eq!(reply.status, 404, "GET {path} on the webhook port");
    }

    let first = w.commit(&[("app/cm.yaml", &configmap("hooked", "1"))])?;
    w.create_source(Some(&receiver)).await?;
    w.create_sync().await?;
    w.wait_applied(&first, WAIT).await?;
    let (commit, fetched_at) = w.fetched().await?;
    assert_eq!(commit.as_deref(), Some(first.as_str()));

    // A push the agent cannot know of: the GitSource's interval is an hour.
    let second = w.commit(&[("app/cm.yaml", &configmap("hooked", "2"))])?;
    let body = serde_json::to_vec(&json!({ "url": w.repo.file_url() }))?;
    let path = format!("/hook/{receiver}");

    // Signed with another token: refused, nothing fetched.
    let wrong = hmac_signature("not the token", &body);
    let reply = http(hook, "POST", &path, &[("X-Signature", &wrong)], &body).await?;
    assert_eq!(reply.status, 401, "{}", reply.body);
    let unsigned = http(hook, "POST", &path, &[], &body).await?;
    assert_eq!(unsigned.status, 401, "{}", unsigned.body);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let gs = w.sources().get("repo").await?;
    assert_eq!(
        gs.annotations().get(RECONCILE_REQUEST_ANNOTATION),
        None,
        "a refused request asked for a fetch"
    );
    assert_eq!(
        w.fetched().await?,
        (commit, fetched_at),
        "the GitSource fetched after a refused request"
    );
    w.wait_value("hooked", "1").await?;

    // Correctly signed: accepted, the source fetches and the Sync applies the push at once.
    let started = Instant::now();
    let good = hmac_signature(TOKEN, &body);
    let reply = http(
        hook,
        "POST",
        &path,
        &[("X-Signature", &good), ("Content-Type", "application/json")],
        &body,
    )
    .await?;
    assert!(
        (200..300).contains(&reply.status),
        "{}: {}",
        reply.status,
        reply.body
    );
    assert_eq!(
        reply.json()["triggered"],
        json!([format!("{}/repo", w.ns.name())]),
        "{}",
        reply.body
    );
    w.wait_applied(&second, Duration::from_secs(20)).await?;
    w.wait_value("hooked", "2").await?;
    eprintln!("webhook push applied in {:.1?}", started.elapsed());

    // Both requests were counted under the receiver's name.
    let metrics = get(agent.metrics, "/metrics").await?.body;
    assert!(
        metrics.contains(&format!(
            r#"plumb_webhook_requests_total{{receiver="{receiver}",result="unauthorized"}} 2"#
        )) && metrics.contains(&format!(
            r#"plumb_webhook_requests_total{{receiver="{receiver}",result="accepted"}} 1"#
        )),
        "{metrics}"
    );
    assert!(!metrics.contains(TOKEN));

    agent.finish();
    Ok(())
}

#[tokio::test]
async fn two_agent_processes_fail_over() -> Result<()> {
    let w = World::new("failover").await?;
    let lease = format!("plumb-agent-{}", w.suffix());
    let spec = |identity: &str| AgentSpec {
        identity: identity.to_owned(),
        lease: Some(lease.clone()),
        ..Default::default()
    };
    let mut a = w.spawn(spec("replica-a")).await?;
    let mut b = w.spawn(spec("replica-b")).await?;

    let first = w.commit(&[("app/cm.yaml", &configmap("ha", "1"))])?;
    w.create_source(None).await?;
    w.create_sync().await?;
    w.wait_applied(&first, WAIT).await?;

    let leases: Api<Lease> = Api::namespaced(w.client.clone(), w.ns.name());
    let holder = || {
        let leases = leases.clone();
        let lease = lease.clone();
        async move {
            Ok::<_, anyhow::Error>(
                leases
                    .get_opt(&lease)
                    .await?
                    .and_then(|l| l.spec)
                    .and_then(|s| s.holder_identity),
            )
        }
    };
    let leader = holder().await?.context("the Lease has no holder")?;
    let (dead, survivor) = match leader.as_str() {
        "replica-a" => (&mut a, &mut b),
        "replica-b" => (&mut b, &mut a),
        other => bail!("the Lease is held by {other:?}, not by one of the agents"),
    };
    // Only the leader reconciles: the standby has counted no reconcile.
    let standby_metrics = get(survivor.metrics, "/metrics").await?.body;
    assert!(
        !standby_metrics.contains("reconciles_total{"),
        "the standby reconciled:\n{standby_metrics}"
    );
    let leader_metrics = get(dead.metrics, "/metrics").await?.body;
    assert!(
        leader_metrics.contains(r#"plumb_reconciles_total{kind="Sync",result="success"}"#),
        "the leader did not count its reconcile:\n{leader_metrics}"
    );
    let standby_ready = get(survivor.metrics, "/readyz").await?;
    assert_eq!(standby_ready.status, 200, "a standby is ready to take over");

    // The leader dies without releasing the Lease; a new commit arrives.
    dead.kill()?;
    let killed = Instant::now();
    let second = w.commit(&[("app/cm.yaml", &configmap("ha", "2"))])?;
    let survivor_id = survivor.identity.clone();
    if holder().await?.as_deref() == Some(survivor_id.as_str()) {
        // Took over before the push: its startup fetch may have missed the commit.
        w.poke_source().await?;
    }
    eventually(
        &format!("{survivor_id} to take the Lease"),
        Duration::from_secs(30),
        || {
            let holder = holder();
            let survivor_id = survivor_id.clone();
            async move { Ok((holder.await?.as_deref() == Some(survivor_id.as_str())).then_some(())) }
        },
    )
    .await?;
    eprintln!(
        "{survivor_id} took over {:.1?} after the kill",
        killed.elapsed()
    );
    w.wait_applied(&second, WAIT).await?;
    w.wait_value("ha", "2").await?;
    eprintln!(
        "the survivor applied the new commit {:.1?} after the kill",
        killed.elapsed()
    );

    a.finish();
    b.finish();
    Ok(())
}

#[tokio::test]
async fn sigterm_during_a_long_health_wait_exits_at_once_and_releases_the_lease() -> Result<()> {
    let w = World::new("sigterm").await?;
    let lease = format!("plumb-agent-{}", w.suffix());
    let mut agent = w
        .spawn(AgentSpec {
            identity: "waiter".to_owned(),
            lease: Some(lease.clone()),
            ..Default::default()
        })
        .await?;
    // A Deployment whose pods fit no node never becomes Available: a ten-minute health wait.
    let stuck = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: stuck
spec:
  replicas: 1
  selector:
    matchLabels: {app: stuck}
  template:
    metadata:
      labels: {app: stuck}
    spec:
      nodeSelector: {plumb.dev/nowhere: \"true\"}
      containers:
      - name: app
        image: nginx:1.27
";
    let first = w.commit(&[
        ("app/cm.yaml", &configmap("settings", "1")),
        ("app/stuck.yaml", stuck),
    ])?;
    w.create_source(None).await?;
    w.create_sync_spec(json!({
        "sourceRef": { "name": "repo" }, "path": "app", "interval": "1h",
        "wait": true, "timeout": "10m"
    }))
    .await?;
    let syncs = w.syncs();
    eventually("the Sync to wait for health", WAIT, || {
        let syncs = syncs.clone();
        let first = first.clone();
        async move {
            let st = syncs.get("app").await?.status.unwrap_or_default();
            Ok(st
                .conditions
                .iter()
                .any(|c| {
                    c.type_ == "Reconciling"
                        && c.message.contains(&first)
                        && c.message.contains("waiting up to 600s")
                })
                .then_some(()))
        }
    })
    .await?;
    let leases: Api<Lease> = Api::namespaced(w.client.clone(), w.ns.name());
    let holder = || {
        let leases = leases.clone();
        let lease = lease.clone();
        async move {
            Ok::<_, anyhow::Error>(
                leases
                    .get_opt(&lease)
                    .await?
                    .and_then(|l| l.spec)
                    .and_then(|s| s.holder_identity),
            )
        }
    };
    assert_eq!(holder().await?.as_deref(), Some("waiter"));

    // Well within the kubelet's default grace period (30 s) before it sends SIGKILL: the wait
    // is cancelled, the Lease released, the process gone.
    let (status, took) = agent.terminate(Duration::from_secs(20)).await?;
    eprintln!("the agent exited {took:.1?} after SIGTERM, during a 10-minute health wait");
    assert!(status.success(), "{status}\n{}", agent.log_tail());
    // Cancelled, not abandoned after the shutdown grace period.
    let log = std::fs::read_to_string(&agent.log)?;
    assert!(
        log.contains("health wait cancelled") && !log.contains("abandoning"),
        "{}",
        agent.log_tail()
    );
    assert_eq!(
        holder().await?,
        None,
        "the Lease must be released (a standby takes over at once)"
    );
    agent.finish();
    Ok(())
}
