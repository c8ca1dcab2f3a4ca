//! The pre-build check: pure functions from the text of a kustomization (or of a file of plugin
//! configs) to the local paths it names, or the first refusal. No filesystem access; the
//! walker in the parent module follows the returned [`Reference`]s. What is refused, and why,
//! is listed in the parent module's documentation.

use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Refusal, RenderError, Result};
use crate::parse::{parse_value, parse_values};

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

/// Most documents read from one file of plugin configs or one inline entry.
const MAX_PLUGIN_DOCUMENTS: usize = 1_000;

/// Longest entry shown in an error.
const MAX_SHOWN: usize = 120;

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

/// True if Kustomize may treat `entry` as something other than a local path: a URL (any
/// `scheme:`, `//host`), a remote git spec (`git::`, `gh:`, `git@`, `user@host:`,
/// `github.com/`, `?ref=`, `.git//`, `_git/`, ...). Absolute paths are not URL-like; they
/// fail [`resolve`] instead.
pub(crate) fn is_url_like(entry: &str) -> bool {
    let e = entry.trim();
    let lower = e.to_ascii_lowercase();
    has_remote_marker(&lower)
        || lower.starts_with("//")
        || [
            "git::",
            "gh:",
            "git@",
            "github.com/",
            "github.com:",
            "gitlab.com/",
            "bitbucket.org/",
        ]
        .iter()
        .any(|p| lower.starts_with(p))
        || has_scheme(e)
        || e.split_once(':')
            .is_some_and(|(user_host, _)| user_host.contains('@'))
}

/// Markers of a URL or remote git spec that cannot be mistaken in YAML text.
fn has_remote_marker(lower: &str) -> bool {
    const QUERY_KEYS: [&str; 5] = ["ref=", "version=", "submodules=", "timeout=", "cache="];
    lower.contains("://")
        || lower.contains("_git/")
        || lower.contains(".git/")
        || lower.contains(".git?")
        || lower.ends_with(".git")
        || QUERY_KEYS
            .iter()
            .any(|k| lower.contains(&format!("?{k}")) || lower.contains(&format!("&{k}")))
}

/// `scheme:something` as a URL parser reads it (a letter, then letters, digits, `+`, `-`,
/// `.`), the scheme at least two characters so that nothing resembling a drive letter counts.
/// A bare `key:` (the first token of YAML text) is no URL.
fn has_scheme(e: &str) -> bool {
    let b = e.as_bytes();
    if !b.first().is_some_and(u8::is_ascii_alphabetic) {
        return false;
    }
    let n = b
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        .count();
    n >= 2 && b.get(n) == Some(&b':') && b.len() > n + 1
}

/// True if Kustomize reads `entry` (of `patchesStrategicMerge`, or of a plugin list) as YAML
/// text rather than as a path. Kustomize tries the text first and falls back to a path;
/// text with a control character (a newline) can never be fetched as a URL (Go's URL parser
/// rejects it) and text starting with `{` or `[` has no scheme, so such a fallback could only
/// load a local file, which the root-only load restrictor confines.
fn is_inline(entry: &str) -> bool {
    entry.bytes().any(|b| b < 0x20 || b == 0x7f)
        || matches!(entry.trim_start().as_bytes().first(), Some(b'{' | b'['))
}

