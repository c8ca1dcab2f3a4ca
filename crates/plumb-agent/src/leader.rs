//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several agent replicas only
//! one writes.
//!
//! [`LeaderElection::start`] spawns a background task that takes the Lease when it is free or
//! expired and renews it while held (built on `kube-lease-manager`, which uses server-side apply
//! on the Lease, so two replicas can never both take it). [`LeaderElection::changes`] tells when
//! this replica gains or loses leadership; [`LeaderElection::release`] steps down gracefully, and
//! a waiting replica takes over at once (it watches the Lease). A replica that dies without
//! releasing is replaced once its Lease expires, i.e. within the lease duration (plus up to a
//! second of jitter).
//!
//! A replica that cannot reach the API server steps down (reports `false`) at the first error,
//! before its Lease can expire, so two leaders never overlap as long as clocks agree within a
//! third of the lease duration. It then tries to take the Lease again.
//!
//! Needs RBAC `get`, `list`, `watch`, `create`, `patch` on `leases` in the Lease's namespace.

use std::time::Duration;

use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseManagerError, LeaseParams};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Why leader election could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The lease duration is shorter than two seconds (renewal needs a grace period of at least
    /// one second inside it).
    #[error("lease duration {0:?} is too short: use at least 2 seconds")]
    DurationTooShort(Duration),
    /// Reading or creating the Lease failed.
    #[error("cannot set up leader election on Lease {namespace}/{name}")]
    Lease {
        /// The Lease's namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
        /// What the API server said.
        #[source]
        source: LeaseManagerError,
    },
}

