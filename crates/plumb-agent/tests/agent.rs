//! The agent end to end, in-process, against the real control plane and real Git repositories:
//! signed commits applied, drift healed (edit, delete, scale), drift only reported in detect
//! mode, unverified and broken revisions never applied.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use plumb_agent::api::{GitSource, RECONCILE_REQUEST_ANNOTATION, Sync};
use plumb_agent::context::AgentConfig;
use plumb_agent::runner::{AgentOptions, run};
use plumb_testsupport::git::{KeyType, Repo, Signing, SshSigner, WorkTree};
use plumb_testsupport::kube::{TestNamespace, apply_crds, client, eventually};
use serde_json::json;
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

/// A test world: namespace, CRDs, a signed Git repository, and a running agent scoped to the
/// namespace.
struct World {
    client: Client,
    ns: TestNamespace,
    _repo: Repo,
    wt: WorkTree,
    url: String,
    signing: Signing,
    stop: Option<oneshot::Sender<()>>,
    agent: Option<tokio::task::JoinHandle<()>>,
    _cache: tempfile::TempDir,
}

impl World {
    async fn new(prefix: &str) -> Result<Self> {
        Self::with_agent_client(prefix, None).await
    }

    /// A world whose agent talks through `agent_client` (e.g. one that records requests).
    async fn with_agent_client(prefix: &str, agent_client: Option<Client>) -> Result<Self> {
        Self::build(prefix, true, agent_client).await
    }

    /// A world without an agent: the test runs its own.
    async fn without_agent(prefix: &str) -> Result<Self> {
        Self::build(prefix, false, None).await
    }

