//! Cancelling a health wait that newer intent has made moot: a new revision (a new artifact of
//! the Sync's source), a spec change (generation), a reconcile request, the Sync's deletion, or
//! the agent stopping (a signal, lost leadership).
//!
//! A reconcile that waits for health holds its Sync: the controller runs no other reconcile of
//! it meanwhile, so without this a revert pushed during a broken rollout would wait out the
//! broken revision's timeout, and a graceful stop would wait for the slowest health check. The
//! runner tells [`Supersede`] what its watches see; a waiting reconcile races its wait against
//! [`Supersede::unless_superseded`]. The decision is the pure [`superseded`].

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Mutex;

use kube::ResourceExt;
use tokio::sync::watch;

use crate::api::{ChartSource, GitSource, Sync};
use crate::drift::SyncKey;
use crate::gitsource::requested_at;

/// What a running health wait is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applying {
    /// The Sync.
    pub sync: SyncKey,
    /// Its generation when the apply started.
    pub generation: Option<i64>,
    /// Its reconcile request (annotation value) when the apply started.
    pub request: Option<String>,
    /// Its source (namespace, name).
    pub source: (String, String),
    /// The commit being applied.
    pub commit: String,
}

impl Applying {
    /// The apply of `commit` from `source` for `sync` as it is now.
    pub fn of(sync: &Sync, source: (String, String), commit: &str) -> Self {
        Self {
            sync: (sync.namespace().unwrap_or_default(), sync.name_any()),
            generation: sync.metadata.generation,
            request: requested_at(sync),
            source,
            commit: commit.to_owned(),
        }
    }
}

/// The distinct values a watched field took, oldest first (the last few): a value the
/// watches saw before the latest one is older than it. A value never seen is not known to be
/// older: a reconcile may have read it (with a GET) before the watch delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline<T>(std::collections::VecDeque<T>);

impl<T: PartialEq> Timeline<T> {
    /// How many values are kept.
    const KEEP: usize = 16;

    /// A timeline that saw `value` only.
    pub fn of(value: T) -> Self {
        Self(std::collections::VecDeque::from([value]))
    }

    /// Records `value`; returns whether it differs from the latest.
    pub fn push(&mut self, value: T) -> bool {
        if self.0.back() == Some(&value) {
            return false;
        }
        self.0.retain(|v| *v != value);
        self.0.push_back(value);
        if self.0.len() > Self::KEEP {
            self.0.pop_front();
        }
        true
    }

    /// The latest value, if `value` is known to be older than it.
    pub fn newer_than(&self, value: &T) -> Option<&T> {
        let latest = self.0.back()?;
        (latest != value && self.0.contains(value)).then_some(latest)
    }
}

/// What the watches saw of one Sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSeen {
    /// The latest `metadata.generation`.
    pub generation: Option<i64>,
    /// The reconcile request annotation's values.
    pub requests: Timeline<Option<String>>,
    /// Whether it is being deleted.
    pub deleting: bool,
}

/// Why a health wait was cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// The agent stops (a signal, or it lost the leader Lease).
    ShuttingDown,
    /// The Sync is being deleted.
    Deleted,
    /// The Sync's spec changed.
    SpecChanged,
    /// A reconcile was requested.
    Requested,
    /// The source has a new artifact.
    NewRevision {
        /// Its commit.
        commit: String,
    },
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::ShuttingDown => f.write_str("the agent is stopping"),
            Why::Deleted => f.write_str("the Sync is being deleted"),
            Why::SpecChanged => f.write_str("the Sync's spec changed"),
            Why::Requested => f.write_str("a reconcile was requested"),
            Why::NewRevision { commit } => write!(f, "the source has a new revision ({commit})"),
        }
    }
}

