//! Kinds judged by one phase, field or condition (PersistentVolumeClaim, Service, Namespace,
//! CustomResourceDefinition), and the fallback for every other kind: `status.conditions`.

use serde_json::Value;

use super::{
    Degraded, HealthVerdict, Healthy, Progressing, condition, explain, generation_gate, text,
    verdict,
};

pub(super) fn pvc(obj: &Value) -> HealthVerdict {
    match text(obj, "/status/phase").unwrap_or("") {
        "Bound" => verdict(Healthy, "PersistentVolumeClaim is bound"),
        "Lost" => verdict(Degraded, "PersistentVolumeClaim lost its volume"),
        _ => verdict(Progressing, "PersistentVolumeClaim is not bound yet"),
    }
}

pub(super) fn service(obj: &Value) -> HealthVerdict {
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

pub(super) fn namespace(obj: &Value) -> HealthVerdict {
    match text(obj, "/status/phase") {
        Some("Active") => verdict(Healthy, "Namespace is active"),
        Some("Terminating") => verdict(Progressing, "Namespace is terminating"),
        _ => verdict(Progressing, "Namespace is not active yet"),
    }
}

pub(super) fn crd(obj: &Value) -> HealthVerdict {
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

pub(super) fn generic(obj: &Value) -> HealthVerdict {
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
