//! Planning: a pure function from desired state, a live snapshot and the previous inventory
//! to an ordered apply plan and a safe prune set.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::inventory::{Inventory, InventoryEntry};
use crate::object::{Manifest, ObjectKey};
use crate::order::{Stage, apply_rank};
use crate::ownership::{SyncId, is_owned_by, mark_owned, owner_of};
use crate::phases::{Hook, Phase, PhaseError, placement, wave_of_object};

/// Why planning refused to produce a plan. Nothing may be applied or pruned on error.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Two desired manifests describe the same object.
    #[error("{key} is defined twice: in {first} and in {second}; remove one of them")]
    DuplicateKey {
        /// The duplicated object.
        key: Box<ObjectKey>,
        /// Where the first definition came from.
        first: String,
        /// Where the second definition came from.
        second: String,
    },
    /// Desired objects exist in the cluster with another Sync's ownership labels: two Syncs
    /// would fight over them (each healing it to its own manifest).
    #[error(
        "{} already managed by another sync: {}; an object must have one owner: remove it \
         from one of them, or let this sync take it over explicitly (Sync spec.adopt: true, \
         plumb sync --adopt)",
        if .conflicts.len() == 1 { "1 object is" } else { "objects are" },
        describe_conflicts(.conflicts)
    )]
    OwnedByAnother {
        /// Each object and the Sync that owns it.
        conflicts: Vec<(ObjectKey, SyncId)>,
    },
    /// The render produced no objects while the Sync still manages some.
    #[error(
        "the render produced no objects but the previous inventory holds {inventory_len}; \
         refusing to prune everything (set allowEmpty to permit an empty render)"
    )]
    EmptyRender {
        /// Size of the previous inventory.
        inventory_len: usize,
    },
    /// A hook or wave annotation cannot be read.
    #[error(transparent)]
    Phase(#[from] PhaseError),
}

impl PlanError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            PlanError::DuplicateKey { .. } => "plan_duplicate_key",
            PlanError::OwnedByAnother { .. } => "plan_owned_by_another",
            PlanError::EmptyRender { .. } => "plan_empty_render",
            PlanError::Phase(e) => e.metric_label(),
        }
    }

    /// Plan errors come from the source; retrying the same revision gives the same error.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Result alias for this module.
pub type Result<T, E = PlanError> = std::result::Result<T, E>;

/// Options of one plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOptions {
    /// The Sync that owns the applied objects (labels are set to it; prune requires it).
    pub sync: SyncId,
    /// Delete objects that left the desired state.
    pub prune: bool,
    /// Permit an empty render even though the previous inventory is not empty.
    pub allow_empty: bool,
    /// Take over desired objects that carry another Sync's ownership labels (otherwise they
    /// are a [`PlanError::OwnedByAnother`] conflict).
    pub adopt: bool,
    /// Mark the desired objects with the sync's ownership labels (and refuse those another
    /// sync owns, unless `adopt`). False for a one-off apply that owns nothing and can
    /// therefore prune nothing (`plumb install`): objects keep the labels they have, so that
    /// a Sync may own them later.
    pub own: bool,
    /// The Sync applied a revision before: Helm's upgrade hooks run, not its install hooks.
    pub upgrade: bool,
}

/// At most this many conflicts are named in the message (all are in the error).
const CONFLICTS_SHOWN: usize = 5;

fn describe_conflicts(conflicts: &[(ObjectKey, SyncId)]) -> String {
    let mut out: Vec<String> = conflicts
        .iter()
        .take(CONFLICTS_SHOWN)
        .map(|(key, owner)| format!("{key} (owned by sync {owner})"))
        .collect();
    if conflicts.len() > CONFLICTS_SHOWN {
        out.push(format!("and {} more", conflicts.len() - CONFLICTS_SHOWN));
    }
    out.join(", ")
}

/// Reasons recorded in [`Plan::prune_skipped`].
pub mod skip_reason {
    /// The live object lacks this Sync's ownership labels.
    pub const NOT_OWNED: &str = "not owned by this sync";
    /// The object no longer exists in the cluster.
    pub const ALREADY_GONE: &str = "already gone";
    /// A Namespace that desired objects still live in.
    pub const NAMESPACE_IN_USE: &str = "namespace still holds desired objects";
    /// Pruning is disabled for this Sync.
    pub const PRUNE_DISABLED: &str = "pruning disabled";
}

