//! Object identity ([`ObjectKey`]) and rendered manifests ([`Manifest`]).

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Errors raised while turning a parsed document into a [`Manifest`].
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The document is not a mapping (for example a bare string or a list).
    #[error("{location}: document is not a mapping but {found}")]
    NotAnObject {
        /// Where the document came from, `file:line (document N)` or `<unknown source>`.
        location: String,
        /// A short description of what was found instead.
        found: &'static str,
    },
    /// A required field (`apiVersion`, `kind`, `metadata.name`) is absent, empty or not a string.
    #[error("{location}: field `{field}` is missing or not a non-empty string{}", describe(.kind, .name))]
    MissingField {
        /// Where the document came from, `file:line (document N)` or `<unknown source>`.
        location: String,
        /// The dotted field path, e.g. `metadata.name`.
        field: &'static str,
        /// The object's kind, when it is known, to help the user find it.
        kind: Option<String>,
        /// The object's name, when it is known.
        name: Option<String>,
    },
    /// `metadata.generateName` without `metadata.name` on an object that is not a hook: only
    /// hook objects are created anew each time; everything else is applied by name.
    #[error(
        "{location}: {kind} with generateName {generate_name:?} has no `metadata.name`: only \
         hook objects (annotation argocd.argoproj.io/hook or helm.sh/hook) may use \
         generateName; give the object a metadata.name, or make it a hook"
    )]
    GenerateNameWithoutHook {
        /// Where the document came from, `file:line (document N)` or `<unknown source>`.
        location: String,
        /// The object's kind.
        kind: String,
        /// The `metadata.generateName` prefix.
        generate_name: String,
    },
}

fn describe(kind: &Option<String>, name: &Option<String>) -> String {
    match (kind, name) {
        (Some(k), Some(n)) => format!(" (in {k} {n})"),
        (Some(k), None) => format!(" (in a {k})"),
        (None, Some(n)) => format!(" (in object named {n})"),
        (None, None) => String::new(),
    }
}

impl ManifestError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ManifestError::NotAnObject { .. } => "manifest_not_an_object",
            ManifestError::MissingField { .. } => "manifest_missing_field",
            ManifestError::GenerateNameWithoutHook { .. } => "manifest_generate_name",
        }
    }
}

/// Result alias for this module.
pub type Result<T, E = ManifestError> = std::result::Result<T, E>;

/// The identity of a Kubernetes object: API group (not version), kind, namespace and name.
///
/// Two manifests with the same key are the same cluster object. The version is deliberately
/// not part of the key: `apps/v1` and `apps/v1beta2` Deployments with the same name collide.
/// Ordering is by group, kind, namespace (cluster-scoped first), name.
///
/// `Display` gives `Kind/namespace/name` for the core group and `Kind.group/namespace/name`
/// otherwise; cluster-scoped objects omit the namespace (`Namespace/web`,
/// `ClusterRole.rbac.authorization.k8s.io/view`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    /// API group, empty for the core group (`""` for ConfigMap, `"apps"` for Deployment).
    pub group: String,
    /// Kind, e.g. `Deployment`.
    pub kind: String,
    /// Namespace, `None` for cluster-scoped objects (or when not yet filled in).
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
}

impl ObjectKey {
    /// Builds a key; an empty namespace is treated as cluster-scoped (`None`).
    pub fn new(
        group: impl Into<String>,
        kind: impl Into<String>,
        namespace: Option<&str>,
        name: impl Into<String>,
    ) -> Self {
        ObjectKey {
            group: group.into(),
            kind: kind.into(),
            namespace: namespace.filter(|n| !n.is_empty()).map(str::to_owned),
            name: name.into(),
        }
    }

    /// The key of a live or desired object given as JSON; missing fields become empty strings.
    pub fn from_object(obj: &Value) -> Self {
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        ObjectKey::new(
            split_api_version(api_version).0,
            obj.get("kind").and_then(Value::as_str).unwrap_or(""),
            obj.pointer("/metadata/namespace").and_then(Value::as_str),
            obj.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or(""),
        )
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kind)?;
        if !self.group.is_empty() {
            write!(f, ".{}", self.group)?;
        }
        if let Some(ns) = &self.namespace {
            write!(f, "/{ns}")?;
        }
        write!(f, "/{}", self.name)
    }
}

/// Splits `apiVersion` into (group, version): `apps/v1` -> (`apps`, `v1`), `v1` -> (``, `v1`).
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.rsplit_once('/') {
        Some((group, version)) => (group, version),
        None => ("", api_version),
    }
}

/// Where a manifest came from: a file relative to the rendered directory, the 1-based line
/// where its document starts, and the 0-based index of the document within that file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourceLocation {
    /// File (or, for Kustomize output, the kustomization directory), relative to the source root.
    pub file: PathBuf,
    /// 1-based line of the document start.
    pub line: usize,
    /// 0-based index of the document in the file (or in the Kustomize output stream).
    pub document: usize,
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} (document {})",
            self.file.display(),
            self.line,
            self.document
        )
    }
}

