//! Running a plan phase by phase and wave by wave (`plumb_core::phases`): each wave's
//! resources stage by stage (CRDs and Namespaces first), then its hook objects, which are
//! created and awaited to completion; the next wave starts once this one is healthy; the prune
//! follows the main phase; a failure skips every later wave and phase, prunes nothing, and
//! runs the `fail` hooks.

use std::collections::BTreeSet;
use std::time::Duration;

use plumb_core::phases::{DeletePolicy, HookOutcome, Phase, display_object, hook_outcome};
use plumb_core::{
    Action, ChangeSet, HealthStatus, Manifest, ObjectKey, Plan, PlannedHook, Stage, Step,
};
use serde_json::Value;
use tokio::time::Instant;

use super::prepare::Prepared;
use super::{Engine, Progress, SyncOptions};
use crate::cluster::Cluster;
use crate::discovery::{Resolved, Resolver};
use crate::error::{Error, FailureKind, ObjectError, Result};

/// How often a running hook is read again.
const HOOK_POLL: Duration = Duration::from_millis(500);

/// One hook object's run, as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRun {
    /// Its phase.
    pub phase: Phase,
    /// Its wave.
    pub wave: i32,
    /// The object (for a `generateName` hook, the name the server gave it; the prefix and `*`
    /// when it was never created).
    pub key: ObjectKey,
    /// `succeeded`, `failed` or `skipped`.
    pub result: &'static str,
    /// Why it failed or was skipped; what happened to it after (deleted by its policy).
    pub message: Option<String>,
}

/// The key a hook is reported under before the server named it.
pub(super) fn hook_key(m: &Manifest) -> ObjectKey {
    let mut key = m.key();
    if key.name.is_empty() {
        key.name = format!("{}*", m.generate_name().unwrap_or_default());
    }
    key
}

/// The objects of a revision that run when its sync unit is deleted: hooks of the
/// `pre-delete` and `post-delete` phases (nothing else is applied then).
pub(super) fn delete_hooks_only(desired: Vec<Manifest>) -> Vec<Manifest> {
    desired
        .into_iter()
        .filter(|m| {
            plumb_core::placement(m, true).is_ok_and(|p| {
                p.hook.is_some()
                    && p.phases
                        .iter()
                        .any(|ph| matches!(ph, Phase::PreDelete | Phase::PostDelete))
            })
        })
        .collect()
}

/// Why a wait stopped early.
const CANCELLED: &str =
    "its wait was cancelled: a newer revision or a change of the Sync superseded this one";

