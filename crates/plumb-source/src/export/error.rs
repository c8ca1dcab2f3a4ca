//! The errors of an export.

/// Errors of an export.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tree entry name that could leave the directory or is otherwise unsafe.
    #[error("unsafe path {path:?} in commit {commit}: {reason}")]
    UnsafePath {
        /// The commit.
        commit: String,
        /// The path (as far as it was read).
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A tree holds two entries of the same name (possible in git's object format, never made
    /// by git itself): refused, since which one a reader sees would be arbitrary.
    #[error(
        "malformed tree in commit {commit}: {path:?} appears twice in one directory{folded}; \
         such trees are not made by git and are refused"
    )]
    DuplicateEntry {
        /// The commit.
        commit: String,
        /// The duplicated path.
        path: String,
        /// Empty, or a note that the names differ only in case or ignorable characters.
        folded: &'static str,
    },
    /// A symlink that resolves outside the tree (absolute, too many `..`, or a loop).
    #[error(
        "symlink {path} -> {target} in commit {commit} points outside the repository; \
         only relative links that stay inside the tree are allowed"
    )]
    SymlinkEscapes {
        /// The commit.
        commit: String,
        /// The link's path.
        path: String,
        /// Its target.
        target: String,
    },
    /// An [`ExportLimits`](super::ExportLimits) limit was exceeded.
    #[error(
        "{what} in commit {commit}{at} exceeds the limit of {limit} ({actual}); leave it out \
         with .plumbignore or raise the limit (--max-artifact-file-size, \
         --max-artifact-size, --max-artifact-files)"
    )]
    TooLarge {
        /// The commit.
        commit: String,
        /// Which limit (`file size`, `total size`, `file count`, `directory depth`).
        what: &'static str,
        /// ` at <path>` when one path is to blame, else empty.
        at: String,
        /// The limit.
        limit: u64,
        /// What was found (at least this much).
        actual: u64,
    },
    /// `.plumbignore` or an extra pattern is invalid.
    #[error("invalid ignore pattern in {origin}: {reason}")]
    IgnorePattern {
        /// `.plumbignore` or `options`.
        origin: String,
        /// Parser message.
        reason: String,
    },
    /// The destination exists and is not an empty directory.
    #[error("export destination {path} exists and is not an empty directory")]
    DestinationNotEmpty {
        /// The directory.
        path: String,
    },
    /// The exported directory no longer holds what was exported (changed or damaged on disk).
    #[error(
        "artifact {dir} does not match its recorded tree digest (expected {expected}, found \
         {actual}); it was changed on disk and is not used"
    )]
    DigestMismatch {
        /// The directory.
        dir: String,
        /// The recorded digest.
        expected: String,
        /// The digest of what is there now.
        actual: String,
    },
    /// The repository or one of its objects cannot be read.
    #[error("cannot read {what} in {repo}: {detail}")]
    Repository {
        /// The repository path.
        repo: String,
        /// What was being read.
        what: String,
        /// The underlying error.
        detail: String,
    },
    /// Writing the files failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Result with [`enum@Error`] as default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Reading and writing may be transient; content problems are not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Repository { .. } | Error::Io { .. })
    }

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::UnsafePath { .. } => "export_unsafe_path",
            Error::DuplicateEntry { .. } => "export_duplicate_entry",
            Error::SymlinkEscapes { .. } => "export_symlink_escapes",
            Error::TooLarge { .. } => "export_too_large",
            Error::IgnorePattern { .. } => "export_ignore_pattern",
            Error::DestinationNotEmpty { .. } => "export_destination_not_empty",
            Error::DigestMismatch { .. } => "export_digest_mismatch",
            Error::Repository { .. } => "export_repository",
            Error::Io { .. } => "export_io",
        }
    }
}
