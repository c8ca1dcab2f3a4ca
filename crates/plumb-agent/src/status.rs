//! Status helpers: kstatus-style conditions, inventory conversion, times.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use plumb_core::{Inventory, InventoryEntry, ObjectKey};

use crate::api::InventoryItem;

/// Condition types.
pub mod types {
    /// The object is reconciled and healthy.
    pub const READY: &str = "Ready";
    /// Work is in progress.
    pub const RECONCILING: &str = "Reconciling";
    /// Retrying will not help until the spec or the source changes.
    pub const STALLED: &str = "Stalled";
}

/// The current time, for status fields.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// The current time as RFC 3339.
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// Sets condition `type_` in `conditions`, keeping `lastTransitionTime` when the status did not
/// change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" };
    let message = message.into();
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if existing.status != status {
            existing.last_transition_time = now();
        }
        existing.status = status.to_owned();
        existing.reason = reason.to_owned();
        existing.message = message;
        existing.observed_generation = generation;
        return;
    }
    conditions.push(Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: now(),
    });
}

/// A failure: Ready=False with `reason` and `message`, and Stalled=True with the same unless
/// the failure is `retryable` (then Stalled goes: a retry may heal it).
pub fn set_failed(
    conditions: &mut Vec<Condition>,
    reason: &str,
    message: &str,
    retryable: bool,
    generation: Option<i64>,
) {
    set_condition(conditions, types::READY, false, reason, message, generation);
    if retryable {
        remove_condition(conditions, types::STALLED);
    } else {
        set_condition(
            conditions,
            types::STALLED,
            true,
            reason,
            message,
            generation,
        );
    }
}

/// Removes condition `type_`.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// Whether condition `type_` is True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// The Ready condition.
pub fn ready(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == types::READY)
}

/// Status inventory items from an inventory.
pub fn inventory_items(inventory: &Inventory) -> Vec<InventoryItem> {
    inventory
        .entries
        .iter()
        .map(|e| InventoryItem {
            id: e.key.to_string(),
            v: e.api_version.clone(),
        })
        .collect()
}

/// An inventory from status items; items that do not parse are skipped (and reported).
pub fn inventory_from_items(items: &[InventoryItem]) -> (Inventory, Vec<String>) {
    let mut inventory = Inventory::default();
    let mut bad = Vec::new();
    for item in items {
        match parse_id(&item.id) {
            Some(key) => {
                inventory.entries.insert(InventoryEntry {
                    key,
                    api_version: item.v.clone(),
                });
            }
            None => bad.push(item.id.clone()),
        }
    }
    (inventory, bad)
}

/// Parses an [`ObjectKey`]'s display form: `Kind[.group]/[namespace/]name`.
pub fn parse_id(id: &str) -> Option<ObjectKey> {
    let parts: Vec<&str> = id.split('/').collect();
    let (kind_group, namespace, name) = match parts.as_slice() {
        [kg, name] => (*kg, None, *name),
        [kg, ns, name] => (*kg, Some(*ns), *name),
        _ => return None,
    };
    let (kind, group) = kind_group.split_once('.').unwrap_or((kind_group, ""));
    if kind.is_empty() || name.is_empty() {
        return None;
    }
    Some(ObjectKey::new(group, kind, namespace, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_round_trips_through_status_items() {
        let mut inventory = Inventory::default();
        for (group, kind, ns, name, v) in [
            ("apps", "Deployment", Some("web"), "api", "apps/v1"),
            ("", "Namespace", None, "web", "v1"),
            ("", "ConfigMap", Some("web"), "conf", "v1"),
            ("plumb.test", "Widget", Some("a"), "w.1", "plumb.test/v1"),
            (
                "rbac.authorization.k8s.io",
                "ClusterRole",
                None,
                "x",
                "rbac.authorization.k8s.io/v1",
            ),
        ] {
            inventory.entries.insert(InventoryEntry {
                key: ObjectKey::new(group, kind, ns, name),
                api_version: v.to_owned(),
            });
        }
        let items = inventory_items(&inventory);
        assert!(items[0].id.split('/').count() >= 2);
        let (back, bad) = inventory_from_items(&items);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(back, inventory);
    }

    #[test]
    fn bad_ids_are_reported() {
        let (inv, bad) = inventory_from_items(&[InventoryItem {
            id: "nonsense".into(),
            v: "v1".into(),
        }]);
        assert!(inv.is_empty());
        assert_eq!(bad, vec!["nonsense".to_owned()]);
    }

    #[test]
    fn conditions_keep_transition_time_when_status_is_unchanged() {
        let mut cs = Vec::new();
        set_condition(&mut cs, types::READY, false, "A", "a", Some(1));
        let first = cs[0].last_transition_time.clone();
        set_condition(&mut cs, types::READY, false, "B", "b", Some(2));
        assert_eq!(cs[0].last_transition_time, first);
        assert_eq!(cs[0].reason, "B");
        assert_eq!(cs[0].observed_generation, Some(2));
        set_condition(&mut cs, types::READY, true, "C", "c", Some(2));
        assert_eq!(cs[0].status, "True");
        assert!(is_true(&cs, types::READY));
        remove_condition(&mut cs, types::READY);
        assert!(cs.is_empty());
    }
}