/// Whether the wait for `applying` is moot, given what the watches saw: `sync` and `source`
/// (the commits of the artifacts the source's status named), `None` for nothing seen. Only
/// what is newer than what is being applied counts: the watches may lag behind the reads the
/// reconcile made. Stopping comes first, then deletion, then the Sync's own changes, then the
/// source.
pub fn superseded(
    applying: &Applying,
    sync: Option<&SyncSeen>,
    source: Option<&Timeline<String>>,
    stopping: bool,
) -> Option<Why> {
    if stopping {
        return Some(Why::ShuttingDown);
    }
    if let Some(now) = sync {
        if now.deleting {
            return Some(Why::Deleted);
        }
        if now.generation.unwrap_or(0) > applying.generation.unwrap_or(0) {
            return Some(Why::SpecChanged);
        }
        if now.requests.newer_than(&applying.request).is_some() {
            return Some(Why::Requested);
        }
    }
    let commit = source?.newer_than(&applying.commit)?;
    Some(Why::NewRevision {
        commit: commit.clone(),
    })
}

#[derive(Default)]
struct Seen {
    syncs: HashMap<SyncKey, SyncSeen>,
    sources: HashMap<(String, String), Timeline<String>>,
    stopping: bool,
}

/// What the watches saw, for waits to compare with. Shared by the reconcilers (in the context).
pub struct Supersede {
    seen: Mutex<Seen>,
    /// Bumped whenever something a wait may care about changed.
    changed: watch::Sender<u64>,
}

impl Default for Supersede {
    fn default() -> Self {
        Self {
            seen: Mutex::default(),
            changed: watch::Sender::new(0),
        }
    }
}

impl Supersede {
    /// The Sync watch saw `sync`.
    pub fn saw_sync(&self, sync: &Sync) {
        let key = (sync.namespace().unwrap_or_default(), sync.name_any());
        let generation = sync.metadata.generation;
        let request = requested_at(sync);
        let deleting = sync.metadata.deletion_timestamp.is_some();
        let changed = {
            let mut seen = self.lock();
            match seen.syncs.get_mut(&key) {
                None => {
                    let now = SyncSeen {
                        generation,
                        requests: Timeline::of(request),
                        deleting,
                    };
                    seen.syncs.insert(key, now);
                    true
                }
                Some(s) => {
                    let changed = s.generation != generation || s.deleting != deleting;
                    s.generation = generation;
                    s.deleting = deleting;
                    s.requests.push(request) || changed
                }
            }
        };
        if changed {
            self.bump();
        }
    }

    /// The GitSource watch saw `gs`.
    pub fn saw_source(&self, gs: &GitSource) {
        let Some(commit) = gs
            .status
            .as_ref()
            .and_then(|s| s.artifact.as_ref())
            .map(|a| a.commit.clone())
        else {
            return;
        };
        let key = (gs.namespace().unwrap_or_default(), gs.name_any());
        let changed = {
            let mut seen = self.lock();
            match seen.sources.get_mut(&key) {
                Some(t) => t.push(commit),
                None => {
                    seen.sources.insert(key, Timeline::of(commit));
                    true
                }
            }
        };
        if changed {
            self.bump();
        }
    }

    /// The ChartSource watch saw `cs` (keyed like its artifacts, apart from GitSources).
    pub fn saw_chart_source(&self, cs: &ChartSource) {
        let Some(revision) = cs
            .status
            .as_ref()
            .and_then(|s| s.artifact.as_ref())
            .map(|a| a.revision.clone())
        else {
            return;
        };
        let key = (
            cs.namespace().unwrap_or_default(),
            crate::chartsource::store_name(&cs.name_any()),
        );
        let changed = {
            let mut seen = self.lock();
            match seen.sources.get_mut(&key) {
                Some(t) => t.push(revision),
                None => {
                    seen.sources.insert(key, Timeline::of(revision));
                    true
                }
            }
        };
        if changed {
            self.bump();
        }
    }

    /// Forgets a Sync that is gone.
    pub fn forget_sync(&self, sync: &SyncKey) {
        self.lock().syncs.remove(sync);
    }

    /// Forgets a GitSource that is gone.
    pub fn forget_source(&self, source: &(String, String)) {
        self.lock().sources.remove(source);
    }

    /// The agent stops: every wait is cancelled, now and from now on.
    pub fn shut_down(&self) {
        self.lock().stopping = true;
        self.bump();
    }

