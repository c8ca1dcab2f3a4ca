//! The agent's world: a signed repository of the apps, its GitSource and Syncs, and the
//! `plumb agent` process.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use plumb_testsupport::git::{Identity, KeyType, Repo, Signing, SshSigner, WorkTree};
use rand::Rng as _;
use serde_json::json;
use tokio::process::Child;

use super::http::Loopback;
use crate::apps::{app_name, generate, set_image_tag, set_revision};
use crate::cli::AgentArgs;
use crate::cluster::fresh_namespace;
use crate::process::run;
use crate::testenv::ControlPlane;

/// The identity of the bench's commits and its signing key's principal.
const EMAIL: &str = "bench@plumb.dev";

/// One agent, one namespace, one signed repository of `apps` apps split into `syncs` Syncs.
pub struct AgentBench<'a> {
    pub args: &'a AgentArgs,
    pub plane: &'a ControlPlane,
    pub ns: String,
    pub per_sync: u32,
    pub workdir: PathBuf,
    pub token: String,
    /// The metrics port of each agent (one per shard).
    pub metrics_ports: Vec<u16>,
    /// The webhook port of the first agent (the only one serving the receiver: a push
    /// annotates every GitSource of the receiver, whichever shard reconciles it).
    pub webhook_port: u16,
    pub http: Loopback,
    plumb: PathBuf,
    repo: Option<Repo>,
    work: Option<WorkTree>,
    signing: Signing,
    agents: Vec<Child>,
    revision: u64,
}

/// The label that assigns GitSources and Syncs to shards.
const SHARD_LABEL: &str = "bench.plumb.dev/shard";

/// A free port on 127.0.0.1 (the OS picks; it is released for the agent to bind).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("no free local port")?;
    Ok(listener.local_addr()?.port())
}

/// The API of a Plumb kind (`GitSource`, `Sync`).
pub fn plumb_api(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("plumb.dev", "v1alpha1", kind);
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk(&gvk))
}

impl<'a> AgentBench<'a> {
    pub fn new(
        args: &'a AgentArgs,
        plane: &'a ControlPlane,
        plumb: PathBuf,
        workdir: &Path,
    ) -> anyhow::Result<Self> {
        let token: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        Ok(Self {
            args,
            plane,
            ns: args.namespace.clone(),
            per_sync: args.apps / args.syncs,
            workdir: workdir.to_owned(),
            token,
            metrics_ports: (0..args.shards)
                .map(|_| free_port())
                .collect::<anyhow::Result<_>>()?,
            webhook_port: free_port()?,
            http: Loopback::new(),
            plumb,
            repo: None,
            work: None,
            signing: Signing::None,
            agents: Vec::new(),
            revision: 0,
        })
    }

    pub fn client(&self) -> &Client {
        self.plane.client()
    }

    fn repo(&self) -> anyhow::Result<&Repo> {
        self.repo.as_ref().context("the repository is made first")
    }

    /// `file://` URL of the repository, as the GitSource names it.
    pub fn repo_url(&self) -> anyhow::Result<String> {
        Ok(self.repo()?.file_url())
    }

    fn work(&self) -> anyhow::Result<&WorkTree> {
        self.work.as_ref().context("the repository is made first")
    }

    // -- Git --

    /// The repository (`<workdir>/repo.git`): every app in `apps/sync-NN/`, one SSH-signed
    /// commit, and `<workdir>/allowed_signers` trusting its key.
    pub fn make_repo(&mut self) -> anyhow::Result<()> {
        let signer = SshSigner::generate(KeyType::Ed25519, EMAIL)?;
        let allowed = self.workdir.join("allowed_signers");
        std::fs::write(&allowed, signer.allowed_signers_line() + "\n")
            .with_context(|| format!("cannot write {}", allowed.display()))?;
        self.signing = Signing::Ssh(signer);
        let repo = plumb_testsupport::bench::bare_repo_at(&self.workdir.join("repo.git"))?;
        let mut work = repo.work_tree()?;
        work.set_author(Identity::new("Bench", EMAIL));
        work.set_committer(Identity::new("Bench", EMAIL));
        for s in 0..self.args.syncs {
            let dir = work.path().join(format!("apps/sync-{s:02}"));
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            generate(&dir, self.per_sync, self.args.replicas, s * self.per_sync)?;
        }
        work.commit("Add the apps", &self.signing)?;
        work.push()?;
        self.repo = Some(repo);
        self.work = Some(work);
        Ok(())
    }

    /// The commit the branch points at.
    pub fn head(&self) -> anyhow::Result<String> {
        self.repo()?.rev_parse("main")
    }

    /// Sets `REVISION` in app `app`'s ConfigMap, commits (signed) and pushes; returns it.
    pub fn commit_change(&mut self, app: u32) -> anyhow::Result<String> {
        self.revision += 1;
        let revision = self.revision;
        let relative = format!(
            "apps/sync-{:02}/{}.yaml",
            app / self.per_sync,
            app_name(app)
        );
        let work = self.work()?;
        let path = work.path().join(&relative);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        work.write(&relative, set_revision(&text, revision))?;
        work.commit(
            &format!("{}: revision {revision}", app_name(app)),
            &self.signing,
        )?;
        work.push()?;
        Ok(revision.to_string())
    }

