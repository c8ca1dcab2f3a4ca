//! Workload controllers (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob):
//! rolled out, paused or failed, from the counts and conditions their controllers report.

use serde_json::Value;

use super::{
    Degraded, HealthVerdict, Healthy, Progressing, Suspended, condition, explain, generation_gate,
    int, text, verdict,
};

pub(super) fn deployment(obj: &Value) -> HealthVerdict {
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

pub(super) fn stateful_set(obj: &Value) -> HealthVerdict {
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

pub(super) fn daemon_set(obj: &Value) -> HealthVerdict {
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

pub(super) fn replica_set(obj: &Value) -> HealthVerdict {
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

pub(super) fn job(obj: &Value) -> HealthVerdict {
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

pub(super) fn cron_job(obj: &Value) -> HealthVerdict {
    if obj.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true) {
        return verdict(Suspended, "CronJob is suspended");
    }
    verdict(Healthy, "CronJob is scheduled")
}
