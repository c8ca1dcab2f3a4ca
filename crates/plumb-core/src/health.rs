//! Health: a pure verdict per object, by kind (argo gitops-engine `pkg/health` rules).
//!
//! Feed it the live object (with `status`). A missing object is not passed here: use
//! [`HealthVerdict::missing`]. Aggregate with [`HealthStatus::worst`].

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::object::split_api_version;

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

fn deployment(obj: &Value) -> HealthVerdict {
    if obj.pointer("/spec/paused").and_then(Value::as_bool) == Some(true) {
        return verdict(Suspended, "Deployment is paused");
    }
    if let Some(v) = generation_gate(obj, "Deployment") {
        return v;
    }
    if let Some(c) = condition(obj, "Progressing")
        && c.reason == "ProgressDeadlineExceeded"
    {
        return verdict(
            Degraded,
            explain(&c, "Deployment exceeded its progress deadline"),
        );
    }
    let want = int(obj, "/spec/replicas").unwrap_or(1);
    let total = int(obj, "/status/replicas").unwrap_or(0);
    let updated = int(obj, "/status/updatedReplicas").unwrap_or(0);
    let available = int(obj, "/status/availableReplicas").unwrap_or(0);
    if updated < want {
        return verdict(Progressing, format!("{updated} of {want} replicas updated"));
    }
    if total > updated {
        return verdict(
            Progressing,
            format!("{} old replicas are pending termination", total - updated),
        );
    }
    if available < updated {
        return verdict(
            Progressing,
            format!("{available} of {updated} updated replicas are available"),
        );
    }
    verdict(Healthy, format!("{available} of {want} replicas available"))
}

fn stateful_set(obj: &Value) -> HealthVerdict {
    if let Some(v) = generation_gate(obj, "StatefulSet") {
        return v;
    }
    let want = int(obj, "/spec/replicas").unwrap_or(1);
    let ready = int(obj, "/status/readyReplicas").unwrap_or(0);
    if ready < want {
        return verdict(Progressing, format!("{ready} of {want} replicas ready"));
    }
    match text(obj, "/spec/updateStrategy/type") {
        Some("OnDelete") => {
            return verdict(
                Healthy,
                format!("{ready} of {want} replicas ready (update strategy OnDelete)"),
            );
        }
        _ => {
            let partition = int(obj, "/spec/updateStrategy/rollingUpdate/partition").unwrap_or(0);
            let updated = int(obj, "/status/updatedReplicas").unwrap_or(0);
            if partition > 0 {
                let target = (want - partition).max(0);
                if updated < target {
                    return verdict(
                        Progressing,
                        format!("{updated} of {target} partitioned replicas updated"),
                    );
                }
                return verdict(
                    Healthy,
                    format!("partitioned rollout complete: {updated} replicas updated"),
                );
            }
        }
    }
    let current = text(obj, "/status/currentRevision");
    let update = text(obj, "/status/updateRevision");
    if update.is_some() && current != update {
        return verdict(
            Progressing,
            "waiting for the rolling update to complete (currentRevision != updateRevision)",
        );
    }
    verdict(Healthy, format!("{ready} of {want} replicas ready"))
}

fn daemon_set(obj: &Value) -> HealthVerdict {
    if let Some(v) = generation_gate(obj, "DaemonSet") {
        return v;
    }
    let desired = int(obj, "/status/desiredNumberScheduled").unwrap_or(0);
    let updated = int(obj, "/status/updatedNumberScheduled").unwrap_or(0);
    let available = int(obj, "/status/numberAvailable").unwrap_or(0);
    if text(obj, "/spec/updateStrategy/type") != Some("OnDelete") && updated < desired {
        return verdict(Progressing, format!("{updated} of {desired} pods updated"));
    }
    if available < desired {
        return verdict(
            Progressing,
            format!("{available} of {desired} pods available"),
        );
    }
    verdict(Healthy, format!("{available} of {desired} pods available"))
}

fn replica_set(obj: &Value) -> HealthVerdict {
    if let Some(v) = generation_gate(obj, "ReplicaSet") {
        return v;
    }
    if let Some(c) = condition(obj, "ReplicaFailure")
        && c.status == "True"
    {
        return verdict(Degraded, explain(&c, "ReplicaSet failed to create pods"));
    }
    let want = int(obj, "/spec/replicas").unwrap_or(1);
    let available = int(obj, "/status/availableReplicas").unwrap_or(0);
    if available < want {
        return verdict(
            Progressing,
            format!("{available} of {want} replicas available"),
        );
    }
    verdict(Healthy, format!("{available} of {want} replicas available"))
}

