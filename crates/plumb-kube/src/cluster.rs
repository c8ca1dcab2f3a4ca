//! The effects the engine has on a cluster, behind one narrow trait: discover kinds, read,
//! list, apply (server-side, optionally dry-run and forced), create (hook objects), delete with
//! a uid precondition,
//! wait for a CRD. [`KubeCluster`] is the real one over a `kube::Client`; the engine's unit
//! tests run its safety rules against an in-memory one.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::BoxStream;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, Preconditions,
    PropagationPolicy, TypeMeta,
};
use kube::discovery::Discovery;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::Value;

use crate::discovery::{Kinds, Resolved};
use crate::error::{Error, Result};

/// The field manager Plumb applies with.
pub const FIELD_MANAGER: &str = "plumb";

/// How an apply is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApplyMode {
    /// Take over fields other managers own.
    pub force: bool,
    /// Validate only: the server answers what it would store, and stores nothing.
    pub dry_run: bool,
}

/// One page of a LIST.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The objects, each with `apiVersion` and `kind` set.
    pub items: Vec<Value>,
    /// The token for the next page, if any.
    pub continue_token: Option<String>,
}

/// What a watch of one kind reports ([`Cluster::watch`]).
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// A listing starts (the first one, or again after the watch lost its place): until
    /// [`WatchEvent::Listed`], the [`WatchEvent::Present`] events are the whole current state.
    Listing,
    /// The object exists as given (listed, created or changed), with `apiVersion` and `kind`.
    Present(Value),
    /// The listing is complete: an object it did not report does not exist.
    Listed,
    /// The object was deleted.
    Deleted(Value),
}

/// Which objects of a kind a watch reports: those whose labels match `labels` and whose fields
/// match `fields` (selectors as the API spells them; `None`: any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// A label selector, e.g. `plumb.dev/sync-name=web,plumb.dev/sync-namespace=apps`.
    pub labels: Option<String>,
    /// A field selector, e.g. `metadata.name=web`.
    pub fields: Option<String>,
}

/// The events of a watch. An error does not end it: it lists again (after a backoff) and goes
/// on; errors are reported so that the caller can tell a refusal from a transient failure.
pub type WatchStream = BoxStream<'static, Result<WatchEvent, kube::Error>>;

/// What the engine asks of a cluster. Every method is one request (or one watch, for the
/// CRD wait and [`Cluster::watch`]); errors are the API's own, so that their kind and
/// retryability survive.
pub trait Cluster: Send + Sync {
    /// Every kind the API server serves.
    fn discover(&self) -> impl Future<Output = Result<Kinds>> + Send;

    /// The object `name` of `kind` (in `namespace` when namespaced), if it exists.
    fn get(
        &self,
        kind: &Resolved,
        namespace: Option<&str>,
        name: &str,
    ) -> impl Future<Output = Result<Option<Value>, kube::Error>> + Send;

    /// One page of at most `limit` objects of `kind` in `namespace` (all namespaces: `None`),
    /// only those matching the equality-based label selector `labels` when given.
    fn list(
        &self,
        kind: &Resolved,
        namespace: Option<&str>,
        labels: Option<&str>,
        limit: u32,
        continue_token: Option<&str>,
    ) -> impl Future<Output = Result<Page, kube::Error>> + Send;

    /// Server-side apply of `body` as [`FIELD_MANAGER`]; returns the object as the server
    /// stored it (or would store it, on a dry run).
    fn apply(
        &self,
        kind: &Resolved,
        namespace: Option<&str>,
        name: &str,
        body: &Value,
        mode: ApplyMode,
    ) -> impl Future<Output = Result<Value, kube::Error>> + Send;

    /// Creates `body` (a POST, as [`FIELD_MANAGER`]; never an apply over an existing object):
    /// how hook objects are run, `metadata.generateName` included (the server names it).
    /// Returns the object as the server stored it (or would, on a dry run).
    fn create(
        &self,
        kind: &Resolved,
        namespace: Option<&str>,
        body: &Value,
        dry_run: bool,
    ) -> impl Future<Output = Result<Value, kube::Error>> + Send;

    /// Deletes the object in the background, only if its uid is still `uid` (when given).
    fn delete(
        &self,
        kind: &Resolved,
        namespace: Option<&str>,
        name: &str,
        uid: Option<&str>,
    ) -> impl Future<Output = Result<(), kube::Error>> + Send;

    /// Waits until the CustomResourceDefinition `name` is Established, at most `timeout`.
    fn await_crd_established(
        &self,
        name: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Watches the objects of `kind` in `namespace` (all namespaces: `None`) that `selector`
    /// selects: one LIST, then one WATCH from the list's resourceVersion (again after an error).
    fn watch(&self, kind: &Resolved, namespace: Option<&str>, selector: &Selector) -> WatchStream;
}

/// The real cluster, over a `kube::Client`.
#[derive(Clone)]
pub struct KubeCluster {
    client: Client,
}

impl KubeCluster {
    /// The cluster `client` talks to.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn api(&self, r: &Resolved, namespace: Option<&str>) -> Api<DynamicObject> {
        match (r.namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &r.resource),
            _ => Api::all_with(self.client.clone(), &r.resource),
        }
    }
}

impl Cluster for KubeCluster {
    async fn discover(&self) -> Result<Kinds> {
        let discovery = Discovery::new(self.client.clone())
            .run_aggregated()
            .await
            .map_err(Error::Discovery)?;
        Ok(Kinds::from_discovery(&discovery))
    }

