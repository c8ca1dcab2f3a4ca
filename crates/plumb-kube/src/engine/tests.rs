//! The engine's safety rules, each against the in-memory cluster (no API server): dry-run
//! before the first write, nothing written when a dry-run is refused, no prune after a
//! failure, the inventory after a partial failure, stage skipping, the CRD wait, the uid
//! precondition on prune, conflicts, one discovery per sync. The same rules are proved
//! end to end against the real control plane in crates/plumb/tests and crates/plumb-agent/tests.

use plumb_core::{Action, Inventory, Manifest, SourceLocation, SyncId, mark_owned};
use serde_json::{Value, json};

use super::memory::{Memory, On, Request};
use super::{Engine, NoProgress, SyncOptions};
use crate::cluster::{Cluster as _, Selector, WatchEvent};
use crate::error::{Error, FailureKind};

fn engine() -> Engine<Memory> {
    let engine = Engine::with_cluster(Memory::new());
    engine.cluster().put(
        "namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}}),
    );
    engine
}

fn cm(name: &str, value: &str) -> Manifest {
    let source = SourceLocation {
        file: format!("{name}.yaml").into(),
        line: 3,
        document: 0,
    };
    Manifest::from_value(
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": "ns"}, "data": {"k": value}}),
        Some(source),
    )
    .expect("valid")
}

fn namespace(name: &str) -> Manifest {
    Manifest::from_value(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        None,
    )
    .expect("valid")
}

fn opts() -> SyncOptions {
    let mut o = SyncOptions::new(SyncId::new("ns", "s"));
    o.prune = true;
    o
}

/// A live ConfigMap owned by the sync `ns/s`, as an earlier sync left it.
fn owned(engine: &Engine<Memory>, name: &str) -> Value {
    let mut m = cm(name, "old");
    mark_owned(&mut m, &SyncId::new("ns", "s"));
    engine.cluster().put("configmaps", m.object)
}

