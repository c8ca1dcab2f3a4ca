//! The agent end to end, in-process, against the real control plane and real Git repositories:
//! signed commits applied, drift healed (edit, delete, scale), drift only reported in detect
//! mode, unverified and broken revisions never applied.
//!
//! The world (namespace, CRDs, signed repository, builders, waits) is
//! [`plumb_testsupport::world::World`]; the agent runs in-process behind its [`Agent`] handle
//! ([`InProcess`] here, since plumb-testsupport cannot depend on plumb-agent). One test binary:
//! the topics are modules.

mod apply;
mod charts;
mod deletion;
mod endpoints;
mod health_waits;
mod helm;
mod lifecycle;
mod phases;
mod policy;
mod requests;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use plumb_agent::api::{GitSource, RECONCILE_REQUEST_ANNOTATION, Sync};
use plumb_agent::context::AgentConfig;
use plumb_agent::metrics::Metrics;
use plumb_agent::runner::{AgentOptions, LeaderOptions, run};
use plumb_testsupport::git::{Repo, Signing};
use plumb_testsupport::http::free_addr;
use plumb_testsupport::kube::{eventually, recording_client};
use plumb_testsupport::world::{self, Agent, AgentSpec, Launcher};
use serde_json::json;
use support::*;
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(60);

fn configmap(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: \"{value}\"\n"
    )
}

fn deployment(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: app
        image: nginx:1.27
"
    )
}

// ---- the agent in-process ----

/// Starts `plumb_agent::runner::run` on a task of the test's runtime, with the settings the
/// `plumb agent` flags of [`world::Process`] give (concurrency 4, local sources allowed), changed
/// by `configure`. Without a `client` of the test's own, the agent's requests are counted in
/// its metrics, as the binary counts them.
struct InProcess<'a> {
    client: Option<Client>,
    configure: &'a dyn Fn(&mut AgentConfig),
}

impl Default for InProcess<'_> {
    fn default() -> Self {
        Self {
            client: None,
            configure: &|_| {},
        }
    }
}

impl Launcher for InProcess<'_> {
    type Agent = InProcessAgent;

    async fn launch(&self, world: &world::World, spec: AgentSpec) -> Result<InProcessAgent> {
        let ns = world.ns().to_owned();
        for attempt in 1..=3 {
            let metrics_addr = free_addr()?;
            let webhook_addr = if spec.webhook {
                Some(free_addr()?)
            } else {
                None
            };
            let mut config = AgentConfig {
                cache_dir: spec.cache_dir(world),
                namespace: Some(ns.clone()),
                concurrency: 4,
                cross_namespace_refs: true,
                allow_local_sources: true,
                default_service_account: None,
                export_limits: Default::default(),
                agent_namespace: None,
                identity: spec.identity.clone(),
                shard: spec.shard.clone(),
            };
            (self.configure)(&mut config);
            let kube_config = kube::Config::infer().await?;
            let (client, metrics) = match &self.client {
                Some(client) => (client.clone(), None),
                None => {
                    let metrics = Metrics::new();
                    (metrics.client(kube_config.clone())?, Some(metrics))
                }
            };
            let options = AgentOptions {
                config,
                metrics_addr: Some(metrics_addr),
                webhook_addr,
                webhook_namespace: ns.clone(),
                leader: spec.lease.as_ref().map(|lease| LeaderOptions {
                    namespace: ns.clone(),
                    lease_name: lease.clone(),
                    lease_duration: Duration::from_secs(4),
                }),
                metrics,
            };
            let (stop, stopped) = oneshot::channel::<()>();
            let identity = spec.identity.clone();
            let task = tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stopped.await;
                };
                if let Err(e) = run(client, kube_config, options, shutdown).await {
                    panic!("agent {identity} failed: {e}");
                }
            });
            let agent = InProcessAgent {
                identity: spec.identity.clone(),
                stop: Some(stop),
                task,
                metrics: metrics_addr,
                webhook: webhook_addr,
            };
            let started = world::wait_healthy(metrics_addr, || {
                Ok(agent
                    .task
                    .is_finished()
                    .then(|| "its task ended".to_owned()))
            })
            .await;
            match started {
                Ok(()) => return Ok(agent),
                // Most likely a port another process took meanwhile.
                Err(e) if attempt < 3 => {
                    eprintln!("agent {}: retrying the start: {e:#}", spec.identity);
                    agent.abort().await;
                }
                Err(e) => bail!("agent {} did not start: {e:#}", spec.identity),
            }
        }
        unreachable!("the last attempt returns")
    }
}

