//! Apply ordering as data: a kind-order table grouped into stages.
//!
//! The applier applies stage by stage and waits between [`Stage::Definitions`] and the rest
//! (CRDs must be Established and Namespaces exist before objects that use them). Pruning runs
//! in the reverse order. Modelled on fluxcd/pkg `ssa/sort.go`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An apply stage. Stages are applied in ascending order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    /// CustomResourceDefinitions and Namespaces; wait for them before going on.
    Definitions,
    /// Cluster-scoped configuration: ClusterRoles, PriorityClasses, StorageClasses, ...
    ClusterConfig,
    /// Namespaced configuration: ServiceAccounts, Roles, ConfigMaps, Secrets, Services, ...
    NamespacedConfig,
    /// Workloads: Deployments, StatefulSets, DaemonSets, Jobs, Pods, ...
    Workloads,
    /// Everything else: custom resources, Ingresses, autoscalers; admission webhooks last.
    Rest,
}

impl Stage {
    /// All stages in apply order.
    pub const ALL: [Stage; 5] = [
        Stage::Definitions,
        Stage::ClusterConfig,
        Stage::NamespacedConfig,
        Stage::Workloads,
        Stage::Rest,
    ];
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Definitions => "definitions",
            Stage::ClusterConfig => "cluster-config",
            Stage::NamespacedConfig => "namespaced-config",
            Stage::Workloads => "workloads",
            Stage::Rest => "rest",
        })
    }
}

const RBAC: &str = "rbac.authorization.k8s.io";
const ADMISSION: &str = "admissionregistration.k8s.io";

/// (group, kind, stage) in apply order. Kinds not listed (custom resources, newer built-ins)
/// go to [`Stage::Rest`], after the listed Rest kinds but before [`LAST_KINDS`].
const KIND_ORDER: &[(&str, &str, Stage)] = &[
    (
        "apiextensions.k8s.io",
        "CustomResourceDefinition",
        Stage::Definitions,
    ),
    ("", "Namespace", Stage::Definitions),
    ("node.k8s.io", "RuntimeClass", Stage::ClusterConfig),
    ("scheduling.k8s.io", "PriorityClass", Stage::ClusterConfig),
    ("storage.k8s.io", "StorageClass", Stage::ClusterConfig),
    ("storage.k8s.io", "CSIDriver", Stage::ClusterConfig),
    (
        "snapshot.storage.k8s.io",
        "VolumeSnapshotClass",
        Stage::ClusterConfig,
    ),
    ("networking.k8s.io", "IngressClass", Stage::ClusterConfig),
    (
        "gateway.networking.k8s.io",
        "GatewayClass",
        Stage::ClusterConfig,
    ),
    ("", "PersistentVolume", Stage::ClusterConfig),
    (RBAC, "ClusterRole", Stage::ClusterConfig),
    (RBAC, "ClusterRoleBinding", Stage::ClusterConfig),
    ("", "ResourceQuota", Stage::NamespacedConfig),
    ("", "LimitRange", Stage::NamespacedConfig),
    ("", "ServiceAccount", Stage::NamespacedConfig),
    (RBAC, "Role", Stage::NamespacedConfig),
    (RBAC, "RoleBinding", Stage::NamespacedConfig),
    ("", "ConfigMap", Stage::NamespacedConfig),
    ("", "Secret", Stage::NamespacedConfig),
    ("", "PersistentVolumeClaim", Stage::NamespacedConfig),
    (
        "networking.k8s.io",
        "NetworkPolicy",
        Stage::NamespacedConfig,
    ),
    ("policy", "PodDisruptionBudget", Stage::NamespacedConfig),
    ("", "Service", Stage::NamespacedConfig),
    ("", "Endpoints", Stage::NamespacedConfig),
    ("discovery.k8s.io", "EndpointSlice", Stage::NamespacedConfig),
    ("", "PodTemplate", Stage::Workloads),
    ("", "ReplicationController", Stage::Workloads),
    ("apps", "ReplicaSet", Stage::Workloads),
    ("apps", "Deployment", Stage::Workloads),
    ("apps", "StatefulSet", Stage::Workloads),
    ("apps", "DaemonSet", Stage::Workloads),
    ("batch", "Job", Stage::Workloads),
    ("batch", "CronJob", Stage::Workloads),
    ("", "Pod", Stage::Workloads),
    ("autoscaling", "HorizontalPodAutoscaler", Stage::Rest),
    ("networking.k8s.io", "Ingress", Stage::Rest),
    ("apiregistration.k8s.io", "APIService", Stage::Rest),
];

/// Applied after everything else (including custom resources): admission configuration,
/// so that a webhook whose backend is in the same render does not block its own rollout.
const LAST_KINDS: &[(&str, &str)] = &[
    (ADMISSION, "ValidatingAdmissionPolicy"),
    (ADMISSION, "ValidatingAdmissionPolicyBinding"),
    (ADMISSION, "MutatingAdmissionPolicy"),
    (ADMISSION, "MutatingAdmissionPolicyBinding"),
    (ADMISSION, "MutatingWebhookConfiguration"),
    (ADMISSION, "ValidatingWebhookConfiguration"),
];

/// The stage a kind is applied in. Unknown kinds (custom resources) are [`Stage::Rest`].
pub fn stage_of(kind: &str, group: &str) -> Stage {
    apply_rank(kind, group).0
}

/// The full sort rank of a kind: (stage, position in the kind-order table). Unknown kinds share
/// one position within [`Stage::Rest`]; callers break ties by kind, group, namespace and name.
pub fn apply_rank(kind: &str, group: &str) -> (Stage, usize) {
    if let Some(i) = KIND_ORDER
        .iter()
        .position(|(g, k, _)| *g == group && *k == kind)
    {
        return (KIND_ORDER[i].2, i);
    }
    let unknown = KIND_ORDER.len();
    if let Some(i) = LAST_KINDS
        .iter()
        .position(|(g, k)| *g == group && *k == kind)
    {
        return (Stage::Rest, unknown + 1 + i);
    }
    (Stage::Rest, unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages() {
        assert_eq!(
            stage_of("CustomResourceDefinition", "apiextensions.k8s.io"),
            Stage::Definitions
        );
        assert_eq!(stage_of("Namespace", ""), Stage::Definitions);
        assert_eq!(stage_of("ClusterRole", RBAC), Stage::ClusterConfig);
        assert_eq!(stage_of("ConfigMap", ""), Stage::NamespacedConfig);
        assert_eq!(stage_of("Deployment", "apps"), Stage::Workloads);
        assert_eq!(stage_of("Ingress", "networking.k8s.io"), Stage::Rest);
        // Same kind name in another group is a custom resource.
        assert_eq!(stage_of("Deployment", "example.com"), Stage::Rest);
        assert_eq!(stage_of("Widget", "example.com"), Stage::Rest);
    }

    #[test]
    fn webhooks_after_custom_resources_after_ingress() {
        let ingress = apply_rank("Ingress", "networking.k8s.io");
        let widget = apply_rank("Widget", "example.com");
        let webhook = apply_rank("ValidatingWebhookConfiguration", ADMISSION);
        assert!(ingress < widget && widget < webhook);
        assert!(apply_rank("ServiceAccount", "") < apply_rank("RoleBinding", RBAC));
        assert!(apply_rank("ConfigMap", "") < apply_rank("Service", ""));
    }

    #[test]
    fn table_stages_are_monotonic() {
        for pair in KIND_ORDER.windows(2) {
            assert!(pair[0].2 <= pair[1].2, "{:?} before {:?}", pair[0], pair[1]);
        }
    }
}
