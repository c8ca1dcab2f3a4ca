//! Phases and waves against the in-memory cluster (which completes a created Job or Pod at
//! once, or fails it when told to): run order, the dry-run of every object and hook before
//! the first write, the health gate between waves, a failing hook stopping the revision (no
//! later wave, no prune, `fail` hooks run), delete policies, Helm's install and upgrade hooks,
//! and the prune in reverse wave order.

use std::time::Duration;

use plumb_core::{Action, Inventory, Manifest, SyncId, mark_owned};
use serde_json::{Value, json};

use super::memory::{Memory, On, Request};
use super::{Engine, NoProgress, SyncOptions, SyncReport};
use crate::error::FailureKind;

fn engine() -> Engine<Memory> {
    let engine = Engine::with_cluster(Memory::new());
    engine.cluster().put(
        "namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}}),
    );
    engine
}

fn cm(name: &str, wave: Option<i32>) -> Manifest {
    let mut v = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "ns"}, "data": {"k": "v"}});
    if let Some(w) = wave {
        v["metadata"]["annotations"] = json!({"argocd.argoproj.io/sync-wave": w.to_string()});
    }
    Manifest::from_value(v, None).expect("valid")
}

/// A Job hook: `name` ending in `-` is a generateName prefix.
fn job(name: &str, annotations: Value) -> Manifest {
    let mut v = json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"namespace": "ns", "annotations": annotations},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox"}]}}}});
    if name.ends_with('-') {
        v["metadata"]["generateName"] = json!(name);
    } else {
        v["metadata"]["name"] = json!(name);
    }
    Manifest::from_value(v, None).expect("valid")
}

fn opts() -> SyncOptions {
    let mut o = SyncOptions::new(SyncId::new("ns", "s"));
    o.prune = true;
    o
}

/// The writes in order: `apply NAME`, `create NAME` (the name or prefix as sent), `delete NAME`.
fn writes(log: &[Request]) -> Vec<String> {
    log.iter()
        .filter_map(|r| match r {
            Request::Apply {
                name,
                dry_run: false,
                ..
            } => Some(format!("apply {name}")),
            Request::Create {
                name,
                dry_run: false,
            } => Some(format!("create {name}")),
            Request::Delete { name, .. } => Some(format!("delete {name}")),
            _ => None,
        })
        .collect()
}

async fn sync(
    engine: &Engine<Memory>,
    desired: Vec<Manifest>,
    inventory: &Inventory,
    opts: &SyncOptions,
) -> SyncReport {
    engine
        .sync(desired, inventory, opts, &NoProgress)
        .await
        .expect("syncs")
}

fn action_of(report: &SyncReport, name: &str) -> Option<(Action, Option<String>)> {
    report
        .changes
        .entries
        .iter()
        .find(|c| c.key.name == name)
        .map(|c| (c.action, c.message.clone()))
}

/// A live ConfigMap owned by `ns/s`, at `wave`.
fn owned(engine: &Engine<Memory>, name: &str, wave: i32) -> Manifest {
    let mut m = cm(name, Some(wave));
    mark_owned(&mut m, &SyncId::new("ns", "s"));
    engine.cluster().put("configmaps", m.object.clone());
    m
}

