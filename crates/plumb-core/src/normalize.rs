//! Normalisation: strip server-managed noise so that "same object" means "same intent".

use serde_json::Value;

/// Metadata fields the server sets or that only describe bookkeeping, never user intent.
const NOISY_METADATA: &[&str] = &[
    "managedFields",
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "selfLink",
    "deletionGracePeriodSeconds",
];

/// Annotations that hold bookkeeping (the client-side-apply copy can also hold Secret data).
const NOISY_ANNOTATIONS: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];

/// A copy of `obj` without server noise: `status`, the metadata fields `managedFields`,
/// `resourceVersion`, `uid`, `creationTimestamp`, `generation`, `selfLink`,
/// `deletionGracePeriodSeconds`, and the `kubectl.kubernetes.io/last-applied-configuration`
/// annotation. Labels/annotations maps left empty are removed, so `{}` equals absent.
/// Everything else (including server-defaulted spec fields) is kept: compare against a
/// server-side dry-run result, not against the raw manifest.
pub fn normalize(obj: &Value) -> Value {
    let mut out = obj.clone();
    let Some(root) = out.as_object_mut() else {
        return out;
    };
    root.remove("status");
    if let Some(Value::Object(meta)) = root.get_mut("metadata") {
        for f in NOISY_METADATA {
            meta.remove(*f);
        }
        if let Some(Value::Object(ann)) = meta.get_mut("annotations") {
            for a in NOISY_ANNOTATIONS {
                ann.remove(*a);
            }
        }
        for field in ["annotations", "labels"] {
            let empty = match meta.get(field) {
                Some(Value::Object(m)) => m.is_empty(),
                Some(Value::Null) => true,
                _ => false,
            };
            if empty {
                meta.remove(field);
            }
        }
    }
    out
}

/// True if the server-side dry-run apply result equals the live object after normalisation:
/// applying would change nothing the user cares about, so the object is unchanged.
pub fn same_state(dry_run_result: &Value, live: &Value) -> bool {
    normalize(dry_run_result) == normalize(live)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn live() -> Value {
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": "c", "namespace": "ns", "uid": "123", "resourceVersion": "7",
                "generation": 2, "creationTimestamp": "2024-01-01T00:00:00Z",
                "selfLink": "/x", "managedFields": [{"manager": "kubectl"}],
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"secret\":1}"},
                "labels": {"app": "x"}
            },
            "data": {"k": "v"},
            "status": {"phase": "whatever"}
        })
    }

    #[test]
    fn strips_noise_keeps_intent() {
        assert_eq!(
            normalize(&live()),
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "c", "namespace": "ns", "labels": {"app": "x"}},
                "data": {"k": "v"}
            })
        );
    }

    #[test]
    fn same_state_ignores_noise_but_not_data() {
        let mut dry = live();
        dry["metadata"]["resourceVersion"] = json!("8");
        dry["metadata"]["managedFields"] = json!([{"manager": "plumb"}]);
        dry["metadata"]["annotations"] = json!({});
        assert!(same_state(&dry, &live()));
        dry["data"]["k"] = json!("changed");
        assert!(!same_state(&dry, &live()));
        let mut dry = live();
        dry["metadata"]["labels"]["new"] = json!("label");
        assert!(!same_state(&dry, &live()));
    }
}
