//! Deleting what left the desired state: only objects the plan found owned by this sync, and
//! only while they are still the very object that was checked (uid precondition).

use plumb_core::InventoryEntry;

use super::Engine;
use super::prepare::Prepared;
use crate::cluster::Cluster;
use crate::error::ObjectError;

impl<C: Cluster> Engine<C> {
    /// Deletes one stale object, only if it is still the very object that was checked for
    /// ownership (same uid). An object already gone is pruned.
    pub(super) async fn prune(
        &self,
        prep: &Prepared,
        entry: &InventoryEntry,
    ) -> Result<(), ObjectError> {
        let Some(r) = prep
            .resolver
            .resolve_gvk(&entry.key.group, entry.version(), &entry.key.kind)
        else {
            return Err(ObjectError::other(
                entry.key.clone(),
                None,
                format!("kind {} is no longer served", entry.key.kind),
            ));
        };
        let summary = prep.live_summary(&entry.key);
        let uid = summary.as_ref().and_then(|v| v["metadata"]["uid"].as_str());
        match self
            .cluster
            .delete(&r, entry.key.namespace.as_deref(), &entry.key.name, uid)
            .await
        {
            Ok(()) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(ObjectError::from_api(entry.key.clone(), None, e, false)),
        }
    }
}