#[tokio::test(start_paused = true)]
async fn hooks_and_waves_run_in_order_after_everything_was_validated() {
    let engine = engine();
    let desired = vec![
        job("smoke", json!({"argocd.argoproj.io/hook": "PostSync"})),
        cm("late", Some(1)),
        cm("main", None),
        job("migrate-", json!({"argocd.argoproj.io/hook": "PreSync"})),
        cm("early", Some(-1)),
        job("on-failure", json!({"argocd.argoproj.io/hook": "SyncFail"})),
    ];
    let report = sync(&engine, desired, &Inventory::default(), &opts()).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let log = engine.cluster().log();
    assert_eq!(
        writes(&log),
        [
            "create migrate-*",
            "apply early",
            "apply main",
            "apply late",
            "create smoke"
        ],
        "SyncFail hooks run only on failure"
    );
    // Every resource and every hook of the revision (the SyncFail one too) was validated
    // before the first write.
    let first_write = log
        .iter()
        .position(|r| {
            matches!(
                r,
                Request::Apply { dry_run: false, .. } | Request::Create { dry_run: false, .. }
            )
        })
        .expect("writes");
    let validated: Vec<&Request> = log[..first_write]
        .iter()
        .filter(|r| {
            matches!(
                r,
                Request::Apply { dry_run: true, .. } | Request::Create { dry_run: true, .. }
            )
        })
        .collect();
    assert_eq!(validated.len(), 6, "{log:?}");
    // The server named the generateName hook; hooks are not in the inventory nor applied.
    let ran: Vec<(String, &str)> = report
        .hooks
        .iter()
        .map(|h| (format!("{} {} {}", h.phase, h.wave, h.key.name), h.result))
        .collect();
    assert_eq!(ran.len(), 2);
    assert!(ran[0].0.starts_with("pre 0 migrate-") && ran[0].0 != "pre 0 migrate-*");
    assert_eq!(ran[1], ("post 0 smoke".to_owned(), "succeeded"));
    let inventory: Vec<String> = report
        .inventory
        .entries
        .iter()
        .map(|e| e.key.name.clone())
        .collect();
    assert_eq!(inventory, ["early", "late", "main"]);
    assert!(report.applied.iter().all(|m| m.kind() == "ConfigMap"));
    // Hooks carry no ownership labels: they are nobody's inventory.
    let smoke = engine
        .cluster()
        .object("jobs", Some("ns"), "smoke")
        .expect("kept: before-hook-creation is the default policy");
    assert!(smoke["metadata"]["labels"].is_null(), "{smoke}");
}

#[tokio::test(start_paused = true)]
async fn a_failing_hook_stops_the_revision_runs_the_fail_hooks_and_prunes_nothing() {
    let engine = engine();
    let stale = owned(&engine, "stale", 0);
    let inventory = Inventory::from_manifests(&[stale]);
    engine.cluster().fail_hook("check");
    let desired = vec![
        cm("first", None),
        job("check", json!({"argocd.argoproj.io/hook": "Sync"})),
        cm("second", Some(1)),
        job("smoke", json!({"argocd.argoproj.io/hook": "PostSync"})),
        job("notify-", json!({"argocd.argoproj.io/hook": "SyncFail"})),
    ];
    let report = sync(&engine, desired, &inventory, &opts()).await;
    let log = engine.cluster().log();
    let w = writes(&log);
    assert_eq!(
        w,
        ["apply first", "create check", "create notify-*"],
        "{w:?}"
    );
    assert!(
        engine
            .cluster()
            .object("configmaps", Some("ns"), "stale")
            .is_some()
    );
    let (action, message) = action_of(&report, "check").expect("reported");
    assert_eq!(action, Action::Failed);
    assert_eq!(
        message.as_deref(),
        Some(
            "hook Job.batch/ns/check failed: BackoffLimitExceeded: Job has reached the \
             specified backoff limit"
        )
    );
    for (name, why) in [
        ("second", "not run: an earlier wave failed (main wave 1)"),
        ("smoke", "not run: an earlier wave failed (post wave 0)"),
        ("stale", "not pruned: the sync had failures"),
    ] {
        assert_eq!(
            action_of(&report, name),
            Some((Action::Skipped, Some(why.to_owned()))),
            "{name}"
        );
    }
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].kind, FailureKind::Hook);
    let err = report.error().expect("the revision failed");
    assert!(!err.is_retryable());
    let results: Vec<(String, &str)> = report
        .hooks
        .iter()
        .map(|h| (h.phase.to_string(), h.result))
        .collect();
    assert_eq!(
        results,
        [
            ("main".to_owned(), "failed"),
            ("post".to_owned(), "skipped"),
            ("fail".to_owned(), "succeeded")
        ]
    );
    let names: Vec<String> = report
        .inventory
        .entries
        .iter()
        .map(|e| e.key.name.clone())
        .collect();
    assert_eq!(names, ["first", "stale"], "the old inventory is kept");
}

