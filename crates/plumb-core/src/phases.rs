//! Phases: one model for Helm hooks and Argo CD hooks and sync waves.
//!
//! A sync runs in ordered [`Phase`]s: `pre` (hooks), `main` (the resources, plus Argo CD
//! `Sync` hooks), `post` (hooks, once every resource is healthy); `fail` hooks run only when
//! the revision failed; `pre-delete` / `post-delete` hooks only when the Sync is deleted with
//! pruning. Within a phase, objects run in waves (ascending integers, default 0; the
//! kind-order stages hold inside each wave), and the next wave starts only when the previous
//! one is healthy and its hooks completed.
//!
//! A hook object runs to completion (a Job until `Complete` or `Failed`, a Pod until
//! `Succeeded` or `Failed`, anything else until healthy), is never part of the inventory and
//! is never pruned; its delete policy says when Plumb deletes it. This is how Argo CD and
//! Helm treat hooks. The annotations, per object:
//!
//! | annotation | values | Plumb |
//! |---|---|---|
//! | `argocd.argoproj.io/hook` | `PreSync`, `Sync`, `PostSync`, `SyncFail`, `PreDelete`, `PostDelete`, `Skip` (comma-separated) | phases `pre`, `main`, `post`, `fail`, `pre-delete`, `post-delete`; `Skip`: never applied |
//! | `helm.sh/hook` | `pre-install`, `pre-upgrade` / `post-install`, `post-upgrade` / `pre-delete` / `post-delete` / `pre-rollback`, `post-rollback`, `test` | `pre` / `post` (the install or upgrade hooks, by whether the Sync applied before) / `pre-delete` / `post-delete` / never run (a rollback is a `git revert`; tests are run by `helm test`, not by a sync) |
//! | `argocd.argoproj.io/sync-wave`, else `helm.sh/hook-weight` | an integer | the wave |
//! | `argocd.argoproj.io/hook-delete-policy`, else `helm.sh/hook-delete-policy` | `BeforeHookCreation` / `before-hook-creation` (default), `HookSucceeded` / `hook-succeeded`, `HookFailed` / `hook-failed` | [`DeletePolicy`] |
//!
//! When an object carries both hook annotations, Argo CD's wins (as in Argo CD).

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::object::Manifest;

/// Argo CD's hook annotation.
pub const ARGO_HOOK: &str = "argocd.argoproj.io/hook";
/// Argo CD's wave annotation.
pub const ARGO_WAVE: &str = "argocd.argoproj.io/sync-wave";
/// Argo CD's hook delete policy annotation.
pub const ARGO_DELETE_POLICY: &str = "argocd.argoproj.io/hook-delete-policy";
/// Helm's hook annotation.
pub const HELM_HOOK: &str = "helm.sh/hook";
/// Helm's hook weight annotation (a wave).
pub const HELM_WEIGHT: &str = "helm.sh/hook-weight";
/// Helm's hook delete policy annotation.
pub const HELM_DELETE_POLICY: &str = "helm.sh/hook-delete-policy";

/// A phase of a sync, in run order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Hooks before the resources (Argo CD `PreSync`, Helm `pre-install`/`pre-upgrade`).
    Pre,
    /// The resources, and Argo CD `Sync` hooks.
    Main,
    /// Hooks after every resource is applied and healthy (`PostSync`,
    /// `post-install`/`post-upgrade`).
    Post,
    /// Hooks run when the revision failed (`SyncFail`).
    Fail,
    /// Hooks run when the Sync is deleted with pruning, before its objects are deleted
    /// (`PreDelete`, `pre-delete`).
    PreDelete,
    /// Hooks run when the Sync is deleted with pruning, after its objects are deleted
    /// (`PostDelete`, `post-delete`).
    PostDelete,
}

impl Phase {
    /// The phases a sync of a revision runs, in order (without `fail` and the delete phases).
    pub const SYNC: [Phase; 3] = [Phase::Pre, Phase::Main, Phase::Post];

