//! A control plane of one test's own, for drills that kill or stop its parts.
//!
//! [`PrivateControlPlane::up`] runs `scripts/testenv up` with `PLUMB_TESTENV_RUN` pointing into a
//! fresh temporary directory: its own etcd data, certificates, free ports, pid files and lock, so
//! that killing its API server or etcd never disturbs the shared control plane other tests use.
//! Components are killed, stopped and started again by the same script (`kill`, `stop`, `start`:
//! by pid file, restarted with the arguments `up` gave them). Dropping the value runs
//! `scripts/testenv down` for it and deletes the directory, also when the test panics.
//!
//! [`PrivateControlPlane::up_with_real_node`] adds the opt-in real node of `scripts/testenv`
//! (kubelet, containerd, runc) with a containerd of its own: node label and taint
//! `plumb.dev/real-node=true` (a Pod for it has a nodeSelector on the label and tolerates the
//! `NoSchedule` taint), test image `plumb.dev/testenv/hello:1` (see `scripts/testenv`).
//! [`PrivateControlPlane::up_with_only_real_node`] makes the real node the only node, untainted,
//! so that unmodified manifests (the agent's own Deployment) run there. Its Pods reach the API
//! server through the `kubernetes` Service, as in a cluster, and the loopback ports published
//! with [`PrivateControlPlane::expose_to_node`] at [`PrivateControlPlane::node_host_address`].
//!
//! [`PrivateControlPlane::up_with_only_real_node_and`] takes [`PlaneOptions`]: an audit policy
//! for the API server (its log, [`PrivateControlPlane::audit_log`], shows exactly which requests
//! a user made and whether RBAC allowed them), the node's host address (a second cluster in
//! the place of a lost one, reached by the same servers at the same address).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context as _, Result, bail};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tempfile::TempDir;

use crate::git::PIDS_DIR_ENV;

/// The real node's processes (pid files in the run directory), beside [`Component::ALL`].
const REAL_NODE_PROCESSES: [&str; 2] = ["containerd", "kubelet"];

/// One process of the control plane, named as `scripts/testenv` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Component {
    /// etcd (its data directory survives a kill or stop).
    Etcd,
    /// kube-apiserver.
    ApiServer,
    /// kube-controller-manager (namespace deletion, garbage collection, Deployments).
    ControllerManager,
    /// kube-scheduler.
    Scheduler,
    /// kwok (fake nodes).
    Kwok,
}

impl Component {
    /// Every component, in start order.
    pub const ALL: [Component; 5] = [
        Component::Etcd,
        Component::ApiServer,
        Component::ControllerManager,
        Component::Scheduler,
        Component::Kwok,
    ];