#[tokio::test(start_paused = true)]
async fn the_next_wave_waits_until_this_one_is_healthy_within_the_timeout() {
    let engine = engine();
    let deployment = Manifest::from_value(
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "namespace": "ns"}, "spec": {"replicas": 1}}),
        None,
    )
    .expect("valid");
    // One wave, no hooks: no gate (the health wait is the caller's, as before phases).
    let report = sync(
        &engine,
        vec![deployment.clone()],
        &Inventory::default(),
        &opts(),
    )
    .await;
    assert!(report.failures.is_empty());
    let reads = |engine: &Engine<Memory>| {
        engine
            .cluster()
            .log()
            .iter()
            .filter(|r| matches!(r, Request::Get(n) if n == "web"))
            .count()
    };
    assert_eq!(reads(&engine), 1, "the snapshot's read, and no health read");

    let mut o = opts();
    o.timeout = Duration::from_secs(3);
    let report = sync(
        &engine,
        vec![deployment, cm("after", Some(1))],
        &Inventory::default(),
        &o,
    )
    .await;
    assert_eq!(
        action_of(&report, "after"),
        Some((
            Action::Skipped,
            Some("not run: an earlier wave failed (main wave 1)".to_owned())
        ))
    );
    assert_eq!(report.failures.len(), 1);
    let f = &report.failures[0];
    assert_eq!(
        (f.kind, f.object.name.as_str()),
        (FailureKind::Unhealthy, "web")
    );
    assert!(
        f.message.starts_with(
            "not healthy within the timeout, so the waves after main wave 0 were not run: "
        ),
        "{}",
        f.message
    );
    assert!(report.error().expect("failed").is_retryable());
    assert!(
        engine
            .cluster()
            .object("configmaps", Some("ns"), "after")
            .is_none()
    );
}

#[tokio::test(start_paused = true)]
async fn the_fail_hooks_get_time_of_their_own_after_a_timeout() {
    let engine = engine();
    let deployment = Manifest::from_value(
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "namespace": "ns"}, "spec": {"replicas": 1}}),
        None,
    )
    .expect("valid");
    // Runs for four reads (two seconds of polling) before it completes.
    engine.cluster().slow_hook("notify", 4);
    let mut o = opts();
    o.timeout = Duration::from_secs(3);
    let report = sync(
        &engine,
        vec![
            deployment,
            cm("after", Some(1)),
            job("notify", json!({"argocd.argoproj.io/hook": "SyncFail"})),
        ],
        &Inventory::default(),
        &o,
    )
    .await;
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert_eq!(report.failures[0].kind, FailureKind::Unhealthy);
    assert_eq!(
        action_of(&report, "notify"),
        Some((
            Action::Created,
            Some("fail hook (wave 0): completed".to_owned())
        ))
    );
}

