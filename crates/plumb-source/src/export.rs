//! Exporting a commit's tree into a directory: path-safe, `.plumbignore`-filtered, size-limited,
//! with a stable digest of what was written.
//!
//! Git content is hostile input. The tree is checked completely before anything is written:
//! every name (no `.`/`..`, separators, NUL, or names a filesystem may treat as `.git`), no two
//! entries of one tree with the same name (also after case folding), symlinks that stay inside
//! the tree, and the [`ExportLimits`], taken from the objects' recorded sizes before any blob
//! is read. Writing then never goes through a path component the export did not create itself
//! as a real directory: every file, link and directory is created relative to an open handle
//! of its parent (`openat`/`mkdirat`/`symlinkat`), exclusively, without following links.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::path::Path;

pub use gix::ObjectId;
use rustix::fs::{Mode, OFlags};
use sha2::{Digest as _, Sha256};

/// The file at the root of the tree whose gitignore-style patterns exclude paths.
pub const IGNORE_FILE: &str = ".plumbignore";

/// How many symlinks a path may pass through before it counts as a loop.
const MAX_SYMLINK_HOPS: usize = 40;
/// Longest symlink target (Linux's PATH_MAX).
const MAX_LINK_TARGET: u64 = 4096;

/// Limits of one export, enforced from the tree's recorded object sizes before a blob is read,
/// so that a small pack that inflates to gigabytes is refused without using the memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportLimits {
    /// Largest single file (default 10 MiB; the renderer reads manifests of up to 5 MiB).
    pub max_file_size: u64,
    /// Largest total of all exported files (default 256 MiB).
    pub max_total_size: u64,
    /// Most files and symlinks (default 50,000).
    pub max_files: usize,
    /// Deepest directory nesting (default 64).
    pub max_depth: usize,
}

impl Default for ExportLimits {
    fn default() -> Self {
        Self {
            max_file_size: 10 * 1024 * 1024,
            max_total_size: 256 * 1024 * 1024,
            max_files: 50_000,
            max_depth: 64,
        }
    }
}

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
    /// An [`ExportLimits`] limit was exceeded.
    #[error(
        "{what} in commit {commit}{at} exceeds the limit of {limit} ({actual}); leave it out \
         with .plumbignore or raise the agent's limit"
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

/// What [`export_tree`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportedTree {
    /// `sha256:<hex>` over the exported paths, modes and contents (sorted by path); the same
    /// tree and ignore patterns always give the same digest.
    pub tree_digest: String,
    /// Files and symlinks written.
    pub files: usize,
    /// Paths left out by `.plumbignore` or extra patterns (a skipped directory counts once).
    pub ignored: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    File { executable: bool },
    Link,
}

impl Kind {
    fn mode(self) -> &'static str {
        match self {
            Kind::File { executable: false } => "100644",
            Kind::File { executable: true } => "100755",
            Kind::Link => "120000",
        }
    }
}

#[derive(Debug)]
struct Entry {
    path: String,
    kind: Kind,
    id: ObjectId,
}

/// Writes the tree of `commit` (full hex id) from the repository at `repo_path` into `dest`
/// (created if missing; must be empty), leaving out what `.plumbignore` at the tree's root and
/// `extra_ignore` (gitignore syntax) exclude, within the default [`ExportLimits`]. Blocking.
pub fn export_tree(
    repo_path: &Path,
    commit: &str,
    dest: &Path,
    extra_ignore: &[String],
) -> Result<ExportedTree> {
    export_tree_with(
        repo_path,
        commit,
        dest,
        extra_ignore,
        &ExportLimits::default(),
    )
}

/// [`export_tree`] with explicit limits. Unsafe or duplicate names, symlinks leading outside
/// the tree and exceeded limits fail the whole export before anything is written, naming the
/// path and commit. Submodules are skipped.
pub fn export_tree_with(
    repo_path: &Path,
    commit: &str,
    dest: &Path,
    extra_ignore: &[String],
    limits: &ExportLimits,
) -> Result<ExportedTree> {
    let repo_err = |what: String, detail: String| Error::Repository {
        repo: repo_path.display().to_string(),
        what,
        detail,
    };
    let repo = gix::open_opts(repo_path, gix::open::Options::isolated())
        .map_err(|e| repo_err("the repository".into(), e.to_string()))?;
    let id = ObjectId::from_hex(commit.as_bytes())
        .map_err(|e| repo_err(format!("commit {commit}"), e.to_string()))?;
    let commit_obj = repo
        .find_commit(id)
        .map_err(|e| repo_err(format!("commit {commit}"), e.to_string()))?;
    let tree = commit_obj
        .tree_id()
        .map_err(|e| repo_err(format!("tree of commit {commit}"), e.to_string()))?
        .detach();
    let source = GixSource {
        repo: &repo,
        path: repo_path,
    };
    export_from(&source, tree, commit, dest, extra_ignore, limits)
}

