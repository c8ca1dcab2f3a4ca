//! Plugin configs (`generators`, `transformers`, `validators`, inline or in files): only
//! Kustomize builtins, whose file fields are checked like the kustomization fields they
//! mirror.

use serde_json::{Map, Value};

use crate::error::{Refusal, RenderError, Result};
use crate::parse::parse_values;

use super::ctx::Ctx;
use super::entry::{is_inline, is_url_like, resolve};
use super::{MAX_PLUGIN_DOCUMENTS, ReferenceKind};

/// Fields every plugin config has besides its own.
const PLUGIN_META: [&str; 3] = ["apiVersion", "kind", "metadata"];

/// Builtin plugins with no field that names a file in Kustomize v5.
const NO_FILE_BUILTINS: &[&str] = &[
    "AnnotationsTransformer",
    "HashTransformer",
    "IAMPolicyGenerator",
    "ImageTagTransformer",
    "LabelTransformer",
    "LegacyOrderTransformer",
    "NamespaceTransformer",
    "PrefixSuffixTransformer",
    "PrefixTransformer",
    "SuffixTransformer",
    "ReplicaCountTransformer",
];

/// A builtin plugin config field that is not one of its known fields and may name a file.
fn may_name_file(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["path", "file", "dir", "url", "uri", "repo", "home", "chart"]
        .iter()
        .any(|w| k.contains(w))
}

/// `kind: List` or `*List` with `items`, flattened by Kustomize like by kubectl.
fn list_items(m: &Map<String, Value>) -> Option<&Vec<Value>> {
    let kind = m.get("kind").and_then(Value::as_str).unwrap_or("");
    let items = m.get("items").and_then(Value::as_array);
    if kind == "List" || kind.ends_with("List") {
        items
    } else {
        None
    }
}

impl Ctx<'_> {
    /// A `generators`/`transformers`/`validators` entry. Kustomize tries it as inline YAML
    /// first and, if that fails, as a path that may be a file, a directory or a remote git
    /// spec. Inline text (see [`is_inline`]) is checked as plugin configs, which must all be
    /// builtins, and in case Kustomize's parser disagrees with ours, also with the path checks
    /// that cannot misfire on YAML text: a git spec is recognised by how the text starts (its
    /// first token) or by `_git/`, and the text must not leave the root as a path. Anything
    /// else is checked as a path.
    pub(super) fn plugin_entry(&mut self, field: String, entry: &str) -> Result<()> {
        if !is_inline(entry) {
            return self.path(field, entry, ReferenceKind::PluginConfig);
        }
        let first_token = entry.split_whitespace().next().unwrap_or("");
        if is_url_like(first_token) || entry.to_ascii_lowercase().contains("_git/") {
            return Err(self.remote(field, entry));
        }
        if resolve(self.dir, entry).is_none() {
            return Err(self.outside(field, entry));
        }
        let docs = parse_values(entry, self.file, MAX_PLUGIN_DOCUMENTS).map_err(|e| match e {
            RenderError::Parse { line, message, .. } => self.refused(
                &field,
                entry,
                entry,
                Refusal::InlineUnparsable(format!("line {line} of the entry: {message}")),
            ),
            other => other,
        })?;
        let single = docs.len() == 1;
        for (i, doc) in docs.iter().enumerate() {
            let f = if single {
                format!("{field} (inline)")
            } else {
                format!("{field} (inline document {i})")
            };
            self.plugin_configs(&f, doc)?;
        }
        Ok(())
    }

    /// One parsed document of plugin configs: a config, a `List` of them, or a sequence.
    pub(super) fn plugin_configs(&mut self, field: &str, v: &Value) -> Result<()> {
        match v {
            Value::Null => Ok(()),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.plugin_configs(&format!("{field}[{i}]"), item)?;
                }
                Ok(())
            }
            Value::Object(m) => match list_items(m) {
                Some(items) => {
                    for (i, item) in items.iter().enumerate() {
                        self.plugin_configs(&format!("{field}.items[{i}]"), item)?;
                    }
                    Ok(())
                }
                None => self.builtin_config(field, m),
            },
            _ => Err(self.refused(
                field,
                "",
                "",
                Refusal::Malformed("a plugin config (a mapping with apiVersion and kind)"),
            )),
        }
    }

    /// A plugin config must be a builtin (`apiVersion: builtin`, which is all Kustomize runs
    /// without `--enable-alpha-plugins`) without a function annotation, of a kind whose file
    /// fields are known and checked like the kustomization fields they mirror. Builtins with no
    /// file fields may not carry unknown keys that look like file fields either.
    pub(super) fn builtin_config(&mut self, field: &str, m: &Map<String, Value>) -> Result<()> {
        let kind = m.get("kind").and_then(Value::as_str).unwrap_or("");
        let field = if kind.is_empty() {
            field.to_owned()
        } else {
            format!("{field} ({kind})")
        };
        let api = m.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        if api != "builtin" {
            let needle = if api.is_empty() { kind } else { api };
            return Err(self.refused(
                &field,
                &format!("apiVersion: {api}"),
                needle,
                Refusal::NotBuiltinPlugin,
            ));
        }
        let annotations = m
            .get("metadata")
            .and_then(|md| md.get("annotations"))
            .and_then(Value::as_object);
        if let Some(key) = annotations.and_then(|a| a.keys().find(|k| k.contains("function"))) {
            return Err(self.refused(&field, key, key, Refusal::NotBuiltinPlugin));
        }
        let with_meta = |own: &[&'static str]| -> Vec<&'static str> {
            PLUGIN_META.iter().chain(own).copied().collect()
        };
        match kind {
            "HelmChartInflationGenerator" => Err(self.refused(&field, kind, kind, Refusal::Helm)),
            "ConfigMapGenerator" | "SecretGenerator" => {
                self.generator_args(&field, m, &PLUGIN_META)
            }
            "PatchTransformer" => {
                self.only_keys(
                    &field,
                    m,
                    &with_meta(&["path", "patch", "target", "options"]),
                )?;
                self.opt_path(&field, m, "path")
            }
            "PatchJson6902Transformer" => {
                self.only_keys(&field, m, &with_meta(&["target", "path", "jsonOp"]))?;
                self.opt_path(&field, m, "path")
            }
            "PatchStrategicMergeTransformer" => {
                self.only_keys(&field, m, &with_meta(&["paths", "patches"]))?;
                if let Some(v) = m.get("paths") {
                    for (f, entry) in self.strings(&format!("{field}.paths"), v)? {
                        self.strategic_merge_entry(f, entry)?;
                    }
                }
                Ok(())
            }
            "ReplacementTransformer" => {
                self.only_keys(&field, m, &with_meta(&["replacements"]))?;
                match m.get("replacements") {
                    Some(v) => self.replacements(&format!("{field}.replacements"), v),
                    None => Ok(()),
                }
            }
            "ValueAddTransformer" => {
                self.only_keys(
                    &field,
                    m,
                    &with_meta(&["value", "targets", "targetFilePath"]),
                )?;
                self.opt_path(&field, m, "targetFilePath")
            }
            k if NO_FILE_BUILTINS.contains(&k) => {
                match m
                    .keys()
                    .find(|k| !PLUGIN_META.contains(&k.as_str()) && may_name_file(k))
                {
                    Some(k) => {
                        Err(self.field_refused(&format!("{field}.{k}"), k, Refusal::UnknownField))
                    }
                    None => Ok(()),
                }
            }
            _ => Err(self.refused(&field, kind, kind, Refusal::UnknownBuiltin)),
        }
    }
}