#[tokio::test(start_paused = true)]
async fn delete_policies_replace_keep_and_clean_up_hooks() {
    let engine = engine();
    let put_job = |name: &str| {
        engine.cluster().put(
            "jobs",
            json!({"apiVersion": "batch/v1", "kind": "Job",
                   "metadata": {"name": name, "namespace": "ns"},
                   "status": {"conditions": [{"type": "Complete", "status": "True"}]}}),
        )
    };
    let replaced = put_job("replaced");
    put_job("once");
    engine.cluster().fail_hook("cleaned-on-failure");
    let desired = vec![
        // Default: before-hook-creation.
        job("replaced", json!({"argocd.argoproj.io/hook": "PreSync"})),
        // Without it, an existing named hook is its run (created once, as in Argo CD).
        job(
            "once",
            json!({"argocd.argoproj.io/hook": "PreSync",
                   "argocd.argoproj.io/hook-delete-policy": "HookFailed"}),
        ),
        job(
            "cleaned",
            json!({"helm.sh/hook": "pre-install", "helm.sh/hook-weight": "1",
                   "helm.sh/hook-delete-policy": "hook-succeeded"}),
        ),
        job(
            "cleaned-on-failure",
            json!({"argocd.argoproj.io/hook": "PostSync",
                   "argocd.argoproj.io/hook-delete-policy": "HookFailed"}),
        ),
    ];
    let report = sync(&engine, desired, &Inventory::default(), &opts()).await;
    assert_eq!(
        writes(&engine.cluster().log()),
        [
            "delete replaced",
            "create replaced",
            "create cleaned",
            "delete cleaned",
            "create cleaned-on-failure",
            "delete cleaned-on-failure"
        ]
    );
    let now = engine
        .cluster()
        .object("jobs", Some("ns"), "replaced")
        .expect("created again");
    assert_ne!(now["metadata"]["uid"], replaced["metadata"]["uid"]);
    assert!(
        engine
            .cluster()
            .object("jobs", Some("ns"), "cleaned")
            .is_none()
    );
    assert_eq!(
        action_of(&report, "cleaned"),
        Some((
            Action::Created,
            Some("pre hook (wave 1): completed; deleted (hook-succeeded)".to_owned())
        ))
    );
    let (action, message) = action_of(&report, "cleaned-on-failure").expect("reported");
    assert_eq!(action, Action::Failed);
    assert!(message.unwrap().ends_with("; deleted (hook-failed)"));
}

#[tokio::test(start_paused = true)]
async fn helm_install_hooks_run_on_the_first_apply_and_upgrade_hooks_after() {
    let hooks = || {
        vec![
            cm("app", None),
            job("install", json!({"helm.sh/hook": "pre-install"})),
            job("upgrade", json!({"helm.sh/hook": "pre-upgrade"})),
            job("test", json!({"helm.sh/hook": "test"})),
        ]
    };
    let engine = engine();
    let first = sync(&engine, hooks(), &Inventory::default(), &opts()).await;
    assert_eq!(
        writes(&engine.cluster().log()),
        ["create install", "apply app"]
    );
    assert_eq!(
        action_of(&first, "upgrade").map(|a| a.0),
        Some(Action::Skipped)
    );
    let (action, why) = action_of(&first, "test").expect("reported");
    assert_eq!(action, Action::Skipped);
    assert!(why.unwrap().contains("helm test"));

    let engine2 = super::Engine::with_cluster(Memory::new());
    engine2.cluster().put(
        "namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}}),
    );
    let second = sync(&engine2, hooks(), &first.inventory, &opts()).await;
    assert_eq!(
        writes(&engine2.cluster().log()),
        ["create upgrade", "apply app"]
    );
    assert_eq!(
        action_of(&second, "install"),
        Some((
            Action::Skipped,
            Some(
                "not run: helm.sh/hook: pre-install runs on the first apply (install) only"
                    .to_owned()
            )
        ))
    );
}