    async fn build(prefix: &str, with_agent: bool, agent_client: Option<Client>) -> Result<Self> {
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
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": { "name": "signers" },
            "data": { "allowed_signers": format!("{}\n", alice.allowed_signers_line()) }
        }))?;
        Api::<ConfigMap>::namespaced(client.clone(), ns.name())
            .create(&PostParams::default(), &cm)
            .await?;
        let cache = tempfile::tempdir()?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let options = AgentOptions {
            config: AgentConfig {
                cache_dir: cache.path().to_path_buf(),
                namespace: Some(ns.name().to_owned()),
                concurrency: 4,
                cross_namespace_refs: true,
                allow_local_sources: true,
                default_service_account: None,
                export_limits: Default::default(),
                agent_namespace: None,
                identity: format!("test-{prefix}"),
            },
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            webhook_addr: None,
            webhook_namespace: ns.name().to_owned(),
            leader: None,
            metrics: None,
        };
        let kube_config = kube::Config::infer().await?;
        let agent_client = agent_client.unwrap_or_else(|| client.clone());
        let agent = with_agent.then(|| {
            tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stop_rx.await;
                };
                if let Err(e) = run(agent_client, kube_config, options, shutdown).await {
                    panic!("agent failed: {e}");
                }
            })
        });
        Ok(Self {
            url: repo.file_url(),
            client,
            ns,
            _repo: repo,
            wt,
            signing: Signing::Ssh(alice),
            stop: Some(stop_tx),
            agent,
            _cache: cache,
        })
    }

    fn commit(&self, files: &[(&str, &str)], signing: &Signing) -> Result<String> {
        for (path, content) in files {
            self.wt.write(path, content)?;
        }
        let id = self.wt.commit("change", signing)?;
        self.wt.push()?;
        Ok(id)
    }

    async fn create_source(&self, mode: &str) -> Result<()> {
        let gs: GitSource = serde_json::from_value(json!({
            "apiVersion": "plumb.dev/v1alpha1", "kind": "GitSource",
            "metadata": { "name": "repo" },
            "spec": {
                "url": self.url, "ref": { "branch": "main" }, "interval": "1h",
                "verify": { "mode": mode, "allowedSignersRef": { "name": "signers", "key": "allowed_signers" } }
            }
        }))?;
        self.sources().create(&PostParams::default(), &gs).await?;
        Ok(())
    }

    async fn create_sync(&self, name: &str, drift: &str) -> Result<()> {
        self.create_sync_every(name, drift, "1h").await
    }

    async fn create_sync_spec(&self, name: &str, spec: serde_json::Value) -> Result<()> {
        let sync: Sync = serde_json::from_value(json!({
            "apiVersion": "plumb.dev/v1alpha1", "kind": "Sync",
            "metadata": { "name": name },
            "spec": spec
        }))?;
        self.syncs().create(&PostParams::default(), &sync).await?;
        Ok(())
    }

    async fn create_sync_every(&self, name: &str, drift: &str, interval: &str) -> Result<()> {
        let sync: Sync = serde_json::from_value(json!({
            "apiVersion": "plumb.dev/v1alpha1", "kind": "Sync",
            "metadata": { "name": name },
            "spec": {
                "sourceRef": { "name": "repo" }, "path": "app", "prune": true,
                "interval": interval, "drift": drift
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

    /// Starts another agent (fresh cache and memory) for this world's namespace.
    async fn restart_agent(
        &self,
        identity: &str,
    ) -> Result<(tokio::task::JoinHandle<()>, oneshot::Sender<()>)> {
        self.start_agent(identity, |_| {}).await
    }

    /// Starts an agent for this world's namespace with its cache in `cache_dir(identity)`,
    /// configured by `configure` (the defaults allow local sources).
    async fn start_agent(
        &self,
        identity: &str,
        configure: impl FnOnce(&mut AgentConfig),
    ) -> Result<(tokio::task::JoinHandle<()>, oneshot::Sender<()>)> {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let mut config = AgentConfig {
            cache_dir: self.cache_dir(identity),
            namespace: Some(self.ns.name().to_owned()),
            concurrency: 4,
            cross_namespace_refs: true,
            allow_local_sources: true,
            default_service_account: None,
            export_limits: Default::default(),
            agent_namespace: None,
            identity: identity.to_owned(),
        };
        configure(&mut config);
        let options = AgentOptions {
            config,
            metrics_addr: None,
            webhook_addr: None,
            webhook_namespace: self.ns.name().to_owned(),
            leader: None,
            metrics: None,
        };
        let kube_config = kube::Config::infer().await?;
        let client = self.client.clone();
        let task = tokio::spawn(async move {
            let _ = run(client, kube_config, options, async move {
                let _ = stop_rx.await;
            })
            .await;
        });
        Ok((task, stop_tx))
    }

    /// The cache directory of the agent started as `identity` by [`World::start_agent`].
    fn cache_dir(&self, identity: &str) -> std::path::PathBuf {
        self._cache.path().join(identity)
    }

    /// Asks the GitSource to fetch now (what a webhook does).
    async fn poke_source(&self) -> Result<()> {
        let patch = json!({ "metadata": { "annotations": {
            RECONCILE_REQUEST_ANNOTATION: plumb_agent::status::now_rfc3339()
        } } });
        self.sources()
            .patch("repo", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    async fn wait_applied(&self, sync: &str, commit: &str) -> Result<Sync> {
        let syncs = self.syncs();
        let result = eventually(&format!("Sync {sync} to apply {commit}"), WAIT, || {
            let syncs = syncs.clone();
            async move {
                let s = syncs.get(sync).await?;
                let st = s.status.clone().unwrap_or_default();
                let applied = st
                    .last_applied_revision
                    .as_deref()
                    .is_some_and(|r| r.ends_with(commit));
                let ready = plumb_agent::status::is_true(&st.conditions, "Ready");
                Ok((applied && ready).then_some(s))
            }
        })
        .await;
        match result {
            Ok(s) => Ok(s),
            Err(e) => {
                let status = syncs
                    .get(sync)
                    .await
                    .ok()
                    .and_then(|s| s.status)
                    .map(|st| format!("{:#?}", (st.last_applied_revision, st.conditions)));
                Err(e.context(format!("Sync {sync}: {}", status.unwrap_or_default())))
            }
        }
    }

    /// Changes a ConfigMap's value the way `kubectl edit` does (another field manager).
    async fn edit_by_hand(&self, name: &str, value: &str) -> Result<()> {
        self.configmaps()
            .patch(
                name,
                &PatchParams {
                    field_manager: Some("kubectl-edit".into()),
                    ..Default::default()
                },
                &Patch::Merge(json!({ "data": { "value": value } })),
            )
            .await?;
        Ok(())
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

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        // A graceful stop cancels health waits and bounds everything else (5 s).
        if let Some(a) = self.agent.take() {
            let stopped = tokio::time::timeout(Duration::from_secs(20), a).await;
            assert!(stopped.is_ok(), "the agent did not stop within 20 s");
        }
    }
}

#[tokio::test]
async fn agent_applies_signed_commits_and_heals_drift() -> Result<()> {
    let w = World::new("agent").await?;
    let first = w.commit(
        &[
            ("app/cm.yaml", &configmap("settings", "v1")),
            ("app/web.yaml", &deployment("web", 2)),
        ],
        &w.signing,
    )?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    let sync = w.wait_applied("app", &first).await?;
    let st = sync.status.unwrap();
    assert_eq!(st.history.len(), 1);
    assert!(
        st.history[0]
            .signer
            .as_deref()
            .unwrap()
            .contains("alice@example.com"),
        "{:?}",
        st.history
    );
    assert_eq!(st.inventory.len(), 2, "{:?}", st.inventory);
    w.wait_value("settings", "v1").await?;

    // A manual edit of a managed field is undone.
    w.edit_by_hand("settings", "edited by hand").await?;
    w.wait_value("settings", "v1").await?;

    // A deleted object comes back.
    w.configmaps()
        .delete("settings", &Default::default())
        .await?;
    w.wait_value("settings", "v1").await?;

    // kubectl scale is undone.
    let deployments: Api<Deployment> = Api::namespaced(w.client.clone(), w.ns.name());
    deployments
        .patch_scale(
            "web",
            &PatchParams {
                field_manager: Some("kubectl".into()),
                ..Default::default()
            },
            &Patch::Merge(json!({ "spec": { "replicas": 5 } })),
        )
        .await?;
    eventually("the Deployment to be scaled back to 2", WAIT, || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get("web").await?;
            Ok((d.spec.and_then(|s| s.replicas) == Some(2)).then_some(()))
        }
    })
    .await?;

    // A new signed commit is applied; removing a file prunes its object.
    w.wt.remove("app/web.yaml")?;
    let second = w.commit(&[("app/cm.yaml", &configmap("settings", "v2"))], &w.signing)?;
    w.poke_source().await?;
    let sync = w.wait_applied("app", &second).await?;
    w.wait_value("settings", "v2").await?;
    assert!(
        deployments.get_opt("web").await?.is_none(),
        "web must be pruned"
    );
    let st = sync.status.unwrap();
    assert_eq!(st.history.len(), 2);
    assert_eq!(st.history[0].result, "success");

    // An unsigned commit is never applied: the source says why, the cluster keeps v2.
    let unsigned = w.commit(
        &[("app/cm.yaml", &configmap("settings", "v3-unsigned"))],
        &Signing::None,
    )?;
    w.poke_source().await?;
    let sources = w.sources();
    let message = eventually("the GitSource to refuse the unsigned commit", WAIT, || {
        let sources = sources.clone();
        async move {
            let gs = sources.get("repo").await?;
            let st = gs.status.unwrap_or_default();
            Ok(st
                .conditions
                .iter()
                .find(|c| {
                    c.type_ == "Ready" && c.status == "False" && c.reason == "VerificationFailed"
                })
                .map(|c| c.message.clone()))
        }
    })
    .await?;
    assert!(
        message.contains(&unsigned) && message.contains("unsigned"),
        "{message}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.wait_value("settings", "v2").await?;
    let st = w.syncs().get("app").await?.status.unwrap();
    assert!(st.last_applied_revision.unwrap().ends_with(&second));

    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn detect_mode_reports_drift_and_changes_nothing() -> Result<()> {
    let w = World::new("detect").await?;
    let first = w.commit(
        &[("app/cm.yaml", &configmap("watched", "from-git"))],
        &w.signing,
    )?;
    w.create_source("head").await?;
    w.create_sync("watch", "detect").await?;
    w.wait_applied("watch", &first).await?;

    w.edit_by_hand("watched", "edited").await?;
    let syncs = w.syncs();
    let drift = eventually("the Sync to report the drift", WAIT, || {
        let syncs = syncs.clone();
        async move {
            let st = syncs.get("watch").await?.status.unwrap_or_default();
            Ok((!st.drift.is_empty()).then_some(st.drift))
        }
    })
    .await?;
    assert_eq!(drift[0].id, format!("ConfigMap/{}/watched", w.ns.name()));
    assert_eq!(drift[0].reason, "modified");
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.wait_value("watched", "edited").await?;

    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_broken_revision_keeps_the_last_applied_state() -> Result<()> {
    let w = World::new("broken").await?;
    let first = w.commit(
        &[
            ("app/a.yaml", &configmap("a", "1")),
            ("app/b.yaml", &configmap("b", "1")),
        ],
        &w.signing,
    )?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    w.wait_applied("app", &first).await?;

    // b removed, and a file that does not parse: nothing is applied, nothing pruned.
    w.wt.remove("app/b.yaml")?;
    w.commit(
        &[
            ("app/a.yaml", &configmap("a", "2")),
            ("app/bad.yaml", "kind: [unclosed\n"),
        ],
        &w.signing,
    )?;
    w.poke_source().await?;
    let syncs = w.syncs();
    let message = eventually("the Sync to report the render failure", WAIT, || {
        let syncs = syncs.clone();
        async move {
            let st = syncs.get("app").await?.status.unwrap_or_default();
            Ok(st
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "RenderFailed")
                .map(|c| c.message.clone()))
        }
    })
    .await?;
    assert!(message.contains("bad.yaml"), "{message}");
    w.wait_value("a", "1").await?;
    assert!(
        w.configmaps().get_opt("b").await?.is_some(),
        "nothing may be pruned after a failure"
    );
    let st = w.syncs().get("app").await?.status.unwrap();
    assert!(st.last_applied_revision.unwrap().ends_with(&first));
    assert_eq!(st.history[0].result, "failure");

    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn steady_state_makes_no_per_object_requests() -> Result<()> {
    // The agent's client records every request it sends.
    let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let recorder = requests.clone();
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        recorder
            .lock()
            .unwrap()
            .push(format!("{} {}", req.method(), req.uri()));
        req
    });
    let config = kube::Config::infer().await?;
    let counting = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&layer)
        .build();
    let w = World::with_agent_client("steady", Some(counting)).await?;
    let first = w.commit(
        &[
            ("app/cm.yaml", &configmap("quiet", "1")),
            ("app/web.yaml", &deployment("web", 1)),
        ],
        &w.signing,
    )?;
    w.create_source("range").await?;
    // Re-apply every second: the agent must notice each time that nothing changed.
    w.create_sync_every("app", "correct", "1s").await?;
    w.wait_applied("app", &first).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    requests.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let seen = requests.lock().unwrap().clone();
    let reconciles = seen
        .iter()
        .filter(|r| r.starts_with("GET") && r.contains("/gitsources/repo"))
        .count();
    assert!(
        reconciles >= 3,
        "the Sync should have been reconciled every second: {seen:#?}"
    );
    let per_object: Vec<&String> = seen
        .iter()
        .filter(|r| r.contains("/configmaps") || r.contains("/deployments"))
        .filter(|r| !r.contains("watch=true"))
        .collect();
    assert!(
        per_object.is_empty(),
        "steady state made per-object requests: {per_object:#?}"
    );

    // And a manual change is still healed: the watch, not polling, does it.
    w.edit_by_hand("quiet", "noise").await?;
    w.wait_value("quiet", "1").await?;

    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_commit_outside_the_path_is_recorded_without_per_object_requests() -> Result<()> {
    let (counting, requests) = recording_client(kube::Config::infer().await?)?;
    let w = World::with_agent_client("elsewhere", Some(counting)).await?;
    let first = w.commit(
        &[
            ("app/cm.yaml", &configmap("mine", "1")),
            ("app/companion.yaml", &configmap("companion", "1")),
            ("other/cm.yaml", &configmap("theirs", "1")),
        ],
        &w.signing,
    )?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    w.wait_applied("app", &first).await?;

    // A commit that changes only another directory: the Sync takes the new revision (the audit
    // trail names it) without a request per object.
    requests.lock().unwrap().clear();
    let second = w.commit(&[("other/cm.yaml", &configmap("theirs", "2"))], &w.signing)?;
    w.poke_source().await?;
    let sync = w.wait_applied("app", &second).await?;
    let st = sync.status.unwrap();
    assert_eq!(st.history[0].changes, "2 unchanged", "{:?}", st.history[0]);
    assert_eq!(st.history[0].result, "success");
    let per_object: Vec<String> = requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.contains("/configmaps") && !r.contains("watch=true"))
        // The GitSource reads its allowed signers on every fetch.
        .filter(|r| !r.contains("/configmaps/signers"))
        .cloned()
        .collect();
    assert!(
        per_object.is_empty(),
        "an unchanged rendering made per-object requests: {per_object:#?}"
    );

    // A commit inside the path is applied; the object it did not change, which the watch
    // has seen unchanged, is neither dry-run nor written.
    requests.lock().unwrap().clear();
    let third = w.commit(&[("app/cm.yaml", &configmap("mine", "3"))], &w.signing)?;
    w.poke_source().await?;
    let sync = w.wait_applied("app", &third).await?;
    w.wait_value("mine", "3").await?;
    let st = sync.status.unwrap();
    assert_eq!(
        st.history[0].changes, "1 configured, 1 unchanged",
        "{:?}",
        st.history[0]
    );
    let seen = requests.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|r| r.starts_with("PATCH") && r.contains("/configmaps/mine")),
        "the changed ConfigMap was not applied: {seen:#?}"
    );
    // (The live state is still read: one GET here, one LIST per kind in larger Syncs.)
    let companion: Vec<&String> = seen
        .iter()
        .filter(|r| r.starts_with("PATCH") && r.contains("/configmaps/companion"))
        .collect();
    assert!(
        companion.is_empty(),
        "the unchanged object was dry-run or applied: {companion:#?}"
    );

    // A manual change, then a commit outside the path: the drift is healed either way.
    w.edit_by_hand("mine", "edited").await?;
    let fourth = w.commit(&[("other/cm.yaml", &configmap("theirs", "4"))], &w.signing)?;
    w.poke_source().await?;
    w.wait_applied("app", &fourth).await?;
    w.wait_value("mine", "3").await?;

    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_long_apply_shows_as_reconciling_with_its_revision() -> Result<()> {
    let w = World::new("progress").await?;
    // Pods that no node accepts: the Deployment never becomes Available, so the health wait
    // holds the apply open.
    let stuck = deployment("stuck", 1).replace(
        "      containers:",
        "      nodeSelector: {plumb.dev/nowhere: \"true\"}\n      containers:",
    );
    let first = w.commit(&[("app/stuck.yaml", &stuck)], &w.signing)?;
    w.create_source("range").await?;
    w.create_sync_spec(
        "app",
        json!({ "sourceRef": { "name": "repo" }, "path": "app", "wait": true, "timeout": "2m" }),
    )
    .await?;
    let syncs = w.syncs();
    eventually("the Sync to say it is applying the commit", WAIT, || {
        let syncs = syncs.clone();
        let first = first.clone();
        async move {
            let st = syncs.get("app").await?.status.unwrap_or_default();
            let reconciling = st.conditions.iter().find(|c| c.type_ == "Reconciling");
            let applying = reconciling.is_some_and(|c| {
                c.status == "True" && c.reason == "Progressing" && c.message.contains(&first)
            });
            let attempted = st
                .last_attempted_revision
                .as_deref()
                .is_some_and(|r| r.ends_with(&first));
            let ready = plumb_agent::status::is_true(&st.conditions, "Ready");
            Ok((applying && attempted && !ready).then_some(()))
        }
    })
    .await?;
    // The reconcile waits for health for minutes; a graceful stop cancels the wait.
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_edit_during_an_apply_is_healed_after_it() -> Result<()> {
    let w = World::new("during").await?;
    let first = w.commit(&[("app/cm.yaml", &configmap("steady", "1"))], &w.signing)?;
    w.create_source("range").await?;
    w.create_sync_spec(
        "app",
        json!({ "sourceRef": { "name": "repo" }, "path": "app", "wait": true, "timeout": "2m" }),
    )
    .await?;
    w.wait_applied("app", &first).await?;

    // The next revision adds a Deployment whose pods fit only a node carrying a label no node
    // has yet: the apply (with its health wait) stays open until the test labels a node.
    let label = format!("plumb.dev/test-{}", w.ns.name());
    let held = deployment("held", 1).replace(
        "      containers:",
        &format!("      nodeSelector: {{{label}: \"true\"}}\n      containers:"),
    );
    let second = w.commit(&[("app/held.yaml", &held)], &w.signing)?;
    w.poke_source().await?;
    let syncs = w.syncs();
    eventually("the Sync to start applying the second commit", WAIT, || {
        let syncs = syncs.clone();
        let second = second.clone();
        async move {
            let st = syncs.get("app").await?.status.unwrap_or_default();
            Ok(st
                .conditions
                .iter()
                .any(|c| c.type_ == "Reconciling" && c.message.contains(&second))
                .then_some(()))
        }
    })
    .await?;
    w.edit_by_hand("steady", "edited mid-apply").await?;
    // Give the edit's watch event time to reach the agent while the apply is still open.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(w.client.clone());
    let node = nodes
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .next()
        .and_then(|n| n.metadata.name)
        .ok_or_else(|| anyhow::anyhow!("the cluster has no nodes"))?;
    let set_label = |value: Option<&str>| json!({ "metadata": { "labels": { &label: value } } });
    nodes
        .patch(
            &node,
            &PatchParams::default(),
            &Patch::Merge(set_label(Some("true"))),
        )
        .await?;
    let applied = w.wait_applied("app", &second).await;
    nodes
        .patch(
            &node,
            &PatchParams::default(),
            &Patch::Merge(set_label(None)),
        )
        .await?;
    let sync = applied?;
    assert!(
        !sync.status.unwrap_or_default().history[0]
            .changes
            .is_empty(),
        "the second revision was applied"
    );
    // Nothing else will apply this Sync (interval 1h): the deferred drift check must.
    w.wait_value("steady", "1").await?;
    w.stop().await;
    Ok(())
}

/// A client that records the method and path of every request it sends.
fn recording_client(
    config: kube::Config,
) -> Result<(Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>)> {
    let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let recorder = requests.clone();
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        recorder
            .lock()
            .unwrap()
            .push(format!("{} {}", req.method(), req.uri()));
        req
    });
    let client = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&layer)
        .build();
    Ok((client, requests))
}

#[tokio::test]
async fn with_two_replicas_only_the_leader_writes_and_the_standby_takes_over() -> Result<()> {
    use plumb_agent::runner::LeaderOptions;
    type Requests = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

    let w = World::without_agent("ha").await?;
    let first = w.commit(&[("app/cm.yaml", &configmap("ha", "1"))], &w.signing)?;
    let ns = w.ns.name().to_owned();
    let cache = tempfile::tempdir()?;
    let config = kube::Config::infer().await?;
    let start =
        |identity: &str| -> Result<(oneshot::Sender<()>, tokio::task::JoinHandle<()>, Requests)> {
            let (client, requests) = recording_client(config.clone())?;
            let (tx, rx) = oneshot::channel::<()>();
            let options = AgentOptions {
                config: AgentConfig {
                    cache_dir: cache.path().join(identity),
                    namespace: Some(ns.clone()),
                    concurrency: 2,
                    cross_namespace_refs: true,
                    allow_local_sources: true,
                    default_service_account: None,
                    export_limits: Default::default(),
                    agent_namespace: None,
                    identity: identity.to_owned(),
                },
                metrics_addr: None,
                webhook_addr: None,
                webhook_namespace: ns.clone(),
                leader: Some(LeaderOptions {
                    namespace: ns.clone(),
                    lease_name: "plumb-agent".into(),
                    lease_duration: Duration::from_secs(3),
                }),
                metrics: None,
            };
            let kube_config = config.clone();
            let task = tokio::spawn(async move {
                let _ = run(client, kube_config, options, async move {
                    let _ = rx.await;
                })
                .await;
            });
            Ok((tx, task, requests))
        };
    let (stop_a, task_a, req_a) = start("replica-a")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (stop_b, task_b, req_b) = start("replica-b")?;

    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    w.wait_applied("app", &first).await?;

    let writes = |reqs: &Requests| {
        reqs.lock()
            .unwrap()
            .iter()
            .filter(|r| r.starts_with("PATCH") || r.starts_with("POST"))
            .filter(|r| {
                r.contains("/configmaps") || r.contains("/syncs") || r.contains("/gitsources")
            })
            .filter(|r| !r.contains("dryRun"))
            .count()
    };
    // replica-a started first and leads; replica-b only campaigns.
    assert!(writes(&req_a) > 0, "the leader applied nothing");
    assert_eq!(
        writes(&req_b),
        0,
        "the standby wrote: {:#?}",
        req_b.lock().unwrap()
    );

    // The leader stops (releasing the Lease); the standby takes over and applies the next commit.
    let _ = stop_a.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), task_a).await;
    let second = w.commit(&[("app/cm.yaml", &configmap("ha", "2"))], &w.signing)?;
    w.poke_source().await?;
    w.wait_applied("app", &second).await?;
    w.wait_value("ha", "2").await?;
    assert!(writes(&req_b) > 0, "the standby never took over");

    let _ = stop_b.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), task_b).await;
    w.stop().await;
    Ok(())
}

