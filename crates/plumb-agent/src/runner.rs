//! Runs the agent: HTTP endpoints, leader election, the GitSource, ChartSource and Sync controllers, the
//! drift watch; stops gracefully on a signal.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt, TryStreamExt};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::api::{ChartSource, GitSource, RECONCILE_REQUEST_ANNOTATION, Sync};
use crate::context::{AgentConfig, Context};
use crate::error::Error;
use crate::http::{HttpState, Readiness};
use crate::leader::LeaderElection;
use crate::metrics::Metrics;

/// Leader election settings.
#[derive(Debug, Clone)]
pub struct LeaderOptions {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// How long a lease lasts without renewal: the takeover time when a leader dies.
    pub lease_duration: Duration,
}

/// Everything `plumb agent` is configured with.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Reconciler settings.
    pub config: AgentConfig,
    /// Address of `/metrics`, `/healthz`, `/readyz`.
    pub metrics_addr: Option<SocketAddr>,
    /// Address of the webhook receiver (`POST /hook/<receiver>` only; metrics and health stay
    /// on `metrics_addr`).
    pub webhook_addr: Option<SocketAddr>,
    /// Namespace of the receivers' Secrets (`plumb-receiver-<name>`).
    pub webhook_namespace: String,
    /// Leader election; `None` runs the controllers at once (a single replica).
    pub leader: Option<LeaderOptions>,
    /// Metrics to record into, e.g. those whose [`Metrics::client`] built `client`, so that
    /// its requests are counted; `None` creates fresh ones.
    pub metrics: Option<Metrics>,
}

/// Runs until `shutdown` resolves (or leadership is lost, which is an error so that the
/// process restarts as a standby).
pub async fn run(
    client: Client,
    kube_config: kube::Config,
    options: AgentOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = {
        let rx = stop_rx.clone();
        move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        }
    };

    // The metric names carry their `plumb_` prefix themselves.
    let mut registry = Registry::default();
    let metrics = options.metrics.clone().unwrap_or_default();
    metrics.register_into(&mut registry);
    let registry = Arc::new(registry);
    let readiness = Readiness::new();

    let mut servers = Vec::new();
    if let Some(addr) = options.metrics_addr {
        let listener = crate::http::bind(addr).await.map_err(|e| Error::Io {
            context: format!("listening on {addr} for metrics"),
            source: e,
        })?;
        let state = HttpState::new(registry.clone(), readiness.clone());
        servers.push(tokio::spawn(crate::http::serve_on(
            listener,
            state,
            stopped(),
        )));
    }
    if let Some(addr) = options.webhook_addr {
        let listener = crate::http::bind(addr).await.map_err(|e| Error::Io {
            context: format!("listening on {addr} for webhooks"),
            source: e,
        })?;
        // Receivers come from a watch of the namespace's Secrets: requests cost no API calls.
        let webhook = crate::webhook::router(
            crate::webhook::WebhookConfig::new(client.clone(), options.webhook_namespace.clone())
                .with_metrics(metrics.clone()),
        );
        servers.push(tokio::spawn(crate::http::serve_webhook_on(
            listener,
            webhook,
            stopped(),
        )));
    }

    if let Some(shard) = &options.config.shard {
        check_shard(&client, options.config.namespace.as_deref(), shard).await?;
        tracing::info!(%shard, "reconciling the GitSources and Syncs of this shard only");
    }

    // Standby replicas serve health and webhooks but do not reconcile.
    let election = match &options.leader {
        None => None,
        Some(l) => {
            let election = LeaderElection::start(
                client.clone(),
                &l.namespace,
                &l.lease_name,
                &options.config.identity,
                l.lease_duration,
            )
            .await?;
            readiness.set(true);
            let mut changes = election.changes();
            tracing::info!(identity = %options.config.identity, "waiting to become the leader");
            let mut stop = stop_rx.clone();
            let became_leader = async move { changes.wait_for(|leader| *leader).await.is_ok() };
            let stopping = async move { stop.wait_for(|s| *s).await.is_ok() };
            tokio::select! {
                _ = became_leader => {}
                _ = stopping => {
                    election.release().await;
                    return Ok(());
                }
            }
            tracing::info!(identity = %options.config.identity, "became the leader");
            Some(election)
        }
    };

    let ctx = Arc::new(Context::new(
        client.clone(),
        kube_config,
        options.config.clone(),
        metrics,
    ));
    readiness.set(true);
    let lost = {
        let changes = election.as_ref().map(|e| e.changes());
        async move {
            match changes {
                Some(mut c) => {
                    let _ = c.wait_for(|leader| !*leader).await;
                }
                None => futures::future::pending::<()>().await,
            }
        }
        .shared()
    };
    let stop_controllers = {
        let stopped = stopped();
        let lost = lost.clone();
        async move {
            tokio::select! {
                _ = stopped => {}
                _ = lost => {}
            }
        }
        .shared()
    };

    // Stopping cancels every running health wait at once (the controllers' graceful shutdown
    // waits for running reconciles), and running reconciles get a few seconds to finish.
    tokio::spawn({
        let ctx = ctx.clone();
        let stop = stop_controllers.clone();
        async move {
            stop.await;
            ctx.supersede.shut_down();
        }
    });
    let sources = source_controller::<GitSource, _>(
        &client,
        &ctx,
        stop_controllers.clone(),
        crate::finalize::reconcile_source,
    );
    let charts = source_controller::<ChartSource, _>(
        &client,
        &ctx,
        stop_controllers.clone(),
        crate::finalize::reconcile_chart_source,
    );
    let syncs = sync_controller(&client, &ctx, stop_controllers.clone());
    let grace = async {
        stop_controllers.clone().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        _ = async { tokio::join!(sources, charts, syncs) } => {}
        () = grace => {
            tracing::warn!(
                "reconciles still running {}s after the stop; abandoning them",
                SHUTDOWN_GRACE.as_secs()
            );
        }
    }
    ctx.drift.shutdown();

    let lost_leadership = election.as_ref().is_some_and(|e| !e.is_leader()) && !*stop_rx.borrow();
    if let Some(e) = election {
        e.release().await;
    }
    for s in servers {
        let _ = s.await;
    }
    if lost_leadership {
        return Err(Error::LostLeadership);
    }
    Ok(())
}

