//! The pure decisions around one apply: what a sync would do with an object it has only
//! validated, which field managers an apply conflict may take back as drift, and which
//! inventory to record after the sync, whether it succeeded or failed.
//!
//! plumb-kube's engine makes the requests; these functions decide from their results.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::changeset::{Action, ChangeSet};
use crate::inventory::{Inventory, InventoryEntry};
use crate::normalize::same_state;
use crate::object::ObjectKey;
use crate::plan::Plan;

/// What a sync applying as field manager `manager` would do with a planned object, judged from
/// its live copy (`None`: absent), its server-side dry-run result (`None`: not validated yet,
/// because its Namespace or CRD comes with the same sync) and whether the caller vouched it is
/// live as last applied. An object that already looks as desired but that `manager` never
/// applied is configured all the same: the apply makes `manager` own its fields, so that a
/// later revision that drops a field removes it.
pub fn predicted_action(
    live: Option<&Value>,
    dry_run: Option<&Value>,
    vouched: bool,
    manager: &str,
) -> Action {
    match (live, dry_run) {
        (None, _) => Action::Created,
        (Some(_), _) if vouched => Action::Unchanged,
        (Some(live), Some(dry)) if unchanged(dry, live, manager) => Action::Unchanged,
        (Some(_), _) => Action::Configured,
    }
}

/// Whether applying, whose server-side dry-run gave `dry_run`, would change nothing on `live`:
/// the same state, and `manager` already applies it.
pub fn unchanged(dry_run: &Value, live: &Value, manager: &str) -> bool {
    same_state(dry_run, live) && applied_by(live, manager)
}

/// Whether `manager` has applied (server-side apply, not an update) fields of `live`.
pub fn applied_by(live: &Value, manager: &str) -> bool {
    live["metadata"]["managedFields"]
        .as_array()
        .is_some_and(|fields| {
            fields
                .iter()
                .any(|f| f["manager"] == manager && f["operation"] == "Apply")
        })
}

/// Whether every field manager named in a server-side apply conflict `message` changed the
/// object only through `Update` operations (imperative edits: `kubectl edit`, `scale`,
/// `patch`), never through `Apply`, according to the `live` object's `managedFields`.
///
/// Such fields are drift, taken back without `force`; fields another applier owns (another
/// GitOps tool, `kubectl apply --server-side`) are a real conflict.
pub fn only_imperative_managers(message: &str, live: Option<&Value>) -> bool {
    let managers: Vec<&str> = message
        .split("with \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    let Some(entries) = live.and_then(|l| l["metadata"]["managedFields"].as_array()) else {
        return false;
    };
    !managers.is_empty()
        && managers.iter().all(|name| {
            let ops: Vec<&str> = entries
                .iter()
                .filter(|e| e["manager"].as_str() == Some(name))
                .filter_map(|e| e["operation"].as_str())
                .collect();
            !ops.is_empty() && ops.iter().all(|op| *op == "Update")
        })
}