/// Resolves `entry` (relative to `base`, both relative to the root) lexically; `None` if it
/// is absolute or would leave the root.
pub(crate) fn resolve(base: &Path, entry: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in base.join(entry).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// A builtin plugin config field that is not one of its known fields and may name a file.
fn may_name_file(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["path", "file", "dir", "url", "uri", "repo", "home", "chart"]
        .iter()
        .any(|w| k.contains(w))
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
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

/// The first line, shortened, for error messages.
fn shorten(entry: &str) -> String {
    let first = entry.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut out: String = first.chars().take(MAX_SHOWN).collect();
    if out.len() < entry.trim_end().len() {
        out.push('…');
    }
    out
}

/// One file being checked: where relative entries resolve, and what was found.
struct Ctx<'a> {
    file: &'a Path,
    dir: &'a Path,
    text: &'a str,
    refs: Vec<Reference>,
}

impl<'a> Ctx<'a> {
    fn new(file: &'a Path, text: &'a str) -> Self {
        Ctx {
            file,
            dir: file.parent().unwrap_or(Path::new("")),
            text,
            refs: Vec::new(),
        }
    }

    /// 1-based line of the first occurrence of `needle`'s first line, 0 if not found. Best
    /// effort: the parsed value carries no positions.
    fn line(&self, needle: &str) -> u64 {
        let Some(first) = needle.lines().map(str::trim).find(|l| !l.is_empty()) else {
            return 0;
        };
        self.text
            .lines()
            .position(|l| l.contains(first))
            .map_or(0, |i| i as u64 + 1)
    }

    fn remote(&self, field: String, entry: &str) -> RenderError {
        RenderError::RemoteResource {
            path: self.file.to_owned(),
            line: self.line(entry),
            field,
            entry: shorten(entry),
        }
    }

    fn outside(&self, field: String, entry: &str) -> RenderError {
        RenderError::ReferenceOutsideRoot {
            path: self.file.to_owned(),
            line: self.line(entry),
            field,
            entry: shorten(entry),
        }
    }

    fn refused(&self, field: &str, entry: &str, needle: &str, reason: Refusal) -> RenderError {
        RenderError::KustomizeRefused {
            path: self.file.to_owned(),
            line: self.line(needle),
            field: field.to_owned(),
            entry: shorten(entry),
            reason,
        }
    }

    /// The field (or key) itself is refused; found at the line `key:`.
    fn field_refused(&self, field: &str, key: &str, reason: Refusal) -> RenderError {
        self.refused(field, "", &format!("{key}:"), reason)
    }

    fn malformed(&self, field: &str, expected: &'static str) -> RenderError {
        let key = field.rsplit(['.', ' ']).next().unwrap_or(field);
        let key = key.split('[').next().unwrap_or(key);
        self.field_refused(field, key, Refusal::Malformed(expected))
    }

    /// Checks `entry` as a path and records it.
    fn path(&mut self, field: String, entry: &str, kind: ReferenceKind) -> Result<()> {
        self.path_part(field, entry, entry, kind)
    }

    /// Checks `whole` for URLs and `part` (the path within it) for URLs and leaving the root;
    /// records `part`.
    fn path_part(
        &mut self,
        field: String,
        whole: &str,
        part: &str,
        kind: ReferenceKind,
    ) -> Result<()> {
        if is_url_like(whole) || is_url_like(part) {
            return Err(self.remote(field, whole));
        }
        let Some(path) = resolve(self.dir, part) else {
            return Err(self.outside(field, whole));
        };
        self.refs.push(Reference { field, path, kind });
        Ok(())
    }

    /// An optional path field of a mapping.
    fn opt_path(&mut self, field: &str, m: &Map<String, Value>, key: &str) -> Result<()> {
        match m.get(key) {
            None | Some(Value::Null) => Ok(()),
            Some(Value::String(s)) => self.path(format!("{field}.{key}"), s, ReferenceKind::Data),
            Some(_) => Err(self.malformed(&format!("{field}.{key}"), "a path (a string)")),
        }
    }

    /// Refuses keys of `m` outside `allowed`.
    fn only_keys(&self, field: &str, m: &Map<String, Value>, allowed: &[&str]) -> Result<()> {
        match m.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(self.field_refused(&format!("{field}.{k}"), k, Refusal::UnknownField)),
            None => Ok(()),
        }
    }

    /// A list of strings: `(field[i], entry)`; null and null entries are empty.
    fn strings<'v>(&self, field: &str, v: &'v Value) -> Result<Vec<(String, &'v str)>> {
        match v {
            Value::Null => Ok(Vec::new()),
            Value::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::Null => {}
                        Value::String(s) => out.push((format!("{field}[{i}]"), s.as_str())),
                        _ => return Err(self.malformed(&format!("{field}[{i}]"), "a string")),
                    }
                }
                Ok(out)
            }
            _ => Err(self.malformed(field, "a list of strings")),
        }
    }

    /// A list of mappings: `(field[i], mapping)`; null and null entries are empty.
    fn mappings<'v>(
        &self,
        field: &str,
        v: &'v Value,
    ) -> Result<Vec<(String, &'v Map<String, Value>)>> {
        match v {
            Value::Null => Ok(Vec::new()),
            Value::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::Null => {}
                        Value::Object(m) => out.push((format!("{field}[{i}]"), m)),
                        _ => return Err(self.malformed(&format!("{field}[{i}]"), "a mapping")),
                    }
                }
                Ok(out)
            }
            _ => Err(self.malformed(field, "a list of mappings")),
        }
    }

    fn mapping<'v>(&self, field: &str, v: &'v Value) -> Result<Option<&'v Map<String, Value>>> {
        match v {
            Value::Null => Ok(None),
            Value::Object(m) => Ok(Some(m)),
            _ => Err(self.malformed(field, "a mapping")),
        }
    }

    fn kustomization_field(
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
    fn replacements(&mut self, field: &str, value: &Value) -> Result<()> {
        for (field, m) in self.mappings(field, value)? {
            self.only_keys(&field, m, &["path", "source", "targets"])?;
            self.opt_path(&field, m, "path")?;
        }
        Ok(())
    }

    /// `configMapGenerator`/`secretGenerator` entries (or the builtin generator configs, with
    /// `extra` keys): `files` (`[key=]path`), `envs`, `env`.
    fn generator_args(
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
    fn strategic_merge_entry(&mut self, field: String, entry: &str) -> Result<()> {
        if is_inline(entry) {
            return Ok(());
        }
        self.path(field, entry, ReferenceKind::Data)
    }

    /// A `generators`/`transformers`/`validators` entry. Kustomize tries it as inline YAML
    /// first and, if that fails, as a path that may be a file, a directory or a remote git
    /// spec. Inline text (see [`is_inline`]) is checked as plugin configs, which must all be
    /// builtins, and in case Kustomize's parser disagrees with ours, also with the path checks
    /// that cannot misfire on YAML text: a git spec is recognised by how the text starts (its
    /// first token) or by `_git/`, and the text must not leave the root as a path. Anything
    /// else is checked as a path.
    fn plugin_entry(&mut self, field: String, entry: &str) -> Result<()> {
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
    fn plugin_configs(&mut self, field: &str, v: &Value) -> Result<()> {
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
    fn builtin_config(&mut self, field: &str, m: &Map<String, Value>) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Vec<Reference>> {
        check_kustomization_text(Path::new("app/kustomization.yaml"), text)
    }

    #[track_caller]
    fn remote(text: &str, field: &str) {
        match check(text) {
            Err(RenderError::RemoteResource { field: f, path, .. }) => {
                assert_eq!(f, field, "{text}");
                assert_eq!(path, Path::new("app/kustomization.yaml"));
            }
            other => panic!("{text}: expected RemoteResource at {field}, got {other:?}"),
        }
    }

    #[track_caller]
    fn outside(text: &str, field: &str) {
        match check(text) {
            Err(RenderError::ReferenceOutsideRoot { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{text}: expected ReferenceOutsideRoot at {field}, got {other:?}"),
        }
    }

    #[track_caller]
    fn refused(text: &str, field: &str, reason: Refusal) {
        match check(text) {
            Err(RenderError::KustomizeRefused {
                field: f,
                reason: r,
                ..
            }) => {
                assert_eq!(f, field, "{text}");
                assert_eq!(r, reason, "{text}");
            }
            other => panic!("{text}: expected KustomizeRefused at {field}, got {other:?}"),
        }
    }

    const URL: &str = "http://127.0.0.1:8080/x";

    #[test]
    fn url_in_every_file_field_is_refused() {
        for (text, field) in [
            (format!("resources:\n- ok.yaml\n- {URL}\n"), "resources[1]"),
            (format!("bases:\n- {URL}\n"), "bases[0]"),
            (format!("components:\n- {URL}\n"), "components[0]"),
            (format!("crds:\n- {URL}\n"), "crds[0]"),
            (format!("configurations:\n- {URL}\n"), "configurations[0]"),
            (format!("generators:\n- {URL}\n"), "generators[0]"),
            (format!("transformers:\n- {URL}\n"), "transformers[0]"),
            (format!("validators:\n- {URL}\n"), "validators[0]"),
            (
                format!("patches:\n- path: {URL}\n  target: {{kind: ConfigMap}}\n"),
                "patches[0].path",
            ),
            (
                format!("patchesStrategicMerge:\n- {URL}\n"),
                "patchesStrategicMerge[0]",
            ),
            (
                format!("patchesJson6902:\n- path: {URL}\n"),
                "patchesJson6902[0].path",
            ),
            (
                format!("replacements:\n- path: {URL}\n"),
                "replacements[0].path",
            ),
            (format!("openapi:\n  path: {URL}\n"), "openapi.path"),
            (
                format!("configMapGenerator:\n- name: c\n  files:\n  - {URL}\n"),
                "configMapGenerator[0].files[0]",
            ),
            (
                format!("configMapGenerator:\n- name: c\n  files:\n  - key={URL}\n"),
                "configMapGenerator[0].files[0]",
            ),
            (
                format!("configMapGenerator:\n- name: c\n  envs:\n  - {URL}\n"),
                "configMapGenerator[0].envs[0]",
            ),
            (
                format!("configMapGenerator:\n- name: c\n  env: {URL}\n"),
                "configMapGenerator[0].env",
            ),
            (
                format!("secretGenerator:\n- name: s\n  files:\n  - k={URL}\n"),
                "secretGenerator[0].files[0]",
            ),
            (
                format!("secretGenerator:\n- name: s\n  envs: [{URL}]\n"),
                "secretGenerator[0].envs[0]",
            ),
            (
                format!("helmGlobals:\n  chartHome: {URL}\n"),
                "helmGlobals.chartHome",
            ),
        ] {
            remote(&text, field);
        }
    }

    #[test]
    fn error_names_file_line_field_value_and_advice() {
        let e = check(&format!("namePrefix: x-\npatches:\n- path: {URL}\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "app/kustomization.yaml:3: `patches[0].path` names the remote location \"{URL}\"; Plumb lets Kustomize read only files in the repository, so vendor it into the repository and name it by a relative path"
            )
        );
        assert_eq!(e.metric_label(), "render_remote_resource");
        assert!(!e.is_retryable());
    }

    #[test]
    fn paths_leaving_the_root_are_refused() {
        outside("generators:\n- ../../x\n", "generators[0]");
        outside("transformers:\n- ../../outside\n", "transformers[0]");
        outside("validators:\n- ../../../v.yaml\n", "validators[0]");
        outside("resources:\n- /etc\n", "resources[0]");
        outside("patches:\n- path: ../../p.yaml\n", "patches[0].path");
        outside("configurations: [/etc/passwd]\n", "configurations[0]");
        outside(
            "configMapGenerator:\n- name: c\n  files: [k=../../secret]\n",
            "configMapGenerator[0].files[0]",
        );
        outside("openapi: {path: /schema.json}\n", "openapi.path");
        // Inside the root (one level up from app/) is fine for the check.
        let refs = check("transformers:\n- ../shared/t.yaml\n").unwrap();
        assert_eq!(refs[0].path, Path::new("shared/t.yaml"));
        assert_eq!(refs[0].kind, ReferenceKind::PluginConfig);
    }

    #[test]
    fn references_are_resolved_and_classified() {
        let refs = check(
            "resources: [base, cm.yaml]\ncomponents: [../comp]\npatches:\n- path: p.yaml\n- patch: |-\n    kind: X\nconfigMapGenerator:\n- name: c\n  files: [k=conf/a.conf, b.conf]\n  literals: [x=http://not-a-file]\npatchesStrategicMerge:\n- sm.yaml\n- |-\n  apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: x}\n  data: {url: 'https://example.com'}\n",
        )
        .unwrap();
        let mut got: Vec<_> = refs
            .iter()
            .map(|r| (r.field.as_str(), r.path.to_str().unwrap(), r.kind))
            .collect();
        got.sort();
        use ReferenceKind::*;
        assert_eq!(
            got,
            [
                ("components[0]", "comp", Kustomization),
                ("configMapGenerator[0].files[0]", "app/conf/a.conf", Data),
                ("configMapGenerator[0].files[1]", "app/b.conf", Data),
                ("patchesStrategicMerge[0]", "app/sm.yaml", Data),
                ("patches[0].path", "app/p.yaml", Data),
                ("resources[0]", "app/base", Kustomization),
                ("resources[1]", "app/cm.yaml", Kustomization),
            ]
        );
    }

    #[test]
    fn helm_is_refused() {
        refused(
            "helmCharts:\n- name: x\n  repo: https://charts.example.com\n",
            "helmCharts",
            Refusal::Helm,
        );
        refused(
            "helmChartInflationGenerator:\n- chartName: x\n",
            "helmChartInflationGenerator",
            Refusal::Helm,
        );
        assert!(check("helmCharts: []\n").unwrap().is_empty());
        refused(
            "transformers:\n- |\n  apiVersion: builtin\n  kind: HelmChartInflationGenerator\n  metadata: {name: h}\n",
            "transformers[0] (inline) (HelmChartInflationGenerator)",
            Refusal::Helm,
        );
    }

    #[test]
    fn unknown_and_misspelled_fields_are_refused() {
        refused(
            "resources: []\nfutureFiles: [x]\n",
            "futureFiles",
            Refusal::UnknownField,
        );
        // Kustomize matches field names case-insensitively.
        refused("Patches:\n- path: x\n", "Patches", Refusal::UnknownField);
        refused(
            "patches:\n- Path: http://x\n",
            "patches[0].Path",
            Refusal::UnknownField,
        );
        refused("openapi: {url: x}\n", "openapi.url", Refusal::UnknownField);
        refused(
            "configMapGenerator:\n- name: c\n  ageIdentities: [k]\n",
            "configMapGenerator[0].ageIdentities",
            Refusal::UnknownField,
        );
        // Merge keys are resolved (as by Kustomize's YAML parser), so merged fields are checked.
        remote("<<: {resources: ['http://x/y']}\n", "resources[0]");
    }

    #[test]
    fn malformed_values_are_refused() {
        refused(
            "resources: x.yaml\n",
            "resources",
            Refusal::Malformed("a list of strings"),
        );
        refused(
            "patches:\n- path: 12\n",
            "patches[0].path",
            Refusal::Malformed("a path (a string)"),
        );
        refused(
            "- a\n",
            "(document)",
            Refusal::Malformed("a mapping of kustomization fields"),
        );
        assert!(check("").unwrap().is_empty());
        assert!(check("# only a comment\n").unwrap().is_empty());
    }

    #[test]
    fn inline_plugin_configs() {
        // A builtin without file fields is fine.
        let ok = "transformers:\n- |\n  apiVersion: builtin\n  kind: PrefixSuffixTransformer\n  metadata: {name: p}\n  prefix: x-\n  fieldSpecs:\n  - path: metadata/name\n";
        assert!(check(ok).unwrap().is_empty());
        // File fields of builtins are checked.
        remote(
            &format!(
                "transformers:\n- |\n  apiVersion: builtin\n  kind: PatchTransformer\n  metadata: {{name: p}}\n  path: {URL}\n"
            ),
            "transformers[0] (inline) (PatchTransformer).path",
        );
        remote(
            &format!(
                "generators:\n- |\n  apiVersion: builtin\n  kind: ConfigMapGenerator\n  metadata: {{name: c}}\n  files: [k={URL}]\n"
            ),
            "generators[0] (inline) (ConfigMapGenerator).files[0]",
        );
        outside(
            "transformers:\n- |\n  apiVersion: builtin\n  kind: ValueAddTransformer\n  metadata: {name: v}\n  targetFilePath: ../../../targets.yaml\n",
            "transformers[0] (inline) (ValueAddTransformer).targetFilePath",
        );
        remote(
            &format!(
                "transformers:\n- |\n  apiVersion: builtin\n  kind: ReplacementTransformer\n  metadata: {{name: r}}\n  replacements:\n  - path: {URL}\n"
            ),
            "transformers[0] (inline) (ReplacementTransformer).replacements[0].path",
        );
        remote(
            &format!(
                "transformers:\n- |\n  apiVersion: builtin\n  kind: PatchStrategicMergeTransformer\n  metadata: {{name: p}}\n  paths: [{URL}]\n"
            ),
            "transformers[0] (inline) (PatchStrategicMergeTransformer).paths[0]",
        );
        // Flow-style inline configs too.
        remote(
            &format!(
                "transformers:\n- '{{apiVersion: builtin, kind: PatchJson6902Transformer, metadata: {{name: j}}, path: \"{URL}\"}}'\n"
            ),
            "transformers[0] (inline) (PatchJson6902Transformer).path",
        );
        // URLs as data inside an inline config are fine; a git spec as the text is not.
        assert!(check("transformers:\n- |\n  apiVersion: builtin\n  kind: AnnotationsTransformer\n  metadata: {name: a}\n  annotations: {docs: 'https://example.com'}\n  fieldSpecs: [{path: metadata/annotations, create: true}]\n").unwrap().is_empty());
        remote(
            "transformers:\n- \"git@github.com:org/repo.git\\n\"\n",
            "transformers[0]",
        );
        // Remote and exec plugins, unknown builtins, unknown file-like keys.
        refused(
            "transformers:\n- |\n  apiVersion: someteam.example.com/v1\n  kind: ChartInflator\n  metadata: {name: c}\n",
            "transformers[0] (inline) (ChartInflator)",
            Refusal::NotBuiltinPlugin,
        );
        refused(
            "transformers:\n- |\n  apiVersion: builtin\n  kind: LabelTransformer\n  metadata:\n    name: f\n    annotations:\n      config.kubernetes.io/function: |\n        exec: {path: ./plugin}\n",
            "transformers[0] (inline) (LabelTransformer)",
            Refusal::NotBuiltinPlugin,
        );
        refused(
            "transformers:\n- |\n  apiVersion: builtin\n  kind: SortOrderTransformer\n  metadata: {name: s}\n",
            "transformers[0] (inline) (SortOrderTransformer)",
            Refusal::UnknownBuiltin,
        );
        refused(
            "transformers:\n- |\n  apiVersion: builtin\n  kind: LabelTransformer\n  metadata: {name: l}\n  labelsFile: x\n",
            "transformers[0] (inline) (LabelTransformer).labelsFile",
            Refusal::UnknownField,
        );
        refused(
            "transformers:\n- |\n  apiVersion: builtin\n  kind: PatchTransformer\n  metadata: {name: p}\n  PATH: x\n",
            "transformers[0] (inline) (PatchTransformer).PATH",
            Refusal::UnknownField,
        );
        // A List of configs is flattened and each checked.
        remote(
            &format!(
                "generators:\n- |\n  apiVersion: v1\n  kind: List\n  items:\n  - apiVersion: builtin\n    kind: SecretGenerator\n    metadata: {{name: s}}\n    envs: [{URL}]\n"
            ),
            "generators[0] (inline).items[0] (SecretGenerator).envs[0]",
        );
        // Inline text that does not parse.
        match check("transformers:\n- |\n  a: [unclosed\n") {
            Err(RenderError::KustomizeRefused {
                reason: Refusal::InlineUnparsable(_),
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plugin_role_allows_only_gathering_fields() {
        let k = Path::new("gen/kustomization.yaml");
        let refs = check_kustomization_text_as(
            k,
            "resources: [a.yaml, sub]\nnamePrefix: x-\n",
            KustomizationRole::PluginConfigs,
        )
        .unwrap();
        assert!(refs.iter().all(|r| r.kind == ReferenceKind::PluginConfig));
        for field in [
            "patches: []",
            "replacements: []",
            "configurations: []",
            "transformers: []",
            "vars: []",
        ] {
            let e = check_kustomization_text_as(k, field, KustomizationRole::PluginConfigs)
                .unwrap_err();
            assert!(
                matches!(
                    &e,
                    RenderError::KustomizeRefused {
                        reason: Refusal::RewritesPluginConfig,
                        ..
                    }
                ),
                "{field}: {e}"
            );
        }
    }

    #[test]
    fn plugin_config_files() {
        let f = Path::new("app/sub/t.yaml");
        let base = Path::new("app");
        let refs = check_plugin_config_text(
            f,
            base,
            "apiVersion: builtin\nkind: PatchTransformer\nmetadata: {name: p}\npath: p.yaml\n---\napiVersion: builtin\nkind: NamespaceTransformer\nmetadata: {name: n, namespace: x}\n",
        )
        .unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].path, Path::new("app/p.yaml"));
        let e = check_plugin_config_text(
            f,
            base,
            &format!("apiVersion: builtin\nkind: NamespaceTransformer\nmetadata: {{name: n}}\n---\napiVersion: builtin\nkind: PatchTransformer\nmetadata: {{name: p}}\npath: {URL}\n"),
        )
        .unwrap_err();
        assert!(
            matches!(&e, RenderError::RemoteResource { field, line: 8, .. } if field == "document 1 (PatchTransformer).path"),
            "{e}"
        );
        assert!(e.to_string().starts_with("app/sub/t.yaml:8: "), "{e}");
        // `..` counts from the listing kustomization's directory.
        let e = check_plugin_config_text(
            f,
            base,
            "apiVersion: builtin\nkind: PatchTransformer\nmetadata: {name: p}\npath: ../../p.yaml\n",
        )
        .unwrap_err();
        assert!(matches!(e, RenderError::ReferenceOutsideRoot { .. }), "{e}");
    }

    #[test]
    fn remote_detection() {
        for remote in [
            "https://github.com/org/repo//base?ref=v1",
            "github.com/org/repo/base",
            "GitHub.com/org/repo",
            "git::https://example.com/repo.git",
            "git@github.com:org/repo.git",
            "deploy@example.com:org/repo",
            "ssh://git@example.com/repo",
            "example.com/repo.git//base?ref=main",
            "example.com/org/repo?version=v1",
            "dev.azure.com/org/_git/repo",
            "gh:org/repo",
            "//127.0.0.1/x",
            "http:127.0.0.1/x",
            "HTTPS://EXAMPLE.COM/x",
            "file:///etc/passwd",
            " http://127.0.0.1/x",
            "repo.git",
        ] {
            assert!(is_url_like(remote), "{remote}");
        }
        for local in [
            "../base",
            "deployment.yaml",
            "github-app/",
            "./overlays/prod",
            ".github/x.yaml",
            "a/.gitignore",
            "/etc/passwd",
            "c:x",
        ] {
            assert!(!is_url_like(local), "{local}");
        }
    }

    #[test]
    fn resolve_stays_in_root() {
        assert_eq!(
            resolve(Path::new("a/b"), "../c"),
            Some(PathBuf::from("a/c"))
        );
        assert_eq!(resolve(Path::new("a"), "../../x"), None);
        assert_eq!(resolve(Path::new("a"), "../a/../../x"), None);
        assert_eq!(resolve(Path::new("a"), "/etc"), None);
        assert_eq!(resolve(Path::new(""), "."), Some(PathBuf::new()));
    }
}