async fn ready_condition(
    syncs: &Api<Sync>,
    name: &str,
) -> Result<Option<(String, String, String)>> {
    let st = syncs.get(name).await?.status.unwrap_or_default();
    Ok(st
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone())))
}

#[tokio::test]
async fn suspend_stops_everything_and_resume_catches_up() -> Result<()> {
    let w = World::new("suspend").await?;
    let first = w.commit(&[("app/cm.yaml", &configmap("paused", "1"))], &w.signing)?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    w.wait_applied("app", &first).await?;

    let suspend = |on: bool| json!({ "spec": { "suspend": on } });
    w.syncs()
        .patch("app", &PatchParams::default(), &Patch::Merge(suspend(true)))
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = w.commit(&[("app/cm.yaml", &configmap("paused", "2"))], &w.signing)?;
    w.poke_source().await?;
    let sources = w.sources();
    eventually("the GitSource to fetch the new commit", WAIT, || {
        let sources = sources.clone();
        let second = second.clone();
        async move {
            let gs = sources.get("repo").await?;
            Ok(gs
                .status
                .and_then(|s| s.artifact)
                .filter(|a| a.commit == second)
                .map(|_| ()))
        }
    })
    .await?;
    // Neither the new revision nor drift correction happens while suspended.
    w.edit_by_hand("paused", "by hand").await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    w.wait_value("paused", "by hand").await?;
    let st = w.syncs().get("app").await?.status.unwrap();
    assert!(st.last_applied_revision.unwrap().ends_with(&first));

    w.syncs()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(suspend(false)),
        )
        .await?;
    w.wait_applied("app", &second).await?;
    w.wait_value("paused", "2").await?;
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn depends_on_waits_for_the_dependency() -> Result<()> {
    let w = World::new("deps").await?;
    let first = w.commit(
        &[
            ("base/cm.yaml", &configmap("base", "1")),
            ("app/cm.yaml", &configmap("app", "1")),
        ],
        &w.signing,
    )?;
    w.create_source("range").await?;
    // The dependent first: it must wait.
    w.create_sync_spec("app", json!({ "sourceRef": { "name": "repo" }, "path": "app", "interval": "1h", "dependsOn": [{ "name": "base" }] }))
        .await?;
    let syncs = w.syncs();
    let (status, reason, message) = eventually("the dependent Sync to wait", WAIT, || {
        let syncs = syncs.clone();
        async move { ready_condition(&syncs, "app").await }
    })
    .await?;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "DependencyNotReady"),
        "{message}"
    );
    assert!(message.contains("base"), "{message}");
    assert!(
        w.configmaps().get_opt("app").await?.is_none(),
        "applied before its dependency"
    );

    w.create_sync_spec(
        "base",
        json!({ "sourceRef": { "name": "repo" }, "path": "base", "interval": "1h" }),
    )
    .await?;
    w.wait_applied("base", &first).await?;
    w.wait_applied("app", &first).await?;
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_service_account_without_rights_fails_cleanly() -> Result<()> {
    let w = World::new("rbac").await?;
    let first = w.commit(&[("app/cm.yaml", &configmap("guarded", "1"))], &w.signing)?;
    let sa: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({ "metadata": { "name": "limited" } }))?;
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(w.client.clone(), w.ns.name())
        .create(&PostParams::default(), &sa)
        .await?;
    w.create_source("range").await?;
    w.create_sync_spec(
        "app",
        json!({ "sourceRef": { "name": "repo" }, "path": "app", "interval": "1h", "serviceAccountName": "limited" }),
    )
    .await?;
    let syncs = w.syncs();
    let message = eventually("the Sync to fail on permissions", WAIT, || {
        let syncs = syncs.clone();
        async move {
            Ok(ready_condition(&syncs, "app")
                .await?
                .filter(|(s, _, _)| s == "False")
                .filter(|(_, r, _)| r != "DependencyNotReady")
                .map(|(_, _, m)| m))
        }
    })
    .await?;
    assert!(
        message.contains("forbidden") && message.contains("guarded"),
        "{message}"
    );
    assert!(
        message.contains("system:serviceaccount") && message.contains("limited"),
        "{message}"
    );
    assert!(w.configmaps().get_opt("guarded").await?.is_none());
    let _ = first;
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_unreachable_repository_keeps_the_cluster_and_recovers() -> Result<()> {
    let w = World::new("gitdown").await?;
    let first = w.commit(
        &[
            ("app/a.yaml", &configmap("a", "1")),
            ("app/b.yaml", &configmap("b", "1")),
        ],
        &w.signing,
    )?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    w.wait_applied("app", &first).await?;

    // The repository goes away (as a Git server that is down).
    let bare = w._repo.path().to_path_buf();
    let hidden = bare.with_extension("offline");
    std::fs::rename(&bare, &hidden)?;
    w.poke_source().await?;
    let sources = w.sources();
    let message = eventually("the GitSource to report the fetch failure", WAIT, || {
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
    assert!(!message.is_empty());
    // Nothing was pruned or changed; the Sync keeps its revision.
    w.wait_value("a", "1").await?;
    w.wait_value("b", "1").await?;

    // It comes back, with a new commit: applied.
    std::fs::rename(&hidden, &bare)?;
    w.wt.remove("app/b.yaml")?;
    let second = w.commit(&[("app/a.yaml", &configmap("a", "2"))], &w.signing)?;
    w.poke_source().await?;
    w.wait_applied("app", &second).await?;
    w.wait_value("a", "2").await?;
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_agent_killed_mid_apply_converges_after_restart_and_restores_a_wiped_namespace()
-> Result<()> {
    let mut w = World::new("restart").await?;
    let target = format!("{}-app", w.ns.name());
    let mut files = vec![(
        "app/ns.yaml".to_owned(),
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {target}\n"),
    )];
    for i in 0..30 {
        files.push((
            format!("app/cm-{i}.yaml"),
            configmap(&format!("cm-{i}"), "1").replace(
                "metadata:\n",
                &format!("metadata:\n  namespace: {target}\n"),
            ),
        ));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let first = w.commit(&refs, &w.signing)?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    let in_target: Api<ConfigMap> = Api::namespaced(w.client.clone(), &target);
    // Kill the agent as soon as it has started writing.
    eventually("the agent to start applying", WAIT, || {
        let in_target = in_target.clone();
        async move {
            Ok((!in_target
                .list(&Default::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default()
                .is_empty())
            .then_some(()))
        }
    })
    .await?;
    if let Some(agent) = w.agent.take() {
        agent.abort();
        let _ = agent.await;
    }
    // A new agent (fresh cache, no memory) converges.
    let restarted = World::restart_agent(&w, "restart-2").await?;
    w.agent = Some(restarted.0);
    w.stop = Some(restarted.1);
    w.wait_applied("app", &first).await?;
    assert_eq!(
        in_target.list(&Default::default()).await?.items.len(),
        30 + 1 /* kube-root-ca.crt */
    );

    // Disaster recovery drill: wipe the namespace; the agent restores everything.
    let started = std::time::Instant::now();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(w.client.clone())
        .delete(&target, &Default::default())
        .await?;
    eventually(
        "the wiped namespace to be restored",
        Duration::from_secs(120),
        || {
            let in_target = in_target.clone();
            async move {
                let n = in_target
                    .list(&Default::default())
                    .await
                    .map(|l| {
                        l.items
                            .iter()
                            .filter(|c| {
                                c.metadata
                                    .name
                                    .as_deref()
                                    .is_some_and(|n| n.starts_with("cm-"))
                            })
                            .count()
                    })
                    .unwrap_or(0);
                Ok((n == 30).then_some(()))
            }
        },
    )
    .await?;
    eprintln!(
        "DR drill: namespace {target} wiped and restored (30 objects) in {:.1?}",
        started.elapsed()
    );
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(w.client.clone())
        .delete(&target, &Default::default())
        .await;
    w.stop().await;
    Ok(())
}

/// Whoever may patch `gitsources/status` (a tenant, say) cannot make a Sync apply a commit the
/// agent did not verify, nor read another directory through the commit field.
#[tokio::test]
async fn a_tampered_source_status_is_never_applied() -> Result<()> {
    let w = World::new("tamper").await?;
    let signed = w.commit(
        &[("app/cm.yaml", &configmap("settings", "signed"))],
        &w.signing,
    )?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    w.wait_applied("app", &signed).await?;

    // The agent will not fetch again; an unsigned commit appears in the repository.
    w.sources()
        .patch(
            "repo",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "suspend": true } })),
        )
        .await?;
    let unsigned = w.commit(
        &[("app/cm.yaml", &configmap("settings", "unsigned"))],
        &Signing::None,
    )?;
    for (commit, expected) in [
        (unsigned.as_str(), "this agent fetched"),
        ("../../other-namespace/repo", "not a commit id"),
    ] {
        let patch = json!({ "status": { "artifact": {
            "revision": format!("main@sha1:{commit}"), "commit": commit
        } } });
        let patched = w
            .sources()
            .patch_status("repo", &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        if let Err(kube::Error::Api(e)) = &patched {
            // The CRD's validation refused the value outright: as good.
            assert_eq!(e.code, 422, "{e}");
            continue;
        }
        patched?;
        let syncs = w.syncs();
        eventually(&format!("the Sync to refuse {commit}"), WAIT, || {
            let syncs = syncs.clone();
            async move {
                let st = syncs.get("app").await?.status.unwrap_or_default();
                Ok(plumb_agent::status::ready(&st.conditions)
                    .is_some_and(|c| c.status == "False" && c.message.contains(expected))
                    .then_some(()))
            }
        })
        .await?;
        let st = syncs.get("app").await?.status.unwrap_or_default();
        assert!(
            st.last_applied_revision
                .as_deref()
                .is_some_and(|r| r.ends_with(&signed)),
            "{:?}",
            st.last_applied_revision
        );
        let cm = w.configmaps().get("settings").await?;
        assert_eq!(cm.data.unwrap_or_default()["value"], "signed");
    }

    // Resumed, the agent fetches and verifies the tip itself, and refuses it.
    w.sources()
        .patch(
            "repo",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "suspend": false } })),
        )
        .await?;
    let sources = w.sources();
    eventually("the GitSource to reject the unsigned tip", WAIT, || {
        let sources = sources.clone();
        let unsigned = unsigned.clone();
        async move {
            let st = sources.get("repo").await?.status.unwrap_or_default();
            Ok(plumb_agent::status::ready(&st.conditions)
                .is_some_and(|c| c.status == "False" && c.message.contains(&unsigned))
                .then_some(()))
        }
    })
    .await?;
    let cm = w.configmaps().get("settings").await?;
    assert_eq!(cm.data.unwrap_or_default()["value"], "signed");
    w.stop().await;
    Ok(())
}