/// One wave of one phase: its resources by stage, then its hooks.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The phase.
    pub phase: Phase,
    /// The wave within the phase.
    pub wave: i32,
    /// Resources (ownership labels set), grouped by stage in apply order; only non-empty
    /// stages appear. Within a stage: by kind order, then kind, group, namespace, name.
    pub stages: Vec<(Stage, Vec<Manifest>)>,
    /// Hook objects of this wave, in the same order; created after the resources.
    pub hooks: Vec<PlannedHook>,
}

impl Step {
    /// The resources of this step in apply order.
    pub fn manifests(&self) -> impl Iterator<Item = &Manifest> {
        self.stages.iter().flat_map(|(_, ms)| ms.iter())
    }
}

/// A hook object to run: created (never applied over), awaited to completion, not part of the
/// inventory.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedHook {
    /// The object as rendered (namespace filled in; no ownership labels).
    pub manifest: Manifest,
    /// Its delete policy.
    pub hook: Hook,
}

/// What to do, in order. Produced by [`plan`].
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The waves to run, by phase then wave (ascending): `pre`, `main`, `post`, then the
    /// `fail` waves (run only when the revision failed) and the delete phases' (run only
    /// when the Sync is deleted). Only non-empty waves appear. Every resource is in a `main`
    /// wave.
    pub steps: Vec<Step>,
    /// Objects to delete, in delete order: by wave descending, then reverse apply order
    /// (custom resources and workloads first, Namespaces and CRDs last).
    pub prune: Vec<InventoryEntry>,
    /// Stale inventory entries that will not be deleted, each with the reason
    /// (see [`skip_reason`]), in inventory order.
    pub prune_skipped: Vec<(InventoryEntry, String)>,
    /// The inventory to record after a fully successful apply and prune: every desired object,
    /// plus stale entries still live and owned that are kept (prune disabled, Namespace in use).
    /// Entries in `prune` are not in it; the caller must re-add any whose delete failed.
    /// Hook objects are never in it.
    pub new_inventory: Inventory,
    /// Rendered objects that are not applied, and why (`argocd.argoproj.io/hook: Skip`, a
    /// Helm test hook, an install hook on an upgrade, ...).
    pub not_run: Vec<(Manifest, String)>,
}

impl Plan {
    /// All resources (not hooks) in apply order.
    pub fn manifests(&self) -> impl Iterator<Item = &Manifest> {
        self.steps.iter().flat_map(Step::manifests)
    }

    /// Number of resources to apply.
    pub fn apply_len(&self) -> usize {
        self.manifests().count()
    }

    /// The steps of the phases a sync runs (`pre`, `main`, `post`), in order.
    pub fn sync_steps(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|s| Phase::SYNC.contains(&s.phase))
    }

    /// The steps of `phase`, in order.
    pub fn steps_of(&self, phase: Phase) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(move |s| s.phase == phase)
    }

    /// Whether the plan has more than one wave of the sync phases, or any hook in them: then
    /// each wave waits until the one before is healthy.
    pub fn is_phased(&self) -> bool {
        self.sync_steps().count() > 1 || self.sync_steps().any(|s| !s.hooks.is_empty())
    }
}

fn sort_key(key: &ObjectKey) -> ((Stage, usize), &str, &str, Option<&str>, &str) {
    (
        apply_rank(&key.kind, &key.group),
        &key.kind,
        &key.group,
        key.namespace.as_deref(),
        &key.name,
    )
}