/// Exports the tree `root` of `source` (`commit` names it in errors) into `dest` with every
/// check of [`export_tree_with`]: the one place the rules are enforced, whatever the objects
/// come from.
pub fn export_from(
    source: &dyn ObjectSource,
    root: ObjectId,
    commit: &str,
    dest: &Path,
    extra_ignore: &[String],
    limits: &ExportLimits,
) -> Result<ExportedTree> {
    let reader = Reader {
        source,
        commit,
        limits,
    };
    let ignore = build_ignore(&reader, root, extra_ignore)?;
    let mut walk = Walk {
        entries: Vec::new(),
        ignored: 0,
        total: 0,
    };
    reader.walk(root, "", 0, &ignore, &mut walk)?;
    let mut entries = walk.entries;
    check_symlinks(&reader, &entries)?;

    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let mut writer = Writer::open(dest)?;
    let mut hasher = Sha256::new();
    hasher.update(b"plumb-tree-v1\0");
    for entry in &entries {
        let content = reader.blob(entry.id, &entry.path)?;
        hash_entry(&mut hasher, entry.kind, &entry.path, &content);
        writer.write(entry, &content)?;
    }
    Ok(ExportedTree {
        tree_digest: finish(hasher),
        files: entries.len(),
        ignored: walk.ignored,
    })
}

/// The mode of a tree entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemMode {
    /// A directory.
    Tree,
    /// A regular file.
    File,
    /// An executable file.
    Executable,
    /// A symlink; the blob holds its target.
    Link,
    /// A submodule (skipped).
    Commit,
}

/// One entry of a tree, as stored (names are raw bytes: git allows anything but `/` and NUL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeItem {
    /// The name.
    pub name: Vec<u8>,
    /// The mode.
    pub mode: ItemMode,
    /// The object.
    pub id: ObjectId,
}

/// Where an export reads trees and blobs from: a repository ([`export_tree`]) or, for tests
/// and fuzzing, memory ([`MemSource`]). Errors are messages; the export adds the path.
pub trait ObjectSource {
    /// The entries of a tree, in stored order.
    fn tree(&self, id: ObjectId) -> std::result::Result<Vec<TreeItem>, String>;
    /// The size of a blob, without reading its content.
    fn blob_size(&self, id: ObjectId) -> std::result::Result<u64, String>;
    /// A blob's content.
    fn blob(&self, id: ObjectId) -> std::result::Result<Vec<u8>, String>;
    /// Where the objects are, for messages.
    fn location(&self) -> String;
}

struct GixSource<'a> {
    repo: &'a gix::Repository,
    path: &'a Path,
}