    /// Gives every app's Deployment the image tag `tag` in one signed commit (a rollout of
    /// every Deployment), pushes it and returns the commit.
    pub fn commit_rollout(&mut self, tag: &str) -> anyhow::Result<String> {
        let work = self.work()?;
        for app in 0..self.args.apps {
            let relative = format!(
                "apps/sync-{:02}/{}.yaml",
                app / self.per_sync,
                app_name(app)
            );
            let path = work.path().join(&relative);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            work.write(&relative, set_image_tag(&text, tag))?;
        }
        work.commit(&format!("Roll out app:{tag}"), &self.signing)?;
        work.push()?;
        self.head()
    }

    /// Whether some Sync has started applying `commit` (its `lastAttemptedRevision`).
    pub async fn syncs_attempting(&self, commit: &str) -> anyhow::Result<bool> {
        let syncs = plumb_api(self.client(), &self.ns, "Sync")
            .list(&Default::default())
            .await
            .context("listing the Syncs")?;
        Ok(syncs.items.iter().any(|sync| {
            sync.data["status"]["lastAttemptedRevision"]
                .as_str()
                .is_some_and(|r| r.ends_with(commit))
        }))
    }

    // -- cluster objects --

    /// Installs the CRDs, makes the namespace afresh and the Secrets the GitSource and the
    /// webhook receiver read.
    pub async fn setup_cluster(&self) -> anyhow::Result<()> {
        run(self
            .plane
            .command(&self.plumb)
            .args(["install", "--crds-only"]))
        .await?;
        fresh_namespace(self.client(), &self.ns).await?;
        let allowed = std::fs::read_to_string(self.workdir.join("allowed_signers"))?;
        let secrets: Api<Secret> = Api::namespaced(self.client().clone(), &self.ns);
        for (name, data) in [
            ("bench-signers", json!({ "allowed_signers": allowed })),
            (
                "plumb-receiver-bench",
                json!({ "type": "generic", "token": self.token }),
            ),
        ] {
            let secret: Secret = serde_json::from_value(json!({
                "metadata": { "name": name },
                "stringData": data,
            }))?;
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .with_context(|| format!("creating Secret {name}"))?;
        }
        Ok(())
    }

    /// Server-side applies `obj` (a Plumb kind) as field manager `bench`.
    async fn apply(&self, kind: &str, obj: serde_json::Value) -> anyhow::Result<()> {
        let name = obj["metadata"]["name"]
            .as_str()
            .context("an object without name")?
            .to_owned();
        plumb_api(self.client(), &self.ns, kind)
            .patch(&name, &PatchParams::apply("bench"), &Patch::Apply(&obj))
            .await
            .with_context(|| format!("applying {kind} {}/{name}", self.ns))?;
        Ok(())
    }

    /// The GitSources: `bench` unsharded, else `bench-<k>` for shard `k`, each labelled.
    pub fn sources(&self) -> Vec<(String, Option<u32>)> {
        if self.args.shards == 1 {
            return vec![("bench".to_owned(), None)];
        }
        (0..self.args.shards)
            .map(|k| (format!("bench-{k}"), Some(k)))
            .collect()
    }

    /// Applies the GitSources (polling every `interval`) and the Syncs, each Sync in the shard
    /// of its number modulo the shards, with the GitSource of that shard.
    pub async fn apply_source_and_syncs(&self, interval: &str) -> anyhow::Result<()> {
        let url = self.repo_url()?;
        let labels = |shard: Option<u32>| match shard {
            Some(k) => json!({ SHARD_LABEL: k.to_string() }),
            None => json!({}),
        };
        for (name, shard) in self.sources() {
            self.apply(
                "GitSource",
                json!({
                    "apiVersion": "plumb.dev/v1alpha1",
                    "kind": "GitSource",
                    "metadata": {
                        "name": name,
                        "namespace": self.ns,
                        "labels": labels(shard),
                        "annotations": { "plumb.dev/receiver": "bench" },
                    },
                    "spec": {
                        "url": url,
                        "ref": { "branch": "main" },
                        "interval": interval,
                        "verify": {
                            "mode": "range",
                            "allowedSignersRef": {
                                "kind": "Secret", "name": "bench-signers", "key": "allowed_signers",
                            },
                        },
                    },
                }),
            )
            .await?;
        }
        let sources = self.sources();
        for s in 0..self.args.syncs {
            let (source, shard) = &sources[(s % self.args.shards) as usize];
            self.apply(
                "Sync",
                json!({
                    "apiVersion": "plumb.dev/v1alpha1",
                    "kind": "Sync",
                    "metadata": {
                        "name": format!("bench-{s:02}"),
                        "namespace": self.ns,
                        "labels": labels(*shard),
                    },
                    "spec": {
                        "sourceRef": { "name": source },
                        "path": format!("apps/sync-{s:02}"),
                        "prune": true,
                        "interval": self.args.interval,
                        "drift": "correct",
                    },
                }),
            )
            .await?;
        }
        Ok(())
    }

