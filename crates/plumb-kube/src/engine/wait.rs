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
    /// `timeout`. An object of a kind that is healthy once present
    /// ([`plumb_core::healthy_once_present`]: ConfigMaps, Secrets, RBAC, ...) is read until it
    /// exists, then no more. Returns every object's verdict; on timeout, an error naming the
    /// objects that are not healthy and why.
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
        let once = |m: &Manifest| plumb_core::healthy_once_present(&m.object);
        // Objects healthy once present that were seen present: not read again.
        let mut present: Vec<Option<HealthVerdict>> = vec![None; objects.len()];
        loop {
            let verdicts: Vec<(ObjectKey, HealthVerdict)> = stream::iter(0..objects.len())
                .map(|i| {
                    let resolver = &resolver;
                    let m = &objects[i];
                    let seen = present[i].clone();
                    async move {
                        let key = m.key();
                        if let Some(verdict) = seen {
                            return Ok((key, verdict));
                        }
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
            for (i, (_, v)) in verdicts.iter().enumerate() {
                if present[i].is_none() && once(&objects[i]) && v.status == HealthStatus::Healthy {
                    present[i] = Some(v.clone());
                }
            }
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