impl ObjectSource for GixSource<'_> {
    fn tree(&self, id: ObjectId) -> std::result::Result<Vec<TreeItem>, String> {
        let object = self.repo.find_object(id).map_err(|e| e.to_string())?;
        if object.kind != gix::objs::Kind::Tree {
            return Err(format!("{id} is a {}, not a tree", object.kind));
        }
        let parsed = gix::objs::TreeRef::from_bytes(&object.data, self.repo.object_hash())
            .map_err(|e| e.to_string())?;
        Ok(parsed
            .entries
            .iter()
            .map(|e| TreeItem {
                name: e.filename.to_vec(),
                mode: if e.mode.is_tree() {
                    ItemMode::Tree
                } else if e.mode.is_link() {
                    ItemMode::Link
                } else if e.mode.is_commit() {
                    ItemMode::Commit
                } else if e.mode.is_executable() {
                    ItemMode::Executable
                } else {
                    ItemMode::File
                },
                id: e.oid.to_owned(),
            })
            .collect())
    }

    fn blob_size(&self, id: ObjectId) -> std::result::Result<u64, String> {
        let header = self.repo.find_header(id).map_err(|e| e.to_string())?;
        if header.kind() != gix::objs::Kind::Blob {
            return Err(format!("{id} is a {}, not a blob", header.kind()));
        }
        Ok(header.size())
    }

    fn blob(&self, id: ObjectId) -> std::result::Result<Vec<u8>, String> {
        let object = self.repo.find_object(id).map_err(|e| e.to_string())?;
        if object.kind != gix::objs::Kind::Blob {
            return Err(format!("{id} is a {}, not a blob", object.kind));
        }
        Ok(object.data.clone())
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

/// Trees and blobs held in memory, keyed by made-up ids: for tests and fuzzing of the export's
/// checks without a repository.
#[derive(Clone, Debug, Default)]
pub struct MemSource {
    trees: HashMap<ObjectId, Vec<TreeItem>>,
    blobs: HashMap<ObjectId, Vec<u8>>,
    next: u64,
}

impl MemSource {
    fn fresh_id(&mut self) -> ObjectId {
        self.next += 1;
        let mut bytes = [0u8; 20];
        bytes[..8].copy_from_slice(&self.next.to_be_bytes());
        ObjectId::from_bytes_or_panic(&bytes)
    }

    /// Stores a blob; returns its id.
    pub fn add_blob(&mut self, content: impl Into<Vec<u8>>) -> ObjectId {
        let id = self.fresh_id();
        self.blobs.insert(id, content.into());
        id
    }

    /// Stores a tree of exactly these entries (duplicates and any names allowed).
    pub fn add_tree(&mut self, entries: Vec<TreeItem>) -> ObjectId {
        let id = self.fresh_id();
        self.trees.insert(id, entries);
        id
    }
}

impl ObjectSource for MemSource {
    fn tree(&self, id: ObjectId) -> std::result::Result<Vec<TreeItem>, String> {
        self.trees
            .get(&id)
            .cloned()
            .ok_or_else(|| format!("no tree {id}"))
    }

    fn blob_size(&self, id: ObjectId) -> std::result::Result<u64, String> {
        self.blobs
            .get(&id)
            .map(|b| b.len() as u64)
            .ok_or_else(|| format!("no blob {id}"))
    }

    fn blob(&self, id: ObjectId) -> std::result::Result<Vec<u8>, String> {
        self.blobs
            .get(&id)
            .cloned()
            .ok_or_else(|| format!("no blob {id}"))
    }

    fn location(&self) -> String {
        "memory".into()
    }
}

fn hash_entry(hasher: &mut Sha256, kind: Kind, path: &str, content: &[u8]) {
    hasher.update(kind.mode().as_bytes());
    hasher.update(b" ");
    hasher.update(path.as_bytes());
    hasher.update(b"\0");
    hasher.update((content.len() as u64).to_be_bytes());
    hasher.update(content);
}

fn finish(hasher: Sha256) -> String {
    let mut digest = String::from("sha256:");
    for byte in hasher.finalize() {
        let _ = write!(digest, "{byte:02x}");
    }
    digest
}

/// The digest [`export_tree`] reports, computed from what is in `dir` now (files, executable
/// bits and symlink targets; directories count only through their contents). Links are not
/// followed. Blocking.
pub fn digest_dir(dir: &Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| Error::Io { path, source }
    };
    let mut found: Vec<(String, Kind, std::path::PathBuf)> = Vec::new();
    let mut stack = vec![(dir.to_owned(), String::new())];
    while let Some((full, rel)) = stack.pop() {
        for entry in std::fs::read_dir(&full).map_err(io(&full))? {
            let entry = entry.map_err(io(&full))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = std::fs::symlink_metadata(entry.path()).map_err(io(&entry.path()))?;
            if meta.file_type().is_symlink() {
                found.push((path, Kind::Link, entry.path()));
            } else if meta.is_dir() {
                stack.push((entry.path(), path));
            } else {
                let executable = meta.permissions().mode() & 0o100 != 0;
                found.push((path, Kind::File { executable }, entry.path()));
            }
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let mut hasher = Sha256::new();
    hasher.update(b"plumb-tree-v1\0");
    for (path, kind, full) in &found {
        let content = match kind {
            Kind::Link => {
                use std::os::unix::ffi::OsStrExt as _;
                std::fs::read_link(full)
                    .map_err(io(full))?
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            }
            Kind::File { .. } => std::fs::read(full).map_err(io(full))?,
        };
        hash_entry(&mut hasher, *kind, path, &content);
    }
    Ok(finish(hasher))
}

/// Checks that `dir` still holds exactly the export whose digest was `expected`.
pub fn verify_dir(dir: &Path, expected: &str) -> Result<()> {
    let actual = digest_dir(dir)?;
    if actual == expected {
        Ok(())
    } else {
        Err(Error::DigestMismatch {
            dir: dir.display().to_string(),
            expected: expected.to_owned(),
            actual,
        })
    }
}

struct Reader<'a> {
    source: &'a dyn ObjectSource,
    commit: &'a str,
    limits: &'a ExportLimits,
}

struct Walk {
    entries: Vec<Entry>,
    ignored: usize,
    total: u64,
}

impl Reader<'_> {
    fn err(&self, what: String, detail: impl std::fmt::Display) -> Error {
        Error::Repository {
            repo: self.source.location(),
            what,
            detail: detail.to_string(),
        }
    }

    fn unsafe_path(&self, path: &str, reason: &'static str) -> Error {
        Error::UnsafePath {
            commit: self.commit.to_owned(),
            path: path.to_owned(),
            reason,
        }
    }

    fn too_large(&self, what: &'static str, path: Option<&str>, limit: u64, actual: u64) -> Error {
        Error::TooLarge {
            commit: self.commit.to_owned(),
            what,
            at: path.map(|p| format!(" at {p}")).unwrap_or_default(),
            limit,
            actual,
        }
    }

    /// The recorded size of a blob, read from its header (no inflation of its content).
    fn blob_size(&self, id: ObjectId, path: &str) -> Result<u64> {
        self.source
            .blob_size(id)
            .map_err(|e| self.err(format!("{path} ({id})"), e))
    }

    /// A blob's content; its size is checked against the file limit first.
    fn blob(&self, id: ObjectId, path: &str) -> Result<Vec<u8>> {
        let size = self.blob_size(id, path)?;
        if size > self.limits.max_file_size {
            return Err(self.too_large("file size", Some(path), self.limits.max_file_size, size));
        }
        self.source
            .blob(id)
            .map_err(|e| self.err(format!("{path} ({id})"), e))
    }

    fn tree(&self, id: ObjectId, path: &str) -> Result<Vec<TreeItem>> {
        self.source
            .tree(id)
            .map_err(|e| self.err(format!("tree {path:?} ({id})"), e))
    }

    fn walk(
        &self,
        tree: ObjectId,
        prefix: &str,
        depth: usize,
        ignore: &ignore::gitignore::Gitignore,
        out: &mut Walk,
    ) -> Result<()> {
        if depth > self.limits.max_depth {
            return Err(self.too_large(
                "directory depth",
                Some(prefix),
                self.limits.max_depth as u64,
                depth as u64,
            ));
        }
        let items = self.tree(tree, prefix)?;
        // Every name is checked, ignored or not: a duplicate must not hide behind an ignore
        // pattern that another reader of the same tree does not apply.
        let mut exact = HashSet::new();
        let mut folded = HashSet::new();
        for entry in &items {
            let Ok(name) = std::str::from_utf8(&entry.name) else {
                let lossy = format!("{prefix}/{}", String::from_utf8_lossy(&entry.name));
                return Err(self.unsafe_path(&lossy, "the name is not UTF-8"));
            };
            let path = if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}/{name}")
            };
            check_name(name).map_err(|reason| self.unsafe_path(&path, reason))?;
            if !exact.insert(name) {
                return Err(Error::DuplicateEntry {
                    commit: self.commit.to_owned(),
                    path,
                    folded: "",
                });
            }
            if !folded.insert(fold(name)) {
                return Err(Error::DuplicateEntry {
                    commit: self.commit.to_owned(),
                    path,
                    folded: " (names that differ only in case or ignorable characters)",
                });
            }
        }
        for entry in &items {
            // Checked above.
            let name = String::from_utf8_lossy(&entry.name);
            let path = if prefix.is_empty() {
                name.into_owned()
            } else {
                format!("{prefix}/{name}")
            };
            let id = entry.id;
            if entry.mode == ItemMode::Tree {
                if ignore.matched(Path::new(&path), true).is_ignore() {
                    out.ignored += 1;
                    continue;
                }
                self.walk(id, &path, depth + 1, ignore, out)?;
                continue;
            }
            if ignore.matched(Path::new(&path), false).is_ignore() {
                out.ignored += 1;
                continue;
            }
            let kind = match entry.mode {
                ItemMode::Link => Kind::Link,
                ItemMode::Commit => {
                    tracing::warn!(path, commit = self.commit, "skipping submodule");
                    continue;
                }
                ItemMode::Executable => Kind::File { executable: true },
                ItemMode::File | ItemMode::Tree => Kind::File { executable: false },
            };
            let size = self.blob_size(id, &path)?;
            let limit = match kind {
                Kind::Link => MAX_LINK_TARGET,
                Kind::File { .. } => self.limits.max_file_size,
            };
            if size > limit {
                return Err(self.too_large("file size", Some(&path), limit, size));
            }
            out.total += size;
            if out.total > self.limits.max_total_size {
                return Err(self.too_large(
                    "total size",
                    None,
                    self.limits.max_total_size,
                    out.total,
                ));
            }
            if out.entries.len() >= self.limits.max_files {
                return Err(self.too_large(
                    "file count",
                    None,
                    self.limits.max_files as u64,
                    out.entries.len() as u64 + 1,
                ));
            }
            out.entries.push(Entry { path, kind, id });
        }
        Ok(())
    }
}

