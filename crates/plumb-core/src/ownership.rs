//! Ownership labels: how Plumb marks the cluster objects a Sync manages.
//!
//! Pruning deletes an object only if it is in the Sync's previous inventory *and* its live
//! copy carries both labels below with this Sync's values.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::object::Manifest;

/// Label holding the owning Sync's name.
pub const SYNC_NAME_LABEL: &str = "plumb.dev/sync-name";
/// Label holding the owning Sync's namespace.
pub const SYNC_NAMESPACE_LABEL: &str = "plumb.dev/sync-namespace";

/// Identifies a Sync (the owner of applied objects). For the CLI without a Sync object, use a
/// stable made-up identity (e.g. namespace `plumb-system`, name `cli-<dir>`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SyncId {
    /// Namespace of the Sync object.
    pub namespace: String,
    /// Name of the Sync object.
    pub name: String,
}

impl SyncId {
    /// Convenience constructor.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        SyncId {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The label selector matching this Sync's objects: `plumb.dev/sync-name=..,plumb.dev/sync-namespace=..`.
    pub fn label_selector(&self) -> String {
        format!(
            "{SYNC_NAME_LABEL}={},{SYNC_NAMESPACE_LABEL}={}",
            self.name, self.namespace
        )
    }
}

impl fmt::Display for SyncId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Sets both ownership labels on `manifest`, overwriting any values it had.
pub fn mark_owned(manifest: &mut Manifest, sync: &SyncId) {
    let labels = manifest.labels_mut();
    labels.insert(SYNC_NAME_LABEL.into(), Value::String(sync.name.clone()));
    labels.insert(
        SYNC_NAMESPACE_LABEL.into(),
        Value::String(sync.namespace.clone()),
    );
}

/// The Sync whose ownership labels the (live) object carries, if it carries any: a label
/// missing from the pair reads as empty.
pub fn owner_of(live: &Value) -> Option<SyncId> {
    let label = |name: &str| {
        live.pointer("/metadata/labels")
            .and_then(|l| l.get(name))
            .and_then(Value::as_str)
    };
    match (label(SYNC_NAMESPACE_LABEL), label(SYNC_NAME_LABEL)) {
        (None, None) => None,
        (ns, name) => Some(SyncId::new(ns.unwrap_or(""), name.unwrap_or(""))),
    }
}

/// The Sync that took `live` over from the owner `applied` names: `Some` when both carry
/// ownership labels and they differ (another Sync adopted the object). The previous owner
/// must then leave the object alone rather than take it back as drift.
pub fn taken_over_by(applied: &Value, live: &Value) -> Option<SyncId> {
    let mine = owner_of(applied)?;
    owner_of(live).filter(|theirs| *theirs != mine)
}

/// True if the (live) object carries both ownership labels with exactly `sync`'s values.
pub fn is_owned_by(live: &Value, sync: &SyncId) -> bool {
    let label = |name: &str| {
        live.pointer("/metadata/labels")
            .and_then(|l| l.get(name))
            .and_then(Value::as_str)
    };
    label(SYNC_NAME_LABEL) == Some(sync.name.as_str())
        && label(SYNC_NAMESPACE_LABEL) == Some(sync.namespace.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_relabelled_by_another_sync_was_taken_over() {
        let labelled = |name: &str| {
            serde_json::json!({"metadata": {"labels": {
                SYNC_NAME_LABEL: name, SYNC_NAMESPACE_LABEL: "ns"}}})
        };
        let none = serde_json::json!({"metadata": {}});
        assert_eq!(
            taken_over_by(&labelled("app"), &labelled("copy")),
            Some(SyncId::new("ns", "copy"))
        );
        assert_eq!(taken_over_by(&labelled("app"), &labelled("app")), None);
        // Labels removed by hand are drift, not a takeover; unlabelled manifests own nothing.
        assert_eq!(taken_over_by(&labelled("app"), &none), None);
        assert_eq!(taken_over_by(&none, &labelled("copy")), None);
    }
    use serde_json::json;

    #[test]
    fn mark_then_owned() {
        let sync = SyncId::new("flux", "apps");
        let mut m = Manifest::from_value(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"plumb.dev/sync-name": "other"}}}),
            None,
        )
        .unwrap();
        assert!(!is_owned_by(&m.object, &sync));
        mark_owned(&mut m, &sync);
        assert!(is_owned_by(&m.object, &sync));
        assert!(!is_owned_by(&m.object, &SyncId::new("other-ns", "apps")));
        assert!(!is_owned_by(&m.object, &SyncId::new("flux", "apps2")));
        assert!(!is_owned_by(&json!({"metadata": {}}), &sync));
        assert_eq!(
            sync.label_selector(),
            "plumb.dev/sync-name=apps,plumb.dev/sync-namespace=flux"
        );
    }
}