    async fn get(
        &self,
        kind: &Resolved,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, kube::Error> {
        Ok(self.api(kind, namespace).get_opt(name).await?.map(to_value))
    }

    async fn list(
        &self,
        kind: &Resolved,
        namespace: Option<&str>,
        labels: Option<&str>,
        limit: u32,
        continue_token: Option<&str>,
    ) -> Result<Page, kube::Error> {
        let mut params = ListParams::default().limit(limit);
        if let Some(token) = continue_token {
            params = params.continue_token(token);
        }
        if let Some(labels) = labels {
            params = params.labels(labels);
        }
        let page = self.api(kind, namespace).list(&params).await?;
        let items = page
            .items
            .into_iter()
            .map(|mut obj| {
                // Listed items come without apiVersion and kind (kube-rs#946).
                obj.types = Some(TypeMeta {
                    api_version: kind.resource.api_version.clone(),
                    kind: kind.resource.kind.clone(),
                });
                to_value(obj)
            })
            .collect();
        Ok(Page {
            items,
            continue_token: page.metadata.continue_.filter(|c| !c.is_empty()),
        })
    }

    async fn apply(
        &self,
        kind: &Resolved,
        namespace: Option<&str>,
        name: &str,
        body: &Value,
        mode: ApplyMode,
    ) -> Result<Value, kube::Error> {
        let mut params = PatchParams::apply(FIELD_MANAGER);
        if mode.force {
            params = params.force();
        }
        if mode.dry_run {
            params = params.dry_run();
        }
        let obj = self
            .api(kind, namespace)
            .patch(name, &params, &Patch::Apply(body))
            .await?;
        Ok(to_value(obj))
    }

    async fn create(
        &self,
        kind: &Resolved,
        namespace: Option<&str>,
        body: &Value,
        dry_run: bool,
    ) -> Result<Value, kube::Error> {
        let params = PostParams {
            dry_run,
            field_manager: Some(FIELD_MANAGER.to_owned()),
        };
        let obj: DynamicObject =
            serde_json::from_value(body.clone()).map_err(kube::Error::SerdeError)?;
        let created = self.api(kind, namespace).create(&params, &obj).await?;
        Ok(to_value(created))
    }

    async fn delete(
        &self,
        kind: &Resolved,
        namespace: Option<&str>,
        name: &str,
        uid: Option<&str>,
    ) -> Result<(), kube::Error> {
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: Some(Preconditions {
                uid: uid.map(str::to_owned),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        self.api(kind, namespace).delete(name, &params).await?;
        Ok(())
    }

    async fn await_crd_established(&self, name: &str, timeout: Duration) -> Result<()> {
        await_crds_established(&self.client, &[name], timeout).await
    }

    fn watch(&self, kind: &Resolved, namespace: Option<&str>, selector: &Selector) -> WatchStream {
        let mut config = watcher::Config::default();
        if let Some(labels) = &selector.labels {
            config = config.labels(labels);
        }
        if let Some(fields) = &selector.fields {
            config = config.fields(fields);
        }
        let types = TypeMeta {
            api_version: kind.resource.api_version.clone(),
            kind: kind.resource.kind.clone(),
        };
        let value = move |mut obj: DynamicObject| {
            // Listed items come without apiVersion and kind (kube-rs#946); health needs them.
            obj.types = Some(types.clone());
            to_value(obj)
        };
        watcher::watcher(self.api(kind, namespace), config)
            .default_backoff()
            .map(move |event| match event {
                Ok(watcher::Event::Init) => Ok(WatchEvent::Listing),
                Ok(watcher::Event::InitApply(obj) | watcher::Event::Apply(obj)) => {
                    Ok(WatchEvent::Present(value(obj)))
                }
                Ok(watcher::Event::InitDone) => Ok(WatchEvent::Listed),
                Ok(watcher::Event::Delete(obj)) => Ok(WatchEvent::Deleted(value(obj))),
                Err(e) => Err(watch_error(e)),
            })
            .boxed()
    }
}

/// The API error behind a watcher's error.
fn watch_error(e: watcher::Error) -> kube::Error {
    match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        watcher::Error::WatchError(status) => kube::Error::Api(status),
        other @ watcher::Error::NoResourceVersion => kube::Error::Service(Box::new(other)),
    }
}

/// Waits until every CustomResourceDefinition in `names` is Established (a watch each, no
/// polling), at most `timeout` in all.
pub async fn await_crds_established(
    client: &Client,
    names: &[&str],
    timeout: Duration,
) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let waits = names.iter().map(|name| {
        let api = api.clone();
        async move {
            await_condition(api, name, conditions::is_crd_established())
                .await
                .map(|_| ())
                .map_err(|e| Error::Watch {
                    context: format!("watching CustomResourceDefinition {name}"),
                    source: e,
                })
        }
    });
    match tokio::time::timeout(timeout, futures::future::try_join_all(waits)).await {
        Ok(done) => done.map(|_| ()),
        Err(_) => Err(Error::Timeout {
            what: format!(
                "CustomResourceDefinition {} to become Established",
                names.join(", ")
            ),
            seconds: timeout.as_secs(),
        }),
    }
}

fn to_value(obj: DynamicObject) -> Value {
    serde_json::to_value(obj).expect("a DynamicObject always serialises to JSON")
}