/// Code points that HFS+ ignores in names (so `.g\u{200c}it` is `.git` there).
fn hfs_ignorable(c: char) -> bool {
    matches!(c,
        '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{206a}'..='\u{206f}' | '\u{feff}')
}

/// A name as a case-insensitive filesystem that drops ignorable code points sees it.
pub(crate) fn fold(name: &str) -> String {
    name.chars()
        .filter(|c| !hfs_ignorable(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

/// Refuses names that could leave the destination or that some filesystem or git itself
/// treats as `.git` (any case, HFS+ ignorable code points, NTFS trailing dots and spaces,
/// alternate data streams and the 8.3 short name `git~1`).
fn check_name(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name == "." || name == ".." {
        return Err("'.' and '..' are not allowed as names");
    }
    if name.contains(['/', '\0', '\\']) {
        return Err("a name contains '/', '\\' or NUL");
    }
    let folded = fold(name);
    let ntfs = folded
        .split(':')
        .next()
        .unwrap_or_default()
        .trim_end_matches(['.', ' ']);
    if ntfs == ".git" || ntfs == "git~1" {
        return Err("'.git' (in any spelling a filesystem may treat as .git) is not allowed");
    }
    Ok(())
}

fn build_ignore(
    reader: &Reader<'_>,
    tree: ObjectId,
    extra: &[String],
) -> Result<ignore::gitignore::Gitignore> {
    let mut builder = ignore::gitignore::GitignoreBuilder::new("");
    let items = reader.tree(tree, "")?;
    let file = items.iter().find(|e| {
        e.name == IGNORE_FILE.as_bytes() && matches!(e.mode, ItemMode::File | ItemMode::Executable)
    });
    let mut add = |origin: &str, line: &str| {
        builder
            .add_line(None, line)
            .map(|_| ())
            .map_err(|e| Error::IgnorePattern {
                origin: origin.to_owned(),
                reason: e.to_string(),
            })
    };
    if let Some(file) = file {
        let content = reader.blob(file.id, IGNORE_FILE)?;
        for (n, line) in String::from_utf8_lossy(&content).lines().enumerate() {
            add(&format!("{IGNORE_FILE}:{}", n + 1), line)?;
        }
    }
    for line in extra {
        add("options", line)?;
    }
    builder.build().map_err(|e| Error::IgnorePattern {
        origin: IGNORE_FILE.into(),
        reason: e.to_string(),
    })
}

/// Resolves every symlink over the exported entries and refuses any that ends (or passes)
/// outside the root.
fn check_symlinks(reader: &Reader<'_>, entries: &[Entry]) -> Result<()> {
    let mut links = HashMap::new();
    for entry in entries {
        if entry.kind == Kind::Link {
            let target = reader.blob(entry.id, &entry.path)?;
            links.insert(
                entry.path.clone(),
                String::from_utf8_lossy(&target).into_owned(),
            );
        }
    }
    for (path, target) in &links {
        let escapes = || Error::SymlinkEscapes {
            commit: reader.commit.to_owned(),
            path: path.clone(),
            target: target.clone(),
        };
        let mut base: Vec<String> = path.split('/').map(str::to_owned).collect();
        base.pop();
        let mut hops = 0;
        if resolve(base, target, &links, &mut hops, &mut HashSet::new()).is_none() {
            return Err(escapes());
        }
    }
    Ok(())
}

/// Follows `target` from directory `base` through the tree's symlinks; `None` when it leaves
/// the root, is absolute, or loops.
fn resolve(
    mut stack: Vec<String>,
    target: &str,
    links: &HashMap<String, String>,
    hops: &mut usize,
    visiting: &mut HashSet<String>,
) -> Option<Vec<String>> {
    if target.starts_with('/') || target.is_empty() {
        return None;
    }
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                stack.pop()?;
            }
            name => {
                stack.push(name.to_owned());
                let here = stack.join("/");
                if let Some(next) = links.get(&here) {
                    *hops += 1;
                    if *hops > MAX_SYMLINK_HOPS || !visiting.insert(here.clone()) {
                        return None;
                    }
                    stack.pop();
                    stack = resolve(stack, next, links, hops, visiting)?;
                    visiting.remove(&here);
                }
            }
        }
    }
    Some(stack)
}