impl Error {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Lease { .. })
    }
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One replica's membership in a leader election. Dropping it stops renewing without releasing
/// the Lease (what a crash looks like to the others); call [`release`](Self::release) to step
/// down gracefully.
#[derive(Debug)]
pub struct LeaderElection {
    identity: String,
    state: watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

#[derive(Clone)]
struct Target {
    client: Client,
    identity: String,
    namespace: String,
    lease_name: String,
    params: LeaseParams,
}

impl Target {
    async fn manager(&self) -> Result<LeaseManager, LeaseManagerError> {
        LeaseManager::new(
            self.client.clone(),
            &self.lease_name,
            &self.namespace,
            self.params.clone(),
            LeaseCreateMode::AutoCreate,
        )
        .await
    }
}

impl LeaderElection {
    /// Joins the election on Lease `namespace/lease_name` (created when missing) as `identity`
    /// (unique per replica, e.g. the pod name) and starts campaigning in the background.
    /// Not leader until [`changes`](Self::changes) says so. A holder renews its Lease when a
    /// third of `lease_duration` is left.
    pub async fn start(
        client: Client,
        namespace: &str,
        lease_name: &str,
        identity: &str,
        lease_duration: Duration,
    ) -> Result<Self> {
        let seconds = lease_duration.as_secs();
        if seconds < 2 {
            return Err(Error::DurationTooShort(lease_duration));
        }
        let grace = (seconds / 3).max(1);
        let target = Target {
            client,
            identity: identity.to_owned(),
            namespace: namespace.to_owned(),
            lease_name: lease_name.to_owned(),
            params: LeaseParams::new(identity, seconds, grace)
                .with_field_manager(format!("plumb-leader-{identity}")),
        };
        let manager = target.manager().await.map_err(|source| Error::Lease {
            namespace: namespace.to_owned(),
            name: lease_name.to_owned(),
            source,
        })?;
        let (tx, state) = watch::channel(false);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(campaign(target, manager, tx, stop_rx));
        Ok(Self {
            identity: identity.to_owned(),
            state,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    /// Whether this replica holds the Lease now.
    pub fn is_leader(&self) -> bool {
        *self.state.borrow()
    }

    /// A receiver that sees every change of leadership (`true`: became leader).
    pub fn changes(&self) -> watch::Receiver<bool> {
        self.state.clone()
    }

    /// This replica's identity in the Lease.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Steps down: stops renewing and clears the Lease's holder, so a waiting replica takes over
    /// immediately. Stop writing before calling this. Waits up to 10 s for the API server.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
            {
                tracing::warn!(identity = %self.identity, "releasing the Lease timed out");
                abort.abort();
            }
        }
    }
}

impl Drop for LeaderElection {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

enum Step {
    Stop,
    Abandoned,
    Changed(Result<bool, LeaseManagerError>),
    Freed,
}

fn lease_events(target: &Target) -> BoxStream<'static, watcher::Result<watcher::Event<Lease>>> {
    let api: Api<Lease> = Api::namespaced(target.client.clone(), &target.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", target.lease_name));
    watcher(api, config).default_backoff().boxed()
}

async fn campaign(
    target: Target,
    mut manager: LeaseManager,
    tx: watch::Sender<bool>,
    mut stop: oneshot::Receiver<()>,
) {
    let identity = target.identity.clone();
    let lease = format!("{}/{}", target.namespace, target.lease_name);
    // Followers watch the Lease so a released one is taken at once, not at its old expiry.
    let mut events = Some(lease_events(&target));
    // Retry delays after a failed renewal: 250 ms doubling up to 10 s, reset by a success.
    let retry_delays = || {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(250))
            .with_factor(2.0)
            .with_max_delay(Duration::from_secs(10))
            .without_max_times()
            .build()
    };
    let mut backoff = retry_delays();
    loop {
        let leader = *tx.borrow();
        let step = {
            let changed = manager.changed();
            tokio::pin!(changed);
            loop {
                tokio::select! {
                    biased;
                    stopped = &mut stop => break match stopped {
                        Ok(()) => Step::Stop,
                        Err(_) => Step::Abandoned,
                    },
                    result = &mut changed => break Step::Changed(result),
                    event = next_event(&mut events), if !leader && events.is_some() => match event {
                        Some(Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l)))
                            if l.spec.as_ref().and_then(|s| s.holder_identity.as_ref()).is_none() =>
                        {
                            break Step::Freed;
                        }
                        Some(Err(e)) => tracing::debug!(%lease, error = %e, "watching the Lease"),
                        None => events = None,
                        Some(Ok(_)) => {}
                    },
                }
            }
        };
        match step {
            Step::Stop => {
                tx.send_replace(false);
                match manager.release().await {
                    Ok(()) => tracing::info!(%lease, %identity, "released the leader Lease"),
                    Err(e) => {
                        tracing::warn!(%lease, %identity, error = %e, "releasing the leader Lease; it expires by itself")
                    }
                }
                return;
            }
            Step::Abandoned => {
                tx.send_replace(false);
                return;
            }
            Step::Freed => {
                // The manager trusts its cached view of the Lease until that expires; a fresh
                // one reads the Lease again and takes it now.
                match target.manager().await {
                    Ok(fresh) => manager = fresh,
                    Err(e) => tracing::debug!(%lease, error = %e, "re-reading the released Lease"),
                }
            }
            Step::Changed(Ok(is_leader)) => {
                backoff = retry_delays();
                if is_leader {
                    tracing::info!(%lease, %identity, "became leader");
                } else {
                    tracing::info!(%lease, %identity, "lost leadership");
                }
                tx.send_replace(is_leader);
            }
            Step::Changed(Err(e)) => {
                // The renewal state is unknown: step down now rather than risk two leaders,
                // then start over with a fresh view of the Lease.
                if tx.send_replace(false) {
                    tracing::warn!(%lease, %identity, error = %e, "stepping down: cannot renew the leader Lease");
                } else {
                    tracing::warn!(%lease, %identity, error = %e, "leader election");
                }
                loop {
                    tokio::select! {
                        biased;
                        stopped = &mut stop => {
                            if stopped.is_ok() {
                                let _ = manager.release().await;
                            }
                            return;
                        }
                        () = tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(10))) => {}
                    }
                    match target.manager().await {
                        Ok(fresh) => {
                            manager = fresh;
                            break;
                        }
                        Err(e) => tracing::warn!(%lease, %identity, error = %e, "leader election"),
                    }
                }
            }
        }
    }
}

async fn next_event(
    events: &mut Option<BoxStream<'static, watcher::Result<watcher::Event<Lease>>>>,
) -> Option<watcher::Result<watcher::Event<Lease>>> {
    match events {
        Some(events) => events.next().await,
        None => std::future::pending().await,
    }
}