fn job(obj: &Value) -> HealthVerdict {
    if let Some(c) = condition(obj, "Failed")
        && c.status == "True"
    {
        return verdict(Degraded, explain(&c, "Job failed"));
    }
    if let Some(c) = condition(obj, "Complete")
        && c.status == "True"
    {
        return verdict(Healthy, "Job completed");
    }
    if obj.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true) {
        return verdict(Suspended, "Job is suspended");
    }
    let active = int(obj, "/status/active").unwrap_or(0);
    verdict(
        Progressing,
        format!("Job is running ({active} active pods)"),
    )
}

fn cron_job(obj: &Value) -> HealthVerdict {
    if obj.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true) {
        return verdict(Suspended, "CronJob is suspended");
    }
    verdict(Healthy, "CronJob is scheduled")
}

/// Container waiting reasons that will not resolve by themselves.
const BAD_WAITING_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

fn pod(obj: &Value) -> HealthVerdict {
    let statuses = ["initContainerStatuses", "containerStatuses"]
        .iter()
        .filter_map(|f| obj.pointer(&format!("/status/{f}"))?.as_array())
        .flatten();
    for cs in statuses {
        let Some(reason) = cs.pointer("/state/waiting/reason").and_then(Value::as_str) else {
            continue;
        };
        if BAD_WAITING_REASONS.contains(&reason) {
            let name = cs.get("name").and_then(Value::as_str).unwrap_or("?");
            let message = cs
                .pointer("/state/waiting/message")
                .and_then(Value::as_str)
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            return verdict(
                Degraded,
                format!("container {name} is waiting: {reason}{message}"),
            );
        }
    }
    let message = text(obj, "/status/message").unwrap_or("");
    match text(obj, "/status/phase").unwrap_or("") {
        "Succeeded" => verdict(Healthy, "Pod completed"),
        "Failed" => verdict(
            Degraded,
            if message.is_empty() {
                "Pod failed".to_owned()
            } else {
                format!("Pod failed: {message}")
            },
        ),
        "Running" => {
            let restart_always = text(obj, "/spec/restartPolicy").unwrap_or("Always") == "Always";
            match condition(obj, "Ready") {
                Some(c) if c.status == "True" => verdict(Healthy, "Pod is running and ready"),
                _ if !restart_always => verdict(Progressing, "Pod is running"),
                _ => verdict(Progressing, "Pod is running but not ready"),
            }
        }
        "Pending" => verdict(Progressing, "Pod is pending"),
        other => verdict(Progressing, format!("Pod phase is {other:?}")),
    }
}

fn pvc(obj: &Value) -> HealthVerdict {
    match text(obj, "/status/phase").unwrap_or("") {
        "Bound" => verdict(Healthy, "PersistentVolumeClaim is bound"),
        "Lost" => verdict(Degraded, "PersistentVolumeClaim lost its volume"),
        _ => verdict(Progressing, "PersistentVolumeClaim is not bound yet"),
    }
}

fn service(obj: &Value) -> HealthVerdict {
    if text(obj, "/spec/type") != Some("LoadBalancer") {
        return verdict(Healthy, "Service exists");
    }
    let has_ingress = obj
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if has_ingress {
        verdict(Healthy, "load balancer is provisioned")
    } else {
        verdict(
            Progressing,
            "waiting for the load balancer to be provisioned",
        )
    }
}

fn namespace(obj: &Value) -> HealthVerdict {
    match text(obj, "/status/phase") {
        Some("Active") => verdict(Healthy, "Namespace is active"),
        Some("Terminating") => verdict(Progressing, "Namespace is terminating"),
        _ => verdict(Progressing, "Namespace is not active yet"),
    }
}

fn crd(obj: &Value) -> HealthVerdict {
    if let Some(c) = condition(obj, "NamesAccepted")
        && c.status == "False"
    {
        return verdict(Degraded, explain(&c, "CRD names were not accepted"));
    }
    match condition(obj, "Established") {
        Some(c) if c.status == "True" => verdict(Healthy, "CRD is established"),
        _ => verdict(Progressing, "waiting for the CRD to be established"),
    }
}