    /// The lowercase name, as shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pre => "pre",
            Phase::Main => "main",
            Phase::Post => "post",
            Phase::Fail => "fail",
            Phase::PreDelete => "pre-delete",
            Phase::PostDelete => "post-delete",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When Plumb deletes a hook object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeletePolicy {
    /// Before the hook is created again (a named hook is replaced; the default).
    BeforeHookCreation,
    /// As soon as it succeeded.
    HookSucceeded,
    /// As soon as it failed.
    HookFailed,
}

impl fmt::Display for DeletePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeletePolicy::BeforeHookCreation => "before-hook-creation",
            DeletePolicy::HookSucceeded => "hook-succeeded",
            DeletePolicy::HookFailed => "hook-failed",
        })
    }
}

/// A hook object's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    /// When Plumb deletes it; never empty (default: before hook creation).
    pub delete_policies: BTreeSet<DeletePolicy>,
}

impl Hook {
    /// Whether `policy` applies.
    pub fn deletes(&self, policy: DeletePolicy) -> bool {
        self.delete_policies.contains(&policy)
    }
}

/// Where one manifest runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The phases it runs in, ascending: `[Main]` for a resource; empty when it is never
    /// applied (see `not_run`).
    pub phases: Vec<Phase>,
    /// Its wave within each phase.
    pub wave: i32,
    /// Set for a hook object.
    pub hook: Option<Hook>,
    /// Why it is not applied at all (`phases` is empty), e.g. `argocd.argoproj.io/hook: Skip`.
    pub not_run: Option<String>,
}

/// A hook or wave annotation that Plumb cannot read. Nothing is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {object}: annotation {annotation}: {value:?} {problem}")]
pub struct PhaseError {
    /// `file:line (document N)` or `<unknown source>`.
    pub location: String,
    /// The object (`Kind/namespace/name`, or the `generateName` prefix followed by `*`).
    pub object: String,
    /// The annotation.
    pub annotation: &'static str,
    /// Its value.
    pub value: String,
    /// What is wrong with it and what is allowed.
    pub problem: String,
}

impl PhaseError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        "phase_annotation"
    }
}

/// Whether a JSON object carries a hook annotation (Argo CD or Helm), whatever its value.
/// Only such objects may name themselves with `metadata.generateName`.
pub fn is_hook_annotated(object: &Value) -> bool {
    let annotations = &object["metadata"]["annotations"];
    annotations.get(ARGO_HOOK).is_some() || annotations.get(HELM_HOOK).is_some()
}

fn annotation<'a>(m: &'a Manifest, name: &str) -> Option<&'a str> {
    m.object["metadata"]["annotations"]
        .get(name)
        .and_then(Value::as_str)
}

/// The object as users name it: its key, or for a `generateName` hook the prefix and `*`.
pub fn display_object(m: &Manifest) -> String {
    let key = m.key();
    if !key.name.is_empty() {
        return key.to_string();
    }
    format!("{key}{}*", m.generate_name().unwrap_or_default())
}

