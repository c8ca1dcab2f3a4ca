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

mod digest;
mod error;
mod links;
mod names;
mod reuse;
mod source;
mod walk;
mod writer;

use std::path::Path;

pub use gix::ObjectId;
pub use gix::hash::Kind as HashKind;
use sha2::{Digest as _, Sha256};

pub use digest::{digest_dir, verify_dir};
use digest::{finish, hash_entry};
pub use error::{Error, Result};
pub(crate) use names::fold;
pub use reuse::Reuse;
pub use source::{ItemMode, MemSource, ObjectSource, TreeItem};

use links::check_symlinks;
use source::GixSource;
use walk::{Reader, Walk, build_ignore};
use writer::Writer;

/// The file at the root of the tree whose gitignore-style patterns exclude paths.
pub const IGNORE_FILE: &str = ".plumbignore";

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
    /// Files linked from an earlier export ([`Reuse`]) instead of written.
    pub linked: usize,
    /// What was written, sorted by path: each file's or symlink's Git object id, which
    /// identifies its content as the (verified) commit records it.
    pub entries: Vec<ExportedFile>,
}

/// One exported file or symlink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportedFile {
    /// Path relative to the export's root, `/`-separated.
    pub path: String,
    /// Git's mode: `100644`, `100755` (executable) or `120000` (symlink).
    pub mode: &'static str,
    /// The blob's object id.
    pub id: ObjectId,
}

impl ExportedFile {
    /// Whether this is a symlink.
    pub fn is_link(&self) -> bool {
        self.mode == Kind::Link.mode()
    }

    /// The last component of the path.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// The entries of `entries` (sorted by path, as [`ExportedTree::entries`]) inside directory
/// `dir` (`/`-separated, relative; empty for the root), and below it.
pub fn entries_under<'e>(entries: &'e [ExportedFile], dir: &str) -> &'e [ExportedFile] {
    if dir.is_empty() {
        return entries;
    }
    let prefix = format!("{dir}/");
    // Paths sharing a prefix are contiguous in sorted order.
    let start = entries.partition_point(|e| e.path.as_str() < prefix.as_str());
    let len = entries[start..].partition_point(|e| e.path.starts_with(&prefix));
    &entries[start..start + len]
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
    export_tree_reusing(repo_path, commit, dest, extra_ignore, limits, None)
}

/// [`export_tree_with`], linking the files that `reuse`, an earlier export of the same
/// repository, holds unchanged (same path, mode and blob, and on disk the same bytes) instead
/// of writing them again: the same result, for a fraction of the file creations when a commit
/// changed a few files of a large tree.
pub fn export_tree_reusing(
    repo_path: &Path,
    commit: &str,
    dest: &Path,
    extra_ignore: &[String],
    limits: &ExportLimits,
    reuse: Option<&Reuse>,
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
    export_checked(&source, tree, commit, dest, extra_ignore, limits, reuse)
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
    export_checked(source, root, commit, dest, extra_ignore, limits, None)
}

fn export_checked(
    source: &dyn ObjectSource,
    root: ObjectId,
    commit: &str,
    dest: &Path,
    extra_ignore: &[String],
    limits: &ExportLimits,
    reuse: Option<&Reuse>,
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
    let mut writer = Writer::open(dest, reuse.map(reuse::Prior::new))?;
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
        linked: writer.linked,
        entries: entries
            .into_iter()
            .map(|e| ExportedFile {
                path: e.path,
                mode: e.kind.mode(),
                id: e.id,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_under_a_directory_are_its_whole_subtree_and_nothing_else() {
        let file = |path: &str| ExportedFile {
            path: path.to_owned(),
            mode: "100644",
            id: ObjectId::null(HashKind::Sha1),
        };
        let mut entries: Vec<_> = [
            "a.yaml",
            "apps/a/x.yaml",
            "apps/a/y/z.yaml",
            "apps/a-b/c.yaml",
            "apps/ab.yaml",
            "apps/b/x.yaml",
        ]
        .into_iter()
        .map(file)
        .collect();
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let paths = |dir| {
            entries_under(&entries, dir)
                .iter()
                .map(|e| e.path.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(paths("apps/a"), ["apps/a/x.yaml", "apps/a/y/z.yaml"]);
        assert_eq!(paths("apps/b"), ["apps/b/x.yaml"]);
        assert!(paths("apps/c").is_empty());
        assert!(paths("a.yaml").is_empty());
        assert_eq!(paths("").len(), entries.len());
        assert_eq!(entries_under(&entries, "apps/a")[1].name(), "z.yaml");
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
}