/// The `type_` condition of GitSource `name`: (status, reason, message).
async fn source_condition(
    sources: &Api<GitSource>,
    name: &str,
    type_: &str,
) -> Result<Option<(String, String, String)>> {
    let st = sources.get(name).await?.status.unwrap_or_default();
    Ok(st
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone())))
}

/// Waits until GitSource `name` is Ready=False and returns the condition's reason and message.
async fn wait_source_refused(sources: &Api<GitSource>, name: &str) -> Result<(String, String)> {
    eventually(&format!("GitSource {name} to be refused"), WAIT, || {
        let sources = sources.clone();
        async move {
            Ok(source_condition(&sources, name, "Ready")
                .await?
                .filter(|(s, _, _)| s == "False")
                .map(|(_, r, m)| (r, m)))
        }
    })
    .await
}

/// Every file under `dir` (recursively), relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(
                    path.strip_prefix(root)
                        .unwrap_or(&path)
                        .display()
                        .to_string(),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

#[tokio::test]
async fn local_sources_are_refused_unless_allowed() -> Result<()> {
    let w = World::without_agent("local").await?;
    let first = w.commit(&[("app/cm.yaml", &configmap("local", "1"))], &w.signing)?;
    let (task, stop) = w
        .start_agent("strict", |c| c.allow_local_sources = false)
        .await?;
    w.create_source("range").await?;
    let sources = w.sources();
    let (reason, message) = wait_source_refused(&sources, "repo").await?;
    assert_eq!(reason, "InvalidSpec", "{message}");
    assert!(
        message.contains("--allow-local-sources") && message.contains(&w.url),
        "{message}"
    );
    let stalled = source_condition(&sources, "repo", "Stalled").await?;
    assert_eq!(stalled.map(|(s, _, _)| s).as_deref(), Some("True"));
    // Refused before any fetch: nothing of the repository reached the agent's cache.
    let cache = w.cache_dir("strict");
    let fetcher = plumb_source::Fetcher::new(cache.join("git"));
    assert!(!fetcher.repo_path(&w.url).exists());
    let files = files_under(&cache);
    assert!(
        !files
            .iter()
            .any(|f| f.ends_with("HEAD") || f.ends_with("cm.yaml")),
        "the refused source was fetched: {files:?}"
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), task).await;

    // The same source with the flag: fetched.
    let (task, stop) = w
        .start_agent("allowed", |c| c.allow_local_sources = true)
        .await?;
    w.poke_source().await?;
    eventually("the local source to be fetched", WAIT, || {
        let sources = sources.clone();
        let first = first.clone();
        async move {
            let gs = sources.get("repo").await?;
            Ok(gs
                .status
                .and_then(|s| s.artifact)
                .filter(|a| a.commit == first)
                .map(|_| ()))
        }
    })
    .await?;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    Ok(())
}

#[tokio::test]
async fn a_default_service_account_without_rights_applies_nothing() -> Result<()> {
    let w = World::without_agent("defsa").await?;
    w.commit(&[("app/cm.yaml", &configmap("guarded", "1"))], &w.signing)?;
    // No RoleBinding names this account: it may do nothing.
    let (task, stop) = w
        .start_agent("defsa", |c| {
            c.default_service_account = Some("tenant".to_owned());
        })
        .await?;
    w.create_source("range").await?;
    // No serviceAccountName: applied as the default account, not as the agent.
    w.create_sync("app", "correct").await?;
    let syncs = w.syncs();
    let message = eventually("the Sync to fail on permissions", WAIT, || {
        let syncs = syncs.clone();
        async move {
            Ok(ready_condition(&syncs, "app")
                .await?
                .filter(|(s, _, _)| s == "False")
                .filter(|(_, r, _)| r != "DependencyNotReady")
                .map(|(_, _, m)| m))
        }
    })
    .await?;
    assert!(message.contains("forbidden"), "{message}");
    assert!(
        message.contains(&format!("system:serviceaccount:{}:tenant", w.ns.name())),
        "{message}"
    );
    assert!(w.configmaps().get_opt("guarded").await?.is_none());
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    Ok(())
}

