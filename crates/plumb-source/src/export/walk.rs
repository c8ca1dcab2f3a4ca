//! Reading and checking the tree before anything is written: names, duplicates, ignore
//! patterns and limits, from the objects' recorded sizes.

use std::collections::HashSet;
use std::path::Path;

use gix::ObjectId;

use super::names::{check_name, fold};
use super::{
    Entry, Error, ExportLimits, IGNORE_FILE, ItemMode, Kind, ObjectSource, Result, TreeItem,
};

/// Longest symlink target (Linux's PATH_MAX).
const MAX_LINK_TARGET: u64 = 4096;

pub(super) struct Reader<'a> {
    pub(super) source: &'a dyn ObjectSource,
    pub(super) commit: &'a str,
    pub(super) limits: &'a ExportLimits,
}

pub(super) struct Walk {
    pub(super) entries: Vec<Entry>,
    pub(super) ignored: usize,
    pub(super) total: u64,
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
    pub(super) fn blob(&self, id: ObjectId, path: &str) -> Result<Vec<u8>> {
        let size = self.blob_size(id, path)?;
        if size > self.limits.max_file_size {
            return Err(self.too_large("file size", Some(path), self.limits.max_file_size, size));
        }
        self.source
            .blob(id)
            .map_err(|e| self.err(format!("{path} ({id})"), e))
    }

    pub(super) fn tree(&self, id: ObjectId, path: &str) -> Result<Vec<TreeItem>> {
        self.source
            .tree(id)
            .map_err(|e| self.err(format!("tree {path:?} ({id})"), e))
    }

    pub(super) fn walk(
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

pub(super) fn build_ignore(
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