    /// The name `scripts/testenv` uses (and its pid and log files carry).
    pub fn name(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::ApiServer => "kube-apiserver",
            Component::ControllerManager => "kube-controller-manager",
            Component::Scheduler => "kube-scheduler",
            Component::Kwok => "kwok",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Options of [`PrivateControlPlane::up_with_only_real_node_and`].
#[derive(Clone, Debug, Default)]
pub struct PlaneOptions {
    /// An audit policy (`audit.k8s.io/v1` Policy, YAML) for the API server, which then logs
    /// to [`PrivateControlPlane::audit_log`].
    pub audit_policy: Option<String>,
    /// The real node's host address (`10.245.N.1`, as another plane's
    /// [`PrivateControlPlane::node_host_address`] was); it must be free.
    pub node_host_address: Option<String>,
}

/// A running control plane of this test's own (see the module docs).
pub struct PrivateControlPlane {
    run: PathBuf,
    kubeconfig: PathBuf,
    /// Files in `$PLUMB_TEST_PIDS_DIR` naming the running components, so that `scripts/test`
    /// kills them even if this process dies without dropping the value.
    pid_records: Mutex<Vec<PathBuf>>,
    /// Whether `up` added the real node: `""` no, `"1"` beside the kwok nodes, `"only"` alone
    /// (the value of `PLUMB_TESTENV_REAL_NODE`).
    real_node: &'static str,
    /// The audit policy file `up` gave the API server (`PLUMB_TESTENV_AUDIT_POLICY`), if any.
    audit_policy: Option<PathBuf>,
    /// `PLUMB_TESTENV_NODE_HOST_ADDRESS`, if chosen.
    node_host_address: Option<String>,
    down: bool,
    // Last: deleted after `down` stopped the processes.
    _dir: TempDir,
}

impl PrivateControlPlane {
    /// Starts etcd, kube-apiserver, controller-manager, scheduler and kwok on free ports and
    /// waits until they serve (about 10 s with the binaries cached).
    pub async fn up() -> Result<Self> {
        Self::start_plane("", PlaneOptions::default()).await
    }

    /// As [`up`](Self::up), and adds the real node (`PLUMB_TESTENV_REAL_NODE=1 scripts/testenv
    /// up`): its own containerd, a kubelet, Debian's runc and CNI plugins (installed when
    /// missing), ready once the node is (about 10 s more with the kubelet cached).
    pub async fn up_with_real_node() -> Result<Self> {
        Self::start_plane("1", PlaneOptions::default()).await
    }

    /// As [`up`](Self::up) with the real node as the only node (`PLUMB_TESTENV_REAL_NODE=only`):
    /// no kwok nodes, no taint, so that every Pod runs there, as in a one-node cluster.
    pub async fn up_with_only_real_node() -> Result<Self> {
        Self::start_plane("only", PlaneOptions::default()).await
    }

    /// As [`up_with_only_real_node`](Self::up_with_only_real_node), with `options`.
    pub async fn up_with_only_real_node_and(options: PlaneOptions) -> Result<Self> {
        Self::start_plane("only", options).await
    }

    async fn start_plane(real_node: &'static str, options: PlaneOptions) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("plumb-control-plane-")
            .tempdir()
            .context("creating a run directory for a private control plane")?;
        let run = dir.path().join("run");
        let audit_policy = match &options.audit_policy {
            Some(policy) => {
                let path = dir.path().join("audit-policy.yaml");
                std::fs::write(&path, policy)
                    .with_context(|| format!("writing {}", path.display()))?;
                Some(path)
            }
            None => None,
        };
        let plane = Self {
            kubeconfig: run.join("kubeconfig"),
            run,
            pid_records: Mutex::default(),
            real_node,
            audit_policy,
            node_host_address: options.node_host_address,
            down: false,
            _dir: dir,
        };
        // On failure, dropping `plane` stops whatever half started.
        plane.testenv(&["up"]).await?;
        plane.record_pids();
        Ok(plane)
    }

    /// The admin kubeconfig of this control plane.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The run directory (logs `<component>.log`, pid files, etcd data).
    pub fn run_dir(&self) -> &Path {
        &self.run
    }

    /// The API server's audit log (JSON lines, one event per request as it ends), when the
    /// plane was started with an audit policy.
    pub fn audit_log(&self) -> PathBuf {
        self.run.join("audit.log")
    }

    /// A client with admin rights on this control plane.
    pub async fn client(&self) -> Result<Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("reading {}", self.kubeconfig.display()))?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .context("loading the private control plane's kubeconfig")?;
        Client::try_from(config).context("building a client for the private control plane")
    }

    /// The real node's Pods reach the loopback server on `port` at
    /// [`node_host_address`](Self::node_host_address)`:port` (`scripts/testenv node expose`).
    pub async fn expose_to_node(&self, port: u16) -> Result<()> {
        self.testenv(&["node", "expose", &port.to_string()]).await
    }

    /// The address of the host on the real node's Pod network: where its Pods reach the ports
    /// published with [`expose_to_node`](Self::expose_to_node).
    pub fn node_host_address(&self) -> Result<String> {
        let path = self.run.join("node/host-address");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (is the real node up?)", path.display()))?;
        Ok(text.trim().to_owned())
    }

    /// Imports an image archive (OCI or docker, e.g. `scripts/image`'s) into the real node's
    /// containerd (`scripts/testenv node import`), under the name it carries.
    pub async fn import_image(&self, archive: &Path) -> Result<()> {
        let archive = archive
            .to_str()
            .with_context(|| format!("{} is not UTF-8", archive.display()))?;
        self.testenv(&["node", "import", archive]).await
    }

    /// Gives `image` in the real node's containerd the second name `new` (`scripts/testenv node
    /// tag`): another tag of the same content, for upgrades without a registry.
    pub async fn tag_image(&self, image: &str, new: &str) -> Result<()> {
        self.testenv(&["node", "tag", image, new]).await
    }

    /// SIGKILLs `component` (as a crash or the OOM killer would) and waits until it is gone.
    pub async fn kill(&self, component: Component) -> Result<()> {
        self.testenv(&["kill", component.name()]).await?;
        self.record_pids();
        Ok(())
    }

