//! Render errors. Every variant names the offending path relative to the source root.

use std::path::PathBuf;
use std::time::Duration;

use plumb_core::ManifestError;

/// Why rendering failed. Rendering returns nothing on error.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Reading a file or directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// Path relative to the source root.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The requested path is absolute, contains `..`, or resolves outside the source root.
    #[error("{}: path leaves the source root; use a relative path inside the repository", path.display())]
    OutsideRoot {
        /// The offending path, relative to the source root where possible.
        path: PathBuf,
    },
    /// A symbolic link was found; links are never followed, even when they point inside.
    #[error("{}: symbolic links are not allowed in manifest sources; replace the link with the file or directory itself", path.display())]
    Symlink {
        /// Path of the link relative to the source root.
        path: PathBuf,
    },
    /// The path to render is not a directory.
    #[error("{}: not a directory", path.display())]
    NotADirectory {
        /// Path relative to the source root.
        path: PathBuf,
    },
    /// One file exceeds [`crate::RenderOptions::max_file_size`].
    #[error("{}: file is {size} bytes, more than the limit of {limit} bytes", path.display())]
    FileTooLarge {
        /// Path relative to the source root.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// All files together exceed [`crate::RenderOptions::max_total_size`].
    #[error("{}: reading this file exceeds the total size limit of {limit} bytes for one render", path.display())]
    TotalTooLarge {
        /// The file (or kustomization directory) that crossed the limit.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// More objects than [`crate::RenderOptions::max_documents`].
    #[error("{}: the render produces more than {limit} objects", path.display())]
    TooManyDocuments {
        /// The file (or kustomization directory) that crossed the limit.
        path: PathBuf,
        /// The limit.
        limit: usize,
    },
    /// A file is not valid UTF-8.
    #[error("{}: not valid UTF-8 text (at byte {valid_up_to})", path.display())]
    NotUtf8 {
        /// Path relative to the source root.
        path: PathBuf,
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// The YAML (or JSON) does not parse: syntax error, duplicate key, alias budget exceeded, ...
    #[error("{}:{line}:{column}: {message}", path.display())]
    Parse {
        /// Path relative to the source root (for Kustomize output: the kustomization directory).
        path: PathBuf,
        /// 1-based line, 0 if unknown.
        line: u64,
        /// 1-based column, 0 if unknown.
        column: u64,
        /// The parser's message.
        message: String,
    },
    /// A document is not a valid Kubernetes object (missing apiVersion, kind or metadata.name).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A kustomization (or a plugin config it lists) names a URL or remote repository in a
    /// field Kustomize reads from; only files inside the source root may be read.
    #[error("{}: `{field}` names the remote location {entry:?}; Plumb lets Kustomize read only files in the repository, so vendor it into the repository and name it by a relative path", at(path, *line))]
    RemoteResource {
        /// The kustomization (or plugin config) file, relative to the source root.
        path: PathBuf,
        /// 1-based line of the first occurrence of the entry, 0 if unknown.
        line: u64,
        /// The field, e.g. `patches[0].path`.
        field: String,
        /// The offending entry.
        entry: String,
    },
    /// A kustomization (or a plugin config it lists) names an absolute path or a relative path
    /// that, resolved lexically, leaves the source root.
    #[error("{}: `{field}` names {entry:?}, which leaves the source root; use a relative path to a file inside the repository", at(path, *line))]
    ReferenceOutsideRoot {
        /// The kustomization (or plugin config) file, relative to the source root.
        path: PathBuf,
        /// 1-based line of the first occurrence of the entry, 0 if unknown.
        line: u64,
        /// The field, e.g. `generators[0]`.
        field: String,
        /// The offending entry.
        entry: String,
    },
    /// A kustomization uses a field, plugin or value the pre-build check refuses (see
    /// [`Refusal`]); Kustomize is not run.
    #[error("{}: `{field}`{}: {reason}", at(path, *line), shown_entry(entry))]
    KustomizeRefused {
        /// The kustomization (or plugin config) file, relative to the source root.
        path: PathBuf,
        /// 1-based line of the first occurrence of the field or entry, 0 if unknown.
        line: u64,
        /// The field, e.g. `helmCharts` or `transformers[1] (PatchTransformer)`.
        field: String,
        /// The offending value (shortened), empty when the field itself is refused.
        entry: String,
        /// Why, and what to do.
        reason: Refusal,
    },
    /// Neither `kustomize` nor `kubectl` is on PATH.
    #[error("{}: a kustomization was found but neither `kustomize` nor `kubectl` is on PATH", path.display())]
    KustomizeNotFound {
        /// The kustomization directory.
        path: PathBuf,
    },
    /// Kustomize exited with an error.
    #[error("{}: kustomize build failed ({status}): {stderr}", path.display())]
    KustomizeFailed {
        /// The kustomization directory.
        path: PathBuf,
        /// Exit status description.
        status: String,
        /// Kustomize's standard error (trimmed, at most a few KiB).
        stderr: String,
    },
    /// Kustomize did not finish in time and was killed.
    #[error("{}: kustomize build did not finish within {}s and was stopped", path.display(), timeout.as_secs_f64())]
    KustomizeTimeout {
        /// The kustomization directory.
        path: PathBuf,
        /// The limit.
        timeout: Duration,
    },
    /// `Chart.yaml` is not a chart's metadata (no `name`).
    #[error("{}: not a Helm chart's Chart.yaml: {message}", path.display())]
    HelmChartInvalid {
        /// The Chart.yaml, relative to the source root.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A dependency of the chart is not vendored in its `charts/` directory.
    #[error("{}: chart dependency {name:?} (repository {repository:?}) is not in {}; vendor it there as a directory or .tgz (`helm dependency build`) and commit it: Plumb never lets Helm fetch charts (a Sync's agent fetches an https:// or oci:// dependency itself before the render, with spec.helm.dependencyRepositories for credentials)", at(path, *line), charts.display())]
    HelmDependencyMissing {
        /// The Chart.yaml (or requirements.yaml) listing it.
        path: PathBuf,
        /// 1-based line of its name, 0 if unknown.
        line: u64,
        /// The dependency's name.
        name: String,
        /// Where it would come from.
        repository: String,
        /// The charts/ directory it is missing from.
        charts: PathBuf,
    },
    /// A chart's `values.schema.json` references another document (a file or URL), which
    /// Helm's schema loader would read.
    #[error("{}: `{key}` names {value:?}; a chart's values schema may only reference its own definitions (\"#/...\"), because Helm would read that file or URL: inline the referenced schema", at(path, *line))]
    HelmSchemaRef {
        /// The schema file (or the vendored chart archive holding it).
        path: PathBuf,
        /// 1-based line, 0 if unknown (inside an archive).
        line: u64,
        /// `$ref`, `$dynamicRef`, `$recursiveRef` or `$schema`.
        key: String,
        /// What it names.
        value: String,
    },
    /// Chart settings that are not usable: values that are no map, a bad release name or
    /// namespace. Never carries the values themselves.
    #[error("{}: {origin}: {message}", path.display())]
    HelmValues {
        /// The chart directory.
        path: PathBuf,
        /// Which setting (e.g. `spec.helm.values`, `release name`).
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// No `helm` binary was found.
    #[error("{}: a Helm chart was found but no `helm` binary (set it in the render options, put it next to plumb, or on PATH; `scripts/testenv build` builds the pinned one)", path.display())]
    HelmNotFound {
        /// The chart directory.
        path: PathBuf,
    },
    /// A template of the chart failed to render; Helm named the file and line.
    #[error("{}: rendering chart {} failed: {message}", at_col(file, *line, *column), chart.display())]
    HelmTemplate {
        /// The chart directory, relative to the source root.
        chart: PathBuf,
        /// The template file Helm names, relative to the source root.
        file: PathBuf,
        /// 1-based line, 0 if Helm gave none.
        line: u64,
        /// 1-based column, 0 if Helm gave none.
        column: u64,
        /// Helm's message.
        message: String,
    },
    /// `helm template` failed without naming a template.
    #[error("{}: helm template failed ({status}): {stderr}", path.display())]
    HelmFailed {
        /// The chart directory.
        path: PathBuf,
        /// Exit status description.
        status: String,
        /// Helm's standard error (trimmed, at most a few KiB).
        stderr: String,
    },
    /// `helm template` did not finish in time and was stopped.
    #[error("{}: helm template did not finish within {}s and was stopped", path.display(), timeout.as_secs_f64())]
    HelmTimeout {
        /// The chart directory.
        path: PathBuf,
        /// The limit.
        timeout: Duration,
    },
    /// A post-renderer (Kustomize over the chart's output) failed.
    #[error("{}: post-renderer {index} (kustomize) failed: {source}", path.display())]
    HelmPostRender {
        /// The chart directory.
        path: PathBuf,
        /// 0-based index of the post-renderer.
        index: usize,
        /// What Kustomize (or its pre-build check) said.
        #[source]
        source: Box<RenderError>,
    },
    /// Chart settings (values, release name, ...) were given for a directory that is no chart.
    #[error("{}: Helm settings were given, but the directory holds no Chart.yaml", path.display())]
    NotAChart {
        /// The rendered directory.
        path: PathBuf,
    },
    /// A chart below the rendered directory of plain manifests (its templates are no
    /// manifests).
    #[error("{}: a Helm chart inside a directory of plain manifests; render the chart by pointing the path at it ({}) instead", path.display(), path.display())]
    NestedChart {
        /// The chart directory.
        path: PathBuf,
    },
}

impl RenderError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            RenderError::Io { .. } => "render_io",
            RenderError::OutsideRoot { .. } => "render_outside_root",
            RenderError::Symlink { .. } => "render_symlink",
            RenderError::NotADirectory { .. } => "render_not_a_directory",
            RenderError::FileTooLarge { .. } => "render_file_too_large",
            RenderError::TotalTooLarge { .. } => "render_total_too_large",
            RenderError::TooManyDocuments { .. } => "render_too_many_documents",
            RenderError::NotUtf8 { .. } => "render_not_utf8",
            RenderError::Parse { .. } => "render_parse",
            RenderError::Manifest(_) => "render_invalid_manifest",
            RenderError::RemoteResource { .. } => "render_remote_resource",
            RenderError::ReferenceOutsideRoot { .. } => "render_outside_root",
            RenderError::KustomizeRefused { reason, .. } => reason.metric_label(),
            RenderError::KustomizeNotFound { .. } => "render_kustomize_not_found",
            RenderError::KustomizeFailed { .. } => "render_kustomize_failed",
            RenderError::KustomizeTimeout { .. } => "render_kustomize_timeout",
            RenderError::HelmChartInvalid { .. } => "render_helm_chart_invalid",
            RenderError::HelmDependencyMissing { .. } => "render_helm_dependency_missing",
            RenderError::HelmSchemaRef { .. } => "render_helm_schema_ref",
            RenderError::HelmValues { .. } => "render_helm_values",
            RenderError::HelmNotFound { .. } => "render_helm_not_found",
            RenderError::HelmTemplate { .. } => "render_helm_template",
            RenderError::HelmFailed { .. } => "render_helm_failed",
            RenderError::HelmTimeout { .. } => "render_helm_timeout",
            RenderError::HelmPostRender { source, .. } => source.metric_label(),
            RenderError::NotAChart { .. } => "render_not_a_chart",
            RenderError::NestedChart { .. } => "render_nested_chart",
        }
    }

    /// True for errors that may go away by retrying the same input (I/O hiccups, timeouts);
    /// false when the source itself must change.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RenderError::Io { .. }
                | RenderError::KustomizeTimeout { .. }
                | RenderError::HelmTimeout { .. }
        )
    }
}