/// Writes entries (sorted by path) below a destination directory through directory handles:
/// each directory is created by the writer and opened without following links, and each file
/// or link is created exclusively in its parent's handle. A path component the writer did not
/// create (a symlink, or anything already there) can therefore never be written through.
struct Writer {
    dest: String,
    root: OwnedFd,
    /// The directories of the current path below the root, as (name, handle); entries sorted
    /// by path visit each directory's contents contiguously, so one open chain suffices.
    open: Vec<(String, OwnedFd)>,
    /// Directories created so far, so that coming back to one is detected.
    created: HashSet<String>,
}

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC);

impl Writer {
    fn open(dest: &Path) -> Result<Self> {
        let shown = dest.display().to_string();
        let io = |source: std::io::Error| Error::Io {
            path: shown.clone(),
            source,
        };
        std::fs::create_dir_all(dest).map_err(io)?;
        let root = rustix::fs::openat(rustix::fs::CWD, dest, DIR_FLAGS, Mode::empty())
            .map_err(|e| io(e.into()))?;
        let mut listing = std::fs::read_dir(dest).map_err(io)?;
        if listing.next().is_some() {
            return Err(Error::DestinationNotEmpty { path: shown });
        }
        Ok(Self {
            dest: shown,
            root,
            open: Vec::new(),
            created: HashSet::new(),
        })
    }

