//! The agent behind one handle: [`Agent`], started by a [`Launcher`] for a [`World`]. Here the
//! `plumb agent` process ([`Process`]); the in-process launcher is in the plumb-agent tests.

use std::fs::File;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

use super::World;
use crate::git::PIDS_DIR_ENV;
use crate::http;

/// How many log lines of an agent a failing test prints.
const LOG_TAIL_LINES: usize = 80;

/// How to start one agent (either kind).
#[derive(Clone, Debug, Default)]
pub struct AgentSpec {
    /// `--identity`; also names the log file and, by default, the cache directory.
    pub identity: String,
    /// Directory under the world's directory used as the cache (default: the identity).
    /// Agents naming the same one share it, as restarts of one Pod do.
    pub cache: Option<String>,
    /// Serve the webhook receiver on a free port.
    pub webhook: bool,
    /// Elect a leader on this Lease (in the world's namespace), lease duration 4 s.
    pub lease: Option<String>,
    /// Reconcile only the GitSources and Syncs this label selector selects (`--shard`).
    pub shard: Option<String>,
}

impl AgentSpec {
    /// An agent called `identity`, with the defaults.
    pub fn new(identity: &str) -> Self {
        Self {
            identity: identity.to_owned(),
            ..Self::default()
        }
    }

    /// Uses the cache directory `name` (see [`AgentSpec::cache`]).
    pub fn cache(mut self, name: &str) -> Self {
        self.cache = Some(name.to_owned());
        self
    }

    /// Serves the webhook receiver.
    pub fn webhook(mut self) -> Self {
        self.webhook = true;
        self
    }

    /// Reconciles only what the label selector `shard` selects.
    pub fn shard(mut self, shard: &str) -> Self {
        self.shard = Some(shard.to_owned());
        self
    }

    /// Runs for leadership on `lease`.
    pub fn lease(mut self, lease: &str) -> Self {
        self.lease = Some(lease.to_owned());
        self
    }

    /// The cache directory in `world`.
    pub fn cache_dir(&self, world: &World) -> PathBuf {
        world
            .dir()
            .join(self.cache.as_deref().unwrap_or(&self.identity))
    }
}

/// A running agent, in-process or a process. Dropping it stops it at once (a process is
/// SIGKILLed); [`Agent::stop`] stops it gracefully.
pub trait Agent {
    /// Its identity (as in the leader Lease).
    fn identity(&self) -> &str;

    /// Where it serves `/metrics`, `/healthz` and `/readyz`.
    fn metrics_addr(&self) -> SocketAddr;

    /// Where it serves the webhook receiver, if it does.
    fn webhook_addr(&self) -> Option<SocketAddr>;

    /// Stops it gracefully (what SIGTERM does) and waits up to 20 s for it to be gone.
    fn stop(self) -> impl Future<Output = Result<()>>;

    /// `GET /metrics` (which must answer 200): the Prometheus text.
    fn metrics(&self) -> impl Future<Output = Result<String>> {
        let addr = self.metrics_addr();
        async move {
            let reply = http::get(addr, "/metrics").await?;
            ensure!(
                reply.status == 200,
                "GET /metrics answered {}: {}",
                reply.status,
                reply.body
            );
            Ok(reply.body)
        }
    }
}

/// Starts agents of one kind.
pub trait Launcher {
    /// The handle of the agents it starts.
    type Agent: Agent;

    /// Starts an agent scoped to `world`'s namespace (its leader Lease and webhook receivers'
    /// Secrets there too) and waits until `/healthz` answers.
    fn launch(&self, world: &World, spec: AgentSpec) -> impl Future<Output = Result<Self::Agent>>;
}

