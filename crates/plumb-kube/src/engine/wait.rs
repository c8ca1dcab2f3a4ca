//! Waiting: for the CRDs of a sync to be Established (before their custom resources are
//! validated), and for applied objects to become healthy.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt, stream};
use plumb_core::{HealthStatus, HealthVerdict, Manifest, ObjectKey, health};

use super::{Engine, NoProgress, Progress};
use crate::cluster::Cluster;
use crate::error::{Error, Result};

impl<C: Cluster> Engine<C> {
    /// Waits until every CRD among `manifests` is Established.
    pub(super) async fn await_crds_established(
        &self,
        manifests: &[Manifest],
        timeout: Duration,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        for m in manifests
            .iter()
            .filter(|m| m.kind() == "CustomResourceDefinition")
        {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.cluster.await_crd_established(m.name(), left).await?;
        }
        Ok(())
    }

    /// Waits until every object in `objects` is healthy (or suspended), polling, for at most
    /// `timeout`. Returns every object's verdict; on timeout, an error naming the objects that are
    /// not healthy and why.
    pub async fn wait_healthy(
        &self,
        objects: &[Manifest],
        timeout: Duration,
    ) -> Result<Vec<(ObjectKey, HealthVerdict)>> {
        self.wait_healthy_with(objects, timeout, &NoProgress).await
    }

    /// [`Engine::wait_healthy`], telling `progress` after every look which objects are still
    /// awaited and why ([`Progress::waiting`]).
    pub async fn wait_healthy_with(
        &self,
        objects: &[Manifest],
        timeout: Duration,
        progress: &dyn Progress,
    ) -> Result<Vec<(ObjectKey, HealthVerdict)>> {
        let resolver = self.resolver_for(objects).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let verdicts: Vec<(ObjectKey, HealthVerdict)> = stream::iter(0..objects.len())
                .map(|i| {
                    let resolver = &resolver;
                    let m = &objects[i];
                    async move {
                        let key = m.key();
                        let verdict = match resolver.resolve(m).filter(|r| r.served) {
                            None => HealthVerdict::missing(),
                            Some(r) => match self.cluster.get(&r, m.namespace(), m.name()).await {
                                Ok(Some(obj)) => health(&obj),
                                Ok(None) => HealthVerdict::missing(),
                                Err(e) => {
                                    return Err(Error::Api {
                                        context: format!("reading {key}"),
                                        source: e,
                                    });
                                }
                            },
                        };
                        Ok((key, verdict))
                    }
                })
                .buffered(16)
                .try_collect()
                .await?;
            let ready = |v: &HealthVerdict| {
                matches!(v.status, HealthStatus::Healthy | HealthStatus::Suspended)
            };
            let pending: Vec<(ObjectKey, HealthVerdict)> = verdicts
                .iter()
                .filter(|(_, v)| !ready(v))
                .cloned()
                .collect();
            progress.waiting(&pending, verdicts.len());
            if pending.is_empty() {
                return Ok(verdicts);
            }
            if tokio::time::Instant::now() >= deadline {
                let unhealthy = pending
                    .iter()
                    .map(|(k, v)| format!("  {k}: {} ({})", v.status, v.reason))
                    .collect();
                return Err(Error::Unhealthy {
                    seconds: timeout.as_secs(),
                    unhealthy,
                    verdicts,
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