/// Plans one reconcile.
///
/// `desired` must already have namespaces filled in (namespaced kinds) by the caller; `live`
/// holds the current cluster copy of every object of interest (at least every inventory
/// entry that still exists), keyed by [`ObjectKey`].
///
/// Places every object in its phase and wave ([`crate::phases::placement`]; an unreadable
/// annotation is a [`PlanError::Phase`]): resources in `main` waves, hook objects in the
/// waves of their phases, objects that are not run in [`Plan::not_run`]. Hook objects get no
/// ownership labels and never enter the inventory or the prune set.
///
/// Rejects duplicate keys in `desired` (per phase for named hooks) and an empty render over a
/// non-empty inventory (unless `allow_empty`). Sets ownership labels on every desired object. Prunes only when
/// `opts.prune` is on, and only previous-inventory entries that are not desired, still exist
/// in `live`, and carry this Sync's ownership labels there; never a Namespace that a desired
/// object lives in.
pub fn plan(
    desired: Vec<Manifest>,
    live: &BTreeMap<ObjectKey, Value>,
    inventory: &Inventory,
    opts: &PlanOptions,
) -> Result<Plan> {
    if desired.is_empty() && !inventory.is_empty() && !opts.allow_empty {
        return Err(PlanError::EmptyRender {
            inventory_len: inventory.len(),
        });
    }

    let mut by_key: BTreeMap<ObjectKey, Manifest> = BTreeMap::new();
    let mut waves: BTreeMap<ObjectKey, i32> = BTreeMap::new();
    let mut hooks: Vec<(Phase, i32, PlannedHook)> = Vec::new();
    let mut not_run = Vec::new();
    let mut named_hooks: BTreeMap<(Phase, ObjectKey), String> = BTreeMap::new();
    for mut m in desired {
        let placed = placement(&m, opts.upgrade)?;
        if let Some(why) = placed.not_run {
            not_run.push((m, why));
            continue;
        }
        if let Some(hook) = placed.hook {
            for &phase in &placed.phases {
                let key = m.key();
                if !key.name.is_empty() {
                    if let Some(first) = named_hooks.get(&(phase, key.clone())) {
                        return Err(PlanError::DuplicateKey {
                            key: Box::new(key),
                            first: first.clone(),
                            second: describe_source(&m),
                        });
                    }
                    named_hooks.insert((phase, key), describe_source(&m));
                }
                hooks.push((
                    phase,
                    placed.wave,
                    PlannedHook {
                        manifest: m.clone(),
                        hook: hook.clone(),
                    },
                ));
            }
            continue;
        }
        let key = m.key();
        if let Some(first) = by_key.get(&key) {
            return Err(PlanError::DuplicateKey {
                key: Box::new(key),
                first: describe_source(first),
                second: describe_source(&m),
            });
        }
        if opts.own {
            mark_owned(&mut m, &opts.sync);
        }
        waves.insert(key.clone(), placed.wave);
        by_key.insert(key, m);
    }
    // A named hook is not a stale resource: it is this revision's hook, never pruned.
    let hook_keys: BTreeSet<ObjectKey> = hooks
        .iter()
        .map(|(_, _, h)| h.manifest.key())
        .filter(|k| !k.name.is_empty())
        .collect();

    if opts.own && !opts.adopt {
        let conflicts: Vec<(ObjectKey, SyncId)> = by_key
            .keys()
            .filter_map(|key| {
                let owner = owner_of(live.get(key)?)?;
                (owner != opts.sync).then(|| (key.clone(), owner))
            })
            .collect();
        if !conflicts.is_empty() {
            return Err(PlanError::OwnedByAnother { conflicts });
        }
    }

    let desired_namespaces: BTreeSet<&str> = by_key
        .keys()
        .filter_map(|k| k.namespace.as_deref())
        .collect();

    let mut new_inventory = Inventory {
        entries: by_key.values().map(InventoryEntry::from_manifest).collect(),
    };
    let mut prune = Vec::new();
    let mut prune_skipped = Vec::new();
    for entry in &inventory.entries {
        if by_key.contains_key(&entry.key) || hook_keys.contains(&entry.key) {
            continue;
        }
        let Some(live_obj) = live.get(&entry.key) else {
            prune_skipped.push((entry.clone(), skip_reason::ALREADY_GONE.to_owned()));
            continue;
        };
        if !is_owned_by(live_obj, &opts.sync) {
            prune_skipped.push((entry.clone(), skip_reason::NOT_OWNED.to_owned()));
            continue;
        }
        let reason = if !opts.prune || !opts.own {
            Some(skip_reason::PRUNE_DISABLED)
        } else if entry.key.group.is_empty()
            && entry.key.kind == "Namespace"
            && desired_namespaces.contains(entry.key.name.as_str())
        {
            Some(skip_reason::NAMESPACE_IN_USE)
        } else {
            None
        };
        match reason {
            Some(why) => {
                // Still ours and still there: keep tracking it so a later prune can remove it.
                new_inventory.entries.insert(entry.clone());
                prune_skipped.push((entry.clone(), why.to_owned()));
            }
            None => prune.push(entry.clone()),
        }
    }
    // Reverse wave order, and reverse apply order within a wave.
    let prune_wave = |e: &InventoryEntry| live.get(&e.key).map_or(0, wave_of_object);
    prune.sort_by(|a, b| (prune_wave(b), sort_key(&b.key)).cmp(&(prune_wave(a), sort_key(&a.key))));

    let mut ordered: Vec<(ObjectKey, Manifest)> = by_key.into_iter().collect();
    ordered.sort_by(|(a, _), (b, _)| (waves[a], sort_key(a)).cmp(&(waves[b], sort_key(b))));
    hooks.sort_by(|(pa, wa, a), (pb, wb, b)| {
        let (ka, kb) = (a.manifest.key(), b.manifest.key());
        (pa, wa, sort_key(&ka), a.manifest.generate_name()).cmp(&(
            pb,
            wb,
            sort_key(&kb),
            b.manifest.generate_name(),
        ))
    });
    let mut steps: Vec<Step> = Vec::new();
    fn step_for(steps: &mut Vec<Step>, phase: Phase, wave: i32) -> &mut Step {
        if let Some(i) = steps
            .iter()
            .position(|s| s.phase == phase && s.wave == wave)
        {
            return &mut steps[i];
        }
        steps.push(Step {
            phase,
            wave,
            stages: Vec::new(),
            hooks: Vec::new(),
        });
        steps.last_mut().expect("pushed just above")
    }
    for (key, m) in ordered {
        let stage = apply_rank(&key.kind, &key.group).0;
        let step = step_for(&mut steps, Phase::Main, waves[&key]);
        match step.stages.last_mut() {
            Some((s, ms)) if *s == stage => ms.push(m),
            _ => step.stages.push((stage, vec![m])),
        }
    }
    for (phase, wave, hook) in hooks {
        step_for(&mut steps, phase, wave).hooks.push(hook);
    }
    steps.sort_by_key(|s| (s.phase, s.wave));

    Ok(Plan {
        steps,
        prune,
        prune_skipped,
        new_inventory,
        not_run,
    })
}

