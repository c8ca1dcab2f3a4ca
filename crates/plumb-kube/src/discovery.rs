//! Which resource serves a kind, and whether it is namespaced: API discovery plus the CRDs of
//! the desired state itself (their kinds are not served until they are applied).

use std::collections::BTreeMap;
use std::sync::Arc;

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

/// Every kind the API server serves, by (group, version, kind): what one discovery found.
#[derive(Debug, Clone, Default)]
pub struct Kinds {
    served: BTreeMap<(String, String, String), (ApiResource, bool)>,
}

impl Kinds {
    /// The kinds `discovery` found.
    pub fn from_discovery(discovery: &Discovery) -> Self {
        let mut kinds = Kinds::default();
        for group in discovery.groups() {
            for version in group.versions() {
                for (resource, caps) in group.versioned_resources(version) {
                    kinds.insert(resource, is_namespaced(&caps));
                }
            }
        }
        kinds
    }

    /// Adds (or replaces) one served kind.
    pub fn insert(&mut self, resource: ApiResource, namespaced: bool) {
        let key = (
            resource.group.clone(),
            resource.version.clone(),
            resource.kind.clone(),
        );
        self.served.insert(key, (resource, namespaced));
    }

    /// Number of served (group, version, kind)s.
    pub fn len(&self) -> usize {
        self.served.len()
    }

    /// Whether nothing is served.
    pub fn is_empty(&self) -> bool {
        self.served.is_empty()
    }

    /// Every served `group/version` and `group/version/Kind` (`v1` and `v1/Pod` for the core
    /// group), sorted: what Helm's `.Capabilities.APIVersions` holds for this cluster.
    pub fn api_versions(&self) -> Vec<String> {
        let mut out = std::collections::BTreeSet::new();
        for (group, version, kind) in self.served.keys() {
            let gv = if group.is_empty() {
                version.clone()
            } else {
                format!("{group}/{version}")
            };
            out.insert(format!("{gv}/{kind}"));
            out.insert(gv);
        }
        out.into_iter().collect()
    }

    fn get(&self, group: &str, version: &str, kind: &str) -> Option<&(ApiResource, bool)> {
        self.served
            .get(&(group.to_owned(), version.to_owned(), kind.to_owned()))
    }
}

/// Resolves kinds to resources: one discovery's [`Kinds`] plus the kinds that CRDs of the
/// desired state define ([`Resolver::learn_crds`]). Refresh after applying CRDs.
#[derive(Debug, Clone)]
pub struct Resolver {
    kinds: Arc<Kinds>,
    /// Kinds defined by CRDs in the desired state: (group, version, kind) -> (plural, namespaced).
    pending: BTreeMap<(String, String, String), (String, bool)>,
}

impl Resolver {
    /// Runs discovery against the cluster. Code that holds an [`crate::Engine`] should take its
    /// [`crate::Engine::resolver`] instead, which shares one discovery.
    pub async fn new(client: Client) -> Result<Self> {
        let discovery = Discovery::new(client)
            .run_aggregated()
            .await
            .map_err(Error::Discovery)?;
        Ok(Self::from_kinds(Arc::new(Kinds::from_discovery(
            &discovery,
        ))))
    }

    /// A resolver over `kinds`.
    pub fn from_kinds(kinds: Arc<Kinds>) -> Self {
        Self {
            kinds,
            pending: BTreeMap::new(),
        }
    }

    /// Replaces the served kinds (after CRDs became Established), keeping the learnt ones.
    pub fn replace_kinds(&mut self, kinds: Arc<Kinds>) {
        self.kinds = kinds;
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
        if let Some((resource, namespaced)) = self.kinds.get(group, version, kind) {
            return Some(Resolved {
                resource: resource.clone(),
                namespaced: *namespaced,
                served: true,
            });
        }
        let (plural, namespaced) =
            self.pending
                .get(&(group.to_owned(), version.to_owned(), kind.to_owned()))?;
        let gvk = GroupVersionKind::gvk(group, version, kind);
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
