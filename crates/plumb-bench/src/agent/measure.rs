//! The agent's measurements: initial apply, steady-state requests, drift healing, commit to
//! applied.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hmac::{Hmac, Mac as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::json;
use sha2::Sha256;

use super::setup::AgentBench;
use super::watch::{ObjectWatch, Probe};
use crate::apps::app_name;
use crate::metrics::agent_requests;

/// Kinds of manual change, in the order they rotate.
pub const DRIFT_KINDS: [&str; 3] = ["edit ConfigMap", "scale Deployment", "delete Service"];

/// Requests per minute by (verb, resource, dry_run), in the order of the agent's metrics.
pub type RequestRates = Vec<((String, String, String), f64)>;

/// Drift-heal latencies in seconds by kind of change, in [`DRIFT_KINDS`] order.
pub type DriftLatencies = Vec<(&'static str, Vec<f64>)>;

/// Drift healed while every Deployment rolled out.
#[derive(Debug, Default)]
pub struct RolloutDrift {
    /// Seconds from each change to its healing, for the changes healed during the rollout.
    pub during: Vec<f64>,
    /// Changes healed only after the rollout ended (not in `during`).
    pub after: u32,
    /// Seconds from the push to every Sync Ready at the rollout's commit.
    pub rollout: f64,
}

impl AgentBench<'_> {
    /// Applies the GitSource (interval 1h) and the Syncs; seconds until every Sync is Ready at
    /// the repository's head.
    pub async fn initial(&mut self) -> anyhow::Result<f64> {
        let commit = self.head()?;
        let start = Instant::now();
        self.apply_source_and_syncs("1h").await?;
        let deadline = start + Duration::from_secs(900);
        while Instant::now() < deadline {
            if self.syncs_applied(&commit).await? == self.args.syncs as usize {
                return Ok(start.elapsed().as_secs_f64());
            }
            self.check_agent()?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        bail!(
            "the Syncs did not become Ready at {}; agent log:\n{}",
            &commit[..12.min(commit.len())],
            self.agent_log_tail()
        )
    }

    /// The agents' request counters, summed over the shards.
    async fn agent_metrics(&self) -> anyhow::Result<RequestRates> {
        let mut sum: RequestRates = Vec::new();
        for port in &self.metrics_ports {
            let text = self
                .http
                .get(*port, "/metrics", Duration::from_secs(5))
                .await?;
            for (key, value) in agent_requests(&text) {
                match sum.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, total)) => *total += value,
                    None => sum.push((key, value)),
                }
            }
        }
        Ok(sum)
    }

    /// Agent API requests per minute during `seconds` with no change in Git or the cluster.
    pub async fn steady_state(&self, seconds: u64) -> anyhow::Result<RequestRates> {
        let before = self.agent_metrics().await?;
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let after = self.agent_metrics().await?;
        Ok(rates(&before, &after, seconds))
    }

    /// `count` manual changes, rotating kinds; seconds from each change to its healing.
    pub async fn drift_edits(&self, count: u32) -> anyhow::Result<DriftLatencies> {
        let mut latencies: DriftLatencies = DRIFT_KINDS.iter().map(|k| (*k, Vec::new())).collect();
        for n in 0..count {
            let (slot, seconds) = self.drift_edit(n).await?;
            latencies[slot].1.push(seconds);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok(latencies)
    }

    /// Manual changes while every Deployment rolls out: one commit gives all of them a new
    /// image (`tag`), announced by the webhook; once a Sync has started applying it, `count`
    /// changes as in [`Self::drift_edits`] (numbered from `first`, so other objects than
    /// theirs), each timed to its healing. Only the changes healed
    /// before every Sync was Ready at the new commit count (the others happened after the
    /// rollout, at rest).
    pub async fn drift_during_rollout(
        &mut self,
        count: u32,
        first: u32,
        tag: &str,
    ) -> anyhow::Result<RolloutDrift> {
        let commit = self.commit_rollout(tag)?;
        let start = Instant::now();
        self.send_webhook().await?;
        let deadline = start + Duration::from_secs(120);
        while !self.syncs_attempting(&commit).await? {
            anyhow::ensure!(
                Instant::now() < deadline,
                "no Sync started applying {commit} within 120 s"
            );
            self.check_agent()?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut out = RolloutDrift::default();
        let syncs = self.args.syncs as usize;
        for n in 0..count {
            let (_, seconds) = self.drift_edit(first + n).await?;
            if self.syncs_applied(&commit).await? == syncs {
                out.after += 1;
                log!("    (healed after the rollout ended: not counted)");
                break;
            }
            out.during.push(seconds);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let deadline = start + Duration::from_secs(900);
        while self.syncs_applied(&commit).await? < syncs {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the Syncs did not become Ready at {commit} within 900 s"
            );
            self.check_agent()?;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        out.rollout = start.elapsed().as_secs_f64();
        Ok(out)
    }

    /// Manual change number `n` (its kind rotates through [`DRIFT_KINDS`]); its kind's index
    /// and the seconds from the change to the watch event that shows it undone.
    async fn drift_edit(&self, n: u32) -> anyhow::Result<(usize, f64)> {
        let client = self.client().clone();
        let ns = self.ns.as_str();
        let dynamic =
            |ar: ApiResource| Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar);
        let replicas = i64::from(self.args.replicas);
        let slot = n as usize % DRIFT_KINDS.len();
        let kind = DRIFT_KINDS[slot];
        // Spread over the Syncs.
        let name = app_name((n * 37) % self.args.apps);
        let (mut watch, mut probe, start) = match slot {
            0 => {
                let watch =
                    ObjectWatch::open(dynamic(ApiResource::erase::<ConfigMap>(&())), &name).await?;
                let start = Instant::now();
                let patch = Patch::Merge(json!({ "data": { "LOG_LEVEL": "debug" } }));
                Api::<ConfigMap>::namespaced(client.clone(), ns)
                    .patch(
                        &name,
                        &PatchParams {
                            field_manager: Some("kubectl-edit".into()),
                            ..Default::default()
                        },
                        &patch,
                    )
                    .await
                    .with_context(|| format!("editing ConfigMap {name}"))?;
                (watch, Probe::LogLevel { edited: false }, start)
            }
            1 => {
                let watch =
                    ObjectWatch::open(dynamic(ApiResource::erase::<Deployment>(&())), &name)
                        .await?;
                let start = Instant::now();
                let patch = Patch::Merge(json!({ "spec": { "replicas": replicas + 2 } }));
                Api::<Deployment>::namespaced(client.clone(), ns)
                    .patch_scale(
                        &name,
                        &PatchParams {
                            field_manager: Some("kubectl-scale".into()),
                            ..Default::default()
                        },
                        &patch,
                    )
                    .await
                    .with_context(|| format!("scaling Deployment {name}"))?;
                let probe = Probe::Replicas {
                    manual: replicas + 2,
                    desired: replicas,
                    scaled: false,
                };
                (watch, probe, start)
            }
            _ => {
                let watch =
                    ObjectWatch::open(dynamic(ApiResource::erase::<Service>(&())), &name).await?;
                let start = Instant::now();
                Api::<Service>::namespaced(client.clone(), ns)
                    .delete(&name, &DeleteParams::default())
                    .await
                    .with_context(|| format!("deleting Service {name}"))?;
                (watch, Probe::Recreated { deleted: false }, start)
            }
        };
        let what = format!("{kind} {name} to be healed");
        let healed = watch
            .wait(&mut probe, &what, Duration::from_secs(120))
            .await?;
        let seconds = healed.duration_since(start).as_secs_f64();
        log!("  {kind} {name}: healed in {seconds:.2}s");
        Ok((slot, seconds))
    }

    /// Seconds from a push to the changed ConfigMap in the cluster, over `count` commits.
    pub async fn commit_to_applied(
        &mut self,
        count: u32,
        webhook: bool,
    ) -> anyhow::Result<Vec<f64>> {
        let mut out = Vec::new();
        let configmaps = Api::<DynamicObject>::namespaced_with(
            self.client().clone(),
            &self.ns,
            &ApiResource::erase::<ConfigMap>(&()),
        );
        for n in 0..count {
            let app = (n * 53 + 11) % self.args.apps;
            let name = app_name(app);
            let mut watch = ObjectWatch::open(configmaps.clone(), &name).await?;
            // Timed from the push: what a Git host does next is what is being compared.
            let revision = self.commit_change(app)?;
            let start = Instant::now();
            if webhook {
                self.send_webhook().await?;
            }
            let mut probe = Probe::Revision(revision.clone());
            let what = format!("{name} at revision {revision}");
            let applied = watch
                .wait(&mut probe, &what, Duration::from_secs(300))
                .await?;
            let seconds = applied.duration_since(start).as_secs_f64();
            out.push(seconds);
            log!("  commit {revision} ({name}): applied {seconds:.2}s after the push");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok(out)
    }

    /// The generic receiver's push notification, signed with the token.
    async fn send_webhook(&self) -> anyhow::Result<()> {
        let body = serde_json::to_vec(&json!({ "url": self.repo_url()? }))?;
        let signature = format!("sha256={}", hmac_sha256_hex(self.token.as_bytes(), &body));
        self.http
            .send(
                http::Method::POST,
                self.webhook_port,
                "/hook/bench",
                &[
                    ("Content-Type", "application/json"),
                    ("X-Signature", &signature),
                ],
                body,
                Duration::from_secs(10),
            )
            .await?;
        Ok(())
    }
}

/// `HMAC-SHA256(body, key)` in lower-case hex.
pub fn hmac_sha256_hex(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Per-minute increases from `before` to `after` over `seconds`; counters that did not grow
/// are left out.
pub fn rates(before: &RequestRates, after: &RequestRates, seconds: u64) -> RequestRates {
    let per_minute = 60.0 / seconds as f64;
    after
        .iter()
        .filter_map(|(key, value)| {
            let was = before
                .iter()
                .find(|(k, _)| k == key)
                .map_or(0.0, |(_, v)| *v);
            let d = value - was;
            (d > 0.0).then(|| (key.clone(), d * per_minute))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_minute_and_only_of_grown_counters() {
        let key = |v: &str, r: &str| (v.to_owned(), r.to_owned(), "false".to_owned());
        let before = vec![
            (key("get", "gitsources"), 10.0),
            (key("list", "syncs"), 3.0),
        ];
        let after = vec![
            (key("get", "gitsources"), 20.0),
            (key("list", "syncs"), 3.0),
            (key("get", "secrets"), 1.0),
        ];
        assert_eq!(
            rates(&before, &after, 30),
            vec![
                (key("get", "gitsources"), 20.0),
                (key("get", "secrets"), 2.0)
            ]
        );
    }

    #[test]
    fn webhook_signature_is_hex_hmac() {
        // RFC 4231 test case 2.
        assert_eq!(
            hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
