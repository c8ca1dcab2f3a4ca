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
    /// A kustomization references a remote resource; only local files are allowed.
    #[error("{}: remote resource {entry:?} is not allowed; vendor it into the repository", path.display())]
    RemoteResource {
        /// The kustomization file.
        path: PathBuf,
        /// The offending entry.
        entry: String,
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
            RenderError::KustomizeNotFound { .. } => "render_kustomize_not_found",
            RenderError::KustomizeFailed { .. } => "render_kustomize_failed",
            RenderError::KustomizeTimeout { .. } => "render_kustomize_timeout",
        }
    }

    /// True for errors that may go away by retrying the same input (I/O hiccups, timeouts);
    /// false when the source itself must change.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RenderError::Io { .. } | RenderError::KustomizeTimeout { .. }
        )
    }
}

/// Result alias for this crate.
pub type Result<T, E = RenderError> = std::result::Result<T, E>;
