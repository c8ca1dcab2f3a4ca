//! Plumb's Kubernetes I/O: discovery, server-side apply with a dry-run first, staged apply,
//! safe prune, inventory storage and health waits.

#![warn(clippy::unwrap_used)]

pub mod cluster;
pub mod discovery;
pub mod engine;
pub mod error;
pub mod inventory;
pub mod lookup;

pub use cluster::{
    ApplyMode, Cluster, FIELD_MANAGER, KubeCluster, Page, Selector, WatchEvent, WatchStream,
    await_crds_established,
};
pub use engine::{
    DiscoveryCache, Engine, HookRun, NoProgress, ObjectBudget, ObjectCheck, ObjectDiff,
    ObjectState, Progress, SyncOptions, SyncReport, awaited,
};
pub use error::{Error, FailureKind, ObjectError, Result};
pub use inventory::{ConfigMapInventory, StoredState};
pub use lookup::{ExtraKind, LookupLimits, LookupProxy, LookupStats};

/// A client from a kubeconfig: `path` (else `KUBECONFIG` / `~/.kube/config` / in-cluster) and
/// `context` (else the current context).
pub async fn client(path: Option<&std::path::Path>, context: Option<&str>) -> Result<kube::Client> {
    let config = config(path, context).await?;
    kube::Client::try_from(config).map_err(|e| Error::connect("building a client", e))
}

/// The client configuration [`client`] builds on.
pub async fn config(path: Option<&std::path::Path>, context: Option<&str>) -> Result<kube::Config> {
    let options = kube::config::KubeConfigOptions {
        context: context.map(str::to_owned),
        ..Default::default()
    };
    match path {
        Some(p) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(p)
                .map_err(|e| Error::connect(format!("reading kubeconfig {}", p.display()), e))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| Error::connect(format!("loading kubeconfig {}", p.display()), e))
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| Error::connect("loading the kubeconfig", e)),
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::connect("finding a kubeconfig or in-cluster config", e)),
    }
}