/// The inventory to record after applying `plan` (whose objects got `changes`).
///
/// After a failure (`failed`): every object of the `previous` inventory, so that nothing
/// escapes a later prune, plus each planned object that was written or found unchanged.
/// Otherwise the plan's new inventory, plus each stale object whose prune failed (it still
/// exists and is still owned).
pub fn inventory_after(
    previous: &Inventory,
    plan: &Plan,
    changes: &ChangeSet,
    failed: bool,
) -> Inventory {
    // The last outcome of each object (one object has one entry, but be sure).
    let outcome: BTreeMap<&ObjectKey, Action> =
        changes.entries.iter().map(|c| (&c.key, c.action)).collect();
    let action = |key: &ObjectKey| outcome.get(key).copied();
    if failed {
        let mut kept = previous.clone();
        for m in plan.manifests() {
            if matches!(
                action(&m.key()),
                Some(Action::Created | Action::Configured | Action::Unchanged)
            ) {
                kept.entries.insert(InventoryEntry::from_manifest(m));
            }
        }
        kept
    } else {
        let mut next = plan.new_inventory.clone();
        for entry in &plan.prune {
            if action(&entry.key) == Some(Action::Failed) {
                next.entries.insert(entry.clone());
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::Manifest;
    use crate::ownership::SyncId;
    use crate::plan::{PlanOptions, plan};
    use serde_json::json;

    fn cm(name: &str, data: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": "ns"}, "data": {"k": data}})
    }

    #[test]
    fn predicted_action_covers_every_case() {
        let mut live = cm("a", "1");
        live["metadata"]["managedFields"] = json!([{"manager": "plumb", "operation": "Apply"}]);
        let p = |live, dry, vouched| predicted_action(live, dry, vouched, "plumb");
        assert_eq!(p(None, None, false), Action::Created);
        assert_eq!(p(None, Some(&live), true), Action::Created);
        assert_eq!(p(Some(&live), None, true), Action::Unchanged);
        assert_eq!(p(Some(&live), Some(&live), false), Action::Unchanged);
        let other = cm("a", "2");
        assert_eq!(p(Some(&live), Some(&other), false), Action::Configured);
        // Not validated yet and not vouched: it may change.
        assert_eq!(p(Some(&live), None, false), Action::Configured);
        // As desired, but applied by someone else (or only updated by plumb): take it over.
        let mut theirs = cm("a", "1");
        theirs["metadata"]["managedFields"] = json!([
            {"manager": "kubectl", "operation": "Apply"},
            {"manager": "plumb", "operation": "Update"},
        ]);
        assert_eq!(p(Some(&theirs), Some(&theirs), false), Action::Configured);
        assert!(!unchanged(&theirs, &theirs, "plumb"));
        assert!(unchanged(&live, &live, "plumb"));
    }

    fn with_managers(fields: Value) -> Value {
        json!({"metadata": {"managedFields": fields}})
    }

    const CONFLICT: &str = "Apply failed with 1 conflict: conflict with \"kubectl-edit\" \
                            using v1: .data.k";

    #[test]
    fn a_conflict_with_imperative_editors_only_is_drift() {
        let edit = with_managers(json!([
            {"manager": "plumb", "operation": "Apply"},
            {"manager": "kubectl-edit", "operation": "Update"},
        ]));
        assert!(only_imperative_managers(CONFLICT, Some(&edit)));
        let applier = with_managers(json!([{"manager": "kubectl-edit", "operation": "Apply"}]));
        assert!(!only_imperative_managers(CONFLICT, Some(&applier)));
        let both = with_managers(json!([
            {"manager": "kubectl-edit", "operation": "Update"},
            {"manager": "kubectl-edit", "operation": "Apply"},
        ]));
        assert!(!only_imperative_managers(CONFLICT, Some(&both)));
        // A manager the live object does not list, no live object, no manager named.
        let other = with_managers(json!([{"manager": "x", "operation": "Update"}]));
        assert!(!only_imperative_managers(CONFLICT, Some(&other)));
        assert!(!only_imperative_managers(CONFLICT, None));
        assert!(!only_imperative_managers("conflict", Some(&edit)));
        let two = "Apply failed with 2 conflicts: conflict with \"a\": .x\nconflict with \"b\": .y";
        let a_only = with_managers(json!([{"manager": "a", "operation": "Update"}]));
        assert!(!only_imperative_managers(two, Some(&a_only)));
        let ab = with_managers(json!([
            {"manager": "a", "operation": "Update"},
            {"manager": "b", "operation": "Update"},
        ]));
        assert!(only_imperative_managers(two, Some(&ab)));
    }

    fn manifest(v: Value) -> Manifest {
        Manifest::from_value(v, None).expect("a valid manifest")
    }

    /// Previous inventory {old, gone}, desired {a, b}: `gone` is stale and owned.
    fn fixture() -> (Inventory, Plan) {
        let sync = SyncId::new("ns", "s");
        let previous =
            Inventory::from_manifests(&[manifest(cm("old", "1")), manifest(cm("gone", "1"))]);
        let mut owned = cm("gone", "1");
        owned["metadata"]["labels"] = json!({
            crate::SYNC_NAME_LABEL: "s", crate::SYNC_NAMESPACE_LABEL: "ns"});
        let live: BTreeMap<_, _> = [(manifest(owned.clone()).key(), owned)].into();
        let plan = plan(
            vec![manifest(cm("a", "1")), manifest(cm("b", "1"))],
            &live,
            &previous,
            &PlanOptions {
                sync,
                prune: true,
                allow_empty: false,
                adopt: false,
                own: true,
                upgrade: false,
            },
        )
        .expect("plans");
        (previous, plan)
    }

    fn names(inv: &Inventory) -> Vec<String> {
        inv.entries.iter().map(|e| e.key.name.clone()).collect()
    }

    #[test]
    fn after_a_failure_every_old_object_stays_in_the_inventory() {
        let (previous, plan) = fixture();
        assert_eq!(plan.prune.len(), 1, "{plan:?}");
        let keys: Vec<_> = plan.manifests().map(Manifest::key).collect();
        let mut changes = ChangeSet::new();
        changes.push(keys[0].clone(), Action::Created, None);
        changes.push(keys[1].clone(), Action::Failed, Some("refused".into()));
        changes.push(plan.prune[0].key.clone(), Action::Skipped, None);
        let inv = inventory_after(&previous, &plan, &changes, true);
        assert_eq!(names(&inv), ["a", "gone", "old"]);
    }

    #[test]
    fn after_a_success_only_a_failed_prune_stays() {
        let (previous, plan) = fixture();
        let keys: Vec<_> = plan.manifests().map(Manifest::key).collect();
        let mut changes = ChangeSet::new();
        for k in &keys {
            changes.push(k.clone(), Action::Configured, None);
        }
        changes.push(plan.prune[0].key.clone(), Action::Pruned, None);
        assert_eq!(
            names(&inventory_after(&previous, &plan, &changes, false)),
            ["a", "b"]
        );
        let mut failed_prune = ChangeSet::new();
        for k in &keys {
            failed_prune.push(k.clone(), Action::Unchanged, None);
        }
        failed_prune.push(plan.prune[0].key.clone(), Action::Failed, Some("x".into()));
        assert_eq!(
            names(&inventory_after(&previous, &plan, &failed_prune, false)),
            ["a", "b", "gone"]
        );
    }
}
