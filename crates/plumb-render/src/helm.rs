//! Helm charts, rendered with `helm template` in a sandbox.
//!
//! A directory holding `Chart.yaml` at the rendered path is a chart. Before Helm runs:
//!
//! - the chart's whole tree (its `charts/` included) may hold no symlink (Helm's loader
//!   follows them, out of the repository), no file above
//!   [`RenderOptions::max_file_size`] and no more than [`RenderOptions::max_total_size`] in all;
//! - every dependency `Chart.yaml` (or `requirements.yaml`) lists must be vendored in
//!   `charts/`, as a directory or a `.tgz` ([`RenderError::HelmDependencyMissing`]): Plumb never
//!   lets Helm fetch anything;
//! - a `values.schema.json` (also inside vendored `.tgz` charts) may only reference its own
//!   definitions (`$ref: "#/..."`): Helm's schema loader would otherwise read any local file
//!   or URL ([`RenderError::HelmSchemaRef`]);
//! - values files are checked like every path Plumb reads (relative, inside the source root,
//!   no symlink on the way, size-capped) and copied into the sandbox.
//!
//! Then `helm template` runs with a cleared environment, its config, cache, data and plugin
//! directories in a fresh temporary directory (no plugins, no repositories, no registry
//! credentials, no kubeconfig), a proxy that goes nowhere, DNS lookups off (Helm's default),
//! test hooks skipped, a timeout and an output cap. Other hooks stay in the output, marked by
//! their annotations.
//!
//! Values precedence, lowest first: the chart's `values.yaml`, [`ChartOptions::values_files`]
//! in order, then [`ChartOptions::values`] in order (Helm merges maps deeply; a later layer
//! wins; `null` removes a key).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use plumb_core::Manifest;
use serde_json::Value;

use crate::error::{RenderError, Result};
use crate::parse::{parse_manifests, parse_value};
use crate::process::{find_on_path, run_renderer};
use crate::{RenderOptions, display_path};

/// The file that makes a directory a Helm chart.
pub const CHART_FILE: &str = "Chart.yaml";

/// How to render a chart: release, values, CRDs, capabilities, post-renderers. The default
/// renders the chart as `helm template` would with no flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChartOptions {
    /// `.Release.Name` (default: the chart's name). A DNS label of at most 53 characters.
    pub release_name: Option<String>,
    /// `.Release.Namespace` (default `default`). Helm does not put objects into it; whoever
    /// applies the output puts namespaced objects without a namespace there.
    pub namespace: Option<String>,
    /// Values files, relative to the source root, in order: a later file wins.
    pub values_files: Vec<PathBuf>,
    /// Values merged after the files, in order: a later one wins.
    pub values: Vec<ValuesLayer>,
    /// Render the CRDs in the chart's `crds/` directories too.
    pub include_crds: bool,
    /// The cluster's version and API versions for `.Capabilities` (default: Helm's built-in
    /// ones, which know no custom resources).
    pub capabilities: Option<Capabilities>,
    /// Kustomize runs over the chart's output, in order.
    pub post_renderers: Vec<PostRenderer>,
    /// Let the chart's `lookup` read the cluster through this loopback proxy (Helm's
    /// `--dry-run=server`); `None`: `lookup` returns nothing, as in plain `helm template`.
    pub lookup: Option<LookupAccess>,
}

/// A read-only loopback proxy to the API server for a chart's `lookup` (plumb-kube's
/// `LookupProxy` is one): Helm gets a kubeconfig naming only `<server>/<token>`, in its
/// sandbox, removed after the render. With it, Helm takes `.Capabilities` from the cluster
/// through the proxy (`Capabilities` are not passed) and reads every rendered object once
/// (a server-side dry-run of an install that takes ownership; nothing is written), so every
/// kind the chart renders must be known to the cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct LookupAccess {
    /// `http://127.0.0.1:<port>` (anything but a loopback `http` URL is refused).
    pub server: String,
    /// The path segment every request must start with (client-go sends no credential over
    /// plain http, but keeps the server URL's path): never shown in `Debug` or messages.
    pub token: String,
}

impl std::fmt::Debug for LookupAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LookupAccess")
            .field("server", &self.server)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl LookupAccess {
    /// Whether `server` is `http://127.0.0.1:<port>` or `http://localhost:<port>` and the
    /// token a plain path segment.
    fn is_loopback(&self) -> bool {
        let loopback = ["http://127.0.0.1:", "http://localhost:"]
            .iter()
            .filter_map(|p| self.server.strip_prefix(p))
            .any(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
        loopback && !self.token.is_empty() && self.token.bytes().all(|b| b.is_ascii_alphanumeric())
    }

    /// A kubeconfig naming only the proxy, with `namespace` as the default.
    fn kubeconfig(&self, namespace: &str) -> String {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "plumb-lookup", "cluster": {
                "server": format!("{}/{}", self.server, self.token)}}],
            "users": [{"name": "plumb-lookup", "user": {}}],
            "contexts": [{"name": "plumb-lookup", "context": {
                "cluster": "plumb-lookup", "user": "plumb-lookup", "namespace": namespace}}],
            "current-context": "plumb-lookup",
        })
        .to_string()
    }
}