/// Why [`RenderError::KustomizeRefused`] refused a kustomization. Each says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Helm chart inflation (`helmCharts`, `helmChartInflationGenerator`, a
    /// `HelmChartInflationGenerator` config): Plumb never runs Kustomize with `--enable-helm`.
    Helm,
    /// A plugin config that is not a Kustomize builtin (`apiVersion: builtin`), or that asks
    /// for a KRM function (exec or container): Plumb runs Kustomize without plugins.
    NotBuiltinPlugin,
    /// A builtin plugin kind whose fields the check does not know.
    UnknownBuiltin,
    /// A field the check does not know, so it cannot tell whether Kustomize reads a file or
    /// URL from it. Kustomize itself rejects unknown kustomization fields.
    UnknownField,
    /// A field of a kustomization listed under `generators`/`transformers`/`validators` (or
    /// reached from one) that could rewrite the plugin configs after they were checked.
    RewritesPluginConfig,
    /// A value of the wrong type where a path, list of paths or config was expected.
    Malformed(&'static str),
    /// Inline plugin config text that does not parse as YAML.
    InlineUnparsable(String),
}

impl Refusal {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Refusal::Helm => "render_kustomize_helm",
            Refusal::NotBuiltinPlugin | Refusal::UnknownBuiltin => "render_kustomize_plugin",
            Refusal::UnknownField => "render_kustomize_unknown_field",
            Refusal::RewritesPluginConfig => "render_kustomize_plugin_rewrite",
            Refusal::Malformed(_) | Refusal::InlineUnparsable(_) => "render_kustomize_malformed",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Helm => f.write_str(
                "Plumb never enables Helm in Kustomize; render the chart (helm template) and commit the output as resources",
            ),
            Refusal::NotBuiltinPlugin => f.write_str(
                "only Kustomize builtin plugin configs (apiVersion: builtin, no function annotation) are allowed, because Plumb runs Kustomize without plugins; use a builtin transformer or commit the generated output",
            ),
            Refusal::UnknownBuiltin => f.write_str(
                "Plumb does not know which files this builtin plugin reads; use one of the documented builtin kinds, or the equivalent kustomization field",
            ),
            Refusal::UnknownField => f.write_str(
                "Plumb does not know this field (as spelled) and so cannot check what Kustomize reads through it; use the field names of Kustomize v5 exactly as documented",
            ),
            Refusal::RewritesPluginConfig => f.write_str(
                "not allowed in a kustomization used as generators, transformers or validators, because it could change the plugin configs after Plumb checked them; list the plugin config files directly",
            ),
            Refusal::Malformed(expected) => write!(f, "expected {expected}"),
            Refusal::InlineUnparsable(message) => write!(
                f,
                "inline plugin config does not parse ({message}); fix the YAML or move it to a file"
            ),
        }
    }
}

/// `path:line`, or just `path` when the line is unknown.
fn at(path: &std::path::Path, line: u64) -> String {
    if line == 0 {
        path.display().to_string()
    } else {
        format!("{}:{line}", path.display())
    }
}

/// `path:line:column`, leaving out what is unknown (0).
fn at_col(path: &std::path::Path, line: u64, column: u64) -> String {
    match (line, column) {
        (0, _) => path.display().to_string(),
        (l, 0) => format!("{}:{l}", path.display()),
        (l, c) => format!("{}:{l}:{c}", path.display()),
    }
}

fn shown_entry(entry: &str) -> String {
    if entry.is_empty() {
        String::new()
    } else {
        format!(" {entry:?}")
    }
}

/// Result alias for this crate.
pub type Result<T, E = RenderError> = std::result::Result<T, E>;