    fn io(&self, path: &str) -> impl Fn(rustix::io::Errno) -> Error + use<> {
        let path = format!("{}/{path}", self.dest);
        move |e| Error::Io {
            path: path.clone(),
            source: e.into(),
        }
    }

    /// The handle of directory `dirs` (components below the root), creating what is missing.
    fn dir(&mut self, dirs: &[&str]) -> Result<()> {
        let common = self
            .open
            .iter()
            .zip(dirs)
            .take_while(|((open, _), want)| open == *want)
            .count();
        self.open.truncate(common);
        for i in common..dirs.len() {
            let rel = dirs[..=i].join("/");
            if !self.created.insert(rel.clone()) {
                // Sorted entries never return to a directory; if they did, the tree was not
                // what the checks saw.
                return Err(Error::Io {
                    path: format!("{}/{rel}", self.dest),
                    source: std::io::Error::other("directory visited twice"),
                });
            }
            let parent = self.open.last().map_or(&self.root, |(_, fd)| fd);
            rustix::fs::mkdirat(parent, dirs[i], Mode::from_raw_mode(0o755))
                .map_err(self.io(&rel))?;
            let fd = rustix::fs::openat(parent, dirs[i], DIR_FLAGS, Mode::empty())
                .map_err(self.io(&rel))?;
            self.open.push((dirs[i].to_owned(), fd));
        }
        Ok(())
    }