/// One object of values, with where it came from (for error messages; never its content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValuesLayer {
    /// Where the values came from, e.g. `spec.helm.values` or `ConfigMap app/values key
    /// values.yaml`.
    pub origin: String,
    /// A JSON object (null is ignored).
    pub values: Value,
}

impl ValuesLayer {
    /// Values read from YAML (or JSON) `text`, parsed as every manifest is (duplicate keys are
    /// errors, alias expansion is bounded); must be a map. Errors name `origin` and the line,
    /// never the content.
    pub fn from_yaml(origin: &str, text: &str) -> Result<ValuesLayer> {
        let values = parse_value(text, Path::new(origin))?;
        ValuesLayer::new(origin, values)
    }

    /// Values that must be a map (or null: no values).
    pub fn new(origin: &str, values: Value) -> Result<ValuesLayer> {
        if !values.is_object() && !values.is_null() {
            return Err(RenderError::HelmValues {
                path: PathBuf::from(origin),
                origin: "values".into(),
                message: "must be a map of values (an object)".into(),
            });
        }
        Ok(ValuesLayer {
            origin: origin.to_owned(),
            values,
        })
    }

    /// `value` set at the dotted `path` (`a.b.c`; `\.` is a dot inside a key), as Helm's
    /// `--set-json a.b.c=...` and Flux's `valuesFrom[].targetPath` do.
    pub fn at_path(origin: &str, path: &str, value: Value) -> Result<ValuesLayer> {
        let mut keys = vec![String::new()];
        let mut chars = path.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(next) => keys.last_mut().expect("never empty").push(next),
                    None => keys.last_mut().expect("never empty").push('\\'),
                },
                '.' => keys.push(String::new()),
                c => keys.last_mut().expect("never empty").push(c),
            }
        }
        if keys.iter().any(String::is_empty) {
            return Err(RenderError::HelmValues {
                path: PathBuf::from(origin),
                origin: "target path".into(),
                message: format!(
                    "{path:?} is not a dotted path of keys (like `image.tag`; `\\.` for a dot inside a key)"
                ),
            });
        }
        let mut values = value;
        for key in keys.into_iter().rev() {
            let mut map = serde_json::Map::new();
            map.insert(key, values);
            values = Value::Object(map);
        }
        Ok(ValuesLayer {
            origin: origin.to_owned(),
            values,
        })
    }
}

/// What `.Capabilities` says about the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `--kube-version`, e.g. `v1.35.4`.
    pub kube_version: Option<String>,
    /// `--api-versions`: `group/version` and `group/version/Kind` (`v1`, `apps/v1/Deployment`).
    pub api_versions: Vec<String>,
}

/// A Kustomize run over the chart's output (Flux's `postRenderers[].kustomize`): the output
/// is the only resource of a generated kustomization with these fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostRenderer {
    /// Kustomize `patches` entries (`patch` text and an optional `target` selector).
    pub patches: Vec<Value>,
    /// Kustomize `images` entries (`name`, `newName`, `newTag`, `digest`).
    pub images: Vec<Value>,
}

pub use plumb_core::object::CrdKind;

/// The kinds (one per served version) the CRDs in `crds/` of the chart `chart_dir` and of its
/// subchart directories in `charts/` define, so that a render with `lookup` (Helm's
/// server-side dry-run maps every rendered kind) can render the chart's own custom resources
/// before the cluster serves them. Best effort: files that are symlinks, larger than 4 MiB or
/// do not parse are skipped (the render itself checks the chart and names them).
pub fn chart_crd_kinds(chart_dir: &Path) -> Vec<CrdKind> {
    const MAX_FILE: u64 = 4 * 1024 * 1024;
    const MAX_CHARTS: usize = 256;
    let mut out = Vec::new();
    let mut charts = vec![chart_dir.to_path_buf()];
    let mut seen = 0;
    let plain_dir = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    while let Some(dir) = charts.pop() {
        seen += 1;
        if seen > MAX_CHARTS {
            break;
        }
        let crds = dir.join("crds");
        let mut files: Vec<PathBuf> = Vec::new();
        let mut stack = vec![crds.clone()];
        while let Some(d) = stack.pop() {
            if !plain_dir(&d) {
                continue;
            }
            let Ok(entries) = fs::read_dir(&d) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(meta) = fs::symlink_metadata(&path) else {
                    continue;
                };
                if meta.is_dir() {
                    stack.push(path);
                } else if meta.is_file()
                    && meta.len() <= MAX_FILE
                    && path
                        .extension()
                        .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
                {
                    files.push(path);
                }
            }
        }
        files.sort();
        for file in files {
            let Ok(text) = fs::read_to_string(&file) else {
                continue;
            };
            let Ok(docs) = crate::parse::parse_values(&text, &file, 1000) else {
                continue;
            };
            for doc in docs {
                out.extend(crd_kinds(&doc));
            }
        }
        if let Ok(entries) = fs::read_dir(dir.join("charts")) {
            for entry in entries.flatten() {
                let path = entry.path();
                if plain_dir(&path) && path.join(CHART_FILE).is_file() {
                    charts.push(path);
                }
            }
        }
    }
    out
}