#[tokio::test(start_paused = true)]
async fn the_prune_follows_the_main_phase_in_reverse_wave_order() {
    let engine = engine();
    let inventory = Inventory::from_manifests(&[
        owned(&engine, "gone-early", -2),
        owned(&engine, "gone-late", 3),
        owned(&engine, "gone", 0),
    ]);
    let desired = vec![
        cm("kept", Some(1)),
        job("after", json!({"argocd.argoproj.io/hook": "PostSync"})),
    ];
    sync(&engine, desired, &inventory, &opts()).await;
    assert_eq!(
        writes(&engine.cluster().log()),
        [
            "apply kept",
            "delete gone-late",
            "delete gone",
            "delete gone-early",
            "create after"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_lists_the_hooks_and_writes_nothing() {
    let engine = engine();
    let mut o = opts();
    o.dry_run = true;
    let report = sync(
        &engine,
        vec![
            cm("a", None),
            job("migrate-", json!({"argocd.argoproj.io/hook": "PreSync"})),
        ],
        &Inventory::default(),
        &o,
    )
    .await;
    assert_eq!(writes(&engine.cluster().log()), Vec::<String>::new());
    assert_eq!(
        action_of(&report, "migrate-*"),
        Some((
            Action::Skipped,
            Some("dry run: would run as a pre hook (wave 0)".to_owned())
        ))
    );
}

#[tokio::test(start_paused = true)]
async fn a_hook_the_server_refuses_is_refused_before_anything_is_written() {
    let engine = engine();
    engine.cluster().fail(
        "migrate-",
        On::DryRun,
        422,
        "Invalid",
        "spec.template: Required value",
    );
    let err = engine
        .sync(
            vec![
                cm("a", None),
                job("migrate-", json!({"argocd.argoproj.io/hook": "PreSync"})),
            ],
            &Inventory::default(),
            &opts(),
            &NoProgress,
        )
        .await
        .expect_err("refused");
    assert!(
        err.to_string()
            .contains("Job.batch/ns/migrate-*: spec.template: Required value"),
        "{err}"
    );
    assert_eq!(writes(&engine.cluster().log()), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_deletion_runs_the_pre_delete_hooks_prunes_then_runs_the_post_delete_hooks() {
    let engine = engine();
    let inventory = Inventory::from_manifests(&[owned(&engine, "app", 0)]);
    let mut o = opts();
    o.deleting = true;
    o.allow_empty = true;
    let revision = vec![
        cm("app", None),
        job("presync", json!({"argocd.argoproj.io/hook": "PreSync"})),
        job("cleanup-", json!({"argocd.argoproj.io/hook": "PostDelete"})),
        job("backup", json!({"helm.sh/hook": "pre-delete"})),
    ];
    let report = sync(&engine, revision, &inventory, &o).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(
        writes(&engine.cluster().log()),
        ["create backup", "delete app", "create cleanup-*"],
        "nothing of the revision is applied, its other hooks do not run"
    );
    assert!(report.inventory.is_empty());

    // A failing pre-delete hook keeps everything: the caller retries the deletion.
    let engine = super::Engine::with_cluster(Memory::new());
    engine.cluster().put(
        "namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}}),
    );
    let inventory = Inventory::from_manifests(&[owned(&engine, "app", 0)]);
    engine.cluster().fail_hook("backup");
    let report = sync(
        &engine,
        vec![
            job("backup", json!({"helm.sh/hook": "pre-delete"})),
            job("cleanup-", json!({"argocd.argoproj.io/hook": "PostDelete"})),
        ],
        &inventory,
        &o,
    )
    .await;
    assert_eq!(writes(&engine.cluster().log()), ["create backup"]);
    assert!(
        engine
            .cluster()
            .object("configmaps", Some("ns"), "app")
            .is_some()
    );
    assert_eq!(report.inventory.len(), 1);
    assert_eq!(report.failures[0].kind, FailureKind::Hook);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_wait_stops_the_revision_without_prune_or_fail_hooks() {
    let engine = engine();
    let inventory = Inventory::from_manifests(&[owned(&engine, "stale", 0)]);
    engine.cluster().slow_hook("stuck", usize::MAX);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut o = opts();
    o.cancel = Some(rx);
    let desired = vec![
        job("stuck", json!({"argocd.argoproj.io/hook": "PreSync"})),
        cm("app", None),
        job("notify", json!({"argocd.argoproj.io/hook": "SyncFail"})),
    ];
    // A newer revision arrives while the hook runs.
    let supersede = async {
        while !writes(&engine.cluster().log()).contains(&"create stuck".to_owned()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tx.send(true).expect("the sync listens");
    };
    let (report, ()) = tokio::join!(sync(&engine, desired, &inventory, &o), supersede);
    assert_eq!(writes(&engine.cluster().log()), ["create stuck"]);
    assert_eq!(report.failures.len(), 1);
    assert_eq!(
        report.failures[0].message,
        "hook Job.batch/ns/stuck did not complete: its wait was cancelled: a newer revision or \
         a change of the Sync superseded this one"
    );
    assert_eq!(
        action_of(&report, "stale").map(|a| a.0),
        Some(Action::Skipped),
        "not pruned"
    );
    assert!(action_of(&report, "notify").is_none(), "no fail hook");
    assert_eq!(report.inventory.len(), 1);
}
