//! One test world for Plumb's agent tests: a namespace on the test control plane with the Plumb
//! CRDs installed, a Git repository whose commits an allowed signer signs, builders for
//! GitSource and Sync objects, waits for what the agent does, and a directory for the agents'
//! caches and logs.
//!
//! The agent runs behind one handle ([`Agent`]), started by a [`Launcher`]: as a `plumb agent`
//! process ([`Process`], here), or in-process (the `plumb-agent` library; its launcher lives in
//! the plumb-agent tests, since this crate cannot depend on plumb-agent: plumb-agent
//! dev-depends on it).
//!
//! This crate knows Plumb's objects only as JSON (it cannot use plumb-agent's types): the waits
//! read `status` as JSON and hand the object back as whatever type the caller names, e.g.
//! `let sync: plumb_agent::api::Sync = w.wait_applied("app", &commit, WAIT).await?`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::git::{GitServers, KeyType, Repo, Signing, SshSigner, WorkTree};
use crate::kube::{PrivateControlPlane, TestNamespace, apply_crds, client, eventually};

mod agent;
mod objects;

pub use agent::{Agent, AgentProcess, AgentSpec, Launcher, Process, wait_healthy};
pub use objects::{GitSourceBuilder, SyncBuilder};

/// How long the waits without a timeout argument wait.
pub const WAIT: Duration = Duration::from_secs(60);
/// The annotation that asks the agent to reconcile an object now (its value: a time).
/// Must equal `plumb_agent::api::RECONCILE_REQUEST_ANNOTATION` (a plumb-agent test checks).
pub const RECONCILE_REQUEST_ANNOTATION: &str = "plumb.dev/reconcile-requested-at";
/// The annotation naming a GitSource's webhook receiver.
/// Must equal `plumb_agent::webhook::RECEIVER_ANNOTATION` (a plumb-agent test checks).
pub const RECEIVER_ANNOTATION: &str = "plumb.dev/receiver";
/// The ConfigMap (and its key) holding the allowed signers, in every world's namespace.
pub const SIGNERS: (&str, &str) = ("signers", "allowed_signers");
/// The API group and version of Plumb's objects.
pub const API_VERSION: &str = "plumb.dev/v1alpha1";

/// Where the world's repository lives, and so what URL its GitSources fetch.
#[derive(Clone, Copy)]
pub enum Remote<'a> {
    /// A local bare repository (`file://`): the agent needs `--allow-local-sources`.
    Local,
    /// A repository on these servers, fetched over plain http (`insecure: true`).
    Http(&'a GitServers),
}

/// A namespace with the CRDs, a repository with an allowed signer (`alice@example.com`, in the
/// ConfigMap [`SIGNERS`]), and a temporary directory. See the module docs.
///
/// On the shared control plane the namespace is deleted when the world is dropped: declare
/// agents after the world, so that they stop first.
pub struct World {
    client: Client,
    kubeconfig: PathBuf,
    ns: String,
    url: String,
    insecure: bool,
    wt: WorkTree,
    repo: Repo,
    signing: Signing,
    dir: tempfile::TempDir,
    /// On the shared control plane: deletes the namespace on drop.
    _ns: Option<TestNamespace>,
}

impl World {
    /// A world on the shared control plane (`KUBECONFIG`) with a local repository.
    pub async fn new(prefix: &str) -> Result<Self> {
        Self::with_remote(prefix, Remote::Local).await
    }

