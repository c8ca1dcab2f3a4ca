//! Renders a directory of manifests (plain YAML, Kustomize, Helm charts) safely.
//!
//! [`render`] turns a directory into [`Manifest`]s: plain `.yaml`/`.yml`/`.json` files are read
//! recursively in sorted order; a directory holding a kustomization is built with Kustomize
//! instead, and a chart (`Chart.yaml` at the rendered path) with `helm template` (see
//! [`ChartOptions`]). Symlinks and paths out of the root are refused, sizes and counts are capped, and
//! every error names the file (relative to the root) and line. Nothing partial is returned.

#![warn(clippy::unwrap_used)]

mod error;
mod helm;
mod kustomize;
mod parse;
mod process;

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use plumb_core::Manifest;

pub use error::{Refusal, RenderError, Result};
pub use helm::{
    CHART_FILE, Capabilities, ChartOptions, CrdKind, LookupAccess, PostRenderer, ValuesLayer,
    chart_crd_kinds,
};
pub use kustomize::{
    KUSTOMIZATION_FILES, KustomizationRole, Reference, ReferenceKind, check_kustomization_text,
    check_kustomization_text_as, check_plugin_config_text,
};

/// Limits for one render. The defaults suit a typical GitOps repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderOptions {
    /// Largest single manifest file, in bytes (default 5 MiB).
    pub max_file_size: u64,
    /// Largest total of all files read plus Kustomize output, in bytes (default 50 MiB).
    pub max_total_size: u64,
    /// Most objects one render may produce, after flattening Lists (default 10,000).
    pub max_documents: usize,
    /// Longest a Kustomize build or `helm template` may run before it is killed (default 60 s).
    pub timeout: Duration,
    /// A `kustomize` binary to run as `<path> build`, instead of looking up `kustomize` and
    /// then `kubectl` (as `kubectl kustomize`) on PATH.
    pub kustomize: Option<PathBuf>,
    /// A `helm` binary to run as `<path> template`, instead of `helm` next to the running
    /// executable, then on PATH.
    pub helm: Option<PathBuf>,
    /// How to render the path when it is a Helm chart. Anything but the default for a path
    /// that is no chart is an error ([`RenderError::NotAChart`]).
    pub chart: ChartOptions,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            max_file_size: 5 * 1024 * 1024,
            max_total_size: 50 * 1024 * 1024,
            max_documents: 10_000,
            timeout: Duration::from_secs(60),
            kustomize: None,
            helm: None,
            chart: ChartOptions::default(),
        }
    }
}

/// Renders every manifest under `dir` (which is also the root that nothing may leave).
///
/// Equivalent to `render_path(dir, Path::new(""), opts)`.
pub fn render(dir: &Path, opts: &RenderOptions) -> Result<Vec<Manifest>> {
    render_path(dir, Path::new(""), opts)
}

/// Renders the directory `path` (relative, no `..`) inside the source root `root`, for a
/// Sync's `spec.path` inside a checkout. No component of `path` may be a symlink, and
/// Kustomize bases must stay inside `root`. Error paths and manifest sources are relative
/// to `root`.
///
/// Order: entries sorted by name, depth first; documents in file order. Hidden entries
/// (names starting with `.`, such as `.git`) are skipped. A directory containing
/// `kustomization.yaml`, `kustomization.yml` or `Kustomization` is built with
/// `kustomize build` (or `kubectl kustomize`) and its files are not read directly. When
/// `path` itself holds `Chart.yaml`, it is rendered with `helm template` as `opts.chart` says
/// (a chart wins over a kustomization in the same directory); a chart deeper down is an
/// error ([`RenderError::NestedChart`]).
pub fn render_path(root: &Path, path: &Path, opts: &RenderOptions) -> Result<Vec<Manifest>> {
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| RenderError::Io { path: p, source }
    };
    let root_meta = fs::symlink_metadata(root).map_err(io(Path::new(".")))?;
    if root_meta.file_type().is_symlink() {
        return Err(RenderError::Symlink { path: ".".into() });
    }
    let root = fs::canonicalize(root).map_err(io(Path::new(".")))?;
    let mut rel = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            _ => {
                return Err(RenderError::OutsideRoot {
                    path: path.to_owned(),
                });
            }
        }
        let meta = fs::symlink_metadata(root.join(&rel)).map_err(io(&rel))?;
        if meta.file_type().is_symlink() {
            return Err(RenderError::Symlink { path: rel });
        }
    }
    if !root.join(&rel).is_dir() {
        return Err(RenderError::NotADirectory { path: rel });
    }
    if helm::is_chart(&root.join(&rel)) {
        let (manifests, _) =
            helm::render(&root, &rel, opts, opts.max_total_size, opts.max_documents)?;
        return Ok(manifests);
    }
    if opts.chart != ChartOptions::default() {
        return Err(RenderError::NotAChart {
            path: display_path(&rel),
        });
    }
    let mut walker = Walker {
        root,
        opts,
        total: 0,
        out: Vec::new(),
    };
    walker.dir(&rel)?;
    Ok(walker.out)
}

