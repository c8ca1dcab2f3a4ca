//! Health by kind, through [`health`] and the aggregates.

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
    let job = |status: Value| json!({"apiVersion": "batch/v1", "kind": "Job", "status": status});
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

    let pod =
        |status: Value| json!({"apiVersion": "v1", "kind": "Pod", "spec": {}, "status": status});
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
        crd(json!([{"type": "NamesAccepted", "status": "False", "reason": "ListKindConflict"}])),
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
        cr(json!({"observedGeneration": 3, "conditions": [{"type": "Ready", "status": "True"}]})),
        Healthy,
        "Ready=True",
    );
    check(
        cr(json!({"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True"}]})),
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
        cr(json!({"conditions": [{"type": "Ready", "status": "False", "reason": "Progressing"}]})),
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
        cr(json!({"conditions": [{"type": "Stalled", "status": "True", "reason": "InvalidSpec"}]})),
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

#[test]
fn only_kinds_without_a_status_are_healthy_once_present() {
    for (api, kind, extra) in [
        ("v1", "ConfigMap", json!({})),
        ("v1", "Secret", json!({})),
        ("v1", "ServiceAccount", json!({})),
        ("v1", "Service", json!({"spec": {"type": "ClusterIP"}})),
        ("v1", "Service", json!({})),
        ("rbac.authorization.k8s.io/v1", "ClusterRole", json!({})),
        ("networking.k8s.io/v1", "NetworkPolicy", json!({})),
    ] {
        let mut obj = json!({"apiVersion": api, "kind": kind, "metadata": {"name": "x"}});
        obj.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        assert!(healthy_once_present(&obj), "{obj}");
        assert_eq!(health(&obj).status, HealthStatus::Healthy, "{obj}");
    }
    for (api, kind, extra) in [
        ("v1", "Service", json!({"spec": {"type": "LoadBalancer"}})),
        ("apps/v1", "Deployment", json!({})),
        ("v1", "Pod", json!({})),
        ("v1", "PersistentVolumeClaim", json!({})),
        ("v1", "Namespace", json!({})),
        ("example.com/v1", "Widget", json!({})),
        // Same name, another group: not the core kind.
        ("example.com/v1", "ConfigMap", json!({})),
    ] {
        let mut obj = json!({"apiVersion": api, "kind": kind, "metadata": {"name": "x"}});
        obj.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        assert!(!healthy_once_present(&obj), "{obj}");
    }
}
