//! The pre-build check: pure functions from the text of a kustomization (or of a file of plugin
//! configs) to the local paths it names, or the first refusal. No filesystem access; the
//! walker in the parent module follows the returned [`Reference`]s. What is refused, and why,
//! is listed in the parent module's documentation.

mod ctx;
mod entry;
mod fields;
mod plugins;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Refusal, Result};
use crate::parse::{parse_value, parse_values};

use ctx::Ctx;

/// What Kustomize does with a local path a kustomization or plugin config names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReferenceKind {
    /// From `resources`, `bases` or `components` of a kustomization built for its manifests:
    /// a directory holds a kustomization (to be checked in turn), a file holds manifests.
    Kustomization,
    /// A file of plugin configs (to be checked with [`check_plugin_config_text`]), or a
    /// directory whose kustomization's output are plugin configs (to be checked with
    /// [`KustomizationRole::PluginConfigs`]). From `generators`, `transformers`,
    /// `validators`, and from `resources`/`bases`/`components` of such a kustomization.
    PluginConfig,
    /// Read as data only: a patch, CRD, OpenAPI schema, transformer configuration,
    /// replacement, generator source file or directory, Helm home.
    Data,
}

/// How the output of a kustomization is used, which decides what it may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KustomizationRole {
    /// Built for its manifests: the kustomization Plumb renders, its resources and components.
    Manifests,
    /// Reached through `generators`/`transformers`/`validators`: Kustomize builds it and uses
    /// its output as plugin configs, so only fields that cannot rewrite those are allowed.
    PluginConfigs,
}

/// A local path named by a kustomization or plugin config that passed the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The field it came from, e.g. `patches[0].path`.
    pub field: String,
    /// The path resolved lexically against the directory of the file naming it, relative to
    /// the source root. It never leaves the root; it may not exist.
    pub path: PathBuf,
    /// What Kustomize does with it.
    pub kind: ReferenceKind,
}

/// Every field of a `Kustomization` or `Component` in Kustomize v5
/// (`api/types/kustomization.go`). Anything else is refused: Kustomize rejects unknown fields
/// too, but matches names case-insensitively, and a later version may add fields that read
/// files.
const KNOWN_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "openapi",
    "namePrefix",
    "nameSuffix",
    "namespace",
    "commonLabels",
    "labels",
    "commonAnnotations",
    "patchesStrategicMerge",
    "patchesJson6902",
    "patches",
    "images",
    "imageTags",
    "replacements",
    "replicas",
    "vars",
    "sortOptions",
    "resources",
    "components",
    "crds",
    "bases",
    "configMapGenerator",
    "secretGenerator",
    "helmGlobals",
    "helmCharts",
    "helmChartInflationGenerator",
    "generatorOptions",
    "configurations",
    "generators",
    "transformers",
    "validators",
    "inventory",
    "buildMetadata",
];

/// The fields allowed in a kustomization whose output are plugin configs: they gather configs
/// and set names, namespaces, labels and annotations, which cannot turn a checked config into
/// one that reads a file or URL. Patches, replacements, vars, configurations, generators and
/// transformers could.
const PLUGIN_ROLE_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "resources",
    "bases",
    "components",
    "namespace",
    "namePrefix",
    "nameSuffix",
    "commonLabels",
    "commonAnnotations",
    "labels",
    "buildMetadata",
];

/// Most documents read from one file of plugin configs or one inline entry.
const MAX_PLUGIN_DOCUMENTS: usize = 1_000;

/// Checks the text of the kustomization file `rel_path` (relative to the source root) that
/// Plumb builds for manifests. Equivalent to [`check_kustomization_text_as`] with
/// [`KustomizationRole::Manifests`].
pub fn check_kustomization_text(rel_path: &Path, text: &str) -> Result<Vec<Reference>> {
    check_kustomization_text_as(rel_path, text, KustomizationRole::Manifests)
}

/// Checks the text of the kustomization (or `Component`) file `rel_path`, relative to the
/// source root, without touching the filesystem. Returns every local path it names, resolved
/// against its directory, for the caller to follow (directories of kind
/// [`ReferenceKind::Kustomization`]/[`ReferenceKind::PluginConfig`] and plugin config files
/// must be checked in turn). Errors name `rel_path`, the line where known, the field and the
/// offending value; an empty or null document names nothing.
pub fn check_kustomization_text_as(
    rel_path: &Path,
    text: &str,
    role: KustomizationRole,
) -> Result<Vec<Reference>> {
    let doc = parse_value(text, rel_path)?;
    let mut cx = Ctx::new(rel_path, text);
    let map = match &doc {
        Value::Null => return Ok(Vec::new()),
        Value::Object(map) => map,
        _ => {
            return Err(cx.refused(
                "(document)",
                "",
                "",
                Refusal::Malformed("a mapping of kustomization fields"),
            ));
        }
    };
    for (key, value) in map {
        let key = key.as_str();
        if !KNOWN_FIELDS.contains(&key) {
            return Err(cx.field_refused(key, key, Refusal::UnknownField));
        }
        if role == KustomizationRole::PluginConfigs && !PLUGIN_ROLE_FIELDS.contains(&key) {
            return Err(cx.field_refused(key, key, Refusal::RewritesPluginConfig));
        }
        cx.kustomization_field(key, value, role)?;
    }
    Ok(cx.refs)
}

/// Checks a file of plugin configs (a file named by `generators`/`transformers`/`validators`,
/// or a resource of a kustomization used as such): every document (`List`s flattened) must be
/// a Kustomize builtin plugin config whose file fields pass the same checks as a
/// kustomization's. Returns the local paths they name (all [`ReferenceKind::Data`]).
///
/// Kustomize configures plugins with the loader of the kustomization that lists them, so
/// relative paths in the configs resolve against `base`, that kustomization's directory
/// (relative to the source root), not against the directory of `rel_path`.
pub fn check_plugin_config_text(
    rel_path: &Path,
    base: &Path,
    text: &str,
) -> Result<Vec<Reference>> {
    let docs = parse_values(text, rel_path, MAX_PLUGIN_DOCUMENTS)?;
    let mut cx = Ctx::new(rel_path, text);
    cx.dir = base;
    for (i, doc) in docs.iter().enumerate() {
        cx.plugin_configs(&format!("document {i}"), doc)?;
    }
    Ok(cx.refs)
}