/// The wave an object carries (`argocd.argoproj.io/sync-wave`, else `helm.sh/hook-weight`),
/// default 0. For live objects, whose annotations were checked when they were applied: an
/// unreadable value counts as 0.
pub fn wave_of_object(object: &Value) -> i32 {
    let annotations = &object["metadata"]["annotations"];
    [ARGO_WAVE, HELM_WEIGHT]
        .iter()
        .find_map(|a| annotations.get(*a).and_then(Value::as_str))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Where `m` runs. `upgrade`: the Sync applied a revision before (Helm's install hooks run on
/// the first apply only, its upgrade hooks on every later one).
pub fn placement(m: &Manifest, upgrade: bool) -> Result<Placement, PhaseError> {
    let error = |annotation: &'static str, value: &str, problem: &str| PhaseError {
        location: m
            .source
            .as_ref()
            .map_or_else(|| "<unknown source>".to_owned(), ToString::to_string),
        object: display_object(m),
        annotation,
        value: value.to_owned(),
        problem: problem.to_owned(),
    };
    let wave = match [ARGO_WAVE, HELM_WEIGHT]
        .into_iter()
        .find_map(|a| annotation(m, a).map(|v| (a, v)))
    {
        None => 0,
        Some((a, v)) => v.trim().parse::<i32>().map_err(|_| {
            error(
                a,
                v,
                "is not an integer (a wave is a whole number such as -1, 0 or 5; lower waves \
                 run first)",
            )
        })?,
    };

    let (phases, not_run, helm) = if let Some(v) = annotation(m, ARGO_HOOK) {
        let mut phases = BTreeSet::new();
        let mut skip = false;
        for item in v.split(',').map(str::trim) {
            match item {
                "PreSync" => phases.insert(Phase::Pre),
                "Sync" => phases.insert(Phase::Main),
                "PostSync" => phases.insert(Phase::Post),
                "SyncFail" => phases.insert(Phase::Fail),
                "PreDelete" => phases.insert(Phase::PreDelete),
                "PostDelete" => phases.insert(Phase::PostDelete),
                "Skip" => {
                    skip = true;
                    true
                }
                _ => {
                    return Err(error(
                        ARGO_HOOK,
                        v,
                        "names an unknown hook (known: PreSync, Sync, PostSync, SyncFail, \
                         PreDelete, PostDelete, Skip; separate several with commas)",
                    ));
                }
            };
        }
        if skip {
            return Ok(Placement {
                phases: Vec::new(),
                wave,
                hook: None,
                not_run: Some(format!("not applied: {ARGO_HOOK}: Skip")),
            });
        }
        (phases, None, false)
    } else if let Some(v) = annotation(m, HELM_HOOK) {
        let mut phases = BTreeSet::new();
        let mut never = Vec::new();
        let mut other_time = Vec::new();
        for item in v.split(',').map(str::trim) {
            match item {
                "pre-install" if !upgrade => phases.insert(Phase::Pre),
                "pre-upgrade" if upgrade => phases.insert(Phase::Pre),
                "post-install" if !upgrade => phases.insert(Phase::Post),
                "post-upgrade" if upgrade => phases.insert(Phase::Post),
                "pre-install" | "post-install" | "pre-upgrade" | "post-upgrade" => {
                    other_time.push(item);
                    false
                }
                "pre-delete" => phases.insert(Phase::PreDelete),
                "post-delete" => phases.insert(Phase::PostDelete),
                "pre-rollback" | "post-rollback" | "test" | "test-success" | "test-failure" => {
                    never.push(item);
                    false
                }
                _ => {
                    return Err(error(
                        HELM_HOOK,
                        v,
                        "names an unknown hook (known: pre-install, post-install, pre-upgrade, \
                         post-upgrade, pre-delete, post-delete, pre-rollback, post-rollback, \
                         test; separate several with commas)",
                    ));
                }
            };
        }
        let not_run = phases.is_empty().then(|| {
            if !other_time.is_empty() {
                format!(
                    "not run: {HELM_HOOK}: {} runs on {} only",
                    other_time.join(","),
                    if upgrade {
                        "the first apply (install)"
                    } else {
                        "later applies (upgrade)"
                    }
                )
            } else {
                format!(
                    "not run: {HELM_HOOK}: {} is not run by a sync (tests run with `helm test`; \
                     a rollback is a git revert)",
                    never.join(",")
                )
            }
        });
        (phases, not_run, true)
    } else {
        return Ok(Placement {
            phases: vec![Phase::Main],
            wave,
            hook: None,
            not_run: None,
        });
    };

    let (policy_annotation, policy) = match annotation(m, ARGO_DELETE_POLICY) {
        Some(v) => (ARGO_DELETE_POLICY, Some(v)),
        None => (HELM_DELETE_POLICY, annotation(m, HELM_DELETE_POLICY)),
    };
    let mut delete_policies = BTreeSet::new();
    for item in policy
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        delete_policies.insert(match item {
            "BeforeHookCreation" | "before-hook-creation" => DeletePolicy::BeforeHookCreation,
            "HookSucceeded" | "hook-succeeded" => DeletePolicy::HookSucceeded,
            "HookFailed" | "hook-failed" => DeletePolicy::HookFailed,
            _ => {
                return Err(error(
                    policy_annotation,
                    policy.unwrap_or_default(),
                    if helm {
                        "names an unknown policy (known: before-hook-creation, hook-succeeded, \
                         hook-failed)"
                    } else {
                        "names an unknown policy (known: BeforeHookCreation, HookSucceeded, \
                         HookFailed)"
                    },
                ));
            }
        });
    }
    if delete_policies.is_empty() {
        delete_policies.insert(DeletePolicy::BeforeHookCreation);
    }
    Ok(Placement {
        phases: phases.into_iter().collect(),
        wave,
        hook: Some(Hook { delete_policies }),
        not_run,
    })
}