    /// A world on the shared control plane whose repository is at `remote`.
    pub async fn with_remote(prefix: &str, remote: Remote<'_>) -> Result<Self> {
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

    /// A world on a private control plane, with a local repository: its namespace
    /// (`plumb-test-<prefix>`) goes with the control plane.
    pub async fn private(plane: &PrivateControlPlane, prefix: &str) -> Result<Self> {
        Self::private_with_remote(plane, prefix, Remote::Local).await
    }

    /// A world on a private control plane whose repository is at `remote`.
    pub async fn private_with_remote(
        plane: &PrivateControlPlane,
        prefix: &str,
        remote: Remote<'_>,
    ) -> Result<Self> {
        let client = plane.client().await?;
        let ns = format!("plumb-test-{prefix}");
        let namespace: Namespace = serde_json::from_value(json!({ "metadata": { "name": ns } }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating namespace {ns}"))?;
        let kubeconfig = plane.kubeconfig().to_path_buf();
        Self::build(client, kubeconfig, ns, None, prefix, remote).await
    }

    async fn build(
        client: Client,
        kubeconfig: PathBuf,
        ns: String,
        guard: Option<TestNamespace>,
        prefix: &str,
        remote: Remote<'_>,
    ) -> Result<Self> {
        apply_crds(&client, &crds_path()).await?;
        let (repo, url, insecure) = match remote {
            Remote::Local => {
                let repo = Repo::local(prefix)?;
                let url = repo.file_url();
                (repo, url, false)
            }
            Remote::Http(servers) => (servers.create_repo(prefix)?, servers.http_url(prefix), true),
        };
        let wt = repo.work_tree()?;
        let alice = SshSigner::generate(KeyType::Ed25519, "alice@example.com")?;
        let signers: ConfigMap = serde_json::from_value(json!({
            "metadata": { "name": SIGNERS.0 },
            "data": { SIGNERS.1: format!("{}\n", alice.allowed_signers_line()) }
        }))?;
        Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &signers)
            .await
            .context("creating the allowed signers ConfigMap")?;
        let dir = tempfile::Builder::new().prefix("plumb-world-").tempdir()?;
        Ok(Self {
            client,
            kubeconfig,
            ns,
            url,
            insecure,
            wt,
            repo,
            signing: Signing::Ssh(alice),
            dir,
            _ns: guard,
        })
    }

    /// A client with admin rights on the world's control plane.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The kubeconfig of the world's control plane (for agent processes).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The world's namespace.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// The random part of the namespace name: unique per test run (on the shared plane).
    pub fn suffix(&self) -> &str {
        self.ns.rsplit('-').next().expect("a suffix")
    }

    /// The URL GitSources fetch the world's repository from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The world's bare repository.
    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    /// A clone of the repository (branch `main`) that commits and pushes.
    pub fn wt(&self) -> &WorkTree {
        &self.wt
    }

    /// Signs as the allowed signer (`alice@example.com`).
    pub fn signing(&self) -> &Signing {
        &self.signing
    }

    /// A temporary directory of the world's own (agents' caches and logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A typed API of the world's namespace, e.g. `w.api::<ConfigMap>()`.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// The world's ConfigMaps.
    pub fn configmaps(&self) -> Api<ConfigMap> {
        self.api()
    }

    /// Plumb's `kind` (`GitSource`, `Sync`) in the world's namespace, as JSON objects.
    pub fn plumb_api(&self, kind: &str) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("plumb.dev", "v1alpha1", kind);
        Api::namespaced_with(self.client.clone(), &self.ns, &ApiResource::from_gvk(&gvk))
    }

    /// Writes `files` (path, content) into the work tree, commits them signed with `signing`
    /// and pushes; returns the commit id.
    pub fn commit(&self, files: &[(&str, &str)], signing: &Signing) -> Result<String> {
        for (path, content) in files {
            self.wt.write(path, content)?;
        }
        let id = self.wt.commit("change", signing)?;
        self.wt.push()?;
        Ok(id)
    }

    /// A GitSource `name` of the world's repository, branch `main`, interval `1h` (so that only
    /// events drive it), `insecure` for a plain http remote.
    pub fn git_source(&self, name: &str) -> GitSourceBuilder {
        GitSourceBuilder::new(name, &self.url, self.insecure)
    }

    /// A Sync `name` of the GitSource `repo`'s `app/` directory, pruning, interval `1h`,
    /// correcting drift.
    pub fn sync(&self, name: &str) -> SyncBuilder {
        SyncBuilder::new(name)
    }

    /// Creates `object` (a manifest of Plumb's, e.g. from [`World::git_source`] or
    /// [`World::sync`]) in the world's namespace.
    pub async fn create(&self, object: impl Into<Value>) -> Result<()> {
        let object: Value = object.into();
        let kind = object["kind"].as_str().context("the object has no kind")?;
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let what = format!("creating {kind} {}/{name}", self.ns);
        let obj: DynamicObject = serde_json::from_value(object.clone())?;
        self.plumb_api(kind)
            .create(&PostParams::default(), &obj)
            .await
            .context(what)?;
        Ok(())
    }

    /// Creates the Secret of webhook receiver `receiver` (`type` `kind`: github, gitlab,
    /// generic) with `token`.
    pub async fn create_receiver(&self, receiver: &str, kind: &str, token: &str) -> Result<()> {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": { "name": format!("plumb-receiver-{receiver}") },
            "stringData": { "type": kind, "token": token },
        }))?;
        self.api::<Secret>()
            .create(&PostParams::default(), &secret)
            .await
            .with_context(|| format!("creating the Secret of receiver {receiver}"))?;
        Ok(())
    }

    /// Asks `kind` `name` to reconcile now (what `plumb reconcile` and a webhook do).
    pub async fn request_reconcile(&self, kind: &str, name: &str) -> Result<()> {
        let patch = json!({ "metadata": { "annotations": {
            RECONCILE_REQUEST_ANNOTATION: k8s_openapi::jiff::Timestamp::now().to_string()
        } } });
        self.plumb_api(kind)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("requesting a reconcile of {kind} {name}"))?;
        Ok(())
    }

    /// Asks the GitSource `repo` to fetch now.
    pub async fn poke_source(&self) -> Result<()> {
        self.request_reconcile("GitSource", "repo").await
    }

    /// Waits (up to `within`) until Sync `sync` is Ready with `commit` applied; returns it as
    /// `K`. On timeout the error shows the Sync's last applied revision and conditions.
    pub async fn wait_applied<K: DeserializeOwned>(
        &self,
        sync: &str,
        commit: &str,
        within: Duration,
    ) -> Result<K> {
        let syncs = self.plumb_api("Sync");
        let result = eventually(&format!("Sync {sync} to apply {commit}"), within, || {
            let syncs = syncs.clone();
            async move {
                let s = syncs.get(sync).await?;
                let applied = s.data["status"]["lastAppliedRevision"]
                    .as_str()
                    .is_some_and(|r| r.ends_with(commit));
                Ok((applied && condition_is(&s.data, "Ready", "True")).then_some(s))
            }
        })
        .await;
        match result {
            Ok(s) => Ok(serde_json::from_value(serde_json::to_value(s)?)?),
            Err(e) => {
                let status = syncs.get(sync).await.ok().map(|s| {
                    format!(
                        "lastAppliedRevision {}, conditions {:#}",
                        s.data["status"]["lastAppliedRevision"], s.data["status"]["conditions"]
                    )
                });
                Err(e.context(format!("Sync {sync}: {}", status.unwrap_or_default())))
            }
        }
    }

    /// Waits (up to `within`) until `kind` `name` has condition `type_` with `status`
    /// (`True`, `False`); returns the condition (type, status, reason, message, ...).
    pub async fn wait_condition(
        &self,
        kind: &str,
        name: &str,
        type_: &str,
        status: &str,
        within: Duration,
    ) -> Result<Value> {
        let api = self.plumb_api(kind);
        eventually(
            &format!("{kind} {name} to be {type_}={status}"),
            within,
            || {
                let api = api.clone();
                async move {
                    let obj = api.get(name).await?;
                    Ok(condition(&obj.data, type_).filter(|c| c["status"] == status))
                }
            },
        )
        .await
    }

    /// Waits until ConfigMap `name` holds `value` under the key `value`.
    pub async fn wait_value(&self, name: &str, value: &str) -> Result<()> {
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

    /// Changes ConfigMap `name`'s value the way `kubectl edit` does (another field manager).
    pub async fn edit_by_hand(&self, name: &str, value: &str) -> Result<()> {
        self.configmaps()
            .patch(
                name,
                &PatchParams {
                    field_manager: Some("kubectl-edit".into()),
                    ..Default::default()
                },
                &Patch::Merge(json!({ "data": { "value": value } })),
            )
            .await
            .with_context(|| format!("editing ConfigMap {name}"))?;
        Ok(())
    }

    /// Starts an agent for this world with `launcher` (see [`Launcher`]).
    pub async fn spawn<L: Launcher>(&self, launcher: &L, spec: AgentSpec) -> Result<L::Agent> {
        launcher.launch(self, spec).await
    }
}

/// The CRDs of `deploy/crds.yaml`.
pub fn crds_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds.yaml")
}

/// Condition `type_` in `object`'s `status.conditions`, if any.
pub fn condition(object: &Value, type_: &str) -> Option<Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// Whether `object` has condition `type_` with `status`.
pub fn condition_is(object: &Value, type_: &str, status: &str) -> bool {
    condition(object, type_).is_some_and(|c| c["status"] == status)
}