/// An agent running in-process. Dropping it aborts its task.
struct InProcessAgent {
    identity: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    metrics: SocketAddr,
    webhook: Option<SocketAddr>,
}

impl InProcessAgent {
    /// Aborts the task at once, as a crash would (no graceful shutdown), and waits for it.
    async fn abort(mut self) {
        self.stop.take();
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Agent for InProcessAgent {
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
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // A graceful stop cancels health waits and bounds everything else (5 s).
        match tokio::time::timeout(Duration::from_secs(20), &mut self.task).await {
            Ok(_) => Ok(()),
            Err(_) => bail!("agent {} did not stop within 20 s", self.identity),
        }
    }
}

impl Drop for InProcessAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---- the test world ----

/// The shared world with one in-process agent scoped to its namespace (unless made
/// [`World::without_agent`]). Its methods speak plumb-agent's types.
struct World {
    inner: world::World,
    agent: Option<InProcessAgent>,
}

impl std::ops::Deref for World {
    type Target = world::World;

    fn deref(&self) -> &world::World {
        &self.inner
    }
}

impl World {
    async fn new(prefix: &str) -> Result<Self> {
        Self::with_agent_client(prefix, None).await
    }

    /// A world whose agent talks through `agent_client` (e.g. one that records requests).
    async fn with_agent_client(prefix: &str, agent_client: Option<Client>) -> Result<Self> {
        let mut w = Self::without_agent(prefix).await?;
        let launcher = InProcess {
            client: agent_client,
            ..InProcess::default()
        };
        let agent = w
            .spawn(&launcher, AgentSpec::new(&format!("test-{prefix}")))
            .await?;
        w.agent = Some(agent);
        Ok(w)
    }

    /// A world without an agent: the test runs its own.
    async fn without_agent(prefix: &str) -> Result<Self> {
        Ok(Self {
            inner: world::World::new(prefix).await?,
            agent: None,
        })
    }

    /// A GitSource `repo` verifying commits in `mode`.
    async fn create_source(&self, mode: &str) -> Result<()> {
        self.create(self.git_source("repo").verify(mode)).await
    }

    async fn create_sync(&self, name: &str, drift: &str) -> Result<()> {
        self.create_sync_every(name, drift, "1h").await
    }

    async fn create_sync_spec(&self, name: &str, spec: serde_json::Value) -> Result<()> {
        self.create(self.sync(name).with_spec(spec)).await
    }

    async fn create_sync_every(&self, name: &str, drift: &str, interval: &str) -> Result<()> {
        self.create(self.sync(name).drift(drift).interval(interval))
            .await
    }

    fn sources(&self) -> Api<GitSource> {
        self.api()
    }

    fn syncs(&self) -> Api<Sync> {
        self.api()
    }

    /// Starts another agent (fresh cache and memory) for this world's namespace.
    async fn restart_agent(&self, identity: &str) -> Result<InProcessAgent> {
        self.start_agent(identity, |_| {}).await
    }

    /// Starts an agent for this world's namespace with its cache in `cache_dir(identity)`,
    /// configured by `configure` (the defaults allow local sources).
    async fn start_agent(
        &self,
        identity: &str,
        configure: impl Fn(&mut AgentConfig),
    ) -> Result<InProcessAgent> {
        let launcher = InProcess {
            client: None,
            configure: &configure,
        };
        self.spawn(&launcher, AgentSpec::new(identity)).await
    }

    /// The cache directory of the agent started as `identity` by [`World::start_agent`].
    fn cache_dir(&self, identity: &str) -> std::path::PathBuf {
        AgentSpec::new(identity).cache_dir(self)
    }

    async fn wait_applied(&self, sync: &str, commit: &str) -> Result<Sync> {
        self.inner.wait_applied(sync, commit, WAIT).await
    }

    /// The value of the world's agent's metric `name` (one without labels), if it has it.
    async fn gauge(&self, name: &str) -> Result<Option<f64>> {
        let metrics = self
            .agent
            .as_ref()
            .expect("the world's agent")
            .metrics()
            .await?;
        Ok(metrics.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        }))
    }

    async fn stop(mut self) {
        if let Some(agent) = self.agent.take() {
            let stopped = agent.stop().await;
            assert!(stopped.is_ok(), "the agent did not stop within 20 s");
        }
    }
}

/// The world names the annotations as the agent does.
#[test]
fn the_world_names_annotations_as_the_agent_does() {
    assert_eq!(
        world::RECONCILE_REQUEST_ANNOTATION,
        RECONCILE_REQUEST_ANNOTATION
    );
    assert_eq!(
        world::RECEIVER_ANNOTATION,
        plumb_agent::webhook::RECEIVER_ANNOTATION
    );
}