/// How far a hook object got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// Still running.
    Running(String),
    /// Completed successfully.
    Succeeded,
    /// Failed; why.
    Failed(String),
}

/// How far the live hook object `obj` got: a Job by its `Complete`/`Failed` condition
/// (`SuccessCriteriaMet`/`FailureTarget` count too), a Pod by its phase, anything else by its
/// health (healthy: done; degraded: failed).
pub fn hook_outcome(obj: &Value) -> HookOutcome {
    let group = crate::object::split_api_version(obj["apiVersion"].as_str().unwrap_or("")).0;
    let kind = obj["kind"].as_str().unwrap_or("");
    let condition = |type_: &str| {
        obj["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == type_ && c["status"] == "True")
    };
    let explain = |c: &Value| {
        let reason = c["reason"].as_str().unwrap_or("");
        let message = c["message"].as_str().unwrap_or("");
        match (reason.is_empty(), message.is_empty()) {
            (false, false) => format!("{reason}: {message}"),
            (false, true) => reason.to_owned(),
            (true, false) => message.to_owned(),
            (true, true) => "failed".to_owned(),
        }
    };
    match (group, kind) {
        ("batch", "Job") => {
            if let Some(c) = condition("Failed").or_else(|| condition("FailureTarget")) {
                return HookOutcome::Failed(explain(c));
            }
            if condition("Complete").is_some() || condition("SuccessCriteriaMet").is_some() {
                return HookOutcome::Succeeded;
            }
            let active = obj["status"]["active"].as_i64().unwrap_or(0);
            HookOutcome::Running(format!("Job running ({active} active Pods)"))
        }
        ("", "Pod") => match obj["status"]["phase"].as_str().unwrap_or("Pending") {
            "Succeeded" => HookOutcome::Succeeded,
            "Failed" => {
                let why: Vec<&str> = [
                    obj["status"]["reason"].as_str(),
                    obj["status"]["message"].as_str(),
                ]
                .into_iter()
                .flatten()
                .filter(|s| !s.is_empty())
                .collect();
                HookOutcome::Failed(if why.is_empty() {
                    "Pod failed".to_owned()
                } else {
                    why.join(": ")
                })
            }
            phase => HookOutcome::Running(format!("Pod {phase}")),
        },
        _ => {
            let verdict = crate::health::health(obj);
            match verdict.status {
                crate::HealthStatus::Healthy | crate::HealthStatus::Suspended => {
                    HookOutcome::Succeeded
                }
                crate::HealthStatus::Degraded => HookOutcome::Failed(verdict.reason),
                status => HookOutcome::Running(format!("{status}: {}", verdict.reason)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::SourceLocation;
    use serde_json::json;

    fn job(annotations: Value) -> Manifest {
        Manifest::from_value(
            json!({"apiVersion": "batch/v1", "kind": "Job",
                   "metadata": {"name": "j", "namespace": "ns", "annotations": annotations}}),
            Some(SourceLocation {
                file: "hooks.yaml".into(),
                line: 4,
                document: 1,
            }),
        )
        .expect("valid")
    }

    fn placed(annotations: Value, upgrade: bool) -> Placement {
        placement(&job(annotations), upgrade).expect("placed")
    }

    fn policies(p: &Placement) -> Vec<DeletePolicy> {
        p.hook
            .as_ref()
            .expect("a hook")
            .delete_policies
            .iter()
            .copied()
            .collect()
    }

    #[test]
    fn resources_run_in_main_at_their_wave() {
        let p = placed(json!({}), false);
        assert_eq!(
            (p.phases, p.wave, p.hook, p.not_run),
            (vec![Phase::Main], 0, None, None)
        );
        assert_eq!(placed(json!({ARGO_WAVE: "-3"}), false).wave, -3);
        assert_eq!(placed(json!({ARGO_WAVE: " 12 "}), false).wave, 12);
        // Argo CD reads Helm's weight as a wave too; its own annotation wins.
        assert_eq!(placed(json!({HELM_WEIGHT: "4"}), false).wave, 4);
        assert_eq!(
            placed(json!({HELM_WEIGHT: "4", ARGO_WAVE: "2"}), false).wave,
            2
        );
    }

    #[test]
    fn argo_hooks_map_to_phases() {
        for (value, phases) in [
            ("PreSync", vec![Phase::Pre]),
            ("Sync", vec![Phase::Main]),
            ("PostSync", vec![Phase::Post]),
            ("SyncFail", vec![Phase::Fail]),
            ("PreDelete", vec![Phase::PreDelete]),
            ("PostDelete", vec![Phase::PostDelete]),
            ("PostSync, PreSync", vec![Phase::Pre, Phase::Post]),
        ] {
            let p = placed(json!({ARGO_HOOK: value}), false);
            assert_eq!(p.phases, phases, "{value}");
            assert_eq!(policies(&p), [DeletePolicy::BeforeHookCreation], "default");
        }
        let skip = placed(json!({ARGO_HOOK: "Skip"}), false);
        assert!(skip.phases.is_empty() && skip.hook.is_none());
        assert_eq!(
            skip.not_run.as_deref(),
            Some("not applied: argocd.argoproj.io/hook: Skip")
        );
        let p = placed(
            json!({ARGO_HOOK: "PreSync", ARGO_DELETE_POLICY: "HookSucceeded,HookFailed"}),
            false,
        );
        assert_eq!(
            policies(&p),
            [DeletePolicy::HookSucceeded, DeletePolicy::HookFailed]
        );
    }

    #[test]
    fn helm_hooks_map_to_phases_by_install_or_upgrade() {
        let both = json!({HELM_HOOK: "pre-install,pre-upgrade"});
        assert_eq!(placed(both.clone(), false).phases, [Phase::Pre]);
        assert_eq!(placed(both, true).phases, [Phase::Pre]);
        let install = placed(json!({HELM_HOOK: "post-install"}), false);
        assert_eq!(install.phases, [Phase::Post]);
        let on_upgrade = placed(json!({HELM_HOOK: "post-install"}), true);
        assert!(on_upgrade.phases.is_empty());
        assert_eq!(
            on_upgrade.not_run.as_deref(),
            Some("not run: helm.sh/hook: post-install runs on the first apply (install) only")
        );
        assert_eq!(
            placed(json!({HELM_HOOK: "pre-upgrade"}), true).phases,
            [Phase::Pre]
        );
        assert!(
            placed(json!({HELM_HOOK: "pre-upgrade"}), false)
                .not_run
                .is_some()
        );
        assert_eq!(
            placed(json!({HELM_HOOK: "pre-delete"}), true).phases,
            [Phase::PreDelete]
        );
        assert_eq!(
            placed(json!({HELM_HOOK: "post-delete"}), false).phases,
            [Phase::PostDelete]
        );
        let test = placed(json!({HELM_HOOK: "test"}), true);
        assert!(test.phases.is_empty());
        assert!(test.not_run.unwrap().contains("helm test"));
        let p = placed(
            json!({HELM_HOOK: "pre-install", HELM_WEIGHT: "-5",
                   HELM_DELETE_POLICY: "hook-succeeded,before-hook-creation"}),
            false,
        );
        assert_eq!(p.wave, -5);
        assert_eq!(
            policies(&p),
            [
                DeletePolicy::BeforeHookCreation,
                DeletePolicy::HookSucceeded
            ]
        );
        // Argo CD's annotation wins over Helm's, as in Argo CD.
        let p = placed(json!({ARGO_HOOK: "Sync", HELM_HOOK: "post-install"}), false);
        assert_eq!(p.phases, [Phase::Main]);
    }

    #[test]
    fn unreadable_annotations_name_the_file_line_object_and_what_is_allowed() {
        let err = placement(&job(json!({ARGO_WAVE: "first"})), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "hooks.yaml:4 (document 1): Job.batch/ns/j: annotation argocd.argoproj.io/sync-wave: \
             \"first\" is not an integer (a wave is a whole number such as -1, 0 or 5; lower \
             waves run first)"
        );
        let err = placement(&job(json!({HELM_WEIGHT: "1.5"})), false).unwrap_err();
        assert_eq!(err.annotation, HELM_WEIGHT);
        let err = placement(&job(json!({ARGO_HOOK: "PreSnyc"})), false).unwrap_err();
        assert!(
            err.to_string().contains("unknown hook (known: PreSync"),
            "{err}"
        );
        let err = placement(&job(json!({HELM_HOOK: "pre-instal"})), false).unwrap_err();
        assert!(
            err.to_string().contains("unknown hook (known: pre-install"),
            "{err}"
        );
        let err = placement(
            &job(json!({ARGO_HOOK: "PreSync", ARGO_DELETE_POLICY: "HookSuceeded"})),
            false,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown policy (known: BeforeHookCreation"),
            "{err}"
        );
        let generated = Manifest::from_value(
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {
                "generateName": "migrate-", "namespace": "ns",
                "annotations": {ARGO_HOOK: "PreSync", ARGO_WAVE: "x"}}}),
            None,
        )
        .expect("a hook");
        let err = placement(&generated, false).unwrap_err();
        assert_eq!(err.object, "Job.batch/ns/migrate-*");
        assert!(err.to_string().starts_with("<unknown source>: "), "{err}");
    }

    #[test]
    fn hook_outcomes() {
        let job =
            |status: Value| json!({"apiVersion": "batch/v1", "kind": "Job", "status": status});
        assert!(matches!(
            hook_outcome(&job(json!({}))),
            HookOutcome::Running(_)
        ));
        assert_eq!(
            hook_outcome(&job(
                json!({"conditions": [{"type": "Complete", "status": "True"}]})
            )),
            HookOutcome::Succeeded
        );
        assert_eq!(
            hook_outcome(&job(
                json!({"conditions": [{"type": "Failed", "status": "True",
                "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]})
            )),
            HookOutcome::Failed(
                "BackoffLimitExceeded: Job has reached the specified backoff limit".into()
            )
        );
        assert!(matches!(
            hook_outcome(&job(
                json!({"conditions": [{"type": "Failed", "status": "False"}]})
            )),
            HookOutcome::Running(_)
        ));
        let pod = |status: Value| json!({"apiVersion": "v1", "kind": "Pod", "status": status});
        assert_eq!(
            hook_outcome(&pod(json!({"phase": "Succeeded"}))),
            HookOutcome::Succeeded
        );
        assert_eq!(
            hook_outcome(&pod(json!({"phase": "Failed"}))),
            HookOutcome::Failed("Pod failed".into())
        );
        assert_eq!(
            hook_outcome(&pod(json!({"phase": "Running"}))),
            HookOutcome::Running("Pod Running".into())
        );
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        assert_eq!(hook_outcome(&cm), HookOutcome::Succeeded);
    }

    #[test]
    fn live_waves_default_to_zero() {
        assert_eq!(wave_of_object(&json!({})), 0);
        assert_eq!(
            wave_of_object(&json!({"metadata": {"annotations": {ARGO_WAVE: "-2"}}})),
            -2
        );
        assert_eq!(
            wave_of_object(&json!({"metadata": {"annotations": {ARGO_WAVE: "x"}}})),
            0
        );
    }
}