    fn write(&mut self, entry: &Entry, content: &[u8]) -> Result<()> {
        let mut parts: Vec<&str> = entry.path.split('/').collect();
        let name = parts.pop().unwrap_or_default();
        self.dir(&parts)?;
        let parent = self.open.last().map_or(&self.root, |(_, fd)| fd);
        let io = self.io(&entry.path);
        match entry.kind {
            Kind::Link => {
                let target = String::from_utf8_lossy(content).into_owned();
                rustix::fs::symlinkat(target.as_str(), parent, name).map_err(io)?;
            }
            Kind::File { executable } => {
                let fd = rustix::fs::openat(
                    parent,
                    name,
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(&io)?;
                let mode = if executable { 0o755 } else { 0o644 };
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(&io)?;
                let mut file = std::fs::File::from(fd);
                file.write_all(content).map_err(|source| Error::Io {
                    path: format!("{}/{}", self.dest, entry.path),
                    source,
                })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn escapes(path: &str, all: &HashMap<String, String>) -> bool {
        let mut base: Vec<String> = path.split('/').map(str::to_owned).collect();
        base.pop();
        resolve(base, &all[path], all, &mut 0, &mut HashSet::new()).is_none()
    }

    #[test]
    fn symlinks_are_resolved_through_other_links() {
        let all = links(&[
            ("a", "b/c"),
            ("up", ".."),
            ("sub/up", ".."),
            ("sub/via", "up/.."),
            ("abs", "/etc/passwd"),
            ("loop1", "loop2"),
            ("loop2", "loop1"),
            ("deep/ok", "../a"),
        ]);
        assert!(!escapes("a", &all));
        assert!(escapes("up", &all));
        assert!(!escapes("sub/up", &all));
        // Lexically sub/up/.. = sub, but sub/up is the root, so this is the root's parent.
        assert!(escapes("sub/via", &all));
        assert!(escapes("abs", &all));
        assert!(escapes("loop1", &all));
        assert!(!escapes("deep/ok", &all));
    }

    #[test]
    fn names_that_leave_the_tree_or_mean_git_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            ".git",
            ".GIT",
            "a\\b",
            ".git.",
            ".git ",
            ".Git. .",
            "git~1",
            "GIT~1",
            ".git::$INDEX_ALLOCATION",
            ".g\u{200c}it",
            "\u{feff}.git",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["..a", ".gitignore", ".github", "git", "a.git", "git~2"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn the_writer_never_writes_through_what_it_did_not_create() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dest = tmp.path().join("dest");
        let mut writer = Writer::open(&dest).expect("writer");
        let entry = |path: &str, kind| Entry {
            path: path.to_owned(),
            kind,
            id: ObjectId::null(gix::hash::Kind::Sha1),
        };
        // What a tree with `s -> ..` beside a tree `s` would make a path-joining writer do.
        writer
            .write(&entry("s", Kind::Link), b"..")
            .expect("a link is written");
        let err = writer
            .write(&entry("s/x", Kind::File { executable: false }), b"pwned")
            .expect_err("writing below a link is refused");
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(!tmp.path().join("x").exists());
        // A second entry of the same name is refused too, never overwritten.
        writer
            .write(&entry("f", Kind::File { executable: false }), b"one")
            .expect("a file is written");
        writer
            .write(&entry("f", Kind::File { executable: false }), b"two")
            .expect_err("no overwrite");
        assert_eq!(std::fs::read(dest.join("f")).expect("f"), b"one");
    }

    #[test]
    fn the_escape_attack_is_refused_from_any_object_source() {
        let mut mem = MemSource::default();
        let dot = mem.add_blob(".");
        let up = mem.add_blob("../../../..");
        let evil = mem.add_blob("pwned");
        let item = |name: &str, mode, id| TreeItem {
            name: name.as_bytes().to_vec(),
            mode,
            id,
        };
        let t5 = mem.add_tree(vec![item("evil", ItemMode::File, evil)]);
        let t4 = mem.add_tree(vec![
            item("up", ItemMode::Link, up),
            item("up", ItemMode::Tree, t5),
        ]);
        let mut t = t4;
        for _ in 0..3 {
            t = mem.add_tree(vec![item("s", ItemMode::Tree, t)]);
        }
        let root = mem.add_tree(vec![
            item("s", ItemMode::Link, dot),
            item("s", ItemMode::Tree, t),
        ]);
        let tmp = tempfile::tempdir().expect("tempdir");
        let dest = tmp.path().join("a/b/c/d/dest");
        let err = export_from(&mem, root, "c0ffee", &dest, &[], &ExportLimits::default())
            .expect_err("refused");
        assert!(
            matches!(err, Error::DuplicateEntry { ref path, .. } if path == "s"),
            "{err}"
        );
        assert!(!tmp.path().join("a").exists());
    }

    #[test]
    fn folding_finds_names_a_case_insensitive_filesystem_merges() {
        assert_eq!(fold("Prod"), fold("prod"));
        assert_eq!(fold("pr\u{200d}od"), fold("prod"));
        assert_ne!(fold("prod"), fold("prod2"));
    }
}