#[tokio::test]
async fn cross_namespace_refs_are_refused_when_disabled() -> Result<()> {
    let w = World::without_agent("xns").await?;
    let first = w.commit(&[("app/cm.yaml", &configmap("xns", "1"))], &w.signing)?;
    let (task, stop) = w
        .start_agent("xns", |c| c.cross_namespace_refs = false)
        .await?;
    w.create_source("range").await?;
    w.create_sync_spec(
        "other-source",
        json!({ "sourceRef": { "name": "repo", "namespace": "kube-system" }, "path": "app", "interval": "1h" }),
    )
    .await?;
    w.create_sync_spec(
        "other-dependency",
        json!({ "sourceRef": { "name": "repo" }, "path": "app", "interval": "1h",
                "dependsOn": [{ "name": "base", "namespace": "kube-system" }] }),
    )
    .await?;
    // Its own namespace, spelled out: allowed.
    w.create_sync_spec(
        "same",
        json!({ "sourceRef": { "name": "repo", "namespace": w.ns.name() }, "path": "app", "interval": "1h" }),
    )
    .await?;
    let syncs = w.syncs();
    for (name, what) in [
        ("other-source", "GitSource kube-system/repo"),
        ("other-dependency", "Sync kube-system/base"),
    ] {
        let (reason, message) = eventually(&format!("Sync {name} to be refused"), WAIT, || {
            let syncs = syncs.clone();
            async move {
                Ok(ready_condition(&syncs, name)
                    .await?
                    .filter(|(s, _, _)| s == "False")
                    .map(|(_, r, m)| (r, m)))
            }
        })
        .await?;
        assert_eq!(reason, "InvalidSpec", "{name}: {message}");
        assert!(
            message.contains(what) && message.contains("--no-cross-namespace-refs"),
            "{name}: {message}"
        );
    }
    w.wait_applied("same", &first).await?;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    Ok(())
}

#[tokio::test]
async fn credentials_go_only_to_the_hosts_their_secret_names() -> Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    use plumb_testsupport::git::GitServers;

    let servers = GitServers::start()?;
    let repo = servers.create_repo("creds")?;
    let wt = repo.work_tree()?;
    wt.write("app/cm.yaml", configmap("creds", "1"))?;
    let first = wt.commit("first", &Signing::None)?;
    wt.push()?;
    let url = servers.https_url("creds");
    let access_log = servers.dir().join("logs/nginx-access.log");
    let requests = || {
        std::fs::read_to_string(&access_log)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let before = requests();

    let w = World::without_agent("creds").await?;
    // A strict agent: https sources are remote, so they are allowed.
    let (task, stop) = w
        .start_agent("creds", |c| c.allow_local_sources = false)
        .await?;
    let password = servers.password().to_owned();
    let ca = std::fs::read_to_string(servers.ca_cert_path())?;
    let secrets: Api<Secret> = Api::namespaced(w.client.clone(), w.ns.name());
    for (name, hosts) in [
        ("unbound", None),
        ("elsewhere", Some("git.example.com, 127.0.0.1:1")),
    ] {
        let annotations = hosts
            .map(|h| json!({ plumb_agent::policy::CREDENTIAL_HOSTS_ANNOTATION: h }))
            .unwrap_or_else(|| json!({}));
        let secret: Secret = serde_json::from_value(json!({
            "metadata": { "name": name, "annotations": annotations },
            "stringData": { "username": servers.username(), "password": password, "caFile": ca },
        }))?;
        secrets.create(&PostParams::default(), &secret).await?;
        let gs: GitSource = serde_json::from_value(json!({
            "apiVersion": "plumb.dev/v1alpha1", "kind": "GitSource",
            "metadata": { "name": name },
            "spec": { "url": url, "interval": "1h", "secretRef": { "name": name } }
        }))?;
        w.sources().create(&PostParams::default(), &gs).await?;
    }
    let sources = w.sources();
    for name in ["unbound", "elsewhere"] {
        let (reason, message) = wait_source_refused(&sources, name).await?;
        assert_eq!(reason, "InvalidSpec", "{message}");
        assert!(
            message.contains(&format!("Secret {}/{name}", w.ns.name()))
                && message.contains("127.0.0.1")
                && message.contains("plumb.dev/credential-hosts"),
            "{name}: {message}"
        );
        assert!(!message.contains(&password), "{message}");
    }
    assert_eq!(requests(), before, "the Git server saw a request");

    // Bound to the server's host: fetched with the credentials.
    secrets
        .patch(
            "unbound",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": {
                plumb_agent::policy::CREDENTIAL_HOSTS_ANNOTATION: format!("127.0.0.1:{}", servers.https_port())
            } } })),
        )
        .await?;
    sources
        .patch(
            "unbound",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": {
                RECONCILE_REQUEST_ANNOTATION: plumb_agent::status::now_rfc3339()
            } } })),
        )
        .await?;
    eventually("the bound source to be fetched", WAIT, || {
        let sources = sources.clone();
        let first = first.clone();
        async move {
            let gs = sources.get("unbound").await?;
            Ok(gs
                .status
                .and_then(|s| s.artifact)
                .filter(|a| a.commit == first)
                .map(|_| ()))
        }
    })
    .await?;
    assert!(requests() > before, "the access log counts requests");
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    Ok(())
}

#[tokio::test]
async fn plain_http_sources_need_insecure_and_say_so() -> Result<()> {
    use plumb_testsupport::git::GitServers;

    let servers = GitServers::start()?;
    let repo = servers.create_repo("plain")?;
    let wt = repo.work_tree()?;
    wt.write("app/cm.yaml", configmap("plain", "1"))?;
    let first = wt.commit("first", &Signing::None)?;
    wt.push()?;
    let url = servers.http_url("plain");
    let w = World::new("plain").await?;
    for (name, spec) in [
        ("refused", json!({ "url": url, "interval": "1h" })),
        (
            "with-creds",
            json!({ "url": url, "interval": "1h", "insecure": true, "secretRef": { "name": "x" } }),
        ),
        (
            "allowed",
            json!({ "url": url, "interval": "1h", "insecure": true }),
        ),
    ] {
        let gs: GitSource = serde_json::from_value(json!({
            "apiVersion": "plumb.dev/v1alpha1", "kind": "GitSource",
            "metadata": { "name": name }, "spec": spec
        }))?;
        w.sources().create(&PostParams::default(), &gs).await?;
    }
    let sources = w.sources();
    let (_, message) = wait_source_refused(&sources, "refused").await?;
    assert!(message.contains("plain http is not allowed"), "{message}");
    let (_, message) = wait_source_refused(&sources, "with-creds").await?;
    assert!(message.contains("clear text"), "{message}");
    eventually("the insecure source to be Ready", WAIT, || {
        let sources = sources.clone();
        let first = first.clone();
        async move {
            let st = sources.get("allowed").await?.status.unwrap_or_default();
            Ok(plumb_agent::status::ready(&st.conditions)
                .is_some_and(|c| {
                    c.status == "True"
                        && c.message.contains(&first)
                        && c.message.contains("insecure")
                })
                .then_some(()))
        }
    })
    .await?;
    w.stop().await;
    Ok(())
}

/// After a restart, range verification resumes from the agent's own ledger, not from the
/// GitSource's status: an unsigned commit pushed while no agent ran is found even when the
/// status is made to point past it.
#[tokio::test]
async fn a_restarted_agent_resumes_range_verification_from_its_ledger() -> Result<()> {
    let w = World::without_agent("ledger").await?;
    let ns = w.ns.name().to_owned();
    let signed = w.commit(
        &[("app/cm.yaml", &configmap("settings", "one"))],
        &w.signing,
    )?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    let with_ledger = |c: &mut AgentConfig| c.agent_namespace = Some(ns.clone());
    let (task, stop) = w.start_agent("first", with_ledger).await?;
    w.wait_applied("app", &signed).await?;
    let cms = w.configmaps();
    let key = format!("{ns}.repo");
    eventually("the ledger to record the verified commit", WAIT, || {
        let (cms, key, signed) = (cms.clone(), key.clone(), signed.clone());
        async move {
            Ok(cms
                .get_opt(plumb_agent::gitsource::VERIFIED_LEDGER)
                .await?
                .and_then(|c| c.data)
                .is_some_and(|d| d.get(&key) == Some(&signed))
                .then_some(()))
        }
    })
    .await?;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), task).await;

    // While no agent runs: an unsigned commit, a signed one on top, and a status that names
    // the unsigned one as if it had been verified.
    let unsigned = w.commit(
        &[("app/cm.yaml", &configmap("settings", "two"))],
        &Signing::None,
    )?;
    w.commit(
        &[("app/cm.yaml", &configmap("settings", "three"))],
        &w.signing,
    )?;
    let patch = json!({ "status": { "artifact": {
        "revision": format!("main@sha1:{unsigned}"), "commit": unsigned
    } } });
    w.sources()
        .patch_status("repo", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;

    let (task, stop) = w.start_agent("second", with_ledger).await?;
    let sources = w.sources();
    eventually(
        "the restarted agent to reject the unsigned commit",
        WAIT,
        || {
            let sources = sources.clone();
            let unsigned = unsigned.clone();
            async move {
                let st = sources.get("repo").await?.status.unwrap_or_default();
                Ok(plumb_agent::status::ready(&st.conditions)
                    .is_some_and(|c| c.status == "False" && c.message.contains(&unsigned))
                    .then_some(()))
            }
        },
    )
    .await?;
    let cm = w.configmaps().get("settings").await?;
    assert_eq!(cm.data.unwrap_or_default()["value"], "one");
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    Ok(())
}

// ---- health waits: healing during them, towards the newest revision, and cancelling them ----

/// A Deployment whose pods fit no node: it never becomes Available (with `replicas > 0`), so a
/// health wait for it lasts its whole timeout. Independent of node readiness.
fn stuck_deployment(name: &str, replicas: u32) -> String {
    deployment(name, replicas).replace(
        "      containers:",
        "      nodeSelector: {plumb.dev/nowhere: \"true\"}\n      containers:",
    )
}