fn generic(obj: &Value) -> HealthVerdict {
    // kstatus: a status.observedGeneration behind metadata.generation means stale conditions.
    if obj.pointer("/status/observedGeneration").is_some()
        && let Some(v) = generation_gate(obj, "resource")
    {
        return v;
    }
    if let Some(c) = condition(obj, "Stalled")
        && c.status == "True"
    {
        return verdict(Degraded, explain(&c, "Stalled"));
    }
    for type_ in ["Ready", "Available"] {
        let Some(c) = condition(obj, type_) else {
            continue;
        };
        return match c.status {
            "True" => verdict(Healthy, explain(&c, &format!("{type_}=True"))),
            "False" => {
                let reconciling = condition(obj, "Reconciling").is_some_and(|r| r.status == "True")
                    || c.reason.contains("Progressing")
                    || c.reason.contains("Reconciling");
                let status = if reconciling { Progressing } else { Degraded };
                verdict(status, explain(&c, &format!("{type_}=False")))
            }
            _ => verdict(Progressing, explain(&c, &format!("{type_} is unknown"))),
        };
    }
    if let Some(c) = condition(obj, "Reconciling")
        && c.status == "True"
    {
        return verdict(Progressing, explain(&c, "Reconciling"));
    }
    verdict(Healthy, "exists")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(obj: Value, status: HealthStatus, reason: &str) {
        let v = health(&obj);
        assert_eq!(v.status, status, "{v} for {obj}");
        assert!(v.reason.contains(reason), "{v:?} lacks {reason:?}");
    }

    fn deploy(spec: Value, status: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "d", "generation": 2}, "spec": spec, "status": status})
    }

    #[test]
    fn deployment() {
        let ok = json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3});
        check(
            deploy(json!({"replicas": 3}), ok.clone()),
            Healthy,
            "3 of 3",
        );
        let mut stale = ok.clone();
        stale["observedGeneration"] = json!(1);
        check(
            deploy(json!({"replicas": 3}), stale),
            Progressing,
            "generation 2",
        );
        check(
            deploy(
                json!({"replicas": 3}),
                json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 3}),
            ),
            Progressing,
            "1 of 3 replicas updated",
        );
        check(
            deploy(
                json!({"replicas": 3}),
                json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 3, "availableReplicas": 3}),
            ),
            Progressing,
            "pending termination",
        );
        check(
            deploy(
                json!({"replicas": 3}),
                json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 2}),
            ),
            Progressing,
            "2 of 3 updated replicas are available",
        );
        let mut stuck = ok;
        stuck["conditions"] = json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet \"d-1\" has timed out progressing."}]);
        check(deploy(json!({"replicas": 3}), stuck), Degraded, "timed out");
        check(
            deploy(json!({"paused": true}), json!({})),
            Suspended,
            "paused",
        );
        // spec.replicas defaults to 1
        check(
            deploy(
                json!({}),
                json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}),
            ),
            Healthy,
            "1 of 1",
        );
    }

    #[test]
    fn stateful_set_daemon_set_replica_set() {
        let sts = |status: Value| json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"generation": 1}, "spec": {"replicas": 2}, "status": status});
        check(
            sts(json!({"observedGeneration": 1, "readyReplicas": 1})),
            Progressing,
            "1 of 2 replicas ready",
        );
        check(
            sts(
                json!({"observedGeneration": 1, "readyReplicas": 2, "currentRevision": "a", "updateRevision": "b"}),
            ),
            Progressing,
            "rolling update",
        );
        check(
            sts(
                json!({"observedGeneration": 1, "readyReplicas": 2, "currentRevision": "b", "updateRevision": "b"}),
            ),
            Healthy,
            "2 of 2",
        );

        let ds = |status: Value| json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"generation": 1}, "status": status});
        check(
            ds(
                json!({"observedGeneration": 1, "desiredNumberScheduled": 3, "updatedNumberScheduled": 2, "numberAvailable": 3}),
            ),
            Progressing,
            "2 of 3 pods updated",
        );
        check(
            ds(
                json!({"observedGeneration": 1, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberAvailable": 1}),
            ),
            Progressing,
            "1 of 3 pods available",
        );
        check(
            ds(
                json!({"observedGeneration": 1, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberAvailable": 3}),
            ),
            Healthy,
            "3 of 3",
        );

        let rs = |status: Value| json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"generation": 1}, "spec": {"replicas": 2}, "status": status});
        check(
            rs(json!({"observedGeneration": 1, "availableReplicas": 2})),
            Healthy,
            "2 of 2",
        );
        check(
            rs(
                json!({"observedGeneration": 1, "availableReplicas": 0, "conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": "quota exceeded"}]}),
            ),
            Degraded,
            "FailedCreate: quota exceeded",
        );
    }

    #[test]
    fn job_and_pod() {
        let job =
            |status: Value| json!({"apiVersion": "batch/v1", "kind": "Job", "status": status});
        check(
            job(json!({"conditions": [{"type": "Complete", "status": "True"}]})),
            Healthy,
            "completed",
        );
        check(
            job(
                json!({"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}),
            ),
            Degraded,
            "BackoffLimitExceeded",
        );
        check(job(json!({"active": 1})), Progressing, "running");

        let pod = |status: Value| json!({"apiVersion": "v1", "kind": "Pod", "spec": {}, "status": status});
        check(
            pod(json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]})),
            Healthy,
            "ready",
        );
        check(
            pod(json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]})),
            Progressing,
            "not ready",
        );
        check(
            pod(
                json!({"phase": "Running", "containerStatuses": [{"name": "app", "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m"}}}]}),
            ),
            Degraded,
            "container app is waiting: CrashLoopBackOff: back-off 5m",
        );
        check(
            pod(
                json!({"phase": "Pending", "initContainerStatuses": [{"name": "init", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}),
            ),
            Degraded,
            "ImagePullBackOff",
        );
        check(
            pod(
                json!({"phase": "Pending", "containerStatuses": [{"name": "a", "state": {"waiting": {"reason": "ContainerCreating"}}}]}),
            ),
            Progressing,
            "pending",
        );
        check(
            pod(json!({"phase": "Failed", "message": "OOMKilled"})),
            Degraded,
            "OOMKilled",
        );
        check(pod(json!({"phase": "Succeeded"})), Healthy, "completed");
    }

    #[test]
    fn pvc_service_crd_namespace() {
        check(
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "status": {"phase": "Bound"}}),
            Healthy,
            "bound",
        );
        check(
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "status": {"phase": "Pending"}}),
            Progressing,
            "not bound",
        );
        check(
            json!({"apiVersion": "v1", "kind": "Service", "spec": {"type": "ClusterIP"}}),
            Healthy,
            "exists",
        );
        check(
            json!({"apiVersion": "v1", "kind": "Service", "spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {}}}),
            Progressing,
            "load balancer",
        );
        check(
            json!({"apiVersion": "v1", "kind": "Service", "spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}}),
            Healthy,
            "provisioned",
        );
        let crd = |conds: Value| json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "status": {"conditions": conds}});
        check(
            crd(json!([{"type": "Established", "status": "True"}])),
            Healthy,
            "established",
        );
        check(crd(json!([])), Progressing, "established");
        check(
            crd(
                json!([{"type": "NamesAccepted", "status": "False", "reason": "ListKindConflict"}]),
            ),
            Degraded,
            "ListKindConflict",
        );
        check(
            json!({"apiVersion": "v1", "kind": "Namespace", "status": {"phase": "Active"}}),
            Healthy,
            "active",
        );
        check(
            json!({"apiVersion": "v1", "kind": "Namespace", "status": {"phase": "Terminating"}}),
            Progressing,
            "terminating",
        );
    }

    #[test]
    fn generic_conditions() {
        let cr = |status: Value| json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"generation": 3}, "status": status});
        check(
            cr(
                json!({"observedGeneration": 3, "conditions": [{"type": "Ready", "status": "True"}]}),
            ),
            Healthy,
            "Ready=True",
        );
        check(
            cr(
                json!({"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True"}]}),
            ),
            Progressing,
            "generation 3",
        );
        check(
            cr(
                json!({"conditions": [{"type": "Ready", "status": "False", "reason": "AuthFailed", "message": "bad token"}]}),
            ),
            Degraded,
            "AuthFailed: bad token",
        );
        check(
            cr(
                json!({"conditions": [{"type": "Ready", "status": "False", "reason": "Progressing"}]}),
            ),
            Progressing,
            "Progressing",
        );
        check(
            cr(json!({"conditions": [{"type": "Ready", "status": "Unknown"}]})),
            Progressing,
            "unknown",
        );
        check(
            cr(json!({"conditions": [{"type": "Available", "status": "False"}]})),
            Degraded,
            "Available=False",
        );
        check(
            cr(
                json!({"conditions": [{"type": "Stalled", "status": "True", "reason": "InvalidSpec"}]}),
            ),
            Degraded,
            "InvalidSpec",
        );
        check(
            json!({"apiVersion": "v1", "kind": "ConfigMap"}),
            Healthy,
            "exists",
        );
        check(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"deletionTimestamp": "x"}}),
            Progressing,
            "deleted",
        );
    }

    #[test]
    fn worst() {
        assert_eq!(HealthStatus::worst([]), Healthy);
        assert_eq!(
            HealthStatus::worst([Healthy, Degraded, Progressing]),
            Degraded
        );
        assert_eq!(
            HealthStatus::worst([Healthy, HealthStatus::Missing, Progressing]),
            HealthStatus::Missing
        );
        let a = HealthVerdict::new(Progressing, "a");
        let b = HealthVerdict::new(Progressing, "b");
        let h = HealthVerdict::new(Healthy, "h");
        assert_eq!(HealthVerdict::worst([&h, &a, &b]).unwrap().reason, "a");
        assert!(HealthVerdict::worst([]).is_none());
    }
}