    /// Whether the wait for `applying` is moot now.
    pub fn check(&self, applying: &Applying) -> Option<Why> {
        let seen = self.lock();
        superseded(
            applying,
            seen.syncs.get(&applying.sync),
            seen.sources.get(&applying.source),
            seen.stopping,
        )
    }

    /// Resolves once the wait for `applying` is moot (perhaps at once).
    pub async fn superseded(&self, applying: &Applying) -> Why {
        // Subscribed before looking: a change after the look wakes the loop.
        let mut changes = self.changed.subscribe();
        loop {
            if let Some(why) = self.check(applying) {
                return why;
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Runs `wait` unless (or until) the wait for `applying` is moot; then `wait` is dropped.
    pub async fn unless_superseded<F: Future>(
        &self,
        applying: &Applying,
        wait: F,
    ) -> Result<F::Output, Why> {
        tokio::select! {
            biased;
            why = self.superseded(applying) => Err(why),
            out = wait => Ok(out),
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().expect("supersede lock poisoned")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn applying() -> Applying {
        Applying {
            sync: ("ns".into(), "app".into()),
            generation: Some(3),
            request: Some("r1".into()),
            source: ("ns".into(), "repo".into()),
            commit: "aaa".into(),
        }
    }

    fn seen(generation: i64, requests: &[&str], deleting: bool) -> SyncSeen {
        let mut timeline = Timeline::of(Some(requests[0].to_owned()));
        for r in &requests[1..] {
            timeline.push(Some((*r).to_owned()));
        }
        SyncSeen {
            generation: Some(generation),
            requests: timeline,
            deleting,
        }
    }

    fn commits(seen: &[&str]) -> Timeline<String> {
        let mut t = Timeline::of(seen[0].to_owned());
        for c in &seen[1..] {
            t.push((*c).to_owned());
        }
        t
    }

    #[test]
    fn nothing_new_keeps_the_wait() {
        let a = applying();
        let same = seen(3, &["r1"], false);
        assert_eq!(
            superseded(&a, Some(&same), Some(&commits(&["aaa"])), false),
            None
        );
        assert_eq!(superseded(&a, None, None, false), None);
    }

    #[test]
    fn a_new_artifact_a_spec_change_a_request_a_deletion_or_a_stop_cancels_it() {
        let a = applying();
        let same = seen(3, &["r1"], false);
        assert_eq!(
            superseded(&a, Some(&same), Some(&commits(&["aaa", "bbb"])), false),
            Some(Why::NewRevision {
                commit: "bbb".into()
            })
        );
        assert_eq!(
            superseded(&a, Some(&seen(4, &["r1"], false)), None, false),
            Some(Why::SpecChanged)
        );
        assert_eq!(
            superseded(&a, Some(&seen(3, &["r1", "r2"], false)), None, false),
            Some(Why::Requested)
        );
        // Deletion bumps the generation too; it is named as what it is.
        assert_eq!(
            superseded(&a, Some(&seen(4, &["r1"], true)), None, false),
            Some(Why::Deleted)
        );
        assert_eq!(
            superseded(&a, Some(&same), None, true),
            Some(Why::ShuttingDown)
        );
    }

    #[test]
    fn watches_lagging_behind_the_reconcile_cancel_nothing() {
        // The reconcile read commit bbb, generation 3 and request r2 before the watches
        // delivered them: what the watches hold is older, not newer.
        let mut a = applying();
        a.commit = "bbb".into();
        a.request = Some("r2".into());
        let behind = seen(2, &["r1"], false);
        assert_eq!(
            superseded(&a, Some(&behind), Some(&commits(&["aaa"])), false),
            None
        );
        // Once they catch up and move on, the newer values count.
        let moved_on = seen(3, &["r1", "r2", "r3"], false);
        assert_eq!(
            superseded(
                &a,
                Some(&moved_on),
                Some(&commits(&["aaa", "bbb", "ccc"])),
                false
            ),
            Some(Why::Requested)
        );
        // A revert to a commit seen before is newer than the one applied.
        assert_eq!(
            superseded(&a, None, Some(&commits(&["aaa", "bbb", "aaa"])), false),
            Some(Why::NewRevision {
                commit: "aaa".into()
            })
        );
    }

    fn sync_object(generation: i64, request: Option<&str>) -> Sync {
        let mut annotations = serde_json::Map::new();
        if let Some(r) = request {
            annotations.insert(
                crate::api::RECONCILE_REQUEST_ANNOTATION.into(),
                serde_json::Value::String(r.into()),
            );
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "plumb.dev/v1alpha1", "kind": "Sync",
            "metadata": { "name": "app", "namespace": "ns", "generation": generation,
                          "annotations": annotations },
            "spec": { "sourceRef": { "name": "repo" } }
        }))
        .expect("a Sync")
    }

    fn source_object(commit: &str) -> GitSource {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "plumb.dev/v1alpha1", "kind": "GitSource",
            "metadata": { "name": "repo", "namespace": "ns" },
            "spec": { "url": "https://example.com/repo.git" },
            "status": { "artifact": { "revision": format!("main@sha1:{commit}"), "commit": commit } }
        }))
        .expect("a GitSource")
    }

