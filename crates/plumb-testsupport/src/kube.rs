//! Kubernetes helpers for tests: a client for the test cluster and throw-away namespaces.
//!
//! The cluster is the one `KUBECONFIG` points at: `scripts/test` starts the local control plane
//! (`scripts/testenv up`) and exports it, or, with `PLUMB_TEST_USE_EXISTING=1`, keeps the user's
//! own cluster (kind, k3d). Tests that need a cluster fail with a clear message when there is none.
//! Drills that kill parts of the control plane start one of their own: [`PrivateControlPlane`].

use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use rand::Rng;

mod private;

pub use private::{Component, PlaneOptions, PrivateControlPlane};

/// A client for the test cluster named by `KUBECONFIG`.
pub async fn client() -> Result<Client> {
    if std::env::var_os("KUBECONFIG").is_none() {
        bail!(
            "KUBECONFIG is not set: run the tests with scripts/test, or `eval $(scripts/testenv env)` \
             after `scripts/testenv up`"
        );
    }
    let config = kube::Config::infer()
        .await
        .context("reading the kubeconfig named by KUBECONFIG")?;
    Client::try_from(config).context("building a client for the test cluster")
}

/// A namespace of its own for one test, named `plumb-test-<prefix>-<random>`.
///
/// Dropping it deletes the namespace (without waiting for it to be gone), so a failing test
/// cleans up too. Label `plumb.dev/test=true` marks it so leftovers can be found.
pub struct TestNamespace {
    name: String,
}

impl TestNamespace {
    /// Creates a fresh namespace.
    pub async fn create(client: &Client, prefix: &str) -> Result<Self> {
        let suffix: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(6)
            .map(|c| char::from(c).to_ascii_lowercase())
            .collect();
        let name = format!("plumb-test-{prefix}-{suffix}");
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "plumb.dev/test": "true" } }
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating test namespace {name}"))?;
        Ok(Self { name })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot be async and may run inside a runtime that is shutting down: delete from
        // a thread of its own, with a client (and connections) of its own.
        let deleted = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let client = client().await?;
                match tokio::time::timeout(
                    Duration::from_secs(10),
                    Api::<Namespace>::all(client.clone())
                        .delete(&name, &DeleteParams::background()),
                )
                .await?
                {
                    // The test deleted it itself.
                    Err(kube::Error::Api(e)) if e.code == 404 => return anyhow::Ok(()),
                    other => other?,
                };
                tokio::time::timeout(
                    Duration::from_secs(10),
                    release_plumb_finalizers(&client, &name),
                )
                .await??;
                anyhow::Ok(())
            })
        })
        .join();
        if let Ok(Err(e)) = deleted {
            eprintln!(
                "warning: could not delete test namespace {}: {e}",
                self.name
            );
        }
    }
}

/// Removes the finalizers of Plumb's objects (Syncs, GitSources, ChartSources) in `namespace`:
/// a test's agent has stopped by the time its namespace goes, and nothing else would let them
/// go. Kinds that are not installed are skipped.
pub async fn release_plumb_finalizers(client: &Client, namespace: &str) -> Result<()> {
    use kube::api::{ApiResource, GroupVersionKind};
    for kind in ["Sync", "GitSource", "ChartSource"] {
        let gvk = GroupVersionKind::gvk("plumb.dev", "v1alpha1", kind);
        release_finalizers(&Api::namespaced_with(
            client.clone(),
            namespace,
            &ApiResource::from_gvk(&gvk),
        ))
        .await?;
    }
    Ok(())
}

/// Removes the finalizers of every object of `api` (nothing when its kind is not installed).
pub async fn release_finalizers(api: &Api<kube::api::DynamicObject>) -> Result<()> {
    use kube::api::{ListParams, Patch, PatchParams};
    let objects = match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for obj in objects {
        let Some(name) = obj.metadata.name.as_deref() else {
            continue;
        };
        if obj
            .metadata
            .finalizers
            .as_ref()
            .is_none_or(|f| f.is_empty())
        {
            continue;
        }
        let patch = Patch::Merge(serde_json::json!({ "metadata": { "finalizers": null } }));
        match api.patch(name, &PatchParams::default(), &patch).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Applies every CustomResourceDefinition in the multi-document YAML file `path` (server-side
/// apply) and waits until each is Established.
pub async fn apply_crds(client: &Client, path: &std::path::Path) -> Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::ResourceExt;
    use kube::api::{Patch, PatchParams};

    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
        .with_context(|| format!("parsing {}", path.display()))?;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        let crd: CustomResourceDefinition = serde_json::from_value(doc)?;
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply("plumb-test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("applying CRD {name}"))?;
        let established = kube::runtime::wait::await_condition(
            api.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .with_context(|| format!("CRD {name} was not Established within 30s"))?
            .with_context(|| format!("watching CRD {name}"))?;
    }
    Ok(())
}

/// Polls `check` every 200 ms until it returns `Some`, or fails after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if tokio::time::Instant::now() > deadline {
            match last_error {
                Some(e) => {
                    bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A namespaced CRD `widgets.<group>` (kind `Widget`, `spec.size` an integer), for tests of
/// custom resources applied together with their CRD. Use a group unique to the test (CRDs are
/// cluster-scoped), e.g. `<test namespace>.plumb.test`.
pub fn widget_crd_yaml(group: &str) -> String {
    format!(
        "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.{group}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {{type: integer}}
"
    )
}

/// A client for `config` that records `METHOD URI` of every request it sends, for tests that
/// count what a component asks of the API server.
pub fn recording_client(
    config: kube::Config,
) -> Result<(Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>)> {
    let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let recorder = requests.clone();
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        recorder
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(format!("{} {}", req.method(), req.uri()));
        req
    });
    let client = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&layer)
        .build();
    Ok((client, requests))
}