/// A Sync of `app/` that waits for health, pruning.
fn waiting_sync(timeout: &str) -> serde_json::Value {
    json!({
        "sourceRef": { "name": "repo" }, "path": "app", "prune": true, "interval": "1h",
        "wait": true, "timeout": timeout
    })
}

impl World {
    /// Waits until Sync `sync` is applying `commit` (written or being written, health awaited)
    /// and not Ready with it.
    async fn wait_applying(&self, sync: &str, commit: &str) -> Result<()> {
        let syncs = self.syncs();
        eventually(
            &format!("Sync {sync} to be applying {commit}"),
            WAIT,
            || {
                let syncs = syncs.clone();
                async move {
                    let st = syncs.get(sync).await?.status.unwrap_or_default();
                    Ok(applying(&st, commit).then_some(()))
                }
            },
        )
        .await
    }

    /// Asks for a reconcile of Sync `sync` (what `plumb reconcile sync` does).
    async fn request_reconcile(&self, sync: &str) -> Result<String> {
        let token = format!("{}-{}", plumb_agent::status::now_rfc3339(), sync);
        let patch =
            json!({ "metadata": { "annotations": { RECONCILE_REQUEST_ANNOTATION: &token } } });
        self.syncs()
            .patch(sync, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(token)
    }

    /// Waits until Sync `sync` is gone (its finalizer removed).
    async fn wait_sync_gone(&self, sync: &str, within: Duration) -> Result<()> {
        let syncs = self.syncs();
        eventually(&format!("Sync {sync} to be gone"), within, || {
            let syncs = syncs.clone();
            async move { Ok(syncs.get_opt(sync).await?.is_none().then_some(())) }
        })
        .await
    }

    /// Proof that the drift watch has handled every ConfigMap change made before the call: a
    /// ConfigMap `control` of another Sync is edited and healed, twice. The watch of a kind
    /// delivers its events in order, so a check an earlier change started has run by then.
    async fn drift_watch_caught_up(&self) -> Result<()> {
        for round in ["one", "two"] {
            self.edit_by_hand("control", &format!("proof {round}"))
                .await?;
            self.wait_value("control", "1").await?;
        }
        Ok(())
    }

    /// The Events of this namespace about `name` with `reason`: their notes.
    async fn events(&self, name: &str, reason: &str) -> Result<Vec<String>> {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), self.ns.name());
        Ok(events
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter_map(|e| e.note)
            .collect())
    }
}

/// Whether the status says `commit` is being applied (Reconciling, attempted) and not Ready.
fn applying(st: &plumb_agent::api::SyncStatus, commit: &str) -> bool {
    let progressing = st.conditions.iter().any(|c| {
        c.type_ == "Reconciling"
            && c.status == "True"
            && c.reason == "Progressing"
            && c.message.contains(commit)
    });
    let attempted = st
        .last_attempted_revision
        .as_deref()
        .is_some_and(|r| r.ends_with(commit));
    let applied = st
        .last_applied_revision
        .as_deref()
        .is_some_and(|r| r.ends_with(commit));
    progressing && attempted && !applied
}

/// Requests the agent sent (method and path) that name `resource/name`, watches aside.
fn requests_for(requests: &[String], resource_and_name: &str) -> Vec<String> {
    requests
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .filter(|r| {
            r.split('?')
                .next()
                .is_some_and(|path| path.ends_with(&format!("/{resource_and_name}")))
        })
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_change_during_a_health_wait_is_healed_at_once_towards_the_new_revision() -> Result<()> {
    let w = World::new("healwait").await?;
    let first = w.commit(&[("app/cm.yaml", &configmap("settings", "1"))], &w.signing)?;
    w.create_source("range").await?;
    w.create_sync_spec("app", waiting_sync("10m")).await?;
    w.wait_applied("app", &first).await?;

    // The next revision changes the ConfigMap and adds a Deployment that never becomes
    // healthy: its health wait lasts ten minutes.
    let second = w.commit(
        &[
            ("app/cm.yaml", &configmap("settings", "2")),
            ("app/stuck.yaml", &stuck_deployment("stuck", 1)),
        ],
        &w.signing,
    )?;
    w.poke_source().await?;
    w.wait_applying("app", &second).await?;
    w.wait_value("settings", "2").await?;

    // During the wait: a deleted object comes back and an edit is undone, at once and with the
    // new revision's content.
    w.configmaps()
        .delete("settings", &Default::default())
        .await?;
    w.wait_value("settings", "2").await?;
    w.edit_by_hand("settings", "edited during the wait").await?;
    w.wait_value("settings", "2").await?;
    let st = w.syncs().get("app").await?.status.unwrap_or_default();
    assert!(
        applying(&st, &second),
        "the health wait should still be running: {:#?}",
        st.conditions
    );
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_heal_after_a_failed_health_wait_sets_the_newest_revision_written() -> Result<()> {
    use kube::runtime::watcher;

    let w = World::new("healnewest").await?;
    // Revision A: no replicas, so healthy at once; B: three replicas that never become
    // available, with a short wait.
    let first = w.commit(&[("app/web.yaml", &stuck_deployment("web", 0))], &w.signing)?;
    w.create_source("range").await?;
    w.create_sync_spec("app", waiting_sync("5s")).await?;
    w.wait_applied("app", &first).await?;
    let second = w.commit(&[("app/web.yaml", &stuck_deployment("web", 3))], &w.signing)?;
    w.poke_source().await?;
    let syncs = w.syncs();
    eventually("B's health wait to time out", WAIT, || {
        let syncs = syncs.clone();
        let second = second.clone();
        async move {
            let st = syncs.get("app").await?.status.unwrap_or_default();
            let failed = plumb_agent::status::ready(&st.conditions)
                .is_some_and(|c| c.status == "False" && c.reason == "HealthCheckFailed");
            let attempted = st
                .last_attempted_revision
                .is_some_and(|r| r.ends_with(&second));
            Ok((failed && attempted).then_some(()))
        }
    })
    .await?;

    // Every value the Deployment's replicas take from now on.
    let deployments: Api<Deployment> = Api::namespaced(w.client.clone(), w.ns.name());
    let values = std::sync::Arc::new(std::sync::Mutex::new(Vec::<i32>::new()));
    let (synced_tx, synced_rx) = oneshot::channel::<()>();
    let recorder = {
        let values = values.clone();
        let stream = watcher(
            deployments.clone(),
            watcher::Config::default().fields("metadata.name=web"),
        );
        tokio::spawn(async move {
            use futures::StreamExt;
            let mut stream = std::pin::pin!(stream);
            let mut synced = Some(synced_tx);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = synced.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(watcher::Event::Apply(d)) if synced.is_none() => {
                        if let Some(r) = d.spec.and_then(|s| s.replicas) {
                            values.lock().unwrap().push(r);
                        }
                    }
                    _ => {}
                }
            }
        })
    };
    synced_rx.await?;
    deployments
        .patch_scale(
            "web",
            &PatchParams {
                field_manager: Some("kubectl".into()),
                ..Default::default()
            },
            &Patch::Merge(json!({ "spec": { "replicas": 7 } })),
        )
        .await?;
    let seen = eventually("the scale to be healed", WAIT, || {
        let values = values.clone();
        async move {
            let v = values.lock().unwrap().clone();
            let healed = v.iter().skip_while(|r| **r != 7).skip(1).any(|r| *r != 7);
            Ok(healed.then_some(v))
        }
    })
    .await?;
    recorder.abort();
    // Status updates repeat a value: the sequence of distinct values is what matters.
    let mut after_scale: Vec<i32> = seen.iter().copied().skip_while(|r| *r != 7).collect();
    after_scale.dedup();
    assert_eq!(
        after_scale.get(1),
        Some(&3),
        "the scale must be healed to B's replicas (3), never A's (0): {seen:?}"
    );
    assert!(
        !after_scale.contains(&0),
        "the Deployment was set back to revision A: {seen:?}"
    );
    w.stop().await;
    Ok(())
}

/// A Sync `app` whose first revision (returned) holds a ConfigMap and a Deployment that never
/// becomes healthy, with a ten-minute wait that is running when this returns.
async fn stuck_in_a_long_wait(w: &World) -> Result<String> {
    let first = w.commit(
        &[
            ("app/cm.yaml", &configmap("settings", "1")),
            ("app/stuck.yaml", &stuck_deployment("stuck", 1)),
        ],
        &w.signing,
    )?;
    w.create_source("range").await?;
    w.create_sync_spec("app", waiting_sync("10m")).await?;
    w.wait_applying("app", &first).await?;
    w.wait_value("settings", "1").await?;
    Ok(first)
}

#[tokio::test]
async fn a_new_revision_cancels_a_running_health_wait() -> Result<()> {
    let w = World::new("cancelrev").await?;
    let broken = stuck_in_a_long_wait(&w).await?;
    // The revert: the broken Deployment goes; applied long before the ten minutes are over.
    w.wt.remove("app/stuck.yaml")?;
    let revert = w.commit(&[("app/cm.yaml", &configmap("settings", "2"))], &w.signing)?;
    w.poke_source().await?;
    w.wait_applied("app", &revert).await?;
    w.wait_value("settings", "2").await?;
    let deployments: Api<Deployment> = Api::namespaced(w.client.clone(), w.ns.name());
    assert!(deployments.get_opt("stuck").await?.is_none(), "not pruned");
    let notes = w.events("app", "HealthCheckCancelled").await?;
    assert!(
        notes
            .iter()
            .any(|n| n.contains(&broken) && n.contains("new revision") && n.contains(&revert)),
        "{notes:?}"
    );
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_spec_change_cancels_a_running_health_wait() -> Result<()> {
    let w = World::new("cancelspec").await?;
    let first = stuck_in_a_long_wait(&w).await?;
    // Turning the wait off: the revision is applied again at once, without waiting.
    let sync = w
        .syncs()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "wait": false } })),
        )
        .await?;
    let sync_now = w.wait_applied("app", &first).await?;
    assert_eq!(
        sync_now.status.unwrap_or_default().observed_generation,
        sync.metadata.generation
    );
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_reconcile_request_cancels_a_running_health_wait() -> Result<()> {
    let (client, requests) = recording_client(kube::Config::infer().await?)?;
    let w = World::with_agent_client("cancelreq", Some(client)).await?;
    stuck_in_a_long_wait(&w).await?;
    requests.lock().unwrap().clear();
    w.request_reconcile("app").await?;
    // A request applies everything again, each object dry-run first: long before the running
    // wait's ten minutes are over.
    eventually(
        "the requested apply to dry-run the Deployment",
        WAIT,
        || {
            let requests = requests.clone();
            async move {
                let seen = requests.lock().unwrap().clone();
                Ok(requests_for(&seen, "deployments/stuck")
                    .iter()
                    .any(|r| r.starts_with("PATCH") && r.contains("dryRun"))
                    .then_some(()))
            }
        },
    )
    .await?;
    w.stop().await;
    Ok(())
}