    /// Stands in for a health wait with a long timeout.
    async fn ten_minute_wait() -> &'static str {
        tokio::time::sleep(Duration::from_secs(600)).await;
        "timed out"
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_revision_ends_a_ten_minute_wait_at_once() {
        let hub = Supersede::default();
        let a = applying();
        hub.saw_sync(&sync_object(3, Some("r1")));
        hub.saw_source(&source_object("aaa"));
        let started = tokio::time::Instant::now();
        let (result, ()) = tokio::join!(hub.unless_superseded(&a, ten_minute_wait()), async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            // A status write that changes nothing else does not count...
            hub.saw_source(&source_object("aaa"));
            hub.saw_sync(&sync_object(3, Some("r1")));
            tokio::time::sleep(Duration::from_secs(5)).await;
            // ...a new artifact does.
            hub.saw_source(&source_object("bbb"));
        });
        assert_eq!(
            result,
            Err(Why::NewRevision {
                commit: "bbb".into()
            })
        );
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_a_spec_change_and_a_stop_end_a_wait_at_once() {
        for (change, why) in [
            (Some(sync_object(3, Some("r2"))), Why::Requested),
            (Some(sync_object(4, Some("r1"))), Why::SpecChanged),
            (None, Why::ShuttingDown),
        ] {
            let hub = Supersede::default();
            let a = applying();
            hub.saw_sync(&sync_object(3, Some("r1")));
            let started = tokio::time::Instant::now();
            let (result, ()) = tokio::join!(hub.unless_superseded(&a, ten_minute_wait()), async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match &change {
                    Some(s) => hub.saw_sync(s),
                    None => hub.shut_down(),
                }
            });
            assert_eq!(result, Err(why));
            assert_eq!(started.elapsed(), Duration::from_secs(1));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unchanged_sync_waits_its_timeout_and_a_stopped_agent_waits_for_nothing() {
        let hub = Supersede::default();
        let a = applying();
        hub.saw_sync(&sync_object(3, Some("r1")));
        let started = tokio::time::Instant::now();
        assert_eq!(
            hub.unless_superseded(&a, ten_minute_wait()).await,
            Ok("timed out")
        );
        assert_eq!(started.elapsed(), Duration::from_secs(600));
        hub.shut_down();
        assert_eq!(
            hub.unless_superseded(&a, ten_minute_wait()).await,
            Err(Why::ShuttingDown)
        );
        assert_eq!(started.elapsed(), Duration::from_secs(600));
    }

    #[test]
    fn a_timeline_keeps_the_order_of_distinct_values() {
        let mut t = Timeline::of("a");
        assert!(!t.push("a"));
        assert!(t.push("b"));
        assert_eq!(t.newer_than(&"a"), Some(&"b"));
        assert_eq!(t.newer_than(&"b"), None);
        assert_eq!(t.newer_than(&"unseen"), None);
        assert!(t.push("a"));
        assert_eq!(t.newer_than(&"b"), Some(&"a"));
    }
}
