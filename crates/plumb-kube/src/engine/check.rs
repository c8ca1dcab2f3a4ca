//! The drift path: compare one applied object with its desired state (one read and one
//! dry-run) and, when asked, apply it again. Touches only the object that changed.

use plumb_core::{Manifest, SyncId, same_state};

use super::prepare::Target;
use super::{Engine, SyncOptions};
use crate::cluster::Cluster;
use crate::discovery::Resolved;
use crate::error::{Error, Result};

/// How an object compares with its desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectState {
    /// As desired.
    InSync,
    /// Exists but differs (someone edited it).
    Modified,
    /// Does not exist (someone deleted it).
    Missing,
    /// Another Sync adopted it (its ownership labels name that Sync): not drift; left alone.
    TakenOver(SyncId),
}

/// The outcome of [`Engine::check_object`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectCheck {
    /// What was found.
    pub state: ObjectState,
    /// Whether it was applied again.
    pub corrected: bool,
}

impl<C: Cluster> Engine<C> {
    /// Compares one applied object with its desired state, cheaply: one read and one
    /// server-side dry-run. With `correct`, a drifted or deleted object is applied again. An
    /// object another Sync has adopted since ([`ObjectState::TakenOver`]) is neither compared
    /// nor written.
    pub async fn check_object(
        &self,
        manifest: &Manifest,
        resolved: &Resolved,
        force_conflicts: bool,
        correct: bool,
    ) -> Result<ObjectCheck> {
        let key = manifest.key();
        let live = self
            .cluster
            .get(resolved, manifest.namespace(), manifest.name())
            .await
            .map_err(|source| Error::Api {
                context: format!("reading {key}"),
                source,
            })?;
        if let Some(owner) = live
            .as_ref()
            .and_then(|l| plumb_core::ownership::taken_over_by(&manifest.object, l))
        {
            return Ok(ObjectCheck {
                state: ObjectState::TakenOver(owner),
                corrected: false,
            });
        }
        let target = Target {
            manifest,
            resolved,
            live: live.as_ref(),
        };
        let mut opts = SyncOptions::new(SyncId::new("", ""));
        opts.force_conflicts = force_conflicts;
        let state = match &live {
            None => ObjectState::Missing,
            Some(live) => {
                let predicted = self
                    .apply_one(target, &opts, true)
                    .await
                    .map_err(|f| Error::DryRun { failures: vec![f] })?;
                if same_state(&predicted, live) {
                    return Ok(ObjectCheck {
                        state: ObjectState::InSync,
                        corrected: false,
                    });
                }
                ObjectState::Modified
            }
        };
        if !correct {
            return Ok(ObjectCheck {
                state,
                corrected: false,
            });
        }
        self.apply_one(target, &opts, false)
            .await
            .map_err(|f| Error::Apply {
                failures: vec![f],
                written: 0,
            })?;
        Ok(ObjectCheck {
            state,
            corrected: true,
        })
    }
}