    /// Sets every GitSource's polling interval (a merge patch, as `kubectl patch` would).
    pub async fn set_source_interval(&self, interval: &str) -> anyhow::Result<()> {
        let patch = Patch::Merge(json!({ "spec": { "interval": interval } }));
        for (name, _) in self.sources() {
            plumb_api(self.client(), &self.ns, "GitSource")
                .patch(&name, &PatchParams::default(), &patch)
                .await
                .context("patching the GitSource's interval")?;
        }
        Ok(())
    }

    /// How many Syncs are Ready with `commit` applied.
    pub async fn syncs_applied(&self, commit: &str) -> anyhow::Result<usize> {
        let syncs = plumb_api(self.client(), &self.ns, "Sync")
            .list(&Default::default())
            .await
            .context("listing the Syncs")?;
        Ok(syncs
            .items
            .iter()
            .filter(|sync| {
                let status = &sync.data["status"];
                let ready = status["conditions"].as_array().is_some_and(|conditions| {
                    conditions
                        .iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
                ready
                    && status["lastAppliedRevision"]
                        .as_str()
                        .is_some_and(|r| r.ends_with(commit))
            })
            .count())
    }

    // -- the agent process --

    /// Starts `plumb agent`, one per shard (output in `<workdir>/agent-<k>.log`), and waits
    /// for each one's `/readyz`.
    pub async fn start_agent(&mut self) -> anyhow::Result<()> {
        for k in 0..self.args.shards {
            let log_path = self.workdir.join(format!("agent-{k}.log"));
            let log = std::fs::File::create(&log_path)
                .with_context(|| format!("cannot create {}", log_path.display()))?;
            let port = self.metrics_ports[k as usize];
            let mut cmd = self.plane.command(&self.plumb);
            cmd.args(["agent", "-v", "--allow-local-sources", "--watch-namespace"])
                .arg(&self.ns)
                .arg("--metrics-addr")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--agent-namespace")
                .arg(&self.ns)
                .arg("--concurrency")
                .arg(self.args.concurrency.to_string())
                .arg("--cache-dir")
                .arg(self.workdir.join(format!("cache-{k}")));
            if k == 0 {
                cmd.arg("--webhook-addr")
                    .arg(format!("127.0.0.1:{}", self.webhook_port));
            }
            if self.args.shards > 1 {
                cmd.arg("--shard")
                    .arg(format!("{SHARD_LABEL}={k}"))
                    .arg("--shard-name")
                    .arg(format!("bench-{k}"));
            }
            cmd.stdin(std::process::Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true);
            self.agents
                .push(cmd.spawn().context("cannot start plumb agent")?);
            self.wait_ready(port).await?;
        }
        Ok(())
    }

    async fn wait_ready(&mut self, port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ready = self.http.get(port, "/readyz", Duration::from_secs(1)).await;
            if ready.is_ok() {
                return Ok(());
            }
            self.check_agent()?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!(
            "the agent did not become ready; its log:\n{}",
            self.agent_log_tail()
        )
    }

    /// Fails (with its log) if the agent has exited.
    pub fn check_agent(&mut self) -> anyhow::Result<()> {
        for agent in &mut self.agents {
            if let Some(status) = agent.try_wait()? {
                bail!(
                    "an agent exited ({status}); the logs:\n{}",
                    self.agent_log_tail()
                );
            }
        }
        Ok(())
    }

    /// Whether the agents were started.
    pub fn agent_started(&self) -> bool {
        !self.agents.is_empty()
    }

    /// The agents' pids while they run.
    pub fn agent_pids(&self) -> anyhow::Result<Vec<u32>> {
        self.agents
            .iter()
            .map(|a| a.id().context("an agent is not running"))
            .collect()
    }

    /// The last 30 lines of each agent's log.
    pub fn agent_log_tail(&self) -> String {
        let mut out = String::new();
        for k in 0..self.args.shards {
            let path = self.workdir.join(format!("agent-{k}.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("== {} ==\n", path.display()));
            out.push_str(&lines[lines.len().saturating_sub(30)..].join("\n"));
            out.push('\n');
        }
        out
    }

    /// Stops the agents: SIGTERM, SIGKILL after 20 s.
    pub async fn stop_agent(&mut self) {
        for agent in std::mem::take(&mut self.agents) {
            Self::stop_one(agent).await;
        }
    }

    async fn stop_one(mut agent: Child) {
        if let Ok(None) = agent.try_wait()
            && let Some(pid) = agent.id()
        {
            if let Err(e) = crate::process::terminate(pid).await {
                log!("warning: cannot stop the agent: {e:#}");
            }
            if tokio::time::timeout(Duration::from_secs(20), agent.wait())
                .await
                .is_err()
            {
                let _ = agent.kill().await;
            }
        }
    }
}
