//! Where the CLI keeps a sync unit's inventory: a ConfigMap in the sync's namespace, so that
//! repeated `plumb sync` runs, from any machine, agree on what the sync owns.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use plumb_core::{Inventory, SyncId};
use serde_json::json;

use crate::engine::FIELD_MANAGER;
use crate::error::{Error, Result};

/// The data key holding the inventory JSON.
const INVENTORY_KEY: &str = "inventory";

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
        let cm = self
            .api
            .get_opt(&self.object_name())
            .await
            .map_err(|e| self.error(format!("cannot read it: {e}")))?;
        let Some(text) = cm
            .and_then(|cm| cm.data)
            .and_then(|mut d: BTreeMap<String, String>| d.remove(INVENTORY_KEY))
        else {
            return Ok(Inventory::default());
        };
        Inventory::from_json(&text).map_err(|e| self.error(format!("it is corrupt: {e}")))
    }

    /// Records `inventory`.
    pub async fn save(&self, inventory: &Inventory) -> Result<()> {
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
            "data": { INVENTORY_KEY: inventory.to_json() },
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