// ---- deletion ----

#[tokio::test]
async fn a_deleted_sync_with_prune_deletes_its_objects_and_is_healed_no_more() -> Result<()> {
    let (client, requests) = recording_client(kube::Config::infer().await?)?;
    let w = World::with_agent_client("delprune", Some(client)).await?;
    w.commit(
        &[("control/cm.yaml", &configmap("control", "1"))],
        &w.signing,
    )?;
    stuck_in_a_long_wait(&w).await?;
    w.create_sync_spec(
        "control",
        json!({ "sourceRef": { "name": "repo" }, "path": "control", "interval": "1h" }),
    )
    .await?;
    w.wait_value("control", "1").await?;
    let sync = w.syncs().get("app").await?;
    assert!(
        sync.metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == plumb_agent::finalize::FINALIZER),
        "{:?}",
        sync.metadata.finalizers
    );

    // Deleted during its ten-minute health wait: cleaned up at once.
    w.syncs().delete("app", &Default::default()).await?;
    w.wait_sync_gone("app", WAIT).await?;
    let deployments: Api<Deployment> = Api::namespaced(w.client.clone(), w.ns.name());
    assert!(w.configmaps().get_opt("settings").await?.is_none());
    assert!(deployments.get_opt("stuck").await?.is_none());
    let notes = w.events("app", "ObjectsDeleted").await?;
    assert!(notes.iter().any(|n| n.contains("2 pruned")), "{notes:?}");

    // The deletions were the last word: the drift watch re-created nothing.
    let mark = requests.lock().unwrap().len();
    w.drift_watch_caught_up().await?;
    let after = requests.lock().unwrap()[mark..].to_vec();
    assert!(
        requests_for(&after, "configmaps/settings").is_empty(),
        "{after:#?}"
    );
    assert!(w.configmaps().get_opt("settings").await?.is_none());
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_deleted_sync_without_prune_leaves_its_objects_and_is_healed_no_more() -> Result<()> {
    let (client, requests) = recording_client(kube::Config::infer().await?)?;
    let w = World::with_agent_client("delorphan", Some(client)).await?;
    let first = w.commit(
        &[
            ("app/cm.yaml", &configmap("kept", "1")),
            ("control/cm.yaml", &configmap("control", "1")),
        ],
        &w.signing,
    )?;
    w.create_source("range").await?;
    w.create_sync_spec(
        "app",
        json!({ "sourceRef": { "name": "repo" }, "path": "app", "interval": "1h" }),
    )
    .await?;
    w.create_sync_spec(
        "control",
        json!({ "sourceRef": { "name": "repo" }, "path": "control", "interval": "1h" }),
    )
    .await?;
    w.wait_applied("app", &first).await?;
    w.wait_applied("control", &first).await?;

    w.syncs().delete("app", &Default::default()).await?;
    w.wait_sync_gone("app", WAIT).await?;
    let kept = w.configmaps().get("kept").await?;
    assert_eq!(
        kept.metadata.labels.unwrap_or_default()[plumb_core::SYNC_NAME_LABEL],
        "app",
        "orphaned objects are left as they are, labels included"
    );
    let notes = w.events("app", "ObjectsOrphaned").await?;
    assert!(
        notes.iter().any(|n| n.contains("prune: false")),
        "{notes:?}"
    );

    // An edit of the orphan is not healed: no request for it, and it keeps the edit.
    w.edit_by_hand("kept", "mine now").await?;
    let mark = requests.lock().unwrap().len();
    w.drift_watch_caught_up().await?;
    let after = requests.lock().unwrap()[mark..].to_vec();
    assert!(
        requests_for(&after, "configmaps/kept").is_empty(),
        "the orphan was checked or healed: {after:#?}"
    );
    w.wait_value("kept", "mine now").await?;
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_sync_whose_objects_cannot_be_deleted_gives_up_and_lets_its_namespace_go() -> Result<()> {
    let w = World::new("delstuck").await?;
    let ns = w.ns.name().to_owned();
    // The Sync applies as an account that may write ConfigMaps but not delete them.
    let objects: Vec<serde_json::Value> = vec![
        json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "writer" } }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": { "name": "writer" },
            "rules": [{ "apiGroups": [""], "resources": ["configmaps"],
                        "verbs": ["get", "list", "watch", "create", "patch", "update"] }]
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": { "name": "writer" },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "writer" },
            "subjects": [{ "kind": "ServiceAccount", "name": "writer", "namespace": ns }]
        }),
    ];
    for o in objects {
        let o: kube::api::DynamicObject = serde_json::from_value(o)?;
        let gvk = kube::api::GroupVersionKind::try_from(o.types.as_ref().unwrap())?;
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
            w.client.clone(),
            &ns,
            &kube::api::ApiResource::from_gvk(&gvk),
        );
        api.create(&PostParams::default(), &o).await?;
    }
    let first = w.commit(
        &[
            ("app/cm.yaml", &configmap("sticky", "1")),
            ("other/cm.yaml", &configmap("other", "1")),
        ],
        &w.signing,
    )?;
    w.create_source("range").await?;
    let spec = |path: &str| {
        json!({ "sourceRef": { "name": "repo" }, "path": path, "prune": true, "interval": "1h",
                "serviceAccountName": "writer" })
    };
    w.create_sync_spec("app", spec("app")).await?;
    w.create_sync_spec("other", spec("other")).await?;
    w.wait_applied("app", &first).await?;
    w.wait_applied("other", &first).await?;

    // Deleting the objects is forbidden: bounded retries, then the Sync goes and says what it
    // left behind.
    w.syncs().delete("app", &Default::default()).await?;
    w.wait_sync_gone("app", WAIT).await?;
    let notes = w.events("app", "DeletionIncomplete").await?;
    assert!(
        notes
            .iter()
            .any(|n| n.contains("sticky") && n.contains("forbidden")),
        "{notes:?}"
    );
    assert!(w.configmaps().get_opt("sticky").await?.is_some());

    // Deleting the namespace is not blocked by a Sync that cannot clean up either.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(w.client.clone());
    namespaces.delete(&ns, &Default::default()).await?;
    eventually(&format!("namespace {ns} to be deleted"), 2 * WAIT, || {
        let namespaces = namespaces.clone();
        let ns = ns.clone();
        async move { Ok(namespaces.get_opt(&ns).await?.is_none().then_some(())) }
    })
    .await?;
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_deleted_git_source_takes_its_artifacts_and_a_new_one_starts_afresh() -> Result<()> {
    let w = World::without_agent("delsource").await?;
    let ns = w.ns.name().to_owned();
    let first = w.commit(&[("app/cm.yaml", &configmap("settings", "1"))], &w.signing)?;
    let (task, stop) = w
        .start_agent("gs", |c| c.agent_namespace = Some(ns.clone()))
        .await?;
    w.create_source("range").await?;
    let sources = w.sources();
    eventually("the GitSource to store its artifact", WAIT, || {
        let sources = sources.clone();
        let first = first.clone();
        async move {
            let gs = sources.get("repo").await?;
            Ok(gs
                .status
                .and_then(|s| s.artifact)
                .filter(|a| a.commit == first)
                .map(|_| ()))
        }
    })
    .await?;
    let artifacts = w.cache_dir("gs").join("artifacts").join(&ns).join("repo");
    assert!(
        !files_under(&artifacts).is_empty(),
        "no artifact in {}",
        artifacts.display()
    );
    let ledger_entry = || {
        let cms = w.configmaps();
        let key = format!("{ns}.repo");
        async move {
            Ok::<_, anyhow::Error>(
                cms.get_opt(plumb_agent::gitsource::VERIFIED_LEDGER)
                    .await?
                    .and_then(|c| c.data)
                    .and_then(|mut d| d.remove(&key)),
            )
        }
    };
    assert_eq!(ledger_entry().await?.as_deref(), Some(first.as_str()));

    w.sources().delete("repo", &Default::default()).await?;
    eventually("the GitSource to be gone", WAIT, || {
        let sources = sources.clone();
        async move { Ok(sources.get_opt("repo").await?.is_none().then_some(())) }
    })
    .await?;
    assert!(!artifacts.exists(), "{:?}", files_under(&artifacts));
    assert_eq!(ledger_entry().await?, None);

    // A GitSource of the same name, on another repository (whose history does not hold the
    // first one's verified commit): verified from scratch, not refused as a rollback.
    let other = Repo::local("delsource-other")?;
    let other_wt = other.work_tree()?;
    other_wt.write("app/cm.yaml", configmap("settings", "other"))?;
    let fresh = other_wt.commit("other history", &w.signing)?;
    other_wt.push()?;
    let gs: GitSource = serde_json::from_value(json!({
        "apiVersion": "plumb.dev/v1alpha1", "kind": "GitSource",
        "metadata": { "name": "repo" },
        "spec": {
            "url": other.file_url(), "ref": { "branch": "main" }, "interval": "1h",
            "verify": { "mode": "range", "allowedSignersRef": { "name": "signers", "key": "allowed_signers" } }
        }
    }))?;
    sources.create(&PostParams::default(), &gs).await?;
    let (status, reason, message) = eventually("the new GitSource to be fetched", WAIT, || {
        let sources = sources.clone();
        async move { source_condition(&sources, "repo", "Ready").await }
    })
    .await?;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "Succeeded"),
        "{message}"
    );
    assert!(message.contains(&fresh), "{message}");
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    Ok(())
}