/// The kinds a `CustomResourceDefinition` document defines, one per served version.
fn crd_kinds(doc: &Value) -> Vec<CrdKind> {
    if doc["kind"] != "CustomResourceDefinition"
        || !doc["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("apiextensions.k8s.io/"))
    {
        return Vec::new();
    }
    let spec = &doc["spec"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let (group, kind, plural) = (
        text(&spec["group"]),
        text(&spec["names"]["kind"]),
        text(&spec["names"]["plural"]),
    );
    if group.is_empty() || kind.is_empty() || plural.is_empty() {
        return Vec::new();
    }
    let singular = spec["names"]["singular"]
        .as_str()
        .map_or_else(|| kind.to_ascii_lowercase(), str::to_owned);
    let namespaced = spec["scope"] != "Cluster";
    spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"].as_bool().unwrap_or(true))
        .filter_map(|v| v["name"].as_str())
        .map(|version| CrdKind {
            group: group.clone(),
            version: version.to_owned(),
            kind: kind.clone(),
            plural: plural.clone(),
            singular: singular.clone(),
            namespaced,
        })
        .collect()
}

/// Whether `dir` holds a chart (a `Chart.yaml`, which may be a symlink: refused later).
pub(crate) fn is_chart(dir: &Path) -> bool {
    fs::symlink_metadata(dir.join(CHART_FILE)).is_ok()
}

/// What the chart's tree holds that the checks need.
#[derive(Default)]
struct Tree {
    /// `values.schema.json` files, relative to the source root.
    schemas: Vec<PathBuf>,
    /// `.tgz` files anywhere below a `charts/` directory.
    archives: Vec<PathBuf>,
}

/// Renders the chart in `rel` (relative to the canonical `root`); returns the manifests and
/// the bytes of output read.
pub(crate) fn render(
    root: &Path,
    rel: &Path,
    opts: &RenderOptions,
    max_bytes: u64,
    max_documents: usize,
) -> Result<(Vec<Manifest>, u64)> {
    let chart = display_path(rel);
    let chart_opts = &opts.chart;
    let tree = scan(root, rel, opts)?;
    let chart_file = rel.join(CHART_FILE);
    let chart_text = read_text(root, &chart_file, opts.max_file_size)?;
    let meta = parse_value(&chart_text, &chart_file)?;
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| RenderError::HelmChartInvalid {
            path: chart_file.clone(),
            message: "`name` is missing or not a string".into(),
        })?
        .to_owned();
    check_dependencies(root, rel, &chart_text, &meta, opts)?;
    for schema in &tree.schemas {
        let text = read_text(root, schema, opts.max_file_size)?;
        if let Some((line, key, value)) = schema_reference(&text) {
            return Err(RenderError::HelmSchemaRef {
                path: schema.clone(),
                line,
                key,
                value,
            });
        }
    }
    for archive in &tree.archives {
        check_archive(root, archive, opts)?;
    }

    let release = chart_opts
        .release_name
        .clone()
        .unwrap_or_else(|| name.clone());
    check_name(&chart, "release name", &release, 53)?;
    let namespace = chart_opts
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    check_name(&chart, "namespace", &namespace, 63)?;

    let sandbox = tempfile::Builder::new()
        .prefix("plumb-helm-")
        .tempdir()
        .map_err(|source| RenderError::Io {
            path: chart.clone(),
            source,
        })?;
    let sb = sandbox.path();
    let io = |source| RenderError::Io {
        path: chart.clone(),
        source,
    };
    for dir in ["plugins", "config", "cache", "data", "tmp"] {
        fs::create_dir(sb.join(dir)).map_err(io)?;
    }

    let bin = helm_binary(opts).ok_or_else(|| RenderError::HelmNotFound {
        path: chart.clone(),
    })?;
    let mut cmd = Command::new(bin);
    cmd.arg("template")
        .arg(&release)
        .arg(root.join(rel))
        .arg(format!("--namespace={namespace}"))
        // Tests are run by `helm test`, never applied.
        .arg("--skip-tests");
    if chart_opts.include_crds {
        cmd.arg("--include-crds");
    }
    // Each values file the sandbox holds, with what to call it in messages.
    let mut shown_as = Vec::new();
    for (i, file) in chart_opts.values_files.iter().enumerate() {
        let rel_file = checked_relative(root, file)?;
        let text = read_bytes(root, &rel_file, opts.max_file_size)?;
        let copy = sb.join(format!("values-{i}.yaml"));
        fs::write(&copy, text).map_err(io)?;
        cmd.arg(format!("--values={}", copy.display()));
        shown_as.push((copy.display().to_string(), rel_file.display().to_string()));
    }
    for (i, layer) in chart_opts.values.iter().enumerate() {
        if layer.values.is_null() {
            continue;
        }
        if !layer.values.is_object() {
            return Err(RenderError::HelmValues {
                path: chart.clone(),
                origin: layer.origin.clone(),
                message: "must be a map of values (an object)".into(),
            });
        }
        let copy = sb.join(format!("values-inline-{i}.json"));
        let json = serde_json::to_vec(&layer.values).expect("a JSON value serialises");
        fs::write(&copy, json).map_err(io)?;
        cmd.arg(format!("--values={}", copy.display()));
        shown_as.push((copy.display().to_string(), layer.origin.clone()));
    }
    let kubeconfig = sb.join("config/kubeconfig");
    if let Some(lookup) = &chart_opts.lookup {
        if !lookup.is_loopback() {
            return Err(RenderError::HelmValues {
                path: chart.clone(),
                origin: "lookup".into(),
                message: format!(
                    "the lookup proxy {:?} is not a loopback http URL with a token",
                    lookup.server
                ),
            });
        }
        write_private(&kubeconfig, lookup.kubeconfig(&namespace).as_bytes()).map_err(io)?;
        // Server mode: `lookup` reads through the kubeconfig; the install is only a dry-run
        // (nothing written), which takes ownership instead of failing on objects that exist
        // without Helm's labels (Plumb applied them), and skips the OpenAPI download.
        cmd.arg("--dry-run=server")
            .arg("--take-ownership")
            .arg("--disable-openapi-validation");
    } else if let Some(caps) = &chart_opts.capabilities {
        if let Some(v) = &caps.kube_version {
            cmd.arg(format!("--kube-version={v}"));
        }
        for v in &caps.api_versions {
            if v.is_empty() || v.contains([',', ' ']) || v.starts_with('-') {
                continue;
            }
            cmd.arg(format!("--api-versions={v}"));
        }
    }
    let nowhere = "http://127.0.0.1:9";
    cmd.current_dir(sb)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", sb)
        .env("TMPDIR", sb.join("tmp"))
        .env("HELM_PLUGINS", sb.join("plugins"))
        .env("HELM_NO_PLUGINS", "1")
        .env("HELM_CONFIG_HOME", sb.join("config"))
        .env("HELM_CACHE_HOME", sb.join("cache"))
        .env("HELM_DATA_HOME", sb.join("data"))
        .env(
            "HELM_REPOSITORY_CONFIG",
            sb.join("config/repositories.yaml"),
        )
        .env("HELM_REPOSITORY_CACHE", sb.join("cache/repository"))
        .env("HELM_REGISTRY_CONFIG", sb.join("config/registry.json"))
        .env("KUBECONFIG", &kubeconfig)
        // Helm reads each rendered object once in server mode: not at client-go's 5 per second.
        .env("HELM_QPS", "50")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("HTTP_PROXY", nowhere)
        .env("HTTPS_PROXY", nowhere)
        .env("ALL_PROXY", nowhere)
        .env("http_proxy", nowhere)
        .env("https_proxy", nowhere);
    let (status, stdout, stderr) =
        run_renderer(&mut cmd, max_bytes, opts, &chart, |path, timeout| {
            RenderError::HelmTimeout { path, timeout }
        })?;
    if !status.success() {
        // Helm names the copies in the sandbox and absolute paths: say what the user knows.
        let mut stderr = String::from_utf8_lossy(&stderr).into_owned();
        for (copy, origin) in &shown_as {
            stderr = stderr.replace(copy.as_str(), origin);
        }
        stderr = stderr.replace(&format!("{}/", root.display()), "");
        if let Some(lookup) = chart_opts.lookup.as_ref().filter(|l| !l.token.is_empty()) {
            stderr = stderr.replace(&lookup.token, "<token>");
        }
        if chart_opts.lookup.is_some() && stderr.contains("resource mapping not found") {
            stderr.push_str(
                "\nwith lookup, Helm resolves every kind the chart renders on the cluster (or \
                 in a CRD of the chart's crds/ directories): apply the CRDs first (e.g. a Sync \
                 of their own, named in dependsOn), or move them into crds/",
            );
        }
        return Err(helm_failure(rel, &name, &status.to_string(), &stderr));
    }
    let bytes = stdout.len() as u64;
    let text = String::from_utf8(stdout).map_err(|e| RenderError::NotUtf8 {
        path: chart.clone(),
        valid_up_to: e.utf8_error().valid_up_to(),
    })?;
    if chart_opts.post_renderers.is_empty() {
        let manifests = parse_output(&text, rel, &name, max_documents)?;
        return Ok((manifests, bytes));
    }
    // Parsed first: a broken template names its file even when post-rendered.
    parse_output(&text, rel, &name, max_documents)?;
    let mut text = text;
    let mut manifests = Vec::new();
    for (i, post) in chart_opts.post_renderers.iter().enumerate() {
        let dir = sb.join(format!("post-render-{i}"));
        fs::create_dir(&dir).map_err(io)?;
        fs::write(dir.join("helm-output.yaml"), &text).map_err(io)?;
        let mut k = serde_json::Map::new();
        k.insert("resources".into(), Value::from(vec!["helm-output.yaml"]));
        if !post.patches.is_empty() {
            k.insert("patches".into(), Value::from(post.patches.clone()));
        }
        if !post.images.is_empty() {
            k.insert("images".into(), Value::from(post.images.clone()));
        }
        let k = serde_json::to_string_pretty(&Value::Object(k)).expect("JSON serialises");
        fs::write(dir.join("kustomization.yaml"), k).map_err(io)?;
        let dir = fs::canonicalize(&dir).map_err(io)?;
        let (out, _) = crate::kustomize::build(&dir, Path::new(""), opts, max_bytes, max_documents)
            .map_err(|source| RenderError::HelmPostRender {
                path: chart.clone(),
                index: i,
                source: Box::new(source),
            })?;
        text = out
            .iter()
            .map(|m| format!("---\n{}", plumb_core::to_yaml(&m.object)))
            .collect();
        manifests = out;
    }
    for (document, m) in manifests.iter_mut().enumerate() {
        m.source = Some(plumb_core::SourceLocation {
            file: chart.clone(),
            line: m.source.as_ref().map_or(0, |s| s.line),
            document,
        });
    }
    Ok((manifests, bytes))
}

/// Writes `bytes` to a new file only its owner may read.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}

/// The helm binary: [`RenderOptions::helm`], else `helm` next to the running executable, else
/// `helm` on PATH.
fn helm_binary(opts: &RenderOptions) -> Option<PathBuf> {
    if let Some(bin) = &opts.helm {
        return Some(bin.clone());
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("helm")))
        .filter(|p| p.is_file());
    beside.or_else(|| find_on_path("helm"))
}

