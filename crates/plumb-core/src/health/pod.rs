//! Pods: phase, and container states that will not recover by themselves.

use serde_json::Value;

use super::{Degraded, HealthVerdict, Healthy, Progressing, condition, text, verdict};

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

pub(super) fn pod(obj: &Value) -> HealthVerdict {
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