/// Polls `/healthz` on `addr` until it answers 200, for up to 30 s; `exited` says whether the
/// agent is gone already (then this fails at once).
pub async fn wait_healthy(
    addr: SocketAddr,
    mut exited: impl FnMut() -> Result<Option<String>>,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(how) = exited()? {
            bail!("the agent exited: {how}");
        }
        if let Ok(reply) = http::get(addr, "/healthz").await
            && reply.status == 200
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("/healthz on {addr} did not answer 200 within 30s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts `plumb agent` processes: the binary at `bin` (`env!("CARGO_BIN_EXE_plumb")`).
///
/// Flags: `-v agent --watch-namespace NS --agent-namespace NS --identity ID --cache-dir DIR
/// --concurrency 4 --allow-local-sources --metrics-addr ADDR`, plus `--webhook-addr` and
/// `--leader-elect --lease-name L --lease-duration 4s` and `--shard S` as the spec asks. Output goes to
/// `<identity>.log` in the world's directory.
pub struct Process {
    bin: PathBuf,
}

impl Process {
    /// Runs the binary `bin`.
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        Self { bin: bin.into() }
    }
}

impl Launcher for Process {
    type Agent = AgentProcess;

    async fn launch(&self, world: &World, spec: AgentSpec) -> Result<AgentProcess> {
        let cache = spec.cache_dir(world);
        let log = world.dir().join(format!("{}.log", spec.identity));
        for attempt in 1..=3 {
            let metrics = http::free_addr()?;
            let webhook = if spec.webhook {
                Some(http::free_addr()?)
            } else {
                None
            };
            let mut cmd = Command::new(&self.bin);
            // At the default log level (info for the agent), as deployed.
            cmd.args(["agent", "--watch-namespace", world.ns()])
                .args(["--metrics-addr", &metrics.to_string()])
                .args(["--agent-namespace", world.ns()])
                .args(["--identity", &spec.identity])
                .arg("--cache-dir")
                .arg(&cache)
                .args(["--concurrency", "4"])
                // The test repositories are local.
                .arg("--allow-local-sources");
            if let Some(addr) = webhook {
                cmd.args(["--webhook-addr", &addr.to_string()]);
            }
            if let Some(shard) = &spec.shard {
                cmd.args(["--shard", shard]);
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
            cmd.env("KUBECONFIG", world.kubeconfig())
                .env("NO_COLOR", "1")
                .env_remove("POD_NAME")
                .env_remove("POD_NAMESPACE")
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            let child = cmd.spawn().context("starting plumb agent")?;
            let mut agent = AgentProcess {
                identity: spec.identity.clone(),
                pid_record: record_pid(child.id()),
                child,
                log: log.clone(),
                metrics,
                webhook,
                quiet: false,
            };
            let started = wait_healthy(metrics, || {
                Ok(agent.child.try_wait()?.map(|s| s.to_string()))
            })
            .await;
            match started {
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
}

/// Records `pid` in `$PLUMB_TEST_PIDS_DIR` (when set), so that `scripts/test` kills the agent
/// even if the test process dies without dropping its handle.
fn record_pid(pid: u32) -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os(PIDS_DIR_ENV)?);
    std::fs::create_dir_all(&dir).ok()?;
    let file = dir.join(format!("plumb-agent-{pid}.pid"));
    std::fs::write(&file, format!("{pid}\n")).ok()?;
    Some(file)
}

/// A running `plumb agent` process. Dropping it kills the process (SIGKILL) and, unless
/// [`AgentProcess::finish`] was called, prints the tail of its log: the test failed.
pub struct AgentProcess {
    identity: String,
    child: Child,
    log: PathBuf,
    metrics: SocketAddr,
    webhook: Option<SocketAddr>,
    quiet: bool,
    pid_record: Option<PathBuf>,
}

impl AgentProcess {
    /// SIGKILL, as the kernel's OOM killer or a node failure would, and reap it; the handle
    /// (and its log) stays for the failure report.
    pub fn kill(&mut self) -> Result<()> {
        self.child
            .kill()
            .with_context(|| format!("killing agent {}", self.identity))?;
        let status = self.child.wait()?;
        eprintln!("agent {} killed: {status}", self.identity);
        Ok(())
    }

    /// SIGTERM, as the kubelet sends it when a Pod is deleted (a rollout, a drain); returns
    /// the exit status and how long the process took to exit, failing after `within`.
    pub async fn terminate(&mut self, within: Duration) -> Result<(ExitStatus, Duration)> {
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

    /// Stops the agent at the end of a passing test (SIGKILL), without printing its log.
    pub fn finish(mut self) {
        self.quiet = true;
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file its output goes to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last lines of its log, for failure reports.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("({e})"));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Agent for AgentProcess {
    fn identity(&self) -> &str {
        &self.identity
    }

    fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook
    }

    async fn stop(mut self) -> Result<()> {
        let (status, _) = self.terminate(Duration::from_secs(20)).await?;
        ensure!(status.success(), "agent {} exited {status}", self.identity);
        self.quiet = true;
        Ok(())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(file) = self.pid_record.take() {
            let _ = std::fs::remove_file(file);
        }
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
