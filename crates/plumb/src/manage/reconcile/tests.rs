//! Unit tests of `reconcile`.

use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn condition(type_: &str, reason: &str, message: &str, secs_ago: i64) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: "True".to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: Some(1),
        last_transition_time: Time(Timestamp::from_second(now().as_second() - secs_ago).unwrap()),
    }
}

fn message(stuck: &Stuck<'_>, state: &str) -> String {
    let request = Request {
        kind: "Sync",
        ns: "apps",
        name: "web",
        token: "2026-12-01T10:00:00Z",
    };
    give_up_message(stuck, &request, Duration::from_secs(90), now(), state)
}

const LIMIT: Duration = Duration::from_secs(420);

#[test]
fn a_recent_reconciling_condition_means_the_agent_is_busy_with_it() {
    let applying = condition(
        "Reconciling",
        "Progressing",
        "applying revision main@sha1:ab",
        100,
    );
    let conditions = [applying.clone()];
    let stuck = diagnose(&conditions, false, now(), LIMIT);
    assert_eq!(stuck, Stuck::Busy(&applying));
    let text = message(&stuck, &status_line(&conditions));
    assert!(text.contains("timed out after 90s"), "{text}");
    assert!(
        text.contains("the agent is still working on Sync apps/web"),
        "{text}"
    );
    assert!(
        text.contains("Reconciling for 100s, Progressing: applying revision main@sha1:ab"),
        "{text}"
    );
    assert!(
        text.contains("has not handled the reconcile request"),
        "{text}"
    );
    assert!(text.contains("plumb.dev/reconcile-requested-at=2026-12-01T10:00:00Z"));
    assert!(!text.contains("Is the agent running?"), "{text}");
}

#[test]
fn an_old_reconciling_condition_is_busy_only_if_the_status_moves() {
    let applying = condition("Reconciling", "Progressing", "applying revision r", 3600);
    let conditions = [applying.clone()];
    assert_eq!(
        diagnose(&conditions, true, now(), LIMIT),
        Stuck::Busy(&applying)
    );
    let stuck = diagnose(&conditions, false, now(), LIMIT);
    assert_eq!(stuck, Stuck::StaleReconciling(&applying));
    let text = message(&stuck, &status_line(&conditions));
    assert!(text.contains("Reconciling for 60m"), "{text}");
    assert!(text.contains("may have stopped"), "{text}");
    assert!(text.contains("Is the agent running?"), "{text}");
}

#[test]
fn an_untouched_status_means_no_agent_handled_it() {
    let ready = Condition {
        status: "False".to_owned(),
        ..condition("Ready", "HealthCheckFailed", "web is not Available", 50)
    };
    let conditions = [ready];
    let stuck = diagnose(&conditions, false, now(), LIMIT);
    assert_eq!(stuck, Stuck::Untouched);
    let text = message(&stuck, &status_line(&conditions));
    assert!(
        text.contains("no agent has handled the reconcile request"),
        "{text}"
    );
    assert!(
        text.contains("Ready=False (HealthCheckFailed): web is not Available"),
        "{text}"
    );
    assert!(text.contains("Is the agent running?"), "{text}");
}

#[test]
fn a_status_that_moved_without_reconciling_means_the_request_waits_its_turn() {
    let stuck = diagnose(&[], true, now(), LIMIT);
    assert_eq!(stuck, Stuck::Active);
    let text = message(&stuck, "no status yet");
    assert!(
        text.contains("has not handled the reconcile request"),
        "{text}"
    );
    assert!(!text.contains("Is the agent running?"), "{text}");
}

#[test]
fn status_lines_prefer_reconciling_then_stalled_then_ready() {
    let ready = condition("Ready", "ReconciliationSucceeded", "applied revision a", 10);
    let stalled = condition("Stalled", "VerificationFailed", "not signed", 10);
    let reconciling = condition("Reconciling", "Progressing", "applying revision b", 10);
    assert_eq!(status_line(&[]), "no status yet");
    assert_eq!(
        status_line(std::slice::from_ref(&ready)),
        "Ready=True (ReconciliationSucceeded): applied revision a"
    );
    assert_eq!(
        status_line(&[ready.clone(), stalled.clone()]),
        "Stalled (VerificationFailed): not signed"
    );
    assert_eq!(
        status_line(&[ready, stalled, reconciling]),
        "Reconciling (Progressing): applying revision b"
    );
}

#[test]
fn a_sync_may_take_its_health_timeout_and_then_some() {
    let sync = |spec: serde_json::Value| -> Sync {
        serde_json::from_value(json!({
            "apiVersion": "plumb.dev/v1alpha1", "kind": "Sync",
            "metadata": { "name": "web", "namespace": "apps" },
            "spec": spec
        }))
        .unwrap()
    };
    let plain = sync(json!({ "sourceRef": { "name": "repo" } }));
    assert_eq!(plain.work_limit(), WORK_ALLOWANCE);
    let waits = sync(json!({ "sourceRef": { "name": "repo" }, "wait": true, "timeout": "10m" }));
    assert_eq!(
        waits.work_limit(),
        Duration::from_secs(600) + WORK_ALLOWANCE
    );
    let default = sync(json!({ "sourceRef": { "name": "repo" }, "wait": true }));
    assert_eq!(
        default.work_limit(),
        plumb_agent::syncs::DEFAULT_TIMEOUT + WORK_ALLOWANCE
    );
}
