//! What the reconcilers share: clients, the fetcher and artifacts, events, backoff, metrics.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use plumb_source::Fetcher;

use crate::drift::DriftTracker;
use crate::metrics::Metrics;

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where repositories and artifacts are cached.
    pub cache_dir: PathBuf,
    /// Only this namespace's GitSources and Syncs (default: all namespaces).
    pub namespace: Option<String>,
    /// How many objects of each kind are reconciled at once.
    pub concurrency: u16,
    /// Whether a Sync may refer to GitSources and dependencies in other namespaces.
    pub cross_namespace_refs: bool,
    /// Whether a GitSource may name a local path or a `file://` URL (`--allow-local-sources`).
    /// Off for multi-tenant agents: such a URL reads the agent's own disk, including the
    /// repositories it caches for other tenants.
    pub allow_local_sources: bool,
    /// The ServiceAccount (of the Sync's namespace) that Syncs naming no `serviceAccountName`
    /// are applied as (`--default-service-account`); `None` applies them as the agent itself.
    pub default_service_account: Option<String>,
    /// The agent's own namespace, where it records the last verified commit of every
    /// GitSource ([`crate::gitsource::VERIFIED_LEDGER`]); `None` keeps that record in memory.
    pub agent_namespace: Option<String>,
    /// Limits of every exported artifact (file size, total size, file count, depth).
    pub export_limits: plumb_source::export::ExportLimits,
    /// The agent's identity in events and leases.
    pub identity: String,
    /// A label selector (`--shard`): only the GitSources and Syncs it selects are reconciled,
    /// so that several agents, each with its own selector (and Lease), share the work.
    /// `None` reconciles every one (in [`AgentConfig::namespace`]).
    pub shard: Option<String>,
}

