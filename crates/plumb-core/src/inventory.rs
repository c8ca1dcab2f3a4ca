//! The inventory: the set of objects a Sync applied last time (what it may prune later).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::object::{Manifest, ObjectKey, split_api_version};

/// Errors reading a stored inventory.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The stored JSON does not parse as an inventory.
    #[error("stored inventory is not valid: {0}")]
    Parse(#[source] serde_json::Error),
}

/// Result alias for this module.
pub type Result<T, E = InventoryError> = std::result::Result<T, E>;

/// One applied object: its key plus the full `apiVersion` it was applied with (needed to
/// address it for deletion later, since the key holds only the group).
///
/// Serialised compactly: `{"k":"Deployment","g":"apps","ns":"web","n":"api","v":"apps/v1"}`
/// (`g` and `ns` are omitted when empty).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "CompactEntry", into = "CompactEntry")]
pub struct InventoryEntry {
    /// The object's identity.
    pub key: ObjectKey,
    /// `apiVersion` it was applied with, e.g. `apps/v1`.
    pub api_version: String,
}

impl InventoryEntry {
    /// The entry for a manifest.
    pub fn from_manifest(m: &Manifest) -> Self {
        InventoryEntry {
            key: m.key(),
            api_version: m.api_version().to_owned(),
        }
    }

    /// The API version part of `api_version` (`v1` for `apps/v1`).
    pub fn version(&self) -> &str {
        split_api_version(&self.api_version).1
    }
}

#[derive(Serialize, Deserialize)]
struct CompactEntry {
    k: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    g: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ns: Option<String>,
    n: String,
    v: String,
}

impl From<CompactEntry> for InventoryEntry {
    fn from(c: CompactEntry) -> Self {
        InventoryEntry {
            key: ObjectKey::new(c.g, c.k, c.ns.as_deref(), c.n),
            api_version: c.v,
        }
    }
}

impl From<InventoryEntry> for CompactEntry {
    fn from(e: InventoryEntry) -> Self {
        CompactEntry {
            k: e.key.kind,
            g: e.key.group,
            ns: e.key.namespace,
            n: e.key.name,
            v: e.api_version,
        }
    }
}

/// The set of objects a Sync applied, ordered by key. Serialised as compact JSON
/// (`{"entries":[...]}`) for storage in a ConfigMap or the Sync status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// The applied objects.
    #[serde(default)]
    pub entries: BTreeSet<InventoryEntry>,
}

impl Inventory {
    /// The inventory of exactly these manifests.
    pub fn from_manifests(manifests: &[Manifest]) -> Self {
        Inventory {
            entries: manifests
                .iter()
                .map(InventoryEntry::from_manifest)
                .collect(),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no object is recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True if an entry with this key is recorded (whatever its apiVersion).
    pub fn contains_key(&self, key: &ObjectKey) -> bool {
        self.entries.iter().any(|e| &e.key == key)
    }

    /// Compact JSON form (no whitespace).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an inventory of strings always serialises")
    }

    /// Parses the form written by [`Inventory::to_json`].
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(InventoryError::Parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compact_json_round_trip() {
        let manifests = vec![
            Manifest::from_value(
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api", "namespace": "web"}}),
                None,
            )
            .unwrap(),
            Manifest::from_value(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web"}}),
                None,
            )
            .unwrap(),
        ];
        let inv = Inventory::from_manifests(&manifests);
        let text = inv.to_json();
        assert_eq!(
            text,
            r#"{"entries":[{"k":"Namespace","n":"web","v":"v1"},{"k":"Deployment","g":"apps","ns":"web","n":"api","v":"apps/v1"}]}"#
        );
        assert_eq!(Inventory::from_json(&text).unwrap(), inv);
        assert!(inv.contains_key(&ObjectKey::new("", "Namespace", None, "web")));
        assert!(Inventory::from_json("{\"entries\":[{}]}").is_err());
        assert!(Inventory::from_json("{}").unwrap().is_empty());
    }
}