fn writes(log: &[Request]) -> Vec<String> {
    log.iter()
        .filter_map(|r| match r {
            Request::Apply {
                name,
                dry_run: false,
                ..
            } => Some(format!("apply {name}")),
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
) -> crate::Result<super::SyncReport> {
    engine.sync(desired, inventory, opts, &NoProgress).await
}

#[tokio::test]
async fn every_object_is_dry_run_before_the_first_write() {
    let engine = engine();
    let report = sync(
        &engine,
        vec![cm("a", "1"), cm("b", "1"), cm("c", "1")],
        &Inventory::default(),
        &opts(),
    )
    .await
    .expect("syncs");
    assert_eq!(report.changes.counts().created, 3);
    let log = engine.cluster().log();
    let first_write = log
        .iter()
        .position(|r| matches!(r, Request::Apply { dry_run: false, .. }))
        .expect("writes");
    let dry_runs = log[..first_write]
        .iter()
        .filter(|r| matches!(r, Request::Apply { dry_run: true, .. }))
        .count();
    assert_eq!(dry_runs, 3, "{log:?}");
}

#[tokio::test]
async fn a_refused_dry_run_writes_nothing_and_names_the_object_and_its_file() {
    let engine = engine();
    let stale = owned(&engine, "stale");
    let inventory = Inventory::from_manifests(&[Manifest::from_value(stale, None).expect("valid")]);
    engine
        .cluster()
        .fail("b", On::DryRun, 422, "Invalid", "data.k: Invalid value");
    let err = sync(
        &engine,
        vec![cm("a", "1"), cm("b", "1")],
        &inventory,
        &opts(),
    )
    .await
    .expect_err("refused");
    let Error::DryRun { failures } = &err else {
        panic!("{err}")
    };
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].kind, FailureKind::Invalid);
    assert_eq!(failures[0].object.name, "b");
    assert!(
        err.to_string().contains("ConfigMap/ns/b (b.yaml:3"),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert_eq!(writes(&engine.cluster().log()), Vec::<String>::new());
    assert!(
        engine
            .cluster()
            .object("configmaps", Some("ns"), "stale")
            .is_some()
    );
}

#[tokio::test]
async fn nothing_is_pruned_after_a_failure_and_the_inventory_keeps_every_old_object() {
    let engine = engine();
    let stale = Manifest::from_value(owned(&engine, "stale"), None).expect("valid");
    let inventory = Inventory::from_manifests(&[stale]);
    engine.cluster().fail(
        "b",
        On::Write,
        403,
        "Forbidden",
        "configmaps \"b\" is forbidden",
    );
    let report = sync(
        &engine,
        vec![cm("a", "1"), cm("b", "1")],
        &inventory,
        &opts(),
    )
    .await
    .expect("a write failure is a report, not an error");
    assert!(
        !writes(&engine.cluster().log())
            .iter()
            .any(|w| w.starts_with("delete")),
        "{:?}",
        engine.cluster().log()
    );
    assert!(
        engine
            .cluster()
            .object("configmaps", Some("ns"), "stale")
            .is_some()
    );
    let names: Vec<&str> = report
        .inventory
        .entries
        .iter()
        .map(|e| e.key.name.as_str())
        .collect();
    assert_eq!(names, ["a", "stale"], "written + every old object");
    let stale_change = report
        .changes
        .entries
        .iter()
        .find(|c| c.key.name == "stale")
        .expect("reported");
    assert_eq!(stale_change.action, Action::Skipped);
    let err = report.error().expect("failed");
    assert_eq!(err.object_failures()[0].kind, FailureKind::Forbidden);
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_transient_write_failure_is_retryable() {
    let engine = engine();
    engine.cluster().fail(
        "a",
        On::Write,
        503,
        "ServiceUnavailable",
        "etcd leader changed",
    );
    let report = sync(&engine, vec![cm("a", "1")], &Inventory::default(), &opts())
        .await
        .expect("report");
    let err = report.error().expect("failed");
    assert_eq!(err.object_failures()[0].kind, FailureKind::Transient);
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_failed_stage_skips_every_later_stage() {
    let engine = engine();
    engine.cluster().fail(
        "team",
        On::Write,
        403,
        "Forbidden",
        "namespaces is forbidden",
    );
    let mut in_team = cm("a", "1");
    in_team.set_namespace(Some("team"));
    let report = sync(
        &engine,
        vec![namespace("team"), in_team, cm("b", "1")],
        &Inventory::default(),
        &opts(),
    )
    .await
    .expect("report");
    let actions: Vec<(String, Action)> = report
        .changes
        .entries
        .iter()
        .map(|c| (c.key.name.clone(), c.action))
        .collect();
    assert_eq!(
        actions,
        [
            ("team".into(), Action::Failed),
            ("b".into(), Action::Skipped),
            ("a".into(), Action::Skipped),
        ]
    );
    // Objects of the later stage were validated (b) or not even that (a, in the new
    // Namespace), never written.
    assert_eq!(writes(&engine.cluster().log()), ["apply team"]);
}

#[tokio::test]
async fn objects_in_a_new_namespace_are_validated_after_it_is_created() {
    let engine = engine();
    let mut in_team = cm("a", "1");
    in_team.set_namespace(Some("team"));
    let report = sync(
        &engine,
        vec![namespace("team"), in_team],
        &Inventory::default(),
        &opts(),
    )
    .await
    .expect("syncs");
    assert_eq!(report.changes.counts().created, 2);
    let log = engine.cluster().log();
    let ns_written = log
        .iter()
        .position(|r| matches!(r, Request::Apply { name, dry_run: false, .. } if name == "team"))
        .expect("namespace written");
    let a_dry = log
        .iter()
        .position(|r| matches!(r, Request::Apply { name, dry_run: true, .. } if name == "a"))
        .expect("a validated");
    assert!(ns_written < a_dry, "{log:?}");
}

fn crd() -> Manifest {
    Manifest::from_value(
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
               "metadata": {"name": "widgets.example.com"},
               "spec": {"group": "example.com", "scope": "Namespaced",
                        "names": {"kind": "Widget", "plural": "widgets"},
                        "versions": [{"name": "v1", "served": true, "storage": true}]}}),
        None,
    )
    .expect("valid")
}

fn widget() -> Manifest {
    Manifest::from_value(
        json!({"apiVersion": "example.com/v1", "kind": "Widget",
               "metadata": {"name": "w", "namespace": "ns"}, "spec": {"size": 1}}),
        None,
    )
    .expect("valid")
}

#[tokio::test]
async fn custom_resources_wait_for_their_crd_and_a_new_discovery() {
    let engine = engine();
    let report = sync(
        &engine,
        vec![crd(), widget()],
        &Inventory::default(),
        &opts(),
    )
    .await
    .expect("syncs");
    assert_eq!(report.changes.counts().created, 2);
    let log = engine.cluster().log();
    let at = |want: &dyn Fn(&Request) -> bool| log.iter().position(want).expect("in the log");
    let crd_written = at(
        &|r| matches!(r, Request::Apply { name, dry_run: false, .. } if name == "widgets.example.com"),
    );
    let waited = at(&|r| matches!(r, Request::AwaitCrd(_)));
    let rediscovered = crd_written
        + log[crd_written..]
            .iter()
            .position(|r| *r == Request::Discover)
            .expect("rediscovers");
    let widget_dry =
        at(&|r| matches!(r, Request::Apply { name, dry_run: true, .. } if name == "w"));
    assert!(
        crd_written < waited && waited < rediscovered && rediscovered < widget_dry,
        "{log:?}"
    );
}

#[tokio::test]
async fn an_unchanged_object_is_not_written_and_a_vouched_one_not_even_validated() {
    let engine = engine();
    sync(
        &engine,
        vec![cm("a", "1"), cm("b", "1")],
        &Inventory::default(),
        &opts(),
    )
    .await
    .expect("first");
    let before = engine.cluster().log().len();
    let mut o = opts();
    let mut applied = cm("b", "1");
    mark_owned(&mut applied, &o.sync);
    o.vouched.insert(
        applied.key(),
        serde_json::to_string(&applied.object).expect("json"),
    );
    let report = sync(
        &engine,
        vec![cm("a", "1"), cm("b", "1")],
        &Inventory::default(),
        &o,
    )
    .await
    .expect("again");
    assert_eq!(report.changes.counts().unchanged, 2);
    let log = &engine.cluster().log()[before..];
    assert_eq!(writes(log), Vec::<String>::new());
    let validated: Vec<&str> = log
        .iter()
        .filter_map(|r| match r {
            Request::Apply { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(validated, ["a"], "{log:?}");
}

#[tokio::test]
async fn a_prune_deletes_only_the_object_it_checked() {
    let engine = engine();
    let stale = owned(&engine, "stale");
    let uid = stale["metadata"]["uid"].as_str().map(str::to_owned);
    let inventory = Inventory::from_manifests(&[Manifest::from_value(stale, None).expect("valid")]);
    let report = sync(&engine, vec![cm("a", "1")], &inventory, &opts())
        .await
        .expect("syncs");
    assert_eq!(report.changes.counts().pruned, 1);
    assert!(engine.cluster().log().contains(&Request::Delete {
        name: "stale".into(),
        uid
    }));
    // An object of the inventory that is not owned (labels gone) is never deleted.
    let engine = self::engine();
    let foreign = engine
        .cluster()
        .put("configmaps", cm("foreign", "x").object);
    let inventory =
        Inventory::from_manifests(&[Manifest::from_value(foreign, None).expect("valid")]);
    let report = sync(&engine, vec![cm("a", "1")], &inventory, &opts())
        .await
        .expect("syncs");
    assert_eq!(report.changes.counts().pruned, 0);
    assert!(
        writes(&engine.cluster().log())
            .iter()
            .all(|w| !w.starts_with("delete"))
    );
}

#[tokio::test]
async fn a_failed_prune_keeps_the_object_in_the_inventory() {
    let engine = engine();
    let stale = Manifest::from_value(owned(&engine, "stale"), None).expect("valid");
    let inventory = Inventory::from_manifests(&[stale]);
    engine.cluster().fail(
        "stale",
        On::Delete,
        409,
        "Conflict",
        "Precondition failed: UID",
    );
    let report = sync(&engine, vec![cm("a", "1")], &inventory, &opts())
        .await
        .expect("report");
    assert!(
        report
            .inventory
            .entries
            .iter()
            .any(|e| e.key.name == "stale")
    );
    assert_eq!(
        report.error().expect("failed").object_failures()[0]
            .object
            .name,
        "stale"
    );
}

fn conflicting(engine: &Engine<Memory>, manager: &str, operation: &str) {
    let mut live = cm("a", "edited");
    mark_owned(&mut live, &SyncId::new("ns", "s"));
    live.object["metadata"]["managedFields"] = json!([
        {"manager": "plumb", "operation": "Apply"},
        {"manager": manager, "operation": operation},
    ]);
    engine.cluster().put("configmaps", live.object);
    let message = format!("Apply failed with 1 conflict: conflict with \"{manager}\": .data.k");
    engine
        .cluster()
        .fail("a", On::DryRun, 409, "Conflict", &message);
}

#[tokio::test]
async fn an_imperative_edit_is_taken_back_but_another_applier_is_a_conflict() {
    let engine = engine();
    conflicting(&engine, "kubectl-edit", "Update");
    let report = sync(&engine, vec![cm("a", "1")], &Inventory::default(), &opts())
        .await
        .expect("drift is taken back");
    assert_eq!(report.changes.counts().configured, 1);
    assert!(engine.cluster().log().contains(&Request::Apply {
        name: "a".into(),
        dry_run: true,
        force: true
    }));

    let engine = self::engine();
    conflicting(&engine, "argocd-controller", "Apply");
    let err = sync(&engine, vec![cm("a", "1")], &Inventory::default(), &opts())
        .await
        .expect_err("a conflict");
    assert_eq!(err.object_failures()[0].kind, FailureKind::Conflict);
    assert!(err.to_string().contains("--force-conflicts"), "{err}");
    assert_eq!(writes(&engine.cluster().log()), Vec::<String>::new());
}

#[tokio::test]
async fn a_dry_run_sync_writes_nothing() {
    let engine = engine();
    let stale = Manifest::from_value(owned(&engine, "stale"), None).expect("valid");
    let mut o = opts();
    o.dry_run = true;
    let report = sync(
        &engine,
        vec![cm("a", "1")],
        &Inventory::from_manifests(&[stale]),
        &o,
    )
    .await
    .expect("dry run");
    assert_eq!(report.changes.counts().created, 1);
    assert_eq!(report.changes.counts().pruned, 1);
    assert_eq!(writes(&engine.cluster().log()), Vec::<String>::new());
}

#[tokio::test]
async fn a_sync_and_its_health_wait_share_one_discovery() {
    let engine = engine();
    let report = sync(&engine, vec![cm("a", "1")], &Inventory::default(), &opts())
        .await
        .expect("syncs");
    engine
        .wait_healthy(&report.applied, std::time::Duration::from_secs(5))
        .await
        .expect("a ConfigMap is healthy");
    engine.resolver().await.expect("resolver");
    let discoveries = engine
        .cluster()
        .log()
        .iter()
        .filter(|r| **r == Request::Discover)
        .count();
    assert_eq!(discoveries, 1);
}

#[tokio::test]
async fn an_unknown_kind_is_looked_up_again_before_it_is_refused() {
    let engine = engine();
    engine.resolver().await.expect("first discovery");
    let err = sync(&engine, vec![widget()], &Inventory::default(), &opts())
        .await
        .expect_err("unknown");
    assert!(matches!(err, Error::UnknownKind { .. }), "{err}");
    let discoveries = engine
        .cluster()
        .log()
        .iter()
        .filter(|r| **r == Request::Discover)
        .count();
    assert_eq!(
        discoveries, 2,
        "the cached discovery was checked again once"
    );
}

#[tokio::test]
async fn the_drift_check_leaves_an_object_another_sync_adopted_alone() {
    let engine = engine();
    let mut applied = cm("a", "1");
    mark_owned(&mut applied, &SyncId::new("ns", "s"));
    let mut adopted = cm("a", "1");
    mark_owned(&mut adopted, &SyncId::new("ns", "copy"));
    engine.cluster().put("configmaps", adopted.object);
    let kind = super::memory::kind("", "v1", "ConfigMap", "configmaps", true);
    let check = engine
        .check_object(&applied, &kind, false, true)
        .await
        .expect("checks");
    assert_eq!(
        check.state,
        super::ObjectState::TakenOver(SyncId::new("ns", "copy"))
    );
    assert!(!check.corrected);
    assert_eq!(writes(&engine.cluster().log()), Vec::<String>::new());
    // Its own object, edited by hand, is corrected.
    let mut edited = cm("a", "edited");
    mark_owned(&mut edited, &SyncId::new("ns", "s"));
    engine.cluster().put("configmaps", edited.object);
    let check = engine
        .check_object(&applied, &kind, false, true)
        .await
        .expect("checks");
    assert_eq!(check.state, super::ObjectState::Modified);
    assert!(check.corrected);
}

fn deployment(available: i64) -> Manifest {
    let mut labels = serde_json::Map::new();
    labels.insert(plumb_core::SYNC_NAME_LABEL.into(), json!("s"));
    labels.insert(plumb_core::SYNC_NAMESPACE_LABEL.into(), json!("ns"));
    Manifest::from_value(
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "namespace": "ns", "generation": 1, "labels": labels},
               "spec": {"replicas": 1},
               "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                          "availableReplicas": available}}),
        None,
    )
    .expect("valid")
}

fn watches(log: &[Request]) -> Vec<String> {
    log.iter()
        .filter_map(|r| match r {
            Request::Watch(plural, _) => Some(plural.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_health_wait_reads_no_object_and_sees_health_from_the_watch() {
    let engine = engine();
    engine.cluster().put("deployments", deployment(0).object);
    engine.cluster().put("configmaps", cm("a", "1").object);
    let objects = [cm("a", "1"), deployment(0)];
    let becomes_available = async {
        // Once the wait watches, the Deployment becomes available (as its controller would
        // report it).
        while watches(&engine.cluster().log()).is_empty() {
            tokio::task::yield_now().await;
        }
        engine.cluster().put("deployments", deployment(1).object);
    };
    let (waited, ()) = tokio::join!(
        engine.wait_healthy(&objects, std::time::Duration::from_secs(30)),
        becomes_available
    );
    let verdicts = waited.expect("the Deployment became available");
    assert!(
        verdicts
            .iter()
            .all(|(_, v)| v.status == plumb_core::HealthStatus::Healthy),
        "{verdicts:?}"
    );
    let log = engine.cluster().log();
    assert!(
        !log.iter()
            .any(|r| matches!(r, Request::Get(_) | Request::List(..))),
        "no object is read on its own: {log:?}"
    );
    assert_eq!(
        watches(&log),
        ["deployments"],
        "one watch, of the Deployments only (a ConfigMap is healthy once present)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_health_wait_times_out_naming_what_is_not_healthy_and_watches_a_sync_by_its_labels() {
    let engine = engine();
    let mut other = deployment(0);
    other.object["metadata"]["name"] = json!("api");
    engine.cluster().put("deployments", deployment(0).object);
    engine.cluster().put("deployments", other.object.clone());
    let err = engine
        .wait_healthy(
            &[cm("a", "1"), deployment(0), other],
            std::time::Duration::from_secs(3),
        )
        .await
        .expect_err("the Deployments never become available");
    let Error::Unhealthy { unhealthy, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(unhealthy.len(), 2, "{err}");
    assert!(err.to_string().contains("Deployment.apps/ns/web"), "{err}");
    let log = engine.cluster().log();
    let selectors: Vec<&Selector> = log
        .iter()
        .filter_map(|r| match r {
            Request::Watch(_, selector) => Some(selector),
            _ => None,
        })
        .collect();
    assert_eq!(
        selectors,
        [&Selector {
            labels: Some("plumb.dev/sync-name=s,plumb.dev/sync-namespace=ns".into()),
            fields: None,
        }]
    );
    assert!(!log.iter().any(|r| matches!(r, Request::Get(_))), "{log:?}");
}

#[tokio::test(start_paused = true)]
async fn a_wait_on_the_awaited_objects_names_the_same_unhealthy_ones_and_holds_no_spec() {
    let engine = engine();
    let lb = Manifest::from_value(
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "lb", "namespace": "ns"},
               "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}),
        None,
    )
    .expect("valid");
    engine.cluster().put("deployments", deployment(0).object);
    engine.cluster().put("configmaps", cm("a", "1").object);
    let objects = vec![cm("a", "1"), lb.clone(), deployment(0)];
    let awaited = super::awaited(objects.clone());
    // The ConfigMap (healthy once present) is left out; a LoadBalancer Service stays whole
    // (reduced, it would look healthy once present); the Deployment keeps its identity and
    // labels, not its spec or status.
    assert_eq!(awaited.len(), 2, "{awaited:?}");
    assert_eq!(awaited[0].object, lb.object);
    assert_eq!(awaited[1].key(), deployment(0).key());
    assert_eq!(
        awaited[1].object["metadata"]["labels"],
        deployment(0).object["metadata"]["labels"]
    );
    assert_eq!(awaited[1].object.get("spec"), None);
    assert_eq!(awaited[1].object.get("status"), None);
    let unhealthy = |objects: Vec<Manifest>| {
        let engine = &engine;
        async move {
            match engine
                .wait_healthy(&objects, std::time::Duration::from_secs(3))
                .await
            {
                Err(Error::Unhealthy { unhealthy, .. }) => unhealthy,
                other => panic!("{other:?}"),
            }
        }
    };
    let whole = unhealthy(objects).await;
    assert_eq!(whole.len(), 2, "{whole:?}");
    assert_eq!(unhealthy(awaited).await, whole);
}

/// Counts what a health wait reports.
struct Counting {
    reports: bool,
    calls: std::sync::atomic::AtomicUsize,
}

impl super::Progress for Counting {
    fn waiting(
        &self,
        _pending: &[(plumb_core::ObjectKey, plumb_core::HealthVerdict)],
        _total: usize,
    ) {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn reports_waiting(&self) -> bool {
        self.reports
    }
}

#[tokio::test]
async fn a_wait_builds_the_list_of_pending_objects_only_for_a_reporter_that_shows_it() {
    let engine = engine();
    engine.cluster().put("deployments", deployment(0).object);
    let objects = vec![deployment(0)];
    for reports in [true, false] {
        let counting = Counting {
            reports,
            calls: Default::default(),
        };
        match engine
            .wait_healthy_with(&objects, std::time::Duration::from_secs(1), &counting)
            .await
        {
            // Still named when it times out, reported or not.
            Err(Error::Unhealthy { unhealthy, .. }) => {
                assert_eq!(unhealthy.len(), 1, "{unhealthy:?}");
            }
            other => panic!("{other:?}"),
        }
        let calls = counting.calls.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(calls > 0, reports, "{calls} reports");
    }
    // The agent's waits report nothing.
    assert!(!super::Progress::reports_waiting(&NoProgress));
}

#[tokio::test]
async fn a_deleted_object_is_missing_again_until_it_is_back() {
    let engine = engine();
    engine.cluster().put("deployments", deployment(1).object);
    let kind = super::memory::kind("apps", "v1", "Deployment", "deployments", true);
    let mut events = engine.cluster().watch(
        &kind,
        Some("ns"),
        &Selector {
            labels: None,
            fields: Some("metadata.name=web".into()),
        },
    );
    use futures::StreamExt as _;
    assert_eq!(
        events.next().await.map(|e| e.ok()),
        Some(Some(WatchEvent::Listing))
    );
    assert!(matches!(
        events.next().await,
        Some(Ok(WatchEvent::Present(_)))
    ));
    assert_eq!(
        events.next().await.map(|e| e.ok()),
        Some(Some(WatchEvent::Listed))
    );
    engine
        .cluster()
        .delete(&kind, Some("ns"), "web", None)
        .await
        .expect("deletes");
    assert!(matches!(
        events.next().await,
        Some(Ok(WatchEvent::Deleted(_)))
    ));
}

#[tokio::test]
async fn an_object_that_looks_as_desired_but_was_never_applied_by_plumb_is_taken_over() {
    let engine = engine();
    // Created by someone else with exactly the desired content (no ownership labels: as
    // `plumb install` applies, owning nothing).
    let mut theirs = cm("a", "1").object;
    theirs["metadata"]["managedFields"] = json!([{"manager": "kubectl", "operation": "Apply"}]);
    engine.cluster().put("configmaps", theirs);
    let mut o = opts();
    o.own = false;
    let report = sync(&engine, vec![cm("a", "1")], &Inventory::default(), &o)
        .await
        .expect("syncs");
    assert_eq!(
        report.changes.counts().configured,
        1,
        "{:?}",
        report.changes
    );
    assert_eq!(writes(&engine.cluster().log()), ["apply a"]);
    // Now plumb applies it: the next sync leaves it alone.
    let before = engine.cluster().log().len();
    let report = sync(&engine, vec![cm("a", "1")], &Inventory::default(), &o)
        .await
        .expect("syncs");
    assert_eq!(report.changes.counts().unchanged, 1);
    assert_eq!(
        writes(&engine.cluster().log()[before..]),
        Vec::<String>::new()
    );
}

/// Two syncs at once, each of 12 ConfigMaps with concurrency 8, as the agent's concurrent
/// Syncs: without a budget their dry-runs overlap up to 16 at once; sharing an
/// [`super::ObjectBudget`] of 3, never more than 3 (what they hold at once is bounded
/// across syncs, not per sync).
#[tokio::test]
async fn a_shared_budget_bounds_the_objects_in_flight_across_syncs() {
    async fn two_syncs(engine: &Engine<Memory>) -> usize {
        let desired = |sync: &str| -> Vec<Manifest> {
            (0..12).map(|i| cm(&format!("{sync}-{i}"), "v")).collect()
        };
        let mut a = opts();
        a.sync = SyncId::new("ns", "a");
        let mut b = opts();
        b.sync = SyncId::new("ns", "b");
        let empty = Inventory::default();
        let (ra, rb) = tokio::join!(
            engine.sync(desired("a"), &empty, &a, &NoProgress),
            engine.sync(desired("b"), &empty, &b, &NoProgress),
        );
        let (ra, rb) = (ra.expect("sync a"), rb.expect("sync b"));
        assert!(ra.failures.is_empty() && rb.failures.is_empty());
        assert_eq!(
            ra.changes.counts().created + rb.changes.counts().created,
            24
        );
        engine.cluster().peak_applies()
    }

    let unbounded = engine();
    unbounded.cluster().slow_applies();
    let peak = two_syncs(&unbounded).await;
    assert!(peak > 8, "without a budget the syncs overlap: {peak}");

    let bounded = engine().budgeted(super::ObjectBudget::new(3));
    bounded.cluster().slow_applies();
    let peak = two_syncs(&bounded).await;
    assert!(
        peak <= 3,
        "at most 3 objects at once across both syncs: {peak}"
    );
    assert!(peak > 1, "the budget still lets objects overlap: {peak}");
}

/// ConfigMaps `<prefix>-0..n` in `ns`, owned by the Sync `ns/<owner>`.
fn put_owned(engine: &Engine<Memory>, owner: &str, prefix: &str, n: usize) {
    for i in 0..n {
        let mut m = cm(&format!("{prefix}-{i}"), "old");
        mark_owned(&mut m, &SyncId::new("ns", owner));
        engine.cluster().put("configmaps", m.object);
    }
}

fn reads(log: &[Request]) -> Vec<String> {
    log.iter()
        .filter_map(|r| match r {
            Request::List(plural, labels) => Some(format!("list {plural} {labels:?}")),
            Request::Get(name) => Some(format!("get {name}")),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_sync_reads_its_own_objects_by_their_labels_and_its_namespace_only_when_it_must() {
    let engine = engine();
    // Another Sync's objects share the namespace.
    put_owned(&engine, "other", "theirs", 30);
    put_owned(&engine, "s", "mine", 6);
    let inventory = Inventory::from_manifests(
        &(0..6)
            .map(|i| cm(&format!("mine-{i}"), "old"))
            .collect::<Vec<_>>(),
    );
    let mut desired: Vec<Manifest> = (0..6).map(|i| cm(&format!("mine-{i}"), "new")).collect();
    desired.push(cm("added", "new"));
    let before = engine.cluster().log().len();
    let report = sync(&engine, desired, &inventory, &opts())
        .await
        .expect("synced");
    assert_eq!(
        reads(&engine.cluster().log()[before..]),
        [
            format!(
                "list configmaps {:?}",
                Some(SyncId::new("ns", "s").label_selector())
            ),
            "get added".to_owned(),
        ],
        "its own objects by one selected LIST, the new one by a GET, never the namespace"
    );
    let counts = report.changes.counts();
    assert_eq!((counts.created, counts.configured), (1, 6), "{counts:?}");

    // Many objects it does not own yet: the namespace is listed after its own, and one owned
    // by the other Sync among them is still seen (a conflict, nothing written).
    let mut desired: Vec<Manifest> = (0..6).map(|i| cm(&format!("fresh-{i}"), "v")).collect();
    desired.push(cm("theirs-3", "mine now"));
    let before = engine.cluster().log().len();
    let err = sync(&engine, desired, &Inventory::default(), &opts())
        .await
        .expect_err("a conflict");
    assert!(err.to_string().contains("theirs-3"), "{err}");
    let log = engine.cluster().log()[before..].to_vec();
    assert_eq!(
        reads(&log),
        [
            format!(
                "list configmaps {:?}",
                Some(SyncId::new("ns", "s").label_selector())
            ),
            "list configmaps None".to_owned(),
        ]
    );
    assert!(writes(&log).is_empty(), "{log:?}");
}