/// A second Sync with the same manifests does not take over (and then fight over) the first
/// one's objects: it reports the conflict naming the owner, until it adopts them explicitly.
#[tokio::test]
async fn a_second_sync_claiming_the_same_objects_is_refused_unless_it_adopts() -> Result<()> {
    let w = World::new("claim").await?;
    let first = w.commit(&[("app/cm.yaml", &configmap("settings", "v1"))], &w.signing)?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    w.wait_applied("app", &first).await?;
    w.create_sync("copy", "correct").await?;
    let syncs = w.syncs();
    let owner = format!("owned by sync {}/app", w.ns.name());
    eventually("the second Sync to report the conflict", WAIT, || {
        let (syncs, owner) = (syncs.clone(), owner.clone());
        async move {
            Ok(ready_condition(&syncs, "copy")
                .await?
                .filter(|(status, reason, message)| {
                    status == "False" && reason == "PlanFailed" && message.contains(&owner)
                })
                .map(|_| ()))
        }
    })
    .await?;
    let cm = w.configmaps().get("settings").await?;
    assert_eq!(
        cm.metadata.labels.unwrap_or_default()["plumb.dev/sync-name"],
        "app"
    );

    w.syncs()
        .patch(
            "copy",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "adopt": true } })),
        )
        .await?;
    w.wait_applied("copy", &first).await?;
    let cm = w.configmaps().get("settings").await?;
    assert_eq!(
        cm.metadata.labels.unwrap_or_default()["plumb.dev/sync-name"],
        "copy"
    );
    w.stop().await;
    Ok(())
}

/// Invalid durations (values the CRD's pattern lets through but that do not parse) are
/// reported in the status, not only in the agent's log, and nothing is applied.
#[tokio::test]
async fn invalid_durations_are_reported_in_the_status() -> Result<()> {
    let w = World::new("durations").await?;
    w.commit(&[("app/cm.yaml", &configmap("settings", "v1"))], &w.signing)?;
    let gs: GitSource = serde_json::from_value(json!({
        "apiVersion": "plumb.dev/v1alpha1", "kind": "GitSource",
        "metadata": { "name": "bad-interval" },
        "spec": { "url": w.url, "interval": "99999999999999999999h" }
    }))?;
    w.sources().create(&PostParams::default(), &gs).await?;
    let (reason, message) = wait_source_refused(&w.sources(), "bad-interval").await?;
    assert_eq!(reason, "InvalidSpec", "{message}");
    assert!(message.contains("spec.interval"), "{message}");

    w.create_source("range").await?;
    w.create_sync_spec(
        "app",
        json!({ "sourceRef": { "name": "repo" }, "path": "app", "timeout": "99999999999999999999s" }),
    )
    .await?;
    let syncs = w.syncs();
    eventually("the Sync to report its timeout", WAIT, || {
        let syncs = syncs.clone();
        async move {
            Ok(ready_condition(&syncs, "app")
                .await?
                .filter(|(status, reason, message)| {
                    status == "False" && reason == "InvalidSpec" && message.contains("spec.timeout")
                })
                .map(|_| ()))
        }
    })
    .await?;
    assert!(w.configmaps().get_opt("settings").await?.is_none());
    w.stop().await;
    Ok(())
}

/// An apply that fails after earlier stages were written says so (not "dry-run failed,
/// nothing was applied"), ends Reconciling, and its history entry names the signer.
#[tokio::test]
async fn a_failure_after_written_stages_says_what_was_written() -> Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

    let w = World::new("partial").await?;
    let group = format!("{}.plumb.test", w.ns.name());
    let crd = plumb_testsupport::kube::widget_crd_yaml(&group);
    // The Widget can only be validated once its CRD exists, i.e. after the first stage.
    let widget = format!(
        "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: big\n"
    );
    let commit = w.commit(
        &[("app/crd.yaml", &crd), ("app/widget.yaml", &widget)],
        &w.signing,
    )?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    let syncs = w.syncs();
    let failed = eventually("the Sync to fail on the Widget", WAIT, || {
        let syncs = syncs.clone();
        async move {
            let s = syncs.get("app").await?;
            let st = s.status.clone().unwrap_or_default();
            Ok(plumb_agent::status::ready(&st.conditions)
                .is_some_and(|c| c.status == "False" && c.reason != "DependencyNotReady")
                .then_some(s))
        }
    })
    .await?;
    let st = failed.status.unwrap_or_default();
    let ready = plumb_agent::status::ready(&st.conditions).expect("Ready");
    assert_eq!(ready.reason, "ApplyFailed", "{}", ready.message);
    assert!(
        ready.message.contains("1 object(s) failed to apply")
            && ready.message.contains("1 written")
            && ready.message.contains("Widget")
            && !ready.message.contains("nothing was applied"),
        "{}",
        ready.message
    );
    assert!(
        !st.conditions.iter().any(|c| c.type_ == "Reconciling"),
        "{:?}",
        st.conditions
    );
    // The Widget itself is invalid: retrying the same revision cannot help.
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == "Stalled" && c.status == "True")
    );
    let entry = &st.history[0];
    assert_eq!(entry.result, "failure");
    assert!(entry.revision.ends_with(&commit));
    assert!(
        entry
            .signer
            .as_deref()
            .is_some_and(|s| s.contains("alice@example.com")),
        "{entry:?}"
    );
    let crds: Api<CustomResourceDefinition> = Api::all(w.client.clone());
    let _ = crds
        .delete(&format!("widgets.{group}"), &Default::default())
        .await;
    w.stop().await;
    Ok(())
}

/// A fetch that finds nothing new still verifies (and records the signer of) the tip, so a
/// later apply of the same revision keeps the signer in its history entry.
#[tokio::test]
async fn a_retry_of_the_same_revision_keeps_the_signer_in_history() -> Result<()> {
    let w = World::new("resigned").await?;
    let first = w.commit(&[("app/cm.yaml", &configmap("settings", "v1"))], &w.signing)?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    w.wait_applied("app", &first).await?;
    // The source fetches again: nothing new in range mode.
    let before = w
        .sources()
        .get("repo")
        .await?
        .status
        .and_then(|s| s.last_fetch_time);
    w.poke_source().await?;
    let sources = w.sources();
    eventually("the GitSource to fetch again", WAIT, || {
        let (sources, before) = (sources.clone(), before.clone());
        async move {
            let st = sources.get("repo").await?.status.unwrap_or_default();
            Ok((st.last_fetch_time != before).then_some(()))
        }
    })
    .await?;
    let artifact = w
        .sources()
        .get("repo")
        .await?
        .status
        .unwrap_or_default()
        .artifact;
    assert!(
        artifact
            .as_ref()
            .and_then(|a| a.signer.as_deref())
            .is_some_and(|s| s.contains("alice")),
        "{artifact:?}"
    );
    // And the Sync applies the same revision again on request.
    let patch = json!({ "metadata": { "annotations": {
        RECONCILE_REQUEST_ANNOTATION: plumb_agent::status::now_rfc3339()
    } } });
    w.syncs()
        .patch("app", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let syncs = w.syncs();
    let st = eventually("a second history entry", WAIT, || {
        let syncs = syncs.clone();
        async move {
            let st = syncs.get("app").await?.status.unwrap_or_default();
            Ok((st.history.len() >= 2).then_some(st))
        }
    })
    .await?;
    assert!(
        st.history[0]
            .signer
            .as_deref()
            .is_some_and(|s| s.contains("alice")),
        "{:?}",
        st.history[0]
    );
    w.stop().await;
    Ok(())
}

/// A client that tracks how many of its requests are in flight, and the most at once.
fn concurrency_client(
    config: kube::Config,
) -> Result<(Client, std::sync::Arc<std::sync::atomic::AtomicUsize>)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let now = std::sync::Arc::new(AtomicUsize::new(0));
    let peak = std::sync::Arc::new(AtomicUsize::new(0));
    let (up, down, top) = (now.clone(), now, peak.clone());
    let enter = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        let n = up.fetch_add(1, Ordering::SeqCst) + 1;
        top.fetch_max(n, Ordering::SeqCst);
        req
    });
    let leave = tower::util::MapResultLayer::new(move |result| {
        down.fetch_sub(1, Ordering::SeqCst);
        result
    });
    let client = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&leave)
        .with_layer(&enter)
        .build();
    Ok((client, peak))
}

/// Deleting 120 managed objects at once starts a drift check for each: they are healed, but
/// never with more than a bounded number of requests in flight at a time.
#[tokio::test]
async fn a_mass_deletion_is_healed_with_bounded_concurrency() -> Result<()> {
    let (client, peak) = concurrency_client(kube::Config::infer().await?)?;
    let w = World::with_agent_client("mass", Some(client)).await?;
    let files: Vec<(String, String)> = (0..120)
        .map(|i| {
            (
                format!("app/cm-{i:03}.yaml"),
                configmap(&format!("cm-{i:03}"), "1"),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let first = w.commit(&refs, &w.signing)?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    w.wait_applied("app", &first).await?;
    peak.store(0, std::sync::atomic::Ordering::SeqCst);
    w.configmaps()
        .delete_collection(
            &Default::default(),
            &kube::api::ListParams::default().labels("plumb.dev/sync-name=app"),
        )
        .await?;
    for i in [0, 60, 119] {
        w.wait_value(&format!("cm-{i:03}"), "1").await?;
    }
    let cms = w.configmaps();
    eventually("all 120 ConfigMaps to be back", WAIT, || {
        let cms = cms.clone();
        async move {
            let n = cms
                .list(&kube::api::ListParams::default().labels("plumb.dev/sync-name=app"))
                .await?
                .items
                .len();
            Ok((n == 120).then_some(()))
        }
    })
    .await?;
    let most = peak.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("at most {most} requests in flight");
    // 16 checks, plus the agent's watches, lease and status traffic.
    assert!(most <= 24, "{most} requests were in flight at once");
    w.stop().await;
    Ok(())
}