/// Resolves once `cancel` says so (never without one).
async fn cancelled(cancel: Option<tokio::sync::watch::Receiver<bool>>) {
    match cancel {
        Some(mut rx) => {
            if rx.wait_for(|c| *c).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Everything a run of the phases adds to the report.
struct Run<'a> {
    changes: &'a mut ChangeSet,
    failures: &'a mut Vec<ObjectError>,
    hooks: &'a mut Vec<HookRun>,
    progress: &'a dyn Progress,
    /// When the waits of this revision (wave gates, hooks) must be over.
    deadline: Instant,
    /// Stops the waits early ([`SyncOptions::cancel`]).
    cancel: Option<tokio::sync::watch::Receiver<bool>>,
    /// A wait was cancelled.
    cancelled: bool,
}

impl Run<'_> {
    fn skip(&mut self, key: ObjectKey, why: &str) {
        self.progress.done(&key, Action::Skipped);
        self.changes
            .push(key, Action::Skipped, Some(why.to_owned()));
    }

    fn skip_hook(&mut self, step: &Step, hook: &PlannedHook, why: &str) {
        let key = hook_key(&hook.manifest);
        self.hooks.push(HookRun {
            phase: step.phase,
            wave: step.wave,
            key: key.clone(),
            result: "skipped",
            message: Some(why.to_owned()),
        });
        self.skip(key, why);
    }

    fn skip_step(&mut self, step: &Step, why: &str) {
        for m in step.manifests() {
            self.skip(m.key(), why);
        }
        for hook in &step.hooks {
            self.skip_hook(step, hook, why);
        }
    }
}

impl<C: Cluster> Engine<C> {
    /// Runs the `pre`, `main` and `post` waves of the plan, the prune after the main phase,
    /// and on a failure the `fail` hooks. Returns whether the revision failed. Objects are
    /// reported in `changes` (and failures in `failures`) as they go.
    pub(super) async fn run_phases(
        &self,
        prep: &mut Prepared,
        opts: &SyncOptions,
        progress: &dyn Progress,
        changes: &mut ChangeSet,
        failures: &mut Vec<ObjectError>,
        hooks: &mut Vec<HookRun>,
    ) -> Result<bool> {
        let mut run = Run {
            changes,
            failures,
            hooks,
            progress,
            deadline: Instant::now() + opts.timeout,
            cancel: opts.cancel.clone(),
            cancelled: false,
        };
        if opts.deleting {
            return Ok(self.run_deletion(prep, &mut run).await);
        }
        let phased = prep.plan.is_phased();
        // Taken out of the plan while it runs (put back below) rather than copied: the steps
        // hold every manifest of the revision.
        let all_steps = std::mem::take(&mut prep.plan.steps);
        let steps: Vec<&Step> = all_steps
            .iter()
            .filter(|s| Phase::SYNC.contains(&s.phase))
            .collect();
        let mut failed = false;
        let mut pruned = false;
        for (i, step) in steps.iter().enumerate() {
            if step.phase > Phase::Main && !pruned {
                pruned = true;
                failed |= self.prune_all(prep, failed, &mut run).await;
            }
            if failed {
                run.skip_step(
                    step,
                    &format!(
                        "not run: an earlier wave failed ({} wave {})",
                        step.phase, step.wave
                    ),
                );
                continue;
            }
            failed = self.apply_step(prep, step, opts, &mut run).await?;
            if !failed {
                failed = self.run_hooks(prep, step, &mut run).await;
            }
            // The next wave starts once this one is healthy.
            if !failed && phased && i + 1 < steps.len() {
                failed = self.gate(step, &mut run).await?;
            }
        }
        if !pruned {
            failed |= self.prune_all(prep, failed, &mut run).await;
        }
        // A superseded revision did not fail: its fail hooks do not run.
        if failed && !run.cancelled {
            // The fail hooks get time of their own: the failure may have been a timeout.
            run.deadline = Instant::now() + opts.timeout;
            for step in all_steps.iter().filter(|s| s.phase == Phase::Fail) {
                self.run_hooks(prep, step, &mut run).await;
            }
        }
        prep.plan.steps = all_steps;
        Ok(failed)
    }

    /// The deletion of a sync unit: its `pre-delete` hooks, the prune of everything it owns,
    /// its `post-delete` hooks. A failed hook or delete skips what follows.
    async fn run_deletion(&self, prep: &Prepared, run: &mut Run<'_>) -> bool {
        let pre: Vec<Step> = prep.plan.steps_of(Phase::PreDelete).cloned().collect();
        let post: Vec<Step> = prep.plan.steps_of(Phase::PostDelete).cloned().collect();
        let mut failed = false;
        for step in &pre {
            if failed {
                run.skip_step(step, "not run: an earlier pre-delete hook failed");
                continue;
            }
            failed = self.run_hooks(prep, step, run).await;
        }
        failed |= self.prune_all(prep, failed, run).await;
        for step in &post {
            if failed {
                run.skip_step(step, "not run: the deletion had failures");
                continue;
            }
            failed = self.run_hooks(prep, step, run).await;
        }
        failed
    }

    /// Applies the resources of one wave, stage by stage; a failed stage skips the later ones.
    /// After the Definitions stage wrote CRDs: waits until they are Established and discovers
    /// again. Returns whether anything failed.
    async fn apply_step(
        &self,
        prep: &mut Prepared,
        step: &Step,
        opts: &SyncOptions,
        run: &mut Run<'_>,
    ) -> Result<bool> {
        let mut failed = false;
        for (stage, manifests) in &step.stages {
            if failed {
                for m in manifests {
                    run.skip(m.key(), "not applied: an earlier stage failed");
                }
                continue;
            }
            let stage_changes = self
                .apply_stage(prep, manifests, opts, run.progress, run.failures)
                .await;
            failed = stage_changes.has_failures();
            let crds_touched = stage_changes.entries.iter().any(|c| {
                c.key.kind == "CustomResourceDefinition"
                    && matches!(c.action, Action::Created | Action::Configured)
            });
            run.changes.extend(stage_changes);
            if *stage == Stage::Definitions && crds_touched && !failed {
                self.await_crds_established(manifests, opts.crd_timeout)
                    .await?;
                let kinds = self.discovery.refresh(&self.cluster).await?;
                prep.resolver.replace_kinds(kinds);
                self.resolve_pending(prep).await?;
            }
        }
        if failed {
            for hook in &step.hooks {
                run.skip_hook(step, hook, "not run: a resource of its wave failed");
            }
        }
        Ok(failed)
    }

    /// Waits until the resources of `step` are healthy; those that are not by the deadline
    /// fail the revision. Returns whether it failed.
    async fn gate(&self, step: &Step, run: &mut Run<'_>) -> Result<bool> {
        let objects: Vec<Manifest> = step.manifests().cloned().collect();
        if objects.is_empty() {
            return Ok(false);
        }
        let left = run.deadline.saturating_duration_since(Instant::now());
        let waited = tokio::select! {
            waited = self.wait_healthy(&objects, left) => waited,
            () = cancelled(run.cancel.clone()) => {
                run.cancelled = true;
                for m in &objects {
                    run.failures.push(ObjectError::new(
                        m.key(),
                        m.source.clone(),
                        FailureKind::Unhealthy,
                        format!("the waves after {} wave {} were not run: {CANCELLED}",
                            step.phase, step.wave),
                    ));
                }
                return Ok(true);
            }
        };
        match waited {
            Ok(_) => Ok(false),
            Err(Error::Unhealthy { verdicts, .. }) => {
                for (key, verdict) in verdicts {
                    if matches!(
                        verdict.status,
                        HealthStatus::Healthy | HealthStatus::Suspended
                    ) {
                        continue;
                    }
                    let location = objects
                        .iter()
                        .find(|m| m.key() == key)
                        .and_then(|m| m.source.clone());
                    run.failures.push(ObjectError::new(
                        key,
                        location,
                        FailureKind::Unhealthy,
                        format!(
                            "not healthy within the timeout, so the waves after {} wave {} were \
                             not run: {} ({})",
                            step.phase, step.wave, verdict.status, verdict.reason
                        ),
                    ));
                }
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes the plan's prune set in its order (waves descending), or reports it skipped
    /// after a failure. Returns whether a delete failed.
    async fn prune_all(&self, prep: &Prepared, failed: bool, run: &mut Run<'_>) -> bool {
        let mut prune_failed = false;
        for entry in &prep.plan.prune {
            if failed {
                run.skip(entry.key.clone(), "not pruned: the sync had failures");
                continue;
            }
            match self.prune(prep, entry).await {
                Ok(()) => {
                    run.progress.done(&entry.key, Action::Pruned);
                    run.changes.push(entry.key.clone(), Action::Pruned, None);
                }
                Err(failure) => {
                    prune_failed = true;
                    run.progress.done(&entry.key, Action::Failed);
                    run.changes.push(
                        entry.key.clone(),
                        Action::Failed,
                        Some(failure.message.clone()),
                    );
                    run.failures.push(failure);
                }
            }
        }
        prune_failed
    }

    /// Runs the hooks of one wave, one after the other in plan order (each created, then
    /// awaited); the first failure skips the rest. Returns whether one failed.
    async fn run_hooks(&self, prep: &Prepared, step: &Step, run: &mut Run<'_>) -> bool {
        let mut failed = false;
        for hook in &step.hooks {
            if failed {
                run.skip_hook(step, hook, "not run: an earlier hook of its wave failed");
                continue;
            }
            let (key, outcome) = self
                .run_hook(&prep.resolver, hook, run.deadline, run.cancel.clone())
                .await;
            if outcome
                .as_ref()
                .is_err_and(|f| f.message.ends_with(CANCELLED))
            {
                run.cancelled = true;
            }
            let (action, result, note, message) = match &outcome {
                Ok(note) => (
                    Action::Created,
                    "succeeded",
                    note.clone(),
                    format!(
                        "{} hook (wave {}): completed{}",
                        step.phase,
                        step.wave,
                        note.as_ref().map(|n| format!("; {n}")).unwrap_or_default()
                    ),
                ),
                Err(f) => (
                    Action::Failed,
                    "failed",
                    Some(f.message.clone()),
                    f.message.clone(),
                ),
            };
            run.progress.done(&key, action);
            run.changes.push(key.clone(), action, Some(message));
            run.hooks.push(HookRun {
                phase: step.phase,
                wave: step.wave,
                key,
                result,
                message: note,
            });
            if let Err(f) = outcome {
                run.failures.push(f);
                failed = true;
            }
        }
        failed
    }

    /// Creates one hook object (after deleting its previous instance, per its policy) and waits
    /// until it completed. Returns its key (with the server's name) and, on success, a note on
    /// what happened to it after.
    async fn run_hook(
        &self,
        resolver: &Resolver,
        hook: &PlannedHook,
        deadline: Instant,
        cancel: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> (ObjectKey, Result<Option<String>, ObjectError>) {
        let m = &hook.manifest;
        let mut key = hook_key(m);
        let location = m.source.clone();
        let fail = |key: &ObjectKey, kind, message: String| {
            ObjectError::new(key.clone(), location.clone(), kind, message)
        };
        let api_fail = |key: &ObjectKey, e: kube::Error| {
            ObjectError::from_api(key.clone(), location.clone(), e, false)
        };
        let Some(resolved) = resolver.resolve(m).filter(|r| r.served) else {
            let message = format!(
                "the cluster serves no kind {} in {}",
                m.kind(),
                m.api_version()
            );
            return (key.clone(), Err(fail(&key, FailureKind::Other, message)));
        };
        let ns = m.namespace();

        // A named hook may exist from an earlier run.
        let mut existing = None;
        if !m.name().is_empty() {
            match self.cluster.get(&resolved, ns, m.name()).await {
                Ok(live) => existing = live,
                Err(e) => return (key.clone(), Err(api_fail(&key, e))),
            }
        }
        if let Some(old) = existing.take() {
            if hook.hook.deletes(DeletePolicy::BeforeHookCreation) {
                if let Err(f) = self.delete_hook(&resolved, &key, &old, deadline).await {
                    return (key, Err(f));
                }
            } else {
                // Created once (as in Argo CD): without before-hook-creation the existing
                // object is this hook's run.
                existing = Some(old);
            }
        }
        let mut live = match existing {
            Some(old) => old,
            None => match self.cluster.create(&resolved, ns, &m.object, false).await {
                Ok(created) => created,
                Err(e) => return (key.clone(), Err(api_fail(&key, e))),
            },
        };
        if let Some(name) = live["metadata"]["name"].as_str() {
            key.name = name.to_owned();
        }

        // Until it completed.
        let outcome = loop {
            match hook_outcome(&live) {
                HookOutcome::Running(state) => {
                    if Instant::now() >= deadline {
                        break HookOutcome::Failed(format!(
                            "did not complete within the timeout (still: {state})"
                        ));
                    }
                    tokio::select! {
                        () = tokio::time::sleep(HOOK_POLL) => {}
                        () = cancelled(cancel.clone()) => {
                            let message = format!("hook {} did not complete: {CANCELLED}", display_object(m));
                            return (key.clone(), Err(fail(&key, FailureKind::Hook, message)));
                        }
                    }
                    match self.cluster.get(&resolved, ns, &key.name).await {
                        Ok(Some(v)) => live = v,
                        Ok(None) => {
                            break HookOutcome::Failed(
                                "was deleted before it completed".to_owned(),
                            );
                        }
                        Err(e) => return (key.clone(), Err(api_fail(&key, e))),
                    }
                }
                done => break done,
            }
        };
        let policy = match outcome {
            HookOutcome::Failed(_) => DeletePolicy::HookFailed,
            _ => DeletePolicy::HookSucceeded,
        };
        let mut note = None;
        if hook.hook.deletes(policy) {
            note = Some(
                match self.delete_hook(&resolved, &key, &live, deadline).await {
                    Ok(()) => format!("deleted ({policy})"),
                    Err(f) => format!("not deleted ({policy}): {}", f.message),
                },
            );
        }
        match outcome {
            HookOutcome::Failed(why) => {
                let message = format!(
                    "hook {} failed: {why}{}",
                    display_object(m),
                    note.map(|n| format!("; {n}")).unwrap_or_default()
                );
                let f = fail(&key, FailureKind::Hook, message);
                (key, Err(f))
            }
            _ => (key, Ok(note)),
        }
    }

    /// Deletes a hook object (only the very object seen: uid precondition) and waits until it
    /// is gone, so that a new one of the same name can be created.
    async fn delete_hook(
        &self,
        resolved: &Resolved,
        key: &ObjectKey,
        live: &Value,
        deadline: Instant,
    ) -> std::result::Result<(), ObjectError> {
        let uid = live["metadata"]["uid"].as_str();
        let ns = key.namespace.as_deref();
        match self.cluster.delete(resolved, ns, &key.name, uid).await {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(ObjectError::from_api(key.clone(), None, e, false)),
        }
        loop {
            match self.cluster.get(resolved, ns, &key.name).await {
                Ok(Some(v)) if v["metadata"]["uid"].as_str() == uid => {}
                Ok(_) => return Ok(()),
                Err(e) => return Err(ObjectError::from_api(key.clone(), None, e, false)),
            }
            if Instant::now() >= deadline {
                return Err(ObjectError::new(
                    key.clone(),
                    None,
                    FailureKind::Hook,
                    "the previous instance of this hook was still being deleted when the \
                     timeout ran out"
                        .to_owned(),
                ));
            }
            tokio::time::sleep(HOOK_POLL).await;
        }
    }

    /// A create dry-run of every hook object of the revision the server can validate yet (not
    /// those in a Namespace this sync creates, nor of a kind it defines). A named hook that
    /// exists passes: it is replaced or reused when it runs.
    pub(super) async fn validate_hooks(
        &self,
        plan: &Plan,
        resolver: &Resolver,
        new_namespaces: &BTreeSet<&str>,
    ) -> Vec<ObjectError> {
        let mut seen = BTreeSet::new();
        let mut failures = Vec::new();
        // Every hook of the revision, those that run on deletion too.
        let checked = [Phase::Fail, Phase::PreDelete, Phase::PostDelete];
        for step in plan
            .sync_steps()
            .chain(plan.steps.iter().filter(|s| checked.contains(&s.phase)))
        {
            for hook in &step.hooks {
                let m = &hook.manifest;
                // A hook of several phases is validated once.
                if !seen.insert((hook_key(m), m.source.clone())) {
                    continue;
                }
                let Some(resolved) = resolver.resolve(m).filter(|r| r.served) else {
                    continue;
                };
                if m.namespace().is_some_and(|ns| new_namespaces.contains(ns)) {
                    continue;
                }
                match self
                    .cluster
                    .create(&resolved, m.namespace(), &m.object, true)
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => {}
                    Err(e) => failures.push(ObjectError::from_api(
                        hook_key(m),
                        m.source.clone(),
                        e,
                        false,
                    )),
                }
            }
        }
        failures
    }
}
