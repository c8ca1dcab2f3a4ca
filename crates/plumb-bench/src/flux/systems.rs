//! The two systems compared: Flux (source-controller and kustomize-controller) and `plumb
//! agent`, each as local processes against the control plane, each with its Git source and one
//! Kustomization or Sync per directory of apps.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::agent::http::Loopback;
use crate::cli::System;
use crate::metrics::counter_sum;
use crate::process::{cpu_seconds, rss_mib, terminate};

/// The repository and namespaces both systems work on.
pub struct Workload {
    /// The https URL of the repository (the test Git server, basic auth).
    pub url: String,
    pub username: String,
    pub password: String,
    /// PEM of the CA that signed the Git server's certificate.
    pub ca: String,
    /// Namespace of the sources, Kustomizations/Syncs and Secrets.
    pub ctl: String,
    /// One target namespace per Kustomization/Sync.
    pub targets: Vec<String>,
    pub interval: String,
    pub concurrency: u32,
}

impl Workload {
    /// Directory of Kustomization/Sync number `s` in the repository.
    pub fn path(s: usize) -> String {
        format!("apps/sync-{s:02}")
    }

    /// Name of Kustomization/Sync number `s`.
    pub fn name(s: usize) -> String {
        format!("bench-{s:02}")
    }
}

/// The kinds a system is driven by.
pub struct Kinds {
    pub source: ApiResource,
    pub sync: ApiResource,
    /// The annotation that requests a reconcile (both answer in `status.lastHandledReconcileAt`).
    pub request_annotation: &'static str,
}

impl System {
    pub fn label(self) -> &'static str {
        match self {
            System::Flux => "Flux",
            System::Plumb => "Plumb",
        }
    }

    pub fn kinds(self) -> Kinds {
        let ar = |group: &str, version: &str, kind: &str, plural: &str| {
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
        };
        match self {
            System::Flux => Kinds {
                source: ar(
                    "source.toolkit.fluxcd.io",
                    "v1",
                    "GitRepository",
                    "gitrepositories",
                ),
                sync: ar(
                    "kustomize.toolkit.fluxcd.io",
                    "v1",
                    "Kustomization",
                    "kustomizations",
                ),
                request_annotation: "reconcile.fluxcd.io/requestedAt",
            },
            System::Plumb => Kinds {
                source: ar("plumb.dev", "v1alpha1", "GitSource", "gitsources"),
                sync: ar("plumb.dev", "v1alpha1", "Sync", "syncs"),
                request_annotation: "plumb.dev/reconcile-requested-at",
            },
        }
    }

    /// The Secret of the Git credentials, the source and one Kustomization/Sync per target
    /// namespace, as this system spells them.
    pub fn objects(self, w: &Workload) -> (Value, Value, Vec<Value>) {
        let kinds = self.kinds();
        let (secret, source) = match self {
            System::Flux => (
                json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": { "name": "git-auth", "namespace": w.ctl },
                    "stringData": {
                        "username": w.username, "password": w.password, "ca.crt": w.ca,
                    },
                }),
                json!({
                    "apiVersion": kinds.source.api_version, "kind": kinds.source.kind,
                    "metadata": { "name": "bench", "namespace": w.ctl },
                    "spec": {
                        "url": w.url, "ref": { "branch": "main" }, "interval": w.interval,
                        "secretRef": { "name": "git-auth" },
                    },
                }),
            ),
            System::Plumb => (
                json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {
                        "name": "git-auth", "namespace": w.ctl,
                        "annotations": { "plumb.dev/credential-hosts": "127.0.0.1" },
                    },
                    "stringData": {
                        "username": w.username, "password": w.password, "caFile": w.ca,
                    },
                }),
                json!({
                    "apiVersion": kinds.source.api_version, "kind": kinds.source.kind,
                    "metadata": { "name": "bench", "namespace": w.ctl },
                    "spec": {
                        "url": w.url, "ref": { "branch": "main" }, "interval": w.interval,
                        "secretRef": { "name": "git-auth" },
                    },
                }),
            ),
        };
        let syncs = w
            .targets
            .iter()
            .enumerate()
            .map(|(s, target)| {
                let spec = match self {
                    System::Flux => json!({
                        "sourceRef": { "kind": "GitRepository", "name": "bench" },
                        "path": format!("./{}", Workload::path(s)),
                        "interval": w.interval,
                        "prune": true,
                        "wait": true,
                        "timeout": "15m",
                        "targetNamespace": target,
                    }),
                    System::Plumb => json!({
                        "sourceRef": { "name": "bench" },
                        "path": Workload::path(s),
                        "interval": w.interval,
                        "prune": true,
                        "wait": true,
                        "timeout": "15m",
                        "targetNamespace": target,
                        "drift": "correct",
                    }),
                };
                json!({
                    "apiVersion": kinds.sync.api_version, "kind": kinds.sync.kind,
                    "metadata": { "name": Workload::name(s), "namespace": w.ctl },
                    "spec": spec,
                })
            })
            .collect();
        (secret, source, syncs)
    }
}