/// How long running reconciles may take to finish once the agent stops (health waits are
/// cancelled at once; this bounds a fetch or an apply): then they are dropped, as a crash would
/// (an interrupted apply converges on the next leader's apply).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Hash of generation, reconcile request and deletion: status writes do not trigger a reconcile.
fn spec_or_request<K: ResourceExt>(obj: &K) -> Option<u64> {
    let mut h = DefaultHasher::new();
    obj.meta().generation.hash(&mut h);
    obj.meta().deletion_timestamp.is_some().hash(&mut h);
    obj.annotations()
        .get(RECONCILE_REQUEST_ANNOTATION)
        .hash(&mut h);
    Some(h.finish())
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A stable name for the shard of label selector `shard` (for its Lease): `shard-` and a
/// digest of the selector. The same selector always gives the same name, and different
/// selectors (a selector and its complement too) different ones.
pub fn shard_name(shard: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(shard.trim().as_bytes());
    let hex: String = digest[..5].iter().map(|b| format!("{b:02x}")).collect();
    format!("shard-{hex}")
}

/// Fails unless the API server accepts `shard` as a label selector (one LIST of at most one
/// Sync): an invalid one would otherwise only show as watches failing over and over.
async fn check_shard(client: &Client, namespace: Option<&str>, shard: &str) -> Result<(), Error> {
    let api: Api<Sync> = scoped(client, namespace);
    api.list_metadata(&kube::api::ListParams::default().labels(shard).limit(1))
        .await
        .map_err(|source| Error::Api {
            context: format!("checking the --shard label selector {shard:?}"),
            source,
        })?;
    Ok(())
}

/// The watch of this agent's GitSources or Syncs: those its shard selects, if it has one.
fn shard_watch(ctx: &Context) -> watcher::Config {
    match &ctx.config.shard {
        Some(shard) => watcher::Config::default().labels(shard),
        None => watcher::Config::default(),
    }
}

/// No debounce: every trigger is already one that matters (spec changes, deletions and
/// reconcile requests of the object itself, a source's new status, a dependency's change,
/// drift), and a debounce would add its whole period to each hop from a webhook to the
/// applied change (the annotated GitSource, then its new artifact). A trigger arriving while
/// the object's reconcile runs is held and runs once right after it.
fn controller_config(ctx: &Context) -> ControllerConfig {
    ControllerConfig::default().concurrency(ctx.config.concurrency)
}

/// What of a source (GitSource, ChartSource) its Syncs react to: its generation, deletion,
/// finalizers and status, not its annotations (a webhook's reconcile request changes only
/// those, and the new artifact follows in the status).
fn source_state<K: ResourceExt>(obj: &K, status: Option<String>) -> u64 {
    let mut h = DefaultHasher::new();
    obj.meta().generation.hash(&mut h);
    obj.meta().deletion_timestamp.is_some().hash(&mut h);
    obj.meta().finalizers.hash(&mut h);
    status.hash(&mut h);
    h.finish()
}

/// Remembers, per source, the [`source_state`] last seen; says whether it changed.
#[derive(Default)]
struct SourceStates(std::sync::Mutex<std::collections::HashMap<(String, String), u64>>);

impl SourceStates {
    fn changed<K: ResourceExt, S: serde::Serialize>(&self, obj: &K, status: Option<&S>) -> bool {
        let status = status.and_then(|s| serde_json::to_string(s).ok());
        let state = source_state(obj, status);
        let key = (obj.namespace().unwrap_or_default(), obj.name_any());
        let mut seen = self.0.lock().expect("source states lock poisoned");
        seen.insert(key, state) != Some(state)
    }
}

/// The controller of one source kind (GitSource, ChartSource): its watch (of the shard, if
/// any), filtered to spec changes, deletions and reconcile requests, runs `reconcile`.
async fn source_controller<K, F>(
    client: &Client,
    ctx: &Arc<Context>,
    stop: impl std::future::Future<Output = ()> + Send + std::marker::Sync + 'static,
    reconcile: impl FnMut(Arc<K>, Arc<Context>) -> F,
) where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + std::marker::Sync
        + 'static,
    F: std::future::Future<Output = Result<Action, Error>> + Send + 'static,
{
    let api: Api<K> = scoped(client, ctx.config.namespace.as_deref());
    let (reader, writer) = reflector::store();
    let stream = watched(api, shard_watch(ctx))
        .reflect(writer)
        .applied_objects()
        .predicate_filter(spec_or_request, Default::default());
    Controller::for_stream(stream, reader)
        .with_config(controller_config(ctx))
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, kind = %K::kind(&()), "source controller");
            }
        })
        .await;
}