/// A release name or namespace: a DNS label (what Helm and the API server accept), and never
/// something Helm could read as a flag.
fn check_name(chart: &Path, what: &'static str, value: &str, max: usize) -> Result<()> {
    // Helm allows dots in release names (a DNS subdomain); namespaces are DNS labels.
    let dots = what == "release name";
    let ok = !value.is_empty()
        && value.len() <= max
        && value.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        && (dots || !value.contains('.'));
    if ok {
        Ok(())
    } else {
        Err(RenderError::HelmValues {
            path: chart.to_owned(),
            origin: what.into(),
            message: format!(
                "{value:?} is not a valid {what}: use lowercase letters, digits and '-'{}, at most {max} characters, starting and ending with a letter or digit",
                if dots { " ('.' between parts)" } else { "" }
            ),
        })
    }
}

/// Walks the chart's tree: no symlinks, file sizes and the total capped; notes schemas and
/// vendored archives.
fn scan(root: &Path, rel: &Path, opts: &RenderOptions) -> Result<Tree> {
    let mut tree = Tree::default();
    let mut total = 0u64;
    let mut stack = vec![rel.to_owned()];
    while let Some(dir) = stack.pop() {
        let io = |p: &Path| {
            let p = display_path(p);
            move |source| RenderError::Io { path: p, source }
        };
        let entries = fs::read_dir(root.join(&dir)).map_err(io(&dir))?;
        for entry in entries {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name();
            if name == OsStr::new(".git") {
                continue;
            }
            let child = dir.join(&name);
            let meta = fs::symlink_metadata(root.join(&child)).map_err(io(&child))?;
            if meta.file_type().is_symlink() {
                return Err(RenderError::Symlink { path: child });
            }
            if meta.is_dir() {
                stack.push(child);
                continue;
            }
            if meta.len() > opts.max_file_size {
                return Err(RenderError::FileTooLarge {
                    path: child,
                    size: meta.len(),
                    limit: opts.max_file_size,
                });
            }
            total += meta.len();
            if total > opts.max_total_size {
                return Err(RenderError::TotalTooLarge {
                    path: child,
                    limit: opts.max_total_size,
                });
            }
            if name == OsStr::new("values.schema.json") {
                tree.schemas.push(child);
            } else if Path::new(&name).extension() == Some(OsStr::new("tgz"))
                && dir.components().any(|c| c.as_os_str() == "charts")
            {
                tree.archives.push(child);
            }
        }
    }
    tree.schemas.sort();
    tree.archives.sort();
    Ok(tree)
}