    /// Stops `component` gracefully (SIGTERM; SIGKILL after 5 s) and waits until it is gone.
    pub async fn stop(&self, component: Component) -> Result<()> {
        self.testenv(&["stop", component.name()]).await?;
        self.record_pids();
        Ok(())
    }

    /// Starts a killed or stopped `component` again with the arguments `up` gave it (same
    /// ports, same data) and waits until it serves (etcd: its port; the API server: `/readyz`).
    pub async fn start(&self, component: Component) -> Result<()> {
        self.testenv(&["start", component.name()]).await?;
        self.record_pids();
        Ok(())
    }

    /// The pid of `component`, if it runs.
    pub fn pid(&self, component: Component) -> Option<u32> {
        self.pid_of(component.name())
    }

    fn pid_of(&self, name: &str) -> Option<u32> {
        let text = std::fs::read_to_string(self.run.join(format!("{name}.pid"))).ok()?;
        let pid: u32 = text.trim().parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    /// The last `lines` lines of `component`'s log, for failure reports.
    pub fn log_tail(&self, component: Component, lines: usize) -> String {
        self.log_tail_of(component.name(), lines)
    }

    /// The last `lines` lines of the log of the process `scripts/testenv` names `name` (also
    /// the real node's `containerd` and `kubelet`).
    pub fn log_tail_of(&self, name: &str, lines: usize) -> String {
        let path = self.run.join(format!("{name}.log"));
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("({}: {e})", path.display()),
        }
    }

    /// Stops every component (`scripts/testenv down`) and deletes the run directory.
    pub fn down(mut self) -> Result<()> {
        self.down = true;
        self.down_blocking()
    }

    fn down_blocking(&self) -> Result<()> {
        let out = self
            .command(&["down"])
            .output()
            .context("running scripts/testenv down")?;
        self.clear_pid_records();
        if !out.status.success() {
            bail!(
                "scripts/testenv down failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/testenv");
        let mut cmd = std::process::Command::new(script);
        cmd.args(args)
            .env("PLUMB_TESTENV_RUN", &self.run)
            .env("PLUMB_TESTENV_REAL_NODE", self.real_node)
            .stdin(std::process::Stdio::null());
        if let Some(policy) = &self.audit_policy {
            cmd.env("PLUMB_TESTENV_AUDIT_POLICY", policy);
        }
        if let Some(address) = &self.node_host_address {
            cmd.env("PLUMB_TESTENV_NODE_HOST_ADDRESS", address);
        }
        cmd
    }

    /// Runs `scripts/testenv ARGS` for this run directory; fails with its output.
    async fn testenv(&self, args: &[&str]) -> Result<()> {
        let cmd = self.command(args);
        let out = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("running scripts/testenv {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "scripts/testenv {} (run directory {}) failed with {}:\n{}{}",
                args.join(" "),
                self.run.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(())
    }

    /// Mirrors the running components' pids into `$PLUMB_TEST_PIDS_DIR` (when set).
    fn record_pids(&self) {
        let Some(pids_dir) = std::env::var_os(PIDS_DIR_ENV).map(PathBuf::from) else {
            return;
        };
        self.clear_pid_records();
        let mut records = self.pid_records.lock().expect("pid records lock poisoned");
        if std::fs::create_dir_all(&pids_dir).is_err() {
            return;
        }
        let node = if !self.real_node.is_empty() {
            &REAL_NODE_PROCESSES[..]
        } else {
            &[]
        };
        for c in Component::ALL
            .iter()
            .map(|c| c.name())
            .chain(node.iter().copied())
        {
            if let Some(pid) = self.pid_of(c) {
                let file = pids_dir.join(format!("plumb-testenv-{c}-{pid}.pid"));
                if std::fs::write(&file, format!("{pid}\n")).is_ok() {
                    records.push(file);
                }
            }
        }
    }

    fn clear_pid_records(&self) {
        let mut records = self.pid_records.lock().expect("pid records lock poisoned");
        for file in records.drain(..) {
            let _ = std::fs::remove_file(file);
        }
    }
}

impl Drop for PrivateControlPlane {
    fn drop(&mut self) {
        if self.down {
            return;
        }
        if let Err(e) = self.down_blocking() {
            eprintln!(
                "warning: could not stop the private control plane in {}: {e:#}",
                self.run.display()
            );
        }
    }
}
