//! The fields of a kustomization that name files: resources, patches, replacements,
//! generators, OpenAPI schemas, Helm homes.

use serde_json::{Map, Value};

use crate::error::{Refusal, Result};

use super::KustomizationRole;
use super::ReferenceKind;
use super::ctx::Ctx;
use super::entry::is_inline;

/// Fields of `configMapGenerator`/`secretGenerator` entries (`GeneratorArgs`, `SecretArgs`).
const GENERATOR_FIELDS: &[&str] = &[
    "name",
    "namespace",
    "behavior",
    "immutable",
    "literals",
    "files",
    "envs",
    "env",
    "options",
    "type",
];

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

impl Ctx<'_> {
    pub(super) fn kustomization_field(
        &mut self,
        key: &str,
        value: &Value,
        role: KustomizationRole,
    ) -> Result<()> {
        match key {
            "resources" | "bases" | "components" => {
                let kind = match role {
                    KustomizationRole::Manifests => ReferenceKind::Kustomization,
                    KustomizationRole::PluginConfigs => ReferenceKind::PluginConfig,
                };
                for (field, entry) in self.strings(key, value)? {
                    self.path(field, entry, kind)?;
                }
            }
            "crds" | "configurations" => {
                for (field, entry) in self.strings(key, value)? {
                    self.path(field, entry, ReferenceKind::Data)?;
                }
            }
            "generators" | "transformers" | "validators" => {
                for (field, entry) in self.strings(key, value)? {
                    self.plugin_entry(field, entry)?;
                }
            }
            "patchesStrategicMerge" => {
                for (field, entry) in self.strings(key, value)? {
                    self.strategic_merge_entry(field, entry)?;
                }
            }
            "patches" | "patchesJson6902" => {
                for (field, m) in self.mappings(key, value)? {
                    self.only_keys(&field, m, &["path", "patch", "target", "options"])?;
                    self.opt_path(&field, m, "path")?;
                }
            }
            "replacements" => self.replacements(key, value)?,
            "openapi" => {
                if let Some(m) = self.mapping(key, value)? {
                    self.only_keys(key, m, &["path", "version"])?;
                    self.opt_path(key, m, "path")?;
                }
            }
            "configMapGenerator" | "secretGenerator" => {
                for (field, m) in self.mappings(key, value)? {
                    self.generator_args(&field, m, &[])?;
                }
            }
            "helmCharts" | "helmChartInflationGenerator" if !is_empty(value) => {
                return Err(self.field_refused(key, key, Refusal::Helm));
            }
            "helmGlobals" => {
                if let Some(m) = self.mapping(key, value)? {
                    self.only_keys(key, m, &["chartHome", "configHome"])?;
                    self.opt_path(key, m, "chartHome")?;
                    self.opt_path(key, m, "configHome")?;
                }
            }
            // The other known fields name no files (and empty Helm lists do nothing).
            _ => {}
        }
        Ok(())
    }

    /// `replacements` entries: `path` (a file of replacements) or inline `source`/`targets`.
    pub(super) fn replacements(&mut self, field: &str, value: &Value) -> Result<()> {
        for (field, m) in self.mappings(field, value)? {
            self.only_keys(&field, m, &["path", "source", "targets"])?;
            self.opt_path(&field, m, "path")?;
        }
        Ok(())
    }

    /// `configMapGenerator`/`secretGenerator` entries (or the builtin generator configs, with
    /// `extra` keys): `files` (`[key=]path`), `envs`, `env`.
    pub(super) fn generator_args(
        &mut self,
        field: &str,
        m: &Map<String, Value>,
        extra: &[&str],
    ) -> Result<()> {
        if let Some(k) = m
            .keys()
            .find(|k| !GENERATOR_FIELDS.contains(&k.as_str()) && !extra.contains(&k.as_str()))
        {
            return Err(self.field_refused(&format!("{field}.{k}"), k, Refusal::UnknownField));
        }
        if let Some(v) = m.get("files") {
            for (f, entry) in self.strings(&format!("{field}.files"), v)? {
                let part = entry.split_once('=').map_or(entry, |(_, p)| p);
                self.path_part(f, entry, part, ReferenceKind::Data)?;
            }
        }
        if let Some(v) = m.get("envs") {
            for (f, entry) in self.strings(&format!("{field}.envs"), v)? {
                self.path(f, entry, ReferenceKind::Data)?;
            }
        }
        self.opt_path(field, m, "env")
    }

    /// A `patchesStrategicMerge` entry (or a `paths` entry of the builtin): inline patch text
    /// is not a path (see [`is_inline`]); anything else is checked as one.
    pub(super) fn strategic_merge_entry(&mut self, field: String, entry: &str) -> Result<()> {
        if is_inline(entry) {
            return Ok(());
        }
        self.path(field, entry, ReferenceKind::Data)
    }
}