fn read_bytes(root: &Path, rel: &Path, limit: u64) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    fs::File::open(root.join(rel))
        .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
        .map_err(|source| RenderError::Io {
            path: display_path(rel),
            source,
        })?;
    if bytes.len() as u64 > limit {
        return Err(RenderError::FileTooLarge {
            path: rel.to_owned(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

fn read_text(root: &Path, rel: &Path, limit: u64) -> Result<String> {
    String::from_utf8(read_bytes(root, rel, limit)?).map_err(|e| RenderError::NotUtf8 {
        path: rel.to_owned(),
        valid_up_to: e.utf8_error().valid_up_to(),
    })
}

/// A file named relative to the source root: no absolute path, no `..`, no symlink on the
/// way, a regular file. Returns it normalised.
fn checked_relative(root: &Path, file: &Path) -> Result<PathBuf> {
    let mut rel = PathBuf::new();
    for c in file.components() {
        match c {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            _ => {
                return Err(RenderError::OutsideRoot {
                    path: file.to_owned(),
                });
            }
        }
        let meta = fs::symlink_metadata(root.join(&rel)).map_err(|source| RenderError::Io {
            path: rel.clone(),
            source,
        })?;
        if meta.file_type().is_symlink() {
            return Err(RenderError::Symlink { path: rel });
        }
    }
    if !root.join(&rel).is_file() {
        return Err(RenderError::Io {
            path: display_path(&rel),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    Ok(rel)
}

/// Every dependency of the chart must be vendored in `charts/`: a directory whose `Chart.yaml`
/// has its name, or an archive `<name>-<version>.tgz`.
fn check_dependencies(
    root: &Path,
    rel: &Path,
    chart_text: &str,
    meta: &Value,
    opts: &RenderOptions,
) -> Result<()> {
    let mut listed = Vec::new();
    let mut collect = |file: PathBuf, text: &str, doc: &Value| {
        for dep in doc
            .get("dependencies")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(name) = dep.get("name").and_then(Value::as_str) {
                let line = text
                    .lines()
                    .position(|l| {
                        l.contains("name:")
                            && l.trim_end().trim_end_matches(['"', '\'']).ends_with(name)
                    })
                    .map_or(0, |i| i as u64 + 1);
                let repository = dep
                    .get("repository")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                listed.push((file.clone(), line, name.to_owned(), repository));
            }
        }
    };
    collect(rel.join(CHART_FILE), chart_text, meta);
    // apiVersion v1 charts list them in requirements.yaml.
    let requirements = rel.join("requirements.yaml");
    if root.join(&requirements).is_file() {
        let text = read_text(root, &requirements, opts.max_file_size)?;
        let doc = parse_value(&text, &requirements)?;
        collect(requirements, &text, &doc);
    }
    if listed.is_empty() {
        return Ok(());
    }
    let charts = rel.join("charts");
    let mut vendored_dirs = BTreeSet::new();
    let mut archives = Vec::new();
    if let Ok(entries) = fs::read_dir(root.join(&charts)) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = charts.join(&name);
            if root.join(&path).is_dir() {
                let file = path.join(CHART_FILE);
                if root.join(&file).is_file() {
                    let text = read_text(root, &file, opts.max_file_size)?;
                    let doc = parse_value(&text, &file)?;
                    if let Some(n) = doc.get("name").and_then(Value::as_str) {
                        vendored_dirs.insert(n.to_owned());
                    }
                }
            } else if let Some(stem) = name.strip_suffix(".tgz") {
                archives.push(stem.to_owned());
            }
        }
    }
    for (file, line, name, repository) in listed {
        let in_archive = archives.iter().any(|stem| {
            stem.strip_prefix(name.as_str())
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|version| {
                    version.starts_with(|c: char| c.is_ascii_digit() || c == 'v')
                })
        });
        if !vendored_dirs.contains(&name) && !in_archive {
            return Err(RenderError::HelmDependencyMissing {
                path: file,
                line,
                name,
                repository,
                charts: display_path(&charts),
            });
        }
    }
    Ok(())
}

/// The first reference in a JSON schema text that would make Helm's schema loader read
/// something else than the schema itself: `$ref`/`$dynamicRef`/`$recursiveRef` not starting
/// with `#`, or a `$schema` that is not a json-schema.org meta-schema (those are built in).
/// Returns (1-based line, key, value).
fn schema_reference(text: &str) -> Option<(u64, String, String)> {
    for key in ["$ref", "$dynamicRef", "$recursiveRef", "$schema"] {
        let quoted = format!("\"{key}\"");
        let mut from = 0;
        while let Some(at) = text[from..].find(&quoted) {
            let start = from + at;
            from = start + quoted.len();
            let rest = text[from..].trim_start();
            let Some(rest) = rest.strip_prefix(':') else {
                continue;
            };
            let rest = rest.trim_start();
            let value = match rest.strip_prefix('"') {
                Some(s) => {
                    let mut out = String::new();
                    let mut escaped = false;
                    for c in s.chars() {
                        match (escaped, c) {
                            (false, '\\') => escaped = true,
                            (false, '"') => break,
                            _ => {
                                escaped = false;
                                out.push(c);
                            }
                        }
                    }
                    out
                }
                // Not a string: the loader cannot follow it.
                None => continue,
            };
            let allowed = if key == "$schema" {
                value.starts_with("http://json-schema.org/")
                    || value.starts_with("https://json-schema.org/")
            } else {
                value.starts_with('#')
            };
            if !allowed {
                let line = text[..start].matches('\n').count() as u64 + 1;
                return Some((line, key.to_owned(), value));
            }
        }
    }
    None
}

/// Checks a vendored chart archive: decompressed within the total size limit, no schema in
/// it references anything outside itself. The tar stream is scanned as text, which finds
/// every schema reference whatever file it is in (a conservative check).
fn check_archive(root: &Path, rel: &Path, opts: &RenderOptions) -> Result<()> {
    let bytes = read_bytes(root, rel, opts.max_file_size)?;
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(bytes.as_slice())
        .take(opts.max_total_size + 1)
        .read_to_end(&mut tar)
        .map_err(|source| RenderError::Io {
            path: rel.to_owned(),
            source,
        })?;
    if tar.len() as u64 > opts.max_total_size {
        return Err(RenderError::TotalTooLarge {
            path: rel.to_owned(),
            limit: opts.max_total_size,
        });
    }
    let text = String::from_utf8_lossy(&tar);
    if let Some((_, key, value)) = schema_reference(&text) {
        return Err(RenderError::HelmSchemaRef {
            path: rel.to_owned(),
            line: 0,
            key,
            value,
        });
    }
    Ok(())
}

/// Splits Helm's output at its `# Source: <chart>/<file>` comments and parses each template's
/// part, so that every object (and every error) names its template, relative to the source
/// root.
fn parse_output(text: &str, rel: &Path, name: &str, max_documents: usize) -> Result<Vec<Manifest>> {
    let mut parts: Vec<(PathBuf, String)> = Vec::new();
    let mut current = (display_path(rel), String::new());
    for line in text.split_inclusive('\n') {
        if let Some(source) = line.trim_end().strip_prefix("# Source: ") {
            let file = template_path(rel, name, source);
            let done = std::mem::replace(&mut current, (file, String::new()));
            if !done.1.trim().is_empty() {
                parts.push(done);
            }
            continue;
        }
        current.1.push_str(line);
    }
    if !current.1.trim().is_empty() {
        parts.push(current);
    }
    // A template rendered several times (a range) stays one file with several documents.
    let mut out: Vec<Manifest> = Vec::new();
    let too_many = || RenderError::TooManyDocuments {
        path: display_path(rel),
        limit: max_documents,
    };
    for (file, part) in parts {
        // Each part may hold the whole budget (the parser's own budget error would not say
        // which limit); the total is checked after each.
        let mut ms = parse_manifests(&part, &file, max_documents).map_err(|e| match e {
            RenderError::TooManyDocuments { .. } => too_many(),
            other => other,
        })?;
        if out.len() + ms.len() > max_documents {
            return Err(too_many());
        }
        let before = out
            .iter()
            .filter(|m| m.source.as_ref().is_some_and(|s| s.file == file))
            .count();
        for (i, m) in ms.iter_mut().enumerate() {
            if let Some(s) = m.source.as_mut() {
                s.document = before + i;
            }
        }
        out.extend(ms);
    }
    Ok(out)
}

/// `mychart/templates/x.yaml` (as Helm names files) -> `<rel>/templates/x.yaml`.
fn template_path(rel: &Path, name: &str, helm_path: &str) -> PathBuf {
    let inner = helm_path
        .strip_prefix(name)
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or(helm_path);
    let mut out = rel.to_owned();
    for part in Path::new(inner).components() {
        if let Component::Normal(p) = part {
            out.push(p);
        }
    }
    display_path(&out)
}

/// Turns Helm's error output into an error naming the template file and line where Helm says.
fn helm_failure(rel: &Path, name: &str, status: &str, stderr: &str) -> RenderError {
    let message = stderr
        .lines()
        .map(|l| l.strip_prefix("Error: ").unwrap_or(l).trim_end())
        .filter(|l| !l.is_empty() && !l.starts_with("Use --debug flag"))
        .collect::<Vec<_>>()
        .join("\n");
    let located = locate(&message, name);
    let missing_dependency = message.contains("missing in charts/ directory");
    match located {
        Some((file, line, column)) => RenderError::HelmTemplate {
            chart: display_path(rel),
            file: template_path(rel, name, &file),
            line,
            column,
            message,
        },
        None if missing_dependency => RenderError::HelmFailed {
            path: display_path(rel),
            status: status.to_owned(),
            stderr: format!(
                "{message}; vendor every dependency into charts/ (helm dependency build): Plumb never lets Helm fetch charts"
            ),
        },
        None => RenderError::HelmFailed {
            path: display_path(rel),
            status: status.to_owned(),
            stderr: message,
        },
    }
}

/// Finds the first `<chart>/<path>:<line>[:<column>]` (or `<chart>/<path>` alone) that Helm
/// names in `message`.
fn locate(message: &str, name: &str) -> Option<(String, u64, u64)> {
    let prefix = format!("{name}/");
    for token in
        message.split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | '"' | '<' | '>'))
    {
        let token = token.trim_end_matches([',', ';']);
        if !token.starts_with(&prefix) {
            continue;
        }
        let mut parts = token.split(':');
        let file = parts.next().unwrap_or_default();
        if !file.contains('.') {
            continue;
        }
        let line = parts.next().and_then(|l| l.parse().ok()).unwrap_or(0);
        let column = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
        return Some((file.to_owned(), line, column));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_template_errors() {
        let m = "template: app/templates/x.yaml:12:3: executing \"app/templates/x.yaml\" at <.Values.a.b>: nil pointer";
        assert_eq!(
            locate(m, "app"),
            Some(("app/templates/x.yaml".into(), 12, 3))
        );
        let m = "execution error at (app/templates/cm.yaml:5:12): image.tag is required";
        assert_eq!(
            locate(m, "app"),
            Some(("app/templates/cm.yaml".into(), 5, 12))
        );
        let m = "parse error at (app/templates/cm.yaml:3): function \"nope\" not defined";
        assert_eq!(
            locate(m, "app"),
            Some(("app/templates/cm.yaml".into(), 3, 0))
        );
        let m = "YAML parse error on app/templates/cm.yaml: error converting YAML to JSON";
        assert_eq!(
            locate(m, "app"),
            Some(("app/templates/cm.yaml".into(), 0, 0))
        );
        assert_eq!(locate("something else entirely", "app"), None);
        assert_eq!(
            template_path(
                Path::new("charts/web"),
                "app",
                "app/charts/sub/templates/a.yaml"
            ),
            PathBuf::from("charts/web/charts/sub/templates/a.yaml")
        );
    }

    #[test]
    fn release_names_and_namespaces() {
        let chart = Path::new("app");
        assert!(check_name(chart, "release name", "web.prod", 53).is_ok());
        assert!(check_name(chart, "namespace", "web.prod", 63).is_err());
        for bad in [
            "",
            "-web",
            "web-",
            "Web",
            "a..b",
            ".a",
            "--set=x",
            &"a".repeat(54),
        ] {
            assert!(check_name(chart, "release name", bad, 53).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_errors_never_carry_the_values() {
        for text in [
            "password: [s3cr3t-value\n",
            "password: s3cr3t-value\npassword: s3cr3t-value\n",
            "- s3cr3t-value\n",
            "password: \"s3cr3t-value\n",
            "password: {a: s3cr3t-value\n",
        ] {
            let e = ValuesLayer::from_yaml("Secret ns/db key values.yaml", text).unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("s3cr3t"), "{shown}");
            assert!(shown.contains("Secret ns/db key values.yaml"), "{shown}");
        }
    }

    #[test]
    fn values_at_a_dotted_path() {
        let v = ValuesLayer::at_path("o", r"a.b\.c.d", Value::from("x")).unwrap();
        assert_eq!(v.values, serde_json::json!({"a": {"b.c": {"d": "x"}}}));
        assert!(ValuesLayer::at_path("o", "a..b", Value::Null).is_err());
        assert!(ValuesLayer::at_path("o", "", Value::Null).is_err());
        assert!(ValuesLayer::from_yaml("o", "- 1\n").is_err());
        let e =
            ValuesLayer::from_yaml("ConfigMap x/y key values.yaml", "a: 1\na: 2\n").unwrap_err();
        assert!(
            e.to_string().starts_with("ConfigMap x/y key values.yaml:2"),
            "{e}"
        );
    }

    #[test]
    fn schema_references_outside_the_schema_are_found() {
        let ok = r##"{"$schema": "http://json-schema.org/draft-07/schema#", "properties": {"a": {"$ref": "#/definitions/a"}}}"##;
        assert_eq!(schema_reference(ok), None);
        let file = "{\n  \"properties\": {\n    \"a\": {\"$ref\" : \"file:///etc/passwd\"}}}";
        assert_eq!(
            schema_reference(file),
            Some((3, "$ref".into(), "file:///etc/passwd".into()))
        );
        let url = r#"{"$schema": "https://example.com/meta"}"#;
        assert_eq!(
            schema_reference(url),
            Some((1, "$schema".into(), "https://example.com/meta".into()))
        );
        let relative = r#"{"$dynamicRef": "other.json"}"#;
        assert!(schema_reference(relative).is_some());
    }

    #[test]
    fn output_is_split_per_template() {
        let out = "---\n# Source: app/templates/a.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\n# Source: app/templates/b.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n---\n# Source: app/templates/a.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a2\n";
        let ms = parse_output(out, Path::new("deploy/app"), "app", 10).unwrap();
        let sources: Vec<_> = ms
            .iter()
            .map(|m| {
                let s = m.source.as_ref().unwrap();
                (s.file.display().to_string(), s.document)
            })
            .collect();
        assert_eq!(
            sources,
            [
                ("deploy/app/templates/a.yaml".to_owned(), 0),
                ("deploy/app/templates/b.yaml".to_owned(), 0),
                ("deploy/app/templates/a.yaml".to_owned(), 1),
            ]
        );
        let bad = "---\n# Source: app/templates/a.yaml\napiVersion: v1\nkind: ConfigMap\n";
        let e = parse_output(bad, Path::new("app"), "app", 10).unwrap_err();
        assert!(e.to_string().starts_with("app/templates/a.yaml:"), "{e}");
    }
}
