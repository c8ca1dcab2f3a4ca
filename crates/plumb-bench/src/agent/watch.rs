//! Timing a change to one object from the API server's watch events.
//!
//! [`ObjectWatch::open`] starts a `kube::runtime::watcher` of one object with a streaming list
//! (`sendInitialEvents`): when it has reported the initial state (`InitDone`), the watch is
//! established, so every later change arrives as an event. The change being timed is made after
//! that; [`ObjectWatch::wait`] reads events until the [`Probe`] says the change is undone and
//! returns when that event arrived. If the watcher has to list again (the API server no longer
//! has the history it needs, 410 Gone), the listed object decides (the time is then when it was
//! read, a little late).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::stream::BoxStream;
use futures::{StreamExt as _, TryStreamExt as _};
use kube::Api;
use kube::api::DynamicObject;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use serde_json::Value;

/// What ends a wait: the object back as Git has it (drift healed) or at a new revision.
#[derive(Clone, Debug, PartialEq)]
pub enum Probe {
    /// A ConfigMap's `LOG_LEVEL` edited to `debug`: done when it is seen `debug`, then `info`.
    LogLevel { edited: bool },
    /// A Deployment scaled to `manual` replicas: done when seen so, then at `desired`.
    Replicas {
        manual: i64,
        desired: i64,
        scaled: bool,
    },
    /// A deleted object: done when it is added again.
    Recreated { deleted: bool },
    /// A ConfigMap whose `REVISION` is set to this in Git: done when the cluster has it.
    Revision(String),
}

impl Probe {
    /// Feeds one added or modified object (its fields besides metadata); true when done.
    pub fn on_apply(&mut self, obj: &Value) -> bool {
        match self {
            Probe::LogLevel { edited } => {
                let level = obj["data"]["LOG_LEVEL"].as_str();
                if level == Some("debug") {
                    *edited = true;
                }
                *edited && level == Some("info")
            }
            Probe::Replicas {
                manual,
                desired,
                scaled,
            } => {
                let replicas = obj["spec"]["replicas"].as_i64();
                if replicas == Some(*manual) {
                    *scaled = true;
                }
                *scaled && replicas == Some(*desired)
            }
            Probe::Recreated { deleted } => *deleted,
            Probe::Revision(_) => self.healed(Some(obj)),
        }
    }

    /// Feeds the deletion of the object.
    pub fn on_delete(&mut self) {
        if let Probe::Recreated { deleted } = self {
            *deleted = true;
        }
    }

    /// Whether the object as read (`None`: absent) is healed, for when events were missed.
    pub fn healed(&self, obj: Option<&Value>) -> bool {
        let Some(obj) = obj else {
            return false;
        };
        match self {
            Probe::LogLevel { .. } => obj["data"]["LOG_LEVEL"].as_str() == Some("info"),
            Probe::Replicas { desired, .. } => obj["spec"]["replicas"].as_i64() == Some(*desired),
            Probe::Recreated { .. } => true,
            Probe::Revision(revision) => {
                obj["data"]["REVISION"].as_str() == Some(revision.as_str())
            }
        }
    }
}

type Events = BoxStream<'static, Result<Event<DynamicObject>, watcher::Error>>;

/// A live watch of one object (see the module docs).
pub struct ObjectWatch {
    name: String,
    events: Events,
}

impl ObjectWatch {
    /// Watches object `name` of `api` and returns once the initial state has been reported.
    pub async fn open(api: Api<DynamicObject>, name: &str) -> anyhow::Result<Self> {
        let config = watcher::Config::default()
            .fields(&format!("metadata.name={name}"))
            .streaming_lists();
        let mut events: Events = watcher::watcher(api, config).default_backoff().boxed();
        let initial = async {
            while let Some(event) = events.try_next().await? {
                if matches!(event, Event::InitDone) {
                    return anyhow::Ok(());
                }
            }
            bail!("the watch of {name} ended before its initial state")
        };
        tokio::time::timeout(Duration::from_secs(60), initial)
            .await
            .with_context(|| format!("the watch of {name} did not start within 60s"))??;
        Ok(Self {
            name: name.to_owned(),
            events,
        })
    }

    /// Reads events until `probe` is done; returns when that event arrived.
    pub async fn wait(
        &mut self,
        probe: &mut Probe,
        what: &str,
        timeout: Duration,
    ) -> anyhow::Result<Instant> {
        let name = self.name.clone();
        let read = async {
            // Set while the watcher lists again: the object it listed, if any.
            let mut relisted: Option<Option<Value>> = None;
            while let Some(event) = self.events.next().await {
                match event {
                    Ok(Event::Apply(obj)) => {
                        if probe.on_apply(&obj.data) {
                            return Ok(Instant::now());
                        }
                    }
                    Ok(Event::Delete(_)) => probe.on_delete(),
                    Ok(Event::Init) => {
                        log!("  the watch of {name} lists again");
                        relisted = Some(None);
                    }
                    Ok(Event::InitApply(obj)) => {
                        if probe.on_apply(&obj.data) {
                            return Ok(Instant::now());
                        }
                        relisted = Some(Some(obj.data));
                    }
                    Ok(Event::InitDone) => match relisted.take() {
                        Some(listed) if probe.healed(listed.as_ref()) => {
                            return Ok(Instant::now());
                        }
                        Some(None) => probe.on_delete(),
                        _ => {}
                    },
                    Err(e) => log!("  watch of {name} reported {e}; watching again"),
                }
            }
            bail!("the watch of {name} ended")
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(done) => done,
            Err(_) => bail!("timed out after {}s waiting for {what}", timeout.as_secs()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_heal_counts_only_after_the_change_was_seen() {
        let mut p = Probe::LogLevel { edited: false };
        let info = json!({"data": {"LOG_LEVEL": "info"}});
        assert!(
            !p.on_apply(&info),
            "the state before the edit is not a heal"
        );
        assert!(!p.on_apply(&json!({"data": {"LOG_LEVEL": "debug"}})));
        assert!(p.on_apply(&info));

        let mut p = Probe::Replicas {
            manual: 2,
            desired: 0,
            scaled: false,
        };
        assert!(!p.on_apply(&json!({"spec": {"replicas": 0}})));
        assert!(!p.on_apply(&json!({"spec": {"replicas": 2}})));
        assert!(p.on_apply(&json!({"spec": {"replicas": 0}})));

        let mut p = Probe::Recreated { deleted: false };
        assert!(!p.on_apply(&json!({})));
        p.on_delete();
        assert!(p.on_apply(&json!({})));
        assert!(!p.healed(None));
    }

    #[test]
    fn a_revision_is_applied_when_the_cluster_has_it() {
        let mut p = Probe::Revision("3".into());
        assert!(!p.on_apply(&json!({"data": {"REVISION": "2"}})));
        assert!(p.on_apply(&json!({"data": {"REVISION": "3"}})));
        assert!(p.healed(Some(&json!({"data": {"REVISION": "3"}}))));
    }
}
