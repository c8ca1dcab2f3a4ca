//! Where the CLI keeps a sync unit's inventory: a ConfigMap in the sync's namespace, so that
//! repeated `plumb sync` runs, from any machine, agree on what the sync owns.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use plumb_core::{Inventory, SyncId};
use serde_json::json;

use crate::cluster::FIELD_MANAGER;
use crate::error::{Error, Result};

/// The data key holding the inventory JSON.
const INVENTORY_KEY: &str = "inventory";
/// The data key holding the last applied source revision (commit), when synced from Git.
const REVISION_KEY: &str = "revision";

/// What the CLI remembers of a sync unit between runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredState {
    /// The objects the sync unit owns.
    pub inventory: Inventory,
    /// The last applied Git commit (the start of the next signature-verification range).
    pub revision: Option<String>,
}

/// A sync unit's inventory, stored in the ConfigMap `plumb-inventory-<name>` in its namespace.
pub struct ConfigMapInventory {
    api: Api<ConfigMap>,
    sync: SyncId,
}

impl ConfigMapInventory {
    /// The store for `sync`.
    pub fn new(client: Client, sync: &SyncId) -> Self {
        Self {
            api: Api::namespaced(client, &sync.namespace),
            sync: sync.clone(),
        }
    }

    /// The ConfigMap's name.
    pub fn object_name(&self) -> String {
        format!("plumb-inventory-{}", self.sync.name)
    }

    fn error(&self, message: impl Into<String>) -> Error {
        Error::Inventory {
            namespace: self.sync.namespace.clone(),
            name: self.object_name(),
            message: message.into(),
        }
    }

    /// The stored inventory; empty when the sync has never run.
    pub async fn load(&self) -> Result<Inventory> {
        Ok(self.load_state().await?.inventory)
    }

    /// The stored inventory and revision; empty when the sync has never run.
    pub async fn load_state(&self) -> Result<StoredState> {
        let cm = self
            .api
            .get_opt(&self.object_name())
            .await
            .map_err(|e| self.error(format!("cannot read it: {e}")))?;
        let mut data: BTreeMap<String, String> = cm.and_then(|cm| cm.data).unwrap_or_default();
        let inventory = match data.remove(INVENTORY_KEY) {
            Some(text) => Inventory::from_json(&text)
                .map_err(|e| self.error(format!("it is corrupt: {e}")))?,
            None => Inventory::default(),
        };
        Ok(StoredState {
            inventory,
            revision: data.remove(REVISION_KEY),
        })
    }

    /// Records `inventory`.
    pub async fn save(&self, inventory: &Inventory) -> Result<()> {
        self.save_state(&StoredState {
            inventory: inventory.clone(),
            revision: None,
        })
        .await
    }

    /// Records the inventory and, when set, the applied revision.
    pub async fn save_state(&self, state: &StoredState) -> Result<()> {
        let inventory = &state.inventory;
        let mut data = serde_json::Map::new();
        data.insert(INVENTORY_KEY.into(), inventory.to_json().into());
        if let Some(rev) = &state.revision {
            data.insert(REVISION_KEY.into(), rev.clone().into());
        }
        let body = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.object_name(),
                "labels": {
                    "app.kubernetes.io/managed-by": "plumb",
                    "plumb.dev/inventory-of": self.sync.name,
                },
            },
            "data": data,
        });
        self.api
            .patch(
                &self.object_name(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(|e| self.error(format!("cannot write it: {e}")))?;
        Ok(())
    }
}