fn location_string(source: Option<&SourceLocation>) -> String {
    source.map_or_else(|| "<unknown source>".to_owned(), ToString::to_string)
}

/// One desired Kubernetes object, as rendered from the source, plus where it came from.
///
/// Build it with [`Manifest::from_value`], which guarantees that `apiVersion`, `kind` and
/// `metadata.name` are non-empty strings. The accessors return `""` if a caller later breaks
/// that by editing `object` directly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The full object as JSON.
    pub object: Value,
    /// Where it was rendered from, if known.
    pub source: Option<SourceLocation>,
}

impl Manifest {
    /// Validates that `value` is a mapping with non-empty string `apiVersion`, `kind` and
    /// `metadata.name` (or, for a hook object only, `metadata.generateName`: see
    /// [`crate::phases`]). The error names `source` (file:line, document index).
    pub fn from_value(value: Value, source: Option<SourceLocation>) -> Result<Manifest> {
        let location = || location_string(source.as_ref());
        let Some(map) = value.as_object() else {
            return Err(ManifestError::NotAnObject {
                location: location(),
                found: json_type_name(&value),
            });
        };
        let text = |v: Option<&Value>| {
            v.and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let kind = text(map.get("kind"));
        let name = text(value.pointer("/metadata/name"));
        let missing = |field| ManifestError::MissingField {
            location: location(),
            field,
            kind: kind.clone(),
            name: name.clone(),
        };
        if text(map.get("apiVersion")).is_none() {
            return Err(missing("apiVersion"));
        }
        if kind.is_none() {
            return Err(missing("kind"));
        }
        if name.is_none() {
            if let Some(generate_name) = text(value.pointer("/metadata/generateName")) {
                if !crate::phases::is_hook_annotated(&value) {
                    return Err(ManifestError::GenerateNameWithoutHook {
                        location: location(),
                        kind: kind.unwrap_or_default(),
                        generate_name,
                    });
                }
            } else {
                return Err(missing("metadata.name"));
            }
        }
        Ok(Manifest {
            object: value,
            source,
        })
    }

    fn str_at(&self, pointer: &str) -> &str {
        self.object
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// `apiVersion`, e.g. `apps/v1`.
    pub fn api_version(&self) -> &str {
        self.str_at("/apiVersion")
    }

    /// `kind`, e.g. `Deployment`.
    pub fn kind(&self) -> &str {
        self.str_at("/kind")
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        self.str_at("/metadata/name")
    }

    /// `metadata.generateName`, set only on hook objects without a `metadata.name` (the API
    /// server names them when they are created); `None` otherwise.
    pub fn generate_name(&self) -> Option<&str> {
        if !self.name().is_empty() {
            return None;
        }
        self.object
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    /// `metadata.namespace`; `None` when absent or empty.
    pub fn namespace(&self) -> Option<&str> {
        self.object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    /// API group from `apiVersion` (`""` for the core group).
    pub fn group(&self) -> &str {
        split_api_version(self.api_version()).0
    }

    /// API version from `apiVersion` (`v1` for `apps/v1`).
    pub fn version(&self) -> &str {
        split_api_version(self.api_version()).1
    }

    /// The object's identity.
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(self.group(), self.kind(), self.namespace(), self.name())
    }

    /// Sets `metadata.namespace` (creating `metadata` if needed); `None` removes it.
    pub fn set_namespace(&mut self, namespace: Option<&str>) {
        let metadata = self.metadata_mut();
        match namespace {
            Some(ns) => {
                metadata.insert("namespace".into(), Value::String(ns.to_owned()));
            }
            None => {
                metadata.remove("namespace");
            }
        }
    }

    /// `metadata.labels` as a mutable map, created (or replaced, if it was not a mapping) on demand.
    pub fn labels_mut(&mut self) -> &mut Map<String, Value> {
        self.metadata_map_mut("labels")
    }

    /// `metadata.annotations` as a mutable map, created on demand like [`Manifest::labels_mut`].
    pub fn annotations_mut(&mut self) -> &mut Map<String, Value> {
        self.metadata_map_mut("annotations")
    }

    /// A label value, if present and a string.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.object
            .pointer("/metadata/labels")
            .and_then(|l| l.get(name))
            .and_then(Value::as_str)
    }

    /// A short description for error messages: the key, plus the source location if known.
    pub fn describe(&self) -> String {
        match &self.source {
            Some(src) => format!("{} (from {src})", self.key()),
            None => self.key().to_string(),
        }
    }

    fn metadata_mut(&mut self) -> &mut Map<String, Value> {
        if !self.object.is_object() {
            self.object = Value::Object(Map::new());
        }
        let root = match &mut self.object {
            Value::Object(m) => m,
            _ => unreachable!("replaced by an object just above"),
        };
        let metadata = root
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if !metadata.is_object() {
            *metadata = Value::Object(Map::new());
        }
        match metadata {
            Value::Object(m) => m,
            _ => unreachable!("replaced by an object just above"),
        }
    }

    fn metadata_map_mut(&mut self, field: &str) -> &mut Map<String, Value> {
        let entry = self
            .metadata_mut()
            .entry(field)
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        match entry {
            Value::Object(m) => m,
            _ => unreachable!("replaced by an object just above"),
        }
    }
}

pub(crate) fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// A kind a CustomResourceDefinition defines (one per served version): what a render with
/// Helm's `lookup` lists as served before the cluster does, for a chart that brings its CRDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrdKind {
    /// The API group (never empty: the core group is the cluster's own).
    pub group: String,
    /// A served version.
    pub version: String,
    /// The kind, e.g. `Widget`.
    pub kind: String,
    /// The plural resource name, e.g. `widgets`.
    pub plural: String,
    /// The singular resource name (default: the kind in lower case).
    pub singular: String,
    /// `spec.scope: Namespaced` (else cluster-scoped).
    pub namespaced: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn src() -> SourceLocation {
        SourceLocation {
            file: "apps/web.yaml".into(),
            line: 12,
            document: 1,
        }
    }

    #[test]
    fn accessors_and_key() {
        let mut m = Manifest::from_value(
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}),
            None,
        )
        .unwrap();
        assert_eq!(m.group(), "apps");
        assert_eq!(m.version(), "v1");
        assert_eq!(m.namespace(), None);
        m.set_namespace(Some("prod"));
        assert_eq!(
            m.key(),
            ObjectKey::new("apps", "Deployment", Some("prod"), "web")
        );
        assert_eq!(m.key().to_string(), "Deployment.apps/prod/web");
        m.labels_mut().insert("a".into(), json!("b"));
        assert_eq!(m.label("a"), Some("b"));
        m.set_namespace(None);
        assert_eq!(m.namespace(), None);
    }

    #[test]
    fn core_group_and_cluster_scoped_display() {
        let k = ObjectKey::new("", "Namespace", None, "web");
        assert_eq!(k.to_string(), "Namespace/web");
        let k = ObjectKey::new("", "ConfigMap", Some("ns"), "cfg");
        assert_eq!(k.to_string(), "ConfigMap/ns/cfg");
        assert_eq!(ObjectKey::new("", "X", Some(""), "n").namespace, None);
    }

    #[test]
    fn missing_fields_name_the_source() {
        let err = Manifest::from_value(
            json!({"apiVersion": "v1", "metadata": {"name": "x"}}),
            Some(src()),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "apps/web.yaml:12 (document 1): field `kind` is missing or not a non-empty string (in object named x)"
        );
        let err = Manifest::from_value(json!({"kind": "ConfigMap"}), Some(src())).unwrap_err();
        assert!(err.to_string().contains("`apiVersion`"), "{err}");
        let err = Manifest::from_value(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": 3}}),
            Some(src()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("`metadata.name`"), "{err}");
        assert!(err.to_string().contains("in a ConfigMap"), "{err}");
        let err = Manifest::from_value(json!(["a"]), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "<unknown source>: document is not a mapping but a list"
        );
    }

    #[test]
    fn generate_name_is_for_hooks_only() {
        let job = |annotations: Value| {
            json!({"apiVersion": "batch/v1", "kind": "Job",
                   "metadata": {"generateName": "migrate-", "annotations": annotations}})
        };
        let err = Manifest::from_value(job(json!({})), Some(src())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "apps/web.yaml:12 (document 1): Job with generateName \"migrate-\" has no \
             `metadata.name`: only hook objects (annotation argocd.argoproj.io/hook or \
             helm.sh/hook) may use generateName; give the object a metadata.name, or make it a \
             hook"
        );
        assert_eq!(err.metric_label(), "manifest_generate_name");
        for annotations in [
            json!({"argocd.argoproj.io/hook": "PreSync"}),
            json!({"helm.sh/hook": "pre-install"}),
        ] {
            let m = Manifest::from_value(job(annotations), Some(src())).expect("a hook");
            assert_eq!(m.name(), "");
            assert_eq!(m.generate_name(), Some("migrate-"));
        }
        // A named object's generateName is not used.
        let mut named = job(json!({"argocd.argoproj.io/hook": "PreSync"}));
        named["metadata"]["name"] = json!("migrate");
        let m = Manifest::from_value(named, None).unwrap();
        assert_eq!(m.generate_name(), None);
    }

    #[test]
    fn key_ordering_is_group_kind_namespace_name() {
        let mut keys = [
            ObjectKey::new("apps", "Deployment", Some("b"), "x"),
            ObjectKey::new("", "ConfigMap", Some("a"), "y"),
            ObjectKey::new("apps", "Deployment", None, "x"),
        ];
        keys.sort();
        assert_eq!(keys[0].kind, "ConfigMap");
        assert_eq!(keys[1].namespace, None);
    }
}
