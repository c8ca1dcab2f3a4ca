//! Unit tests of `registry`.

use super::*;

type Reg = Registry<&'static str, ()>;

fn sync(name: &str) -> SyncKey {
    ("ns".to_owned(), name.to_owned())
}

fn cm(name: &str) -> ObjectKey {
    ObjectKey::new("", "ConfigMap", Some("ns"), name)
}

fn seen(generation: Option<i64>, rv: &str, managers: &[(&str, &str)]) -> Seen {
    Seen {
        generation,
        resource_version: Some(rv.to_owned()),
        managers: Seen::managers_digest(
            managers
                .iter()
                .map(|(m, t)| ((*m).to_owned(), (*t).to_owned())),
        ),
    }
}

fn registration(
    s: &SyncKey,
    ticket: Ticket,
    revision: &str,
    scope: Scope,
    objects: &[(&ObjectKey, &'static str)],
) -> Registration<&'static str, ()> {
    Registration {
        sync: s.clone(),
        ticket,
        revision: revision.to_owned(),
        scope,
        objects: objects.iter().map(|(k, o)| ((*k).clone(), *o)).collect(),
        shared: (),
    }
}

fn complete(rendered: &str) -> Scope {
    Scope::Complete {
        rendered: rendered.to_owned(),
    }
}

/// Registers `objects` at `revision` as a whole apply would: begin, register, end.
fn apply(
    reg: &mut Reg,
    s: &SyncKey,
    revision: &str,
    scope: Scope,
    objects: &[(&ObjectKey, &'static str)],
) -> Vec<ObjectKey> {
    let ticket = reg.begin_apply(s);
    let r = reg.register(
        registration(s, ticket, revision, scope, objects),
        BTreeMap::new(),
    );
    assert!(matches!(r, Registered::Accepted { .. }), "{r:?}");
    reg.end_apply(s)
}

fn check_of(reg: &mut Reg, key: &ObjectKey) -> Option<(String, &'static str)> {
    match reg.target(key) {
        Target::Check {
            sync,
            revision,
            object,
            ..
        } => {
            reg.check_done(&sync);
            Some((revision, object))
        }
        _ => None,
    }
}

#[test]
fn status_churn_of_a_generation_tracked_object_is_not_a_candidate() {
    let a = seen(Some(3), "100", &[("plumb", "t1")]);
    let b = seen(Some(3), "101", &[("plumb", "t1")]);
    assert!(!is_candidate(&a, &b));
}

#[test]
fn spec_changes_and_foreign_managers_are_candidates() {
    let a = seen(Some(3), "100", &[("plumb", "t1")]);
    assert!(is_candidate(&a, &seen(Some(4), "101", &[("plumb", "t1")])));
    assert!(is_candidate(
        &a,
        &seen(Some(3), "101", &[("plumb", "t1"), ("kubectl-label", "t2")])
    ));
}

#[test]
fn kinds_without_generation_compare_resource_versions() {
    let a = seen(None, "100", &[("plumb", "t1")]);
    assert!(is_candidate(&a, &seen(None, "101", &[("plumb", "t1")])));
    assert!(!is_candidate(&a, &seen(None, "100", &[("plumb", "t1")])));
}

#[test]
fn a_change_is_checked_against_the_newest_revision_written() {
    let mut reg = Reg::default();
    let s = sync("app");
    let web = cm("web");
    apply(&mut reg, &s, "A", complete("dA"), &[(&web, "replicas: 2")]);
    assert_eq!(check_of(&mut reg, &web), Some(("A".into(), "replicas: 2")));
    // B's writes end (before any health wait): B is what a change is healed towards.
    apply(&mut reg, &s, "B", complete("dB"), &[(&web, "replicas: 3")]);
    assert_eq!(check_of(&mut reg, &web), Some(("B".into(), "replicas: 3")));
    assert_eq!(reg.clean_rendering(&s), Some(("B".into(), "dB".into())));
}

#[test]
fn a_revision_rendering_what_is_registered_advances_the_registration() {
    let mut reg = Reg::default();
    let s = sync("app");
    let web = cm("web");
    apply(&mut reg, &s, "A", complete("dA"), &[(&web, "replicas: 2")]);
    // B renders exactly A's objects: recorded without writes, and from then on the
    // registration stands for B.
    assert!(reg.advance(&s, "A", "dA", "B"));
    assert_eq!(reg.clean_rendering(&s), Some(("B".into(), "dA".into())));
    assert_eq!(check_of(&mut reg, &web), Some(("B".into(), "replicas: 2")));
    // Not from another revision or rendering.
    assert!(!reg.advance(&s, "A", "dA", "C"));
    assert!(!reg.advance(&s, "B", "dX", "C"));
}

#[test]
fn a_registration_from_an_older_apply_never_replaces_a_newer_one() {
    let mut reg = Reg::default();
    let s = sync("app");
    let web = cm("web");
    let older = reg.begin_apply(&s);
    let newer = reg.begin_apply(&s);
    let r = reg.register(
        registration(&s, newer, "B", complete("dB"), &[(&web, "B")]),
        BTreeMap::new(),
    );
    assert_eq!(r, Registered::Accepted { check: vec![] });
    let r = reg.register(
        registration(&s, older, "A", complete("dA"), &[(&web, "A")]),
        BTreeMap::new(),
    );
    assert_eq!(r, Registered::Stale);
    reg.end_apply(&s);
    reg.end_apply(&s);
    assert_eq!(check_of(&mut reg, &web), Some(("B".into(), "B")));
}

#[test]
fn a_partly_failed_apply_moves_only_what_it_wrote() {
    let mut reg = Reg::default();
    let s = sync("app");
    let (a, b, gone) = (cm("a"), cm("b"), cm("gone"));
    apply(
        &mut reg,
        &s,
        "A",
        complete("dA"),
        &[(&a, "a@A"), (&b, "b@A"), (&gone, "gone@A")],
    );
    // B wrote `a`, failed on `b`; `gone` left Git but is not pruned after a failure.
    apply(&mut reg, &s, "B", Scope::Written, &[(&a, "a@B")]);
    assert_eq!(check_of(&mut reg, &a), Some(("B".into(), "a@B")));
    assert_eq!(check_of(&mut reg, &b), Some(("A".into(), "b@A")));
    assert_eq!(check_of(&mut reg, &gone), Some(("A".into(), "gone@A")));
    // A partial registration vouches for no rendering: the next apply is a full one.
    assert_eq!(reg.clean_rendering(&s), None);
    // A complete registration replaces everything: `gone` is no longer healed.
    apply(
        &mut reg,
        &s,
        "C",
        complete("dC"),
        &[(&a, "a@C"), (&b, "b@C")],
    );
    assert_eq!(check_of(&mut reg, &gone), None);
    assert_eq!(reg.registered_at(&b), Some((&s, "C")));
}

#[test]
fn changes_during_the_writes_are_deferred_until_they_end_not_until_the_wait_ends() {
    let mut reg = Reg::default();
    let s = sync("app");
    let cfg = cm("cfg");
    apply(&mut reg, &s, "A", complete("dA"), &[(&cfg, "A")]);

    let ticket = reg.begin_apply(&s);
    assert_eq!(reg.target(&cfg), Target::Deferred);
    reg.register(
        registration(&s, ticket, "B", complete("dB"), &[(&cfg, "B")]),
        BTreeMap::new(),
    );
    // The writes end; the health wait (if any) comes after and defers nothing.
    assert_eq!(reg.end_apply(&s), vec![cfg.clone()]);
    assert!(!reg.is_writing(&s));
    assert_eq!(check_of(&mut reg, &cfg), Some(("B".into(), "B")));
}

#[test]
fn the_writes_own_events_are_not_checked_again_when_the_writes_end() {
    let mut reg = Reg::default();
    let s = sync("app");
    let (cfg, other, kept) = (cm("cfg"), cm("other"), cm("kept"));
    let plumb = |rv: &str, t: &str| seen(None, rv, &[("plumb", t)]);
    assert!(!reg.observe(&cfg, plumb("1", "t1")));
    assert!(!reg.observe(&other, plumb("2", "t1")));
    assert!(!reg.observe(&kept, plumb("3", "t1")));
    apply(
        &mut reg,
        &s,
        "A",
        complete("dA"),
        &[(&cfg, "A"), (&other, "A"), (&kept, "A")],
    );

    let ticket = reg.begin_apply(&s);
    // The apply writes cfg and other; the watch sees both writes, then a hand edit of other,
    // and a hand edit of kept, which this apply does not write (unchanged, vouched for).
    assert!(reg.observe(&cfg, plumb("4", "t2")));
    assert_eq!(reg.target(&cfg), Target::Deferred);
    assert!(reg.observe(&other, plumb("5", "t2")));
    assert_eq!(reg.target(&other), Target::Deferred);
    let edited = seen(None, "6", &[("plumb", "t2"), ("kubectl", "t3")]);
    assert!(reg.observe(&other, edited));
    assert!(reg.observe(
        &kept,
        seen(None, "7", &[("plumb", "t1"), ("kubectl", "t3")])
    ));
    assert_eq!(reg.target(&kept), Target::Deferred);
    let written = BTreeMap::from([
        (cfg.clone(), plumb("4", "t2")),
        (other.clone(), plumb("5", "t2")),
    ]);
    let r = reg.register(
        registration(
            &s,
            ticket,
            "B",
            complete("dB"),
            &[(&cfg, "B"), (&other, "B"), (&kept, "B")],
        ),
        written,
    );
    // The registration checks other (edited after its write); the end of the writes checks
    // kept (changed, not written); cfg, as written, is checked by neither.
    assert!(
        matches!(&r, Registered::Accepted { check } if check == &vec![other.clone()]),
        "{r:?}"
    );
    assert_eq!(reg.end_apply(&s), vec![kept.clone()]);
}

#[test]
fn a_watch_behind_the_apply_takes_its_write_as_seen_and_checks_only_later_changes() {
    let mut reg = Reg::default();
    let s = sync("app");
    let (web, cfg) = (cm("web"), cm("cfg"));
    assert!(!reg.observe(&web, seen(Some(1), "10", &[("plumb", "t1")])));
    assert!(!reg.observe(&cfg, seen(None, "11", &[("plumb", "t1")])));
    apply(
        &mut reg,
        &s,
        "A",
        complete("dA"),
        &[(&web, "A"), (&cfg, "A")],
    );

    // The next apply writes both; the watch has seen neither write when they are registered.
    let ticket = reg.begin_apply(&s);
    let written = BTreeMap::from([
        (web.clone(), seen(Some(2), "20", &[("plumb", "t2")])),
        (cfg.clone(), seen(None, "21", &[("plumb", "t2")])),
    ]);
    let r = reg.register(
        registration(&s, ticket, "B", complete("dB"), &[(&web, "B"), (&cfg, "B")]),
        written,
    );
    assert!(
        matches!(&r, Registered::Accepted { check } if check.is_empty()),
        "{r:?}"
    );
    assert!(reg.end_apply(&s).is_empty());
    // Their events come: no change. A hand edit after them: a change.
    assert!(!reg.observe(&web, seen(Some(2), "20", &[("plumb", "t2")])));
    assert!(!reg.observe(&cfg, seen(None, "21", &[("plumb", "t2")])));
    assert!(reg.observe(
        &cfg,
        seen(None, "22", &[("plumb", "t2"), ("kubectl", "t3")])
    ));
    // A watch ahead of the write (an edit right after it) is still checked at registration.
    let ticket = reg.begin_apply(&s);
    assert!(reg.observe(
        &web,
        seen(Some(4), "40", &[("plumb", "t2"), ("kubectl", "t4")])
    ));
    let written = BTreeMap::from([(web.clone(), seen(Some(3), "30", &[("plumb", "t3")]))]);
    let r = reg.register(
        registration(&s, ticket, "C", complete("dC"), &[(&web, "C"), (&cfg, "C")]),
        written,
    );
    assert!(
        matches!(&r, Registered::Accepted { check } if check == &vec![web.clone()]),
        "{r:?}"
    );
}

#[test]
fn an_unregistered_sync_is_never_healed() {
    let mut reg = Reg::default();
    let s = sync("app");
    let cfg = cm("cfg");
    apply(&mut reg, &s, "A", complete("dA"), &[(&cfg, "A")]);
    assert!(!reg.observe(&cfg, seen(None, "1", &[("plumb", "t")])));
    assert!(reg.observe(&cfg, seen(None, "2", &[("plumb", "t"), ("kubectl", "t")])));
    assert!(reg.unregister(&s));
    assert!(!reg.observe(&cfg, seen(None, "3", &[("kubectl", "t2")])));
    assert!(!reg.deleted(&cfg));
    assert_eq!(reg.target(&cfg), Target::Unowned);
    assert!(!reg.is_registered(&s));
    assert_eq!(reg.set_drift(&s, &cfg, Some("modified")), None);
    assert!(reg.drifted(&s).is_empty());
}

#[test]
fn unregistering_during_the_writes_drops_the_deferred_checks() {
    let mut reg = Reg::default();
    let s = sync("app");
    let cfg = cm("cfg");
    apply(&mut reg, &s, "A", complete("dA"), &[(&cfg, "A")]);
    reg.begin_apply(&s);
    assert_eq!(reg.target(&cfg), Target::Deferred);
    reg.unregister(&s);
    assert!(reg.end_apply(&s).is_empty());
}

#[test]
fn an_edit_right_after_the_apply_is_checked_when_the_watch_saw_it_first() {
    let mut reg = Reg::default();
    let s = sync("app");
    let cfg = cm("cfg");
    // The watch saw the apply's result and then an edit, before the Sync registered.
    assert!(!reg.observe(&cfg, seen(None, "5", &[("plumb", "t1")])));
    assert!(!reg.observe(&cfg, seen(None, "6", &[("plumb", "t1"), ("kubectl", "t2")])));
    let ticket = reg.begin_apply(&s);
    let applied = BTreeMap::from([(cfg.clone(), seen(None, "5", &[("plumb", "t1")]))]);
    let r = reg.register(
        registration(&s, ticket, "A", complete("dA"), &[(&cfg, "A")]),
        applied,
    );
    assert_eq!(
        r,
        Registered::Accepted {
            check: vec![cfg.clone()]
        }
    );
    // An object the watch never saw takes the apply's signature as its first sight.
    let other = cm("other");
    let ticket = reg.ticket();
    let applied = BTreeMap::from([(other.clone(), seen(None, "9", &[("plumb", "t1")]))]);
    reg.register(
        registration(
            &s,
            ticket,
            "A",
            complete("dA"),
            &[(&cfg, "A"), (&other, "o")],
        ),
        applied,
    );
    assert!(!reg.observe(&other, seen(None, "9", &[("plumb", "t1")])));
    assert!(reg.observe(&other, seen(None, "10", &[("kubectl", "t3")])));
}

#[test]
fn one_check_per_object_at_a_time_and_a_change_meanwhile_runs_it_again() {
    let mut reg = Reg::default();
    let cfg = cm("cfg");
    assert!(reg.begin_check(&cfg));
    assert!(!reg.begin_check(&cfg));
    assert!(!reg.begin_check(&cfg));
    assert!(reg.end_check(&cfg), "a change arrived during the check");
    assert!(!reg.end_check(&cfg));
    assert!(reg.begin_check(&cfg));
}

#[test]
fn running_checks_are_counted_per_sync() {
    let mut reg = Reg::default();
    let s = sync("app");
    let cfg = cm("cfg");
    apply(&mut reg, &s, "A", complete("dA"), &[(&cfg, "A")]);
    assert!(matches!(reg.target(&cfg), Target::Check { .. }));
    assert_eq!(reg.checks_running(&s), 1);
    reg.check_done(&s);
    assert_eq!(reg.checks_running(&s), 0);
}

#[test]
fn drift_keeps_a_sync_from_vouching_until_a_complete_registration() {
    let mut reg = Reg::default();
    let s = sync("app");
    let (a, b) = (cm("a"), cm("b"));
    apply(&mut reg, &s, "A", complete("dA"), &[(&a, "a"), (&b, "b")]);
    assert_eq!(reg.vouched(&s).len(), 2);
    let list = reg.set_drift(&s, &a, Some("modified"));
    assert_eq!(list, Some(vec![(a.to_string(), "modified".to_owned())]));
    assert_eq!(reg.set_drift(&s, &a, Some("modified")), None, "no change");
    assert!(!reg.is_clean(&s));
    assert!(reg.vouched(&s).is_empty());
    // Writing `a` again resolves its drift; `b` was never drifted.
    apply(&mut reg, &s, "A", Scope::Written, &[(&a, "a")]);
    assert!(reg.is_clean(&s));
    reg.mark_dirty(&b);
    assert!(!reg.is_clean(&s));
    apply(&mut reg, &s, "B", complete("dB"), &[(&a, "a"), (&b, "b")]);
    assert!(reg.is_clean(&s));
}

#[test]
fn the_managers_digest_compares_sets_of_managers_and_times() {
    let digest = |pairs: &[(&str, &str)]| {
        Seen::managers_digest(
            pairs
                .iter()
                .map(|(m, t)| ((*m).to_owned(), (*t).to_owned())),
        )
    };
    let both = digest(&[("plumb", "t1"), ("kubectl-edit", "t2")]);
    assert_eq!(both, digest(&[("kubectl-edit", "t2"), ("plumb", "t1")]));
    assert_ne!(digest(&[("plumb", "t1")]), digest(&[("plumb", "t2")]));
    assert_ne!(digest(&[("plumb", "t1")]), both);
    assert_ne!(digest(&[]), digest(&[("plumb", "t1")]));
}

#[test]
fn during_the_writes_a_change_to_an_object_they_leave_alone_is_checked_at_once() {
    let mut reg = Reg::default();
    let s = sync("s");
    let (same, rolled, other) = (cm("same"), cm("rolled"), cm("other"));
    apply(
        &mut reg,
        &s,
        "r1",
        complete("d1"),
        &[(&same, "same@r1"), (&rolled, "rolled@r1")],
    );
    apply(
        &mut reg,
        &sync("t"),
        "r1",
        complete("t1"),
        &[(&other, "other@r1")],
    );
    let ticket = reg.begin_apply(&s);
    // Before the plan, every change waits for the writes.
    assert_eq!(reg.target(&same), Target::Deferred);
    // The plan leaves `same` alone (and names an object of another Sync, which stays its).
    let now = reg.exempt(&s, &[same.clone(), other.clone()].into_iter().collect(), ());
    assert_eq!(
        now,
        std::slice::from_ref(&same),
        "the change deferred before the plan, checked now"
    );
    assert_eq!(check_of(&mut reg, &same), Some(("r1".into(), "same@r1")));
    assert_eq!(
        reg.target(&rolled),
        Target::Deferred,
        "being written: deferred"
    );
    reg.register(
        registration(
            &s,
            ticket,
            "r2",
            complete("d2"),
            &[(&same, "same@r2"), (&rolled, "rolled@r2")],
        ),
        BTreeMap::new(),
    );
    assert_eq!(check_of(&mut reg, &same), Some(("r2".into(), "same@r2")));
    assert_eq!(reg.end_apply(&s), std::slice::from_ref(&rolled));
    // The next apply starts with no exemption.
    reg.begin_apply(&s);
    assert_eq!(reg.target(&same), Target::Deferred);
    reg.end_apply(&s);
}

#[test]
fn no_exemption_while_two_applies_of_a_sync_write() {
    let mut reg = Reg::default();
    let s = sync("s");
    let same = cm("same");
    apply(&mut reg, &s, "r1", complete("d1"), &[(&same, "same@r1")]);
    reg.begin_apply(&s);
    reg.begin_apply(&s);
    assert!(
        reg.exempt(&s, &[same.clone()].into_iter().collect(), ())
            .is_empty()
    );
    assert_eq!(reg.target(&same), Target::Deferred);
    reg.end_apply(&s);
    assert_eq!(reg.end_apply(&s), [same]);
}

#[test]
fn an_exempt_object_is_checked_with_what_the_writes_use_not_what_was_registered() {
    let mut reg: Registry<&'static str, &'static str> = Registry::default();
    let s = sync("s");
    let same = cm("same");
    let ticket = reg.begin_apply(&s);
    reg.register(
        Registration {
            sync: s.clone(),
            ticket,
            revision: "r1".into(),
            scope: complete("d1"),
            objects: [(same.clone(), "same@r1")].into_iter().collect(),
            shared: "correct, as the old service account",
        },
        BTreeMap::new(),
    );
    reg.end_apply(&s);
    reg.begin_apply(&s);
    reg.exempt(
        &s,
        &[same.clone()].into_iter().collect(),
        "detect, as the new one",
    );
    match reg.target(&same) {
        Target::Check { shared, .. } => assert_eq!(shared, "detect, as the new one"),
        other => panic!("{other:?}"),
    }
}