/// The key of `obj`'s failure count: kind, namespace and name, so that a GitSource and a Sync
/// of the same name (what `plumb bootstrap` creates) back off independently, and the error
/// policy and the reconcilers count under one key.
pub fn backoff_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    let meta = obj.meta();
    format!(
        "{}/{}/{}",
        K::kind(&()),
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// The shared state of the reconcilers.
pub struct Context {
    /// The agent's own client.
    pub client: Client,
    /// The configuration `client` was built from (for impersonating clients).
    kube_config: kube::Config,
    /// Settings.
    pub config: AgentConfig,
    /// Fetches Git repositories into the cache.
    pub fetcher: Fetcher,
    /// The latest artifact this agent fetched (and verified) for each GitSource, by
    /// (namespace, name). Syncs render only these: a source's status is written by whoever
    /// may patch `gitsources/status` and is never trusted to name what to apply.
    pub artifacts: std::sync::Arc<crate::artifacts::ArtifactStore>,
    /// Watches managed objects and heals drift.
    pub drift: DriftTracker,
    /// What the watches saw, so that a running health wait learns it is moot.
    pub supersede: crate::supersede::Supersede,
    /// Failed cleanup attempts of deleted objects.
    pub deletions: crate::finalize::Attempts,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Metrics,
    /// One discovery for every Sync's engine (see [`plumb_kube::DiscoveryCache`]).
    pub discovery: plumb_kube::DiscoveryCache,
    /// One bound for every Sync's engine on the objects being dry-run or written at once
    /// (see [`plumb_kube::ObjectBudget`]): what concurrent applies hold at their peak.
    pub budget: plumb_kube::ObjectBudget,
    /// One bound for every Sync on the renderings held at once (see
    /// [`crate::syncs::RenderSlots`]).
    pub renders: crate::syncs::RenderSlots,
    /// The retry delays of each failing object (exponential), by [`backoff_key`].
    failures: Mutex<HashMap<String, backon::ExponentialBackoff>>,
    /// Clients impersonating ServiceAccounts, by `namespace/name`.
    impersonated: Mutex<HashMap<String, Client>>,
}

/// Objects dry-run or written at once across all Syncs: enough to keep the API server busy
/// (a few requests per core of a small control plane), few enough that the dry-run results
/// and live objects held at once stay a few MiB however many Syncs apply together.
pub(crate) const OBJECT_BUDGET: usize = 32;

impl Context {
    /// A context for the agent.
    pub fn new(
        client: Client,
        kube_config: kube::Config,
        config: AgentConfig,
        metrics: Metrics,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "plumb".into(),
                instance: Some(config.identity.clone()),
            },
        );
        let renders = crate::syncs::RenderSlots::new(crate::syncs::RENDER_SLOTS, metrics.clone());
        Self {
            fetcher: Fetcher::new(config.cache_dir.join("git")),
            drift: DriftTracker::new(client.clone(), metrics.clone()),
            supersede: Default::default(),
            deletions: Default::default(),
            client,
            kube_config,
            artifacts: std::sync::Arc::new(crate::artifacts::ArtifactStore::new(
                config.cache_dir.join("artifacts"),
            )),
            config,
            recorder,
            metrics,
            discovery: plumb_kube::DiscoveryCache::default(),
            budget: plumb_kube::ObjectBudget::new(OBJECT_BUDGET),
            renders,
            failures: Mutex::default(),
            impersonated: Mutex::default(),
        }
    }

    /// Publishes an Event on `obj`; failures to publish are logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        note: impl Into<String>,
    ) {
        let reference: ObjectReference = obj.object_ref(&());
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(truncate(note.into(), 1024)),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, reason, "could not publish an event");
        }
    }

    /// Writes the whole status of `K` `namespace/name` (server-side apply; Plumb owns status).
    pub async fn write_status<K>(
        &self,
        namespace: &str,
        name: &str,
        status: &impl serde::Serialize,
    ) -> crate::error::Result<()>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: kube::Api<K> = kube::Api::namespaced(self.client.clone(), namespace);
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": status,
        });
        api.patch_status(
            name,
            &kube::api::PatchParams::apply(plumb_kube::FIELD_MANAGER).force(),
            &kube::api::Patch::Apply(&patch),
        )
        .await
        .map_err(|source| crate::error::Error::Api {
            context: format!("writing the status of {} {namespace}/{name}", K::kind(&())),
            source,
        })?;
        Ok(())
    }

    /// Records a failure of `key` and returns how long to wait before retrying: 2s, 4s, ...
    /// up to 5 minutes.
    pub fn backoff(&self, key: &str) -> Duration {
        use backon::BackoffBuilder;
        const MAX: Duration = Duration::from_secs(300);
        let mut failures = self.failures.lock().expect("failures lock poisoned");
        failures
            .entry(key.to_owned())
            .or_insert_with(|| {
                backon::ExponentialBuilder::new()
                    .with_min_delay(Duration::from_secs(2))
                    .with_factor(2.0)
                    .with_max_delay(MAX)
                    .without_max_times()
                    .build()
            })
            .next()
            .unwrap_or(MAX)
    }

    /// Forgets the failures of `key` after a success.
    pub fn reset_backoff(&self, key: &str) {
        self.failures
            .lock()
            .expect("failures lock poisoned")
            .remove(key);
    }

    /// The client to apply a Sync with: one impersonating
    /// `system:serviceaccount:<namespace>:<name>` for the Sync's `service_account` or else the
    /// agent's default one ([`AgentConfig::default_service_account`]); the agent's own client
    /// when neither is set.
    pub fn client_for(
        &self,
        namespace: &str,
        service_account: Option<&str>,
    ) -> Result<Client, kube::Error> {
        let service_account = service_account
            .filter(|sa| !sa.is_empty())
            .or(self.config.default_service_account.as_deref());
        let Some(sa) = service_account else {
            return Ok(self.client.clone());
        };
        let key = format!("{namespace}/{sa}");
        if let Some(c) = self
            .impersonated
            .lock()
            .expect("impersonation lock poisoned")
            .get(&key)
        {
            return Ok(c.clone());
        }
        let mut config = self.kube_config.clone();
        config.auth_info.impersonate = Some(format!("system:serviceaccount:{namespace}:{sa}"));
        let client = self.metrics.client(config)?;
        self.impersonated
            .lock()
            .expect("impersonation lock poisoned")
            .insert(key, client.clone());
        Ok(client)
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GitSource, GitSourceSpec, Sync, SyncSpec};

    #[test]
    fn a_source_and_a_sync_of_one_name_back_off_apart() {
        let mut gs = GitSource::new("fleet", GitSourceSpec::default());
        gs.metadata.namespace = Some("ops".into());
        let mut sync = Sync::new("fleet", SyncSpec::default());
        sync.metadata.namespace = Some("ops".into());
        assert_eq!(backoff_key(&gs), "GitSource/ops/fleet");
        assert_eq!(backoff_key(&sync), "Sync/ops/fleet");
    }
}