fn describe_source(m: &Manifest) -> String {
    m.source
        .as_ref()
        .map_or_else(|| "<unknown source>".to_owned(), ToString::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ownership::{SYNC_NAME_LABEL, SYNC_NAMESPACE_LABEL};
    use serde_json::json;

    fn m(api: &str, kind: &str, ns: Option<&str>, name: &str) -> Manifest {
        let mut v = json!({"apiVersion": api, "kind": kind, "metadata": {"name": name,
            "labels": {SYNC_NAME_LABEL: "someone-else"}}});
        if let Some(ns) = ns {
            v["metadata"]["namespace"] = json!(ns);
        }
        Manifest::from_value(v, None).unwrap()
    }

    fn opts() -> PlanOptions {
        PlanOptions {
            sync: SyncId::new("ops", "apps"),
            prune: true,
            allow_empty: false,
            adopt: false,
            own: true,
            upgrade: false,
        }
    }

    #[test]
    fn an_unowned_apply_labels_nothing_refuses_no_owner_and_prunes_nothing() {
        let other = SyncId::new("ops", "other");
        let mut live_obj = m("v1", "ConfigMap", Some("a"), "c").object;
        live_obj["metadata"]["labels"] = json!({
            crate::SYNC_NAME_LABEL: other.name, crate::SYNC_NAMESPACE_LABEL: other.namespace});
        let key = m("v1", "ConfigMap", Some("a"), "c").key();
        let live: BTreeMap<ObjectKey, Value> = [(key, live_obj.clone())].into();
        let mut stale = m("v1", "ConfigMap", Some("a"), "stale").object;
        stale["metadata"]["labels"] = json!({
            crate::SYNC_NAME_LABEL: "apps", crate::SYNC_NAMESPACE_LABEL: "ops"});
        let stale = Manifest::from_value(stale, None).unwrap();
        let mut live = live;
        live.insert(stale.key(), stale.object.clone());
        let previous =
            Inventory::from_manifests(&[Manifest::from_value(live_obj, None).unwrap(), stale]);
        let unowned = PlanOptions {
            own: false,
            ..opts()
        };
        let p = plan(
            vec![m("v1", "ConfigMap", Some("a"), "c")],
            &live,
            &previous,
            &unowned,
        )
        .expect("no ownership conflict without ownership");
        let planned = p.manifests().next().unwrap();
        assert_eq!(
            planned.object,
            m("v1", "ConfigMap", Some("a"), "c").object,
            "labels as rendered"
        );
        assert!(p.prune.is_empty(), "{:?}", p.prune);
        assert!(
            plan(
                vec![m("v1", "ConfigMap", Some("a"), "c")],
                &live,
                &previous,
                &opts()
            )
            .is_err()
        );
        let owned = PlanOptions {
            adopt: true,
            ..opts()
        };
        let p = plan(
            vec![m("v1", "ConfigMap", Some("a"), "c")],
            &live,
            &previous,
            &owned,
        )
        .unwrap();
        assert_eq!(
            p.prune.len(),
            1,
            "the same plan with ownership prunes the stale object"
        );
    }

    #[test]
    fn deterministic_whatever_the_input_order_and_labels_overwritten() {
        let objs = vec![
            m("apps/v1", "Deployment", Some("b"), "x"),
            m("v1", "ConfigMap", Some("a"), "y"),
            m("v1", "Namespace", None, "a"),
            m("apps/v1", "Deployment", Some("a"), "x"),
        ];
        let mut reversed = objs.clone();
        reversed.reverse();
        let live = BTreeMap::new();
        let inv = Inventory::default();
        let p1 = plan(objs, &live, &inv, &opts()).unwrap();
        let p2 = plan(reversed, &live, &inv, &opts()).unwrap();
        assert_eq!(p1, p2);
        let keys: Vec<String> = p1.manifests().map(|m| m.key().to_string()).collect();
        assert_eq!(
            keys,
            [
                "Namespace/a",
                "ConfigMap/a/y",
                "Deployment.apps/a/x",
                "Deployment.apps/b/x"
            ]
        );
        for m in p1.manifests() {
            assert_eq!(m.label(SYNC_NAME_LABEL), Some("apps"));
            assert_eq!(m.label(SYNC_NAMESPACE_LABEL), Some("ops"));
        }
        assert_eq!(p1.apply_len(), 4);
    }

    #[test]
    fn api_version_change_is_not_a_prune() {
        let desired = vec![m(
            "autoscaling/v2",
            "HorizontalPodAutoscaler",
            Some("a"),
            "h",
        )];
        let mut inv = Inventory::default();
        inv.entries.insert(InventoryEntry {
            key: ObjectKey::new("autoscaling", "HorizontalPodAutoscaler", Some("a"), "h"),
            api_version: "autoscaling/v1".into(),
        });
        let p = plan(desired, &BTreeMap::new(), &inv, &opts()).unwrap();
        assert!(p.prune.is_empty() && p.prune_skipped.is_empty());
        let entry = p.new_inventory.entries.iter().next().unwrap();
        assert_eq!(entry.api_version, "autoscaling/v2");
    }

    #[test]
    fn objects_of_another_sync_are_a_conflict_unless_adopted() {
        let desired = vec![
            m("v1", "ConfigMap", Some("a"), "mine"),
            m("v1", "ConfigMap", Some("a"), "theirs"),
            m("v1", "ConfigMap", Some("a"), "unowned"),
        ];
        let owned = |ns: &str, name: &str| json!({"metadata": {"labels": {SYNC_NAME_LABEL: name, SYNC_NAMESPACE_LABEL: ns}}});
        let mut live = BTreeMap::new();
        live.insert(
            ObjectKey::new("", "ConfigMap", Some("a"), "mine"),
            owned("ops", "apps"),
        );
        live.insert(
            ObjectKey::new("", "ConfigMap", Some("a"), "theirs"),
            owned("team-b", "web"),
        );
        live.insert(
            ObjectKey::new("", "ConfigMap", Some("a"), "unowned"),
            json!({"metadata": {"labels": {"app": "x"}}}),
        );
        let err =
            plan(desired.clone(), &live, &Inventory::default(), &opts()).expect_err("conflict");
        let msg = err.to_string();
        assert!(
            msg.contains("ConfigMap/a/theirs (owned by sync team-b/web)")
                && !msg.contains("mine")
                && !msg.contains("unowned")
                && msg.contains("adopt"),
            "{msg}"
        );
        assert_eq!(err.metric_label(), "plan_owned_by_another");
        let mut adopting = opts();
        adopting.adopt = true;
        let p = plan(desired, &live, &Inventory::default(), &adopting).expect("adopted");
        assert_eq!(p.apply_len(), 3);
    }

    #[test]
    fn empty_render_with_empty_inventory_is_fine() {
        let p = plan(Vec::new(), &BTreeMap::new(), &Inventory::default(), &opts()).unwrap();
        assert!(p.steps.is_empty() && p.prune.is_empty());
    }
}
