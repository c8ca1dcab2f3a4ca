//! Plumb's types and pure logic: manifests, inventory, planning, health, diff.
//!
//! Nothing here does I/O. The data flow is render -> [`plan`] (phases and waves:
//! [`phases`]) -> apply (elsewhere) -> [`ChangeSet`] -> [`health`].

#![warn(clippy::unwrap_used)]

pub mod changeset;
pub mod diff;
pub mod duration;
pub mod health;
pub mod inventory;
pub mod normalize;
pub mod object;
pub mod order;
pub mod outcome;
pub mod ownership;
pub mod phases;
pub mod plan;
pub mod yaml;

pub use changeset::{Action, Change, ChangeCounts, ChangeSet};
pub use diff::unified_diff;
pub use duration::parse_duration;
pub use health::{HealthStatus, HealthVerdict, health, healthy_once_present};
pub use inventory::{Inventory, InventoryEntry, InventoryError};
pub use normalize::{normalize, same_state};
pub use object::{Manifest, ManifestError, ObjectKey, SourceLocation, split_api_version};
pub use order::{Stage, apply_rank, stage_of};
pub use outcome::{
    applied_by, inventory_after, only_imperative_managers, predicted_action, unchanged,
};
pub use ownership::{SYNC_NAME_LABEL, SYNC_NAMESPACE_LABEL, SyncId, is_owned_by, mark_owned};
pub use phases::{DeletePolicy, Hook, HookOutcome, Phase, PhaseError, Placement, placement};
pub use plan::{Plan, PlanError, PlanOptions, PlannedHook, Step, plan};
pub use yaml::to_yaml;