/// A kind of the agent's own watches (its CRDs and the core kinds it reads).
trait Watchable:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + 'static
{
}

impl<K> Watchable for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static
{
}

/// The objects of `api` that `config` selects as they change (see [`watched`]): kube's
/// `Controller::watches` would retry a failed watch without backoff, and log nothing.
fn retried<K: Watchable>(
    api: Api<K>,
    config: watcher::Config,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static {
    watched(api, config).touched_objects()
}

/// A watch of `api` restarted with kube's default backoff after an error, each error logged
/// as a warning naming the kind (e.g. its CRD is missing after an upgrade of the agent alone).
fn watched<K: Watchable>(
    api: Api<K>,
    config: watcher::Config,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static {
    watcher(api, config).default_backoff().inspect_err(|e| {
        tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying with backoff");
    })
}

/// The Syncs of `store` whose source is the `kind` `ns/name`.
fn syncs_of(
    store: &reflector::Store<Sync>,
    kind: &str,
    ns: &str,
    name: &str,
) -> Vec<ObjectRef<Sync>> {
    store
        .state()
        .into_iter()
        .filter(|s| {
            let src = &s.spec.source_ref;
            src.kind.as_deref().unwrap_or("GitSource") == kind
                && src.name == name
                && src
                    .namespace
                    .as_deref()
                    .unwrap_or(&s.namespace().unwrap_or_default())
                    == ns
        })
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

async fn sync_controller(
    client: &Client,
    ctx: &Arc<Context>,
    stop: impl std::future::Future<Output = ()> + Send + std::marker::Sync + 'static,
) {
    let api: Api<Sync> = scoped(client, ctx.config.namespace.as_deref());
    let (reader, writer) = reflector::store();
    let seen = ctx.clone();
    let left = ctx.clone();
    let stream = watched(api.clone(), shard_watch(ctx))
        .reflect(writer)
        // A Sync that left this agent's shard (its label changed) is no longer healed here:
        // the shard that selects it now applies and heals it. (A deleted Sync leaves the
        // watch only once its finalizer is done, and is unregistered by then.)
        .inspect_ok(move |event| {
            if let watcher::Event::Delete(s) = event {
                let key = (s.namespace().unwrap_or_default(), s.name_any());
                left.drift.unregister(&key);
            }
        })
        .applied_objects()
        // A running health wait of this Sync learns of a spec change, request or deletion.
        .inspect_ok(move |s| seen.supersede.saw_sync(s))
        .predicate_filter(spec_or_request, Default::default());
    let controller = Controller::for_stream(stream, reader);
    // A Sync whose drift checks keep failing is reconciled at once, so that its status says
    // what is wrong (e.g. its namespace is gone) instead of waiting for its interval.
    let (dirty_tx, dirty_rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    ctx.drift.notify_dirty(dirty_tx);
    let dirty = futures::stream::unfold(dirty_rx, |mut rx| async move {
        let (ns, name) = rx.recv().await?;
        Some((ObjectRef::<Sync>::new(&name).within(&ns), rx))
    });
    let store = controller.store();
    let dependents = controller.store();
    let sources: Api<GitSource> = scoped(client, ctx.config.namespace.as_deref());
    let charts: Api<ChartSource> = scoped(client, ctx.config.namespace.as_deref());
    let chart_store = controller.store();
    let seen_charts = ctx.clone();
    let seen = ctx.clone();
    let git_states = SourceStates::default();
    let chart_states = SourceStates::default();
    controller
        .with_config(controller_config(ctx))
        // A new artifact (a GitSource's status, spec or deletion changed) reconciles the Syncs
        // that use it, and cancels their running health waits. The watches of other kinds
        // back off after an error and say so (e.g. a CRD missing after an upgrade of the agent
        // alone).
        .watches_stream(retried(sources, shard_watch(ctx)), move |gs: GitSource| {
            seen.supersede.saw_source(&gs);
            if !git_states.changed(&gs, gs.status.as_ref()) {
                return Vec::new();
            }
            let ns = gs.namespace().unwrap_or_default();
            syncs_of(&store, "GitSource", &ns, &gs.name_any())
        })
        // Likewise a new chart version.
        .watches_stream(retried(charts, shard_watch(ctx)), move |cs: ChartSource| {
            seen_charts.supersede.saw_chart_source(&cs);
            if !chart_states.changed(&cs, cs.status.as_ref()) {
                return Vec::new();
            }
            let ns = cs.namespace().unwrap_or_default();
            syncs_of(&chart_store, crate::chartsource::KIND, &ns, &cs.name_any())
        })
        // A Sync becoming Ready reconciles the Syncs that depend on it (of any shard: a
        // dependency may be reconciled by another agent).
        .watches_stream(
            retried(api, watcher::Config::default()),
            move |changed: Sync| {
                let ns = changed.namespace().unwrap_or_default();
                let name = changed.name_any();
                dependents
                    .state()
                    .into_iter()
                    .filter(|s| {
                        s.spec.depends_on.iter().any(|d| {
                            d.name == name
                                && d.namespace
                                    .as_deref()
                                    .unwrap_or(&s.namespace().unwrap_or_default())
                                    == ns
                        })
                    })
                    .map(|s| ObjectRef::from_obj(s.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .reconcile_on(dirty)
        .graceful_shutdown_on(stop)
        .run(crate::syncs::reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "Sync controller");
            }
        })
        .await;
}

/// Errors the reconcilers return (status writes failed, API unreachable) are retried with the
/// object's backoff.
fn error_policy<K: kube::Resource<DynamicType = ()>>(
    obj: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let key = crate::context::backoff_key(obj.as_ref());
    tracing::warn!(object = %key, error = %error, "reconcile error");
    Action::requeue(ctx.backoff(&key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GitSourceSpec, GitSourceStatus, SourceArtifact};

    fn source(generation: i64, commit: &str) -> GitSource {
        let mut gs = GitSource::new(
            "repo",
            GitSourceSpec {
                url: "https://example.com/repo.git".into(),
                ..Default::default()
            },
        );
        gs.metadata.namespace = Some("ns".into());
        gs.metadata.generation = Some(generation);
        gs.status = Some(GitSourceStatus {
            artifact: Some(SourceArtifact {
                commit: commit.into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        gs
    }

    #[test]
    fn syncs_react_to_a_source_s_status_spec_and_deletion_not_its_annotations() {
        let states = SourceStates::default();
        let changed = |gs: &GitSource| states.changed(gs, gs.status.as_ref());
        let first = source(1, "c1");
        assert!(changed(&first), "first seen");
        assert!(!changed(&first), "seen again (a re-list)");
        // A webhook's reconcile request changes only an annotation.
        let mut requested = first.clone();
        requested.annotations_mut().insert(
            RECONCILE_REQUEST_ANNOTATION.into(),
            "2026-12-07T00:00:00Z".into(),
        );
        assert!(!changed(&requested));
        // The new artifact, a spec change and a deletion do count.
        assert!(changed(&source(1, "c2")));
        assert!(changed(&source(2, "c2")));
        let mut deleted = source(2, "c2");
        deleted.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
        );
        assert!(changed(&deleted));
        // Another source is tracked on its own.
        let mut other = source(1, "c1");
        other.metadata.name = Some("other".into());
        assert!(changed(&other));
    }
}
