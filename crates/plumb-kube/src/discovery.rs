//! Which resource serves a kind, and whether it is namespaced: API discovery plus the CRDs of
//! the desired state itself (their kinds are not served until they are applied).

use std::collections::BTreeMap;

use kube::Client;
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};
use plumb_core::Manifest;

use crate::error::{Error, Result};

/// A resolved kind: where to send requests for it, and its scope.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The resource (group, version, plural).
    pub resource: ApiResource,
    /// Whether objects of this kind live in a namespace.
    pub namespaced: bool,
    /// False when the kind is defined by a CRD of the desired state that the API server does not
    /// serve yet; requests for it must wait until that CRD is Established.
    pub served: bool,
}

/// Resolves kinds to resources. Refresh after applying CRDs.
pub struct Resolver {
    discovery: Discovery,
    /// Kinds defined by CRDs in the desired state: (group, version, kind) -> (plural, namespaced).
    pending: BTreeMap<(String, String, String), (String, bool)>,
}

impl Resolver {
    /// Runs discovery against the cluster.
    pub async fn new(client: Client) -> Result<Self> {
        let discovery = Discovery::new(client)
            .run_aggregated()
            .await
            .map_err(Error::Discovery)?;
        Ok(Self {
            discovery,
            pending: BTreeMap::new(),
        })
    }

    /// Runs discovery again (after CRDs became Established).
    pub async fn refresh(&mut self, client: Client) -> Result<()> {
        self.discovery = Discovery::new(client)
            .run_aggregated()
            .await
            .map_err(Error::Discovery)?;
        Ok(())
    }

    /// Learns the kinds that CRDs in `desired` define, so that their custom resources can be
    /// resolved (as not yet served) before the CRDs exist.
    pub fn learn_crds(&mut self, desired: &[Manifest]) {
        for m in desired {
            if m.kind() != "CustomResourceDefinition" || m.group() != "apiextensions.k8s.io" {
                continue;
            }
            let spec = &m.object["spec"];
            let (Some(group), Some(kind), Some(plural)) = (
                spec["group"].as_str(),
                spec["names"]["kind"].as_str(),
                spec["names"]["plural"].as_str(),
            ) else {
                continue;
            };
            let namespaced = spec["scope"].as_str() != Some("Cluster");
            for version in spec["versions"].as_array().into_iter().flatten() {
                if let Some(v) = version["name"].as_str() {
                    self.pending.insert(
                        (group.to_owned(), v.to_owned(), kind.to_owned()),
                        (plural.to_owned(), namespaced),
                    );
                }
            }
        }
    }

    /// Resolves a manifest's kind, or `None` when neither the cluster nor a desired CRD knows it.
    pub fn resolve(&self, m: &Manifest) -> Option<Resolved> {
        self.resolve_gvk(m.group(), m.version(), m.kind())
    }

    /// Resolves group/version/kind.
    pub fn resolve_gvk(&self, group: &str, version: &str, kind: &str) -> Option<Resolved> {
        let gvk = GroupVersionKind::gvk(group, version, kind);
        if let Some((resource, caps)) = self.discovery.resolve_gvk(&gvk) {
            return Some(Resolved {
                resource,
                namespaced: is_namespaced(&caps),
                served: true,
            });
        }
        let (plural, namespaced) =
            self.pending
                .get(&(group.to_owned(), version.to_owned(), kind.to_owned()))?;
        Some(Resolved {
            resource: ApiResource::from_gvk_with_plural(&gvk, plural),
            namespaced: *namespaced,
            served: false,
        })
    }
}

fn is_namespaced(caps: &ApiCapabilities) -> bool {
    matches!(caps.scope, Scope::Namespaced)
}