struct Walker<'a> {
    root: PathBuf,
    opts: &'a RenderOptions,
    total: u64,
    out: Vec<Manifest>,
}

fn is_manifest_file(name: &OsStr) -> bool {
    Path::new(name)
        .extension()
        .and_then(OsStr::to_str)
        .is_some_and(|ext| matches!(ext, "yaml" | "yml" | "json"))
}

impl Walker<'_> {
    fn io(rel: &Path) -> impl FnOnce(std::io::Error) -> RenderError + '_ {
        move |source| RenderError::Io {
            path: display_path(rel),
            source,
        }
    }

    /// Checks that `rel` is no symlink and resolves inside the root; returns the full path.
    fn checked(&self, rel: &Path) -> Result<(PathBuf, fs::Metadata)> {
        let full = self.root.join(rel);
        let meta = fs::symlink_metadata(&full).map_err(Self::io(rel))?;
        if meta.file_type().is_symlink() {
            return Err(RenderError::Symlink {
                path: display_path(rel),
            });
        }
        let canonical = fs::canonicalize(&full).map_err(Self::io(rel))?;
        if !canonical.starts_with(&self.root) {
            return Err(RenderError::OutsideRoot {
                path: display_path(rel),
            });
        }
        Ok((full, meta))
    }

    /// Parsing sees only the remaining document budget; report the configured limit.
    fn with_total_limit(&self, e: RenderError) -> RenderError {
        match e {
            RenderError::TooManyDocuments { path, .. } => RenderError::TooManyDocuments {
                path,
                limit: self.opts.max_documents,
            },
            other => other,
        }
    }

    fn dir(&mut self, rel: &Path) -> Result<()> {
        let (full, _) = self.checked(rel)?;
        if kustomize::find_kustomization(&full).is_some() {
            let manifests = kustomize::build(
                &self.root,
                rel,
                self.opts,
                self.opts.max_total_size.saturating_sub(self.total),
                self.opts.max_documents.saturating_sub(self.out.len()),
            )
            .map_err(|e| self.with_total_limit(e))?;
            self.total += manifests.1;
            self.out.extend(manifests.0);
            return Ok(());
        }
        let mut names: Vec<_> = fs::read_dir(&full)
            .map_err(Self::io(rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(Self::io(rel))?;
        names.sort();
        for name in names {
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let child = rel.join(&name);
            let (_, meta) = self.checked(&child)?;
            if meta.is_dir() {
                if helm::is_chart(&self.root.join(&child)) {
                    return Err(RenderError::NestedChart { path: child });
                }
                self.dir(&child)?;
            } else if meta.is_file() && is_manifest_file(&name) {
                self.file(&child, meta.len())?;
            }
        }
        Ok(())
    }

    fn file(&mut self, rel: &Path, size: u64) -> Result<()> {
        let shown = display_path(rel);
        let limit = self.opts.max_file_size;
        if size > limit {
            return Err(RenderError::FileTooLarge {
                path: shown,
                size,
                limit,
            });
        }
        let mut bytes = Vec::new();
        fs::File::open(self.root.join(rel))
            .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
            .map_err(Self::io(rel))?;
        let size = bytes.len() as u64;
        if size > limit {
            // The file grew between stat and read.
            return Err(RenderError::FileTooLarge {
                path: shown,
                size,
                limit,
            });
        }
        self.total += size;
        if self.total > self.opts.max_total_size {
            return Err(RenderError::TotalTooLarge {
                path: shown,
                limit: self.opts.max_total_size,
            });
        }
        let text = String::from_utf8(bytes).map_err(|e| RenderError::NotUtf8 {
            path: shown.clone(),
            valid_up_to: e.utf8_error().valid_up_to(),
        })?;
        let remaining = self.opts.max_documents.saturating_sub(self.out.len());
        let manifests = parse::parse_manifests(&text, &shown, remaining)
            .map_err(|e| self.with_total_limit(e))?;
        self.out.extend(manifests);
        Ok(())
    }
}

/// `""` (the root itself) is shown as `.`.
fn display_path(rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel.to_owned()
    }
}
