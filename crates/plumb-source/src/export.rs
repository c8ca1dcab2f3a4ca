//! Exporting a commit's tree into a directory: path-safe, `.plumbignore`-filtered, with a
//! stable digest of what was written.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use gix::ObjectId;
use sha2::{Digest as _, Sha256};

/// The file at the root of the tree whose gitignore-style patterns exclude paths.
pub const IGNORE_FILE: &str = ".plumbignore";

/// How many symlinks a path may pass through before it counts as a loop.
const MAX_SYMLINK_HOPS: usize = 40;

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
            Error::SymlinkEscapes { .. } => "export_symlink_escapes",
            Error::IgnorePattern { .. } => "export_ignore_pattern",
            Error::DestinationNotEmpty { .. } => "export_destination_not_empty",
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

#[derive(Debug)]
enum Kind {
    File { executable: bool },
    Link,
}

#[derive(Debug)]
struct Entry {
    path: String,
    kind: Kind,
    id: ObjectId,
}

/// Writes the tree of `commit` (full hex id) from the repository at `repo_path` into `dest`
/// (created if missing; must be empty), leaving out what `.plumbignore` at the tree's root and
/// `extra_ignore` (gitignore syntax) exclude. Unsafe names and symlinks leading outside the
/// tree fail the whole export and name the path and commit. Submodules are skipped. Blocking.
pub fn export_tree(
    repo_path: &Path,
    commit: &str,
    dest: &Path,
    extra_ignore: &[String],
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

    let reader = Reader {
        repo: &repo,
        repo_path,
        commit,
    };
    let ignore = build_ignore(&reader, tree, extra_ignore)?;
    let mut entries = Vec::new();
    let mut ignored = 0;
    reader.walk(tree, "", &ignore, &mut entries, &mut ignored)?;
    check_symlinks(&reader, &mut entries)?;

    prepare_dest(dest)?;
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let mut hasher = Sha256::new();
    hasher.update(b"plumb-tree-v1\0");
    for entry in &entries {
        let content = reader.blob(entry.id, &entry.path)?;
        let mode = match entry.kind {
            Kind::File { executable: false } => "100644",
            Kind::File { executable: true } => "100755",
            Kind::Link => "120000",
        };
        hasher.update(mode.as_bytes());
        hasher.update(b" ");
        hasher.update(entry.path.as_bytes());
        hasher.update(b"\0");
        hasher.update((content.len() as u64).to_be_bytes());
        hasher.update(&content);
        write_entry(dest, entry, &content)?;
    }
    let mut digest = String::from("sha256:");
    for byte in hasher.finalize() {
        let _ = write!(digest, "{byte:02x}");
    }
    Ok(ExportedTree {
        tree_digest: digest,
        files: entries.len(),
        ignored,
    })
}

struct Reader<'a> {
    repo: &'a gix::Repository,
    repo_path: &'a Path,
    commit: &'a str,
}

impl Reader<'_> {
    fn err(&self, what: String, detail: impl std::fmt::Display) -> Error {
        Error::Repository {
            repo: self.repo_path.display().to_string(),
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

    fn blob(&self, id: ObjectId, path: &str) -> Result<Vec<u8>> {
        let object = self
            .repo
            .find_object(id)
            .map_err(|e| self.err(format!("{path} ({id})"), e))?;
        if object.kind != gix::objs::Kind::Blob {
            return Err(self.err(format!("{path} ({id})"), "not a blob"));
        }
        Ok(object.data.clone())
    }

    fn walk(
        &self,
        tree: ObjectId,
        prefix: &str,
        ignore: &ignore::gitignore::Gitignore,
        out: &mut Vec<Entry>,
        ignored: &mut usize,
    ) -> Result<()> {
        let object = self
            .repo
            .find_object(tree)
            .map_err(|e| self.err(format!("tree {prefix:?} ({tree})"), e))?;
        let parsed = gix::objs::TreeRef::from_bytes(&object.data, self.repo.object_hash())
            .map_err(|e| self.err(format!("tree {prefix:?} ({tree})"), e))?;
        for entry in &parsed.entries {
            let Ok(name) = std::str::from_utf8(entry.filename) else {
                let lossy = format!("{prefix}/{}", String::from_utf8_lossy(entry.filename));
                return Err(self.unsafe_path(&lossy, "the name is not UTF-8"));
            };
            let path = if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}/{name}")
            };
            check_name(name).map_err(|reason| self.unsafe_path(&path, reason))?;
            let mode = entry.mode;
            let id = entry.oid.to_owned();
            if mode.is_tree() {
                if ignore.matched(Path::new(&path), true).is_ignore() {
                    *ignored += 1;
                    continue;
                }
                self.walk(id, &path, ignore, out, ignored)?;
                continue;
            }
            if ignore.matched(Path::new(&path), false).is_ignore() {
                *ignored += 1;
                continue;
            }
            let kind = if mode.is_link() {
                Kind::Link
            } else if mode.is_commit() {
                tracing::warn!(path, commit = self.commit, "skipping submodule");
                continue;
            } else {
                Kind::File {
                    executable: mode.is_executable(),
                }
            };
            out.push(Entry { path, kind, id });
        }
        Ok(())
    }
}

/// Refuses names that could leave the destination or confuse git or the renderer.
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
    if name.eq_ignore_ascii_case(".git") {
        return Err("'.git' is not allowed");
    }
    Ok(())
}

fn build_ignore(
    reader: &Reader<'_>,
    tree: ObjectId,
    extra: &[String],
) -> Result<ignore::gitignore::Gitignore> {
    let mut builder = ignore::gitignore::GitignoreBuilder::new("");
    let object = reader
        .repo
        .find_object(tree)
        .map_err(|e| reader.err(format!("tree {tree}"), e))?;
    let parsed = gix::objs::TreeRef::from_bytes(&object.data, reader.repo.object_hash())
        .map_err(|e| reader.err(format!("tree {tree}"), e))?;
    let file = parsed
        .entries
        .iter()
        .find(|e| e.filename == IGNORE_FILE.as_bytes() && e.mode.is_blob());
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
        let content = reader.blob(file.oid.to_owned(), IGNORE_FILE)?;
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
fn check_symlinks(reader: &Reader<'_>, entries: &mut [Entry]) -> Result<()> {
    let mut links = HashMap::new();
    for entry in entries.iter() {
        if matches!(entry.kind, Kind::Link) {
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

fn prepare_dest(dest: &Path) -> Result<()> {
    let io = |source| Error::Io {
        path: dest.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dest).map_err(io)?;
    let mut listing = std::fs::read_dir(dest).map_err(io)?;
    if listing.next().is_some() {
        return Err(Error::DestinationNotEmpty {
            path: dest.display().to_string(),
        });
    }
    Ok(())
}

fn write_entry(dest: &Path, entry: &Entry, content: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let full: PathBuf = dest.join(&entry.path);
    let io = |source| Error::Io {
        path: full.display().to_string(),
        source,
    };
    if let Some(parent) = full.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    match entry.kind {
        Kind::Link => {
            let target = String::from_utf8_lossy(content).into_owned();
            std::os::unix::fs::symlink(target, &full).map_err(io)?;
        }
        Kind::File { executable } => {
            std::fs::write(&full, content).map_err(io)?;
            let mode = if executable { 0o755 } else { 0o644 };
            std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode)).map_err(io)?;
        }
    }
    Ok(())
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
    fn names_that_leave_the_tree_are_refused() {
        for bad in ["", ".", "..", "a/b", ".git", ".GIT", "a\\b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("..a").is_ok());
    }
}