/// Server-side applies `obj` (field manager `bench`) in namespace `ns`.
pub async fn apply(client: &Client, ar: &ApiResource, ns: &str, obj: &Value) -> anyhow::Result<()> {
    let name = obj["metadata"]["name"]
        .as_str()
        .context("an object without name")?;
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, ar)
        .patch(
            name,
            &PatchParams::apply("bench").force(),
            &Patch::Apply(obj),
        )
        .await
        .with_context(|| format!("applying {} {ns}/{name}", ar.kind))?;
    Ok(())
}

/// The Secret's ApiResource.
pub fn secret_resource() -> ApiResource {
    ApiResource::erase::<Secret>(&())
}

/// Whether a status has condition `Ready` at `True`.
pub fn is_ready(status: &Value) -> bool {
    status["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// A free port on 127.0.0.1 (the OS picks; it is released for the process to bind).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("no free local port")?;
    Ok(listener.local_addr()?.port())
}

/// One long-running process of a system.
struct Proc {
    name: &'static str,
    child: Child,
    /// Serves `/metrics` (and, for Flux, `/readyz` on `health_port`).
    metrics_port: u16,
    health_port: u16,
    log: PathBuf,
}

/// A system's processes while they run.
pub struct Running {
    pub system: System,
    procs: Vec<Proc>,
    http: Loopback,
}

impl Running {
    /// Starts the system's processes (logs in `workdir`) and waits until each is ready.
    pub async fn start(
        system: System,
        w: &Workload,
        flux_dir: Option<&Path>,
        plumb: &Path,
        envs: &[(String, String)],
        workdir: &Path,
    ) -> anyhow::Result<Self> {
        let mut procs = Vec::new();
        match system {
            System::Flux => {
                let dir =
                    flux_dir.context("no Flux directory (scripts/bench sets PLUMB_FLUX_DIR)")?;
                let storage = workdir.join("flux-storage");
                std::fs::create_dir_all(&storage)?;
                let storage_port = free_port()?;
                for name in ["source-controller", "kustomize-controller"] {
                    let metrics_port = free_port()?;
                    let health_port = free_port()?;
                    let mut cmd = Command::new(dir.join("bin").join(name));
                    cmd.arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
                        .arg(format!("--health-addr=127.0.0.1:{health_port}"))
                        .arg(format!("--concurrent={}", w.concurrency))
                        .arg("--enable-leader-election=false")
                        .arg("--watch-all-namespaces=true")
                        .arg("--log-level=info");
                    if name == "source-controller" {
                        cmd.arg(format!("--storage-path={}", storage.display()))
                            .arg(format!("--storage-addr=127.0.0.1:{storage_port}"))
                            .arg(format!("--storage-adv-addr=127.0.0.1:{storage_port}"));
                    }
                    cmd.env("HOME", workdir);
                    procs.push(spawn(name, cmd, envs, workdir, metrics_port, health_port)?);
                }
            }
            System::Plumb => {
                let metrics_port = free_port()?;
                let mut cmd = Command::new(plumb);
                cmd.args(["agent", "--watch-namespace", w.ctl.as_str()])
                    .args(["--agent-namespace", w.ctl.as_str()])
                    .arg("--metrics-addr")
                    .arg(format!("127.0.0.1:{metrics_port}"))
                    .arg("--concurrency")
                    .arg(w.concurrency.to_string())
                    .arg("--cache-dir")
                    .arg(workdir.join("plumb-cache"));
                procs.push(spawn(
                    "plumb-agent",
                    cmd,
                    envs,
                    workdir,
                    metrics_port,
                    metrics_port,
                )?);
            }
        }
        let mut running = Self {
            system,
            procs,
            http: Loopback::new(),
        };
        running.wait_ready().await?;
        Ok(running)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..self.procs.len() {
            loop {
                let port = self.procs[i].health_port;
                if self
                    .http
                    .get(port, "/readyz", Duration::from_secs(1))
                    .await
                    .is_ok()
                {
                    break;
                }
                self.check()?;
                if Instant::now() > deadline {
                    bail!(
                        "{} did not become ready within 60s; its log:\n{}",
                        self.procs[i].name,
                        log_tail(&self.procs[i].log)
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// Fails (with its log) if a process has exited.
    pub fn check(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            if let Some(status) = p.child.try_wait()? {
                bail!(
                    "{} exited ({status}); its log:\n{}",
                    p.name,
                    log_tail(&p.log)
                );
            }
        }
        Ok(())
    }

    /// The logs' last lines, for errors.
    pub fn log_tails(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("--- {}:\n{}\n", p.name, log_tail(&p.log)))
            .collect()
    }

    fn pids(&self) -> anyhow::Result<Vec<u32>> {
        self.procs
            .iter()
            .map(|p| {
                p.child
                    .id()
                    .with_context(|| format!("{} is not running", p.name))
            })
            .collect()
    }

    /// CPU seconds of all processes so far.
    pub fn cpu_seconds(&self, ticks: f64) -> anyhow::Result<f64> {
        let mut sum = 0.0;
        for pid in self.pids()? {
            sum += cpu_seconds(pid, ticks)?;
        }
        Ok(sum)
    }

    /// Current and peak RSS, summed over the processes, in MiB.
    pub fn rss_mib(&self) -> anyhow::Result<(f64, f64)> {
        let (mut now, mut peak) = (0.0, 0.0);
        for pid in self.pids()? {
            let (n, p) = rss_mib(pid)?;
            now += n;
            peak += p;
        }
        Ok((now, peak))
    }

    /// Requests the processes have sent to the API server so far, by their own metrics:
    /// client-go's `rest_client_requests_total` (Flux), `plumb_api_requests_total` (Plumb).
    pub async fn client_requests(&self) -> anyhow::Result<f64> {
        let metric = match self.system {
            System::Flux => "rest_client_requests_total",
            System::Plumb => "plumb_api_requests_total",
        };
        let mut sum = 0.0;
        for p in &self.procs {
            let text = self
                .http
                .get(p.metrics_port, "/metrics", Duration::from_secs(10))
                .await
                .with_context(|| format!("the metrics of {}", p.name))?;
            sum += counter_sum(&text, metric);
        }
        Ok(sum)
    }

    /// Stops every process: SIGTERM, SIGKILL after 20 s.
    pub async fn stop(mut self) {
        for p in &mut self.procs {
            if let Ok(None) = p.child.try_wait()
                && let Some(pid) = p.child.id()
            {
                if let Err(e) = terminate(pid).await {
                    log!("warning: cannot stop {}: {e:#}", p.name);
                }
                if tokio::time::timeout(Duration::from_secs(20), p.child.wait())
                    .await
                    .is_err()
                {
                    let _ = p.child.kill().await;
                }
            }
        }
    }
}

fn spawn(
    name: &'static str,
    mut cmd: Command,
    envs: &[(String, String)],
    workdir: &Path,
    metrics_port: u16,
    health_port: u16,
) -> anyhow::Result<Proc> {
    let log = workdir.join(format!("{name}.log"));
    let file =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    cmd.envs(envs.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok(Proc {
        name,
        child,
        metrics_port,
        health_port,
        log,
    })
}

/// The last 30 lines of a log file.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
