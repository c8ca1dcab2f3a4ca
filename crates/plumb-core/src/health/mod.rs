//! Health: a pure verdict per object, by kind (argo gitops-engine `pkg/health` rules).
//!
//! Feed it the live object (with `status`). A missing object is not passed here: use
//! [`HealthVerdict::missing`]. Aggregate with [`HealthStatus::worst`].

mod generic;
mod pod;
#[cfg(test)]
mod tests;
mod workloads;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::object::split_api_version;

use generic::{crd, generic, namespace, pvc, service};
use pod::pod;
use workloads::{cron_job, daemon_set, deployment, job, replica_set, stateful_set};

/// Health of an object, ordered from best to worst so that the aggregate is the maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum HealthStatus {
    /// Ready and doing what it should.
    Healthy,
    /// Deliberately paused (a paused Deployment, a suspended Job or CronJob).
    Suspended,
    /// Not there yet, but no sign of failure (rolling out, pending, waiting for the controller).
    Progressing,
    /// Does not exist in the cluster.
    Missing,
    /// Failed or stuck (crash loops, progress deadline exceeded, failed Job, Ready=False).
    Degraded,
}

impl HealthStatus {
    /// The worst status of `statuses`; `Healthy` for none.
    pub fn worst(statuses: impl IntoIterator<Item = HealthStatus>) -> HealthStatus {
        statuses.into_iter().max().unwrap_or(HealthStatus::Healthy)
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthStatus::Healthy => "Healthy",
            HealthStatus::Suspended => "Suspended",
            HealthStatus::Progressing => "Progressing",
            HealthStatus::Missing => "Missing",
            HealthStatus::Degraded => "Degraded",
        })
    }
}

/// A health status and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthVerdict {
    /// The status.
    pub status: HealthStatus,
    /// A human-readable reason, e.g. `2 of 3 updated replicas are available`.
    pub reason: String,
}

impl HealthVerdict {
    fn new(status: HealthStatus, reason: impl Into<String>) -> Self {
        HealthVerdict {
            status,
            reason: reason.into(),
        }
    }

    /// The verdict for an object that does not exist.
    pub fn missing() -> Self {
        Self::new(HealthStatus::Missing, "object does not exist")
    }

    /// The worst of several verdicts (the first of equals); `None` for none.
    pub fn worst<'a>(verdicts: impl IntoIterator<Item = &'a HealthVerdict>) -> Option<&'a Self> {
        verdicts
            .into_iter()
            .fold(None, |acc: Option<&HealthVerdict>, v| match acc {
                Some(a) if a.status >= v.status => Some(a),
                _ => Some(v),
            })
    }
}

impl fmt::Display for HealthVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.reason)
    }
}

use HealthStatus::{Degraded, Healthy, Progressing, Suspended};

fn verdict(status: HealthStatus, reason: impl Into<String>) -> HealthVerdict {
    HealthVerdict::new(status, reason)
}

fn int(obj: &Value, pointer: &str) -> Option<i64> {
    obj.pointer(pointer).and_then(Value::as_i64)
}

fn text<'a>(obj: &'a Value, pointer: &str) -> Option<&'a str> {
    obj.pointer(pointer).and_then(Value::as_str)
}

/// A `status.conditions` entry.
struct Condition<'a> {
    status: &'a str,
    reason: &'a str,
    message: &'a str,
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<Condition<'a>> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
        .map(|c| Condition {
            status: c.get("status").and_then(Value::as_str).unwrap_or(""),
            reason: c.get("reason").and_then(Value::as_str).unwrap_or(""),
            message: c.get("message").and_then(Value::as_str).unwrap_or(""),
        })
}

fn explain(c: &Condition<'_>, fallback: &str) -> String {
    match (c.reason.is_empty(), c.message.is_empty()) {
        (false, false) => format!("{}: {}", c.reason, c.message),
        (false, true) => c.reason.to_owned(),
        (true, false) => c.message.to_owned(),
        (true, true) => fallback.to_owned(),
    }
}

/// `None` when the controller has seen the latest spec; otherwise a Progressing verdict.
fn generation_gate(obj: &Value, kind: &str) -> Option<HealthVerdict> {
    let generation = int(obj, "/metadata/generation")?;
    let observed = int(obj, "/status/observedGeneration").unwrap_or(0);
    (observed < generation).then(|| {
        verdict(
            Progressing,
            format!(
                "waiting for the {kind} controller to observe generation {generation} (observed {observed})"
            ),
        )
    })
}

/// Whether an object of this kind is healthy as soon as it exists: kinds without a status a
/// controller reports on (ConfigMap, Secret, ServiceAccount, RBAC, a Service that is not a
/// LoadBalancer, ...). A health wait looks at such an object once, not on every round.
/// `obj` is its manifest or live copy.
pub fn healthy_once_present(obj: &Value) -> bool {
    let group = split_api_version(text(obj, "/apiVersion").unwrap_or("")).0;
    match (group, text(obj, "/kind").unwrap_or("")) {
        ("", "Service") => text(obj, "/spec/type") != Some("LoadBalancer"),
        (
            "",
            "ConfigMap" | "Secret" | "ServiceAccount" | "Endpoints" | "LimitRange" | "PodTemplate",
        )
        | (
            "rbac.authorization.k8s.io",
            "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding",
        )
        | ("networking.k8s.io", "NetworkPolicy" | "IngressClass")
        | ("scheduling.k8s.io", "PriorityClass")
        | ("storage.k8s.io", "StorageClass")
        | ("node.k8s.io", "RuntimeClass")
        | (
            "admissionregistration.k8s.io",
            "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration",
        ) => true,
        _ => false,
    }
}

/// The health of a live object, by kind; unknown kinds fall back to `status.conditions`
/// (Ready, then Available), and to Healthy ("exists") when they have none.
pub fn health(obj: &Value) -> HealthVerdict {
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        return verdict(Progressing, "object is being deleted");
    }
    let api_version = text(obj, "/apiVersion").unwrap_or("");
    let group = split_api_version(api_version).0;
    let kind = text(obj, "/kind").unwrap_or("");
    match (group, kind) {
        ("apps", "Deployment") => deployment(obj),
        ("apps", "StatefulSet") => stateful_set(obj),
        ("apps", "DaemonSet") => daemon_set(obj),
        ("apps", "ReplicaSet") => replica_set(obj),
        ("batch", "Job") => job(obj),
        ("batch", "CronJob") => cron_job(obj),
        ("", "Pod") => pod(obj),
        ("", "PersistentVolumeClaim") => pvc(obj),
        ("", "Service") => service(obj),
        ("", "Namespace") => namespace(obj),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crd(obj),
        _ => generic(obj),
    }
}
