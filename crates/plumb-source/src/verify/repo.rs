//! Object reads for verification: commits, parents, the range to check, and the paths a
//! commit changes (trees compared in-process).

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::fmt;
use std::path::Path;

use gix::ObjectId;
use gix::objs::CommitRef;

use super::{Error, Result};

/// A repository opened for object reads.
pub(super) struct Repo {
    pub(super) inner: gix::Repository,
    pub(super) path: String,
}

impl Repo {
    pub(super) fn open(path: &Path) -> Result<Self> {
        let inner = gix::open_opts(path, gix::open::Options::isolated()).map_err(|e| {
            Error::Repository {
                repo: path.display().to_string(),
                what: "the repository".into(),
                detail: e.to_string(),
            }
        })?;
        Ok(Self {
            inner,
            path: path.display().to_string(),
        })
    }

    pub(super) fn err(&self, what: impl Into<String>, detail: impl fmt::Display) -> Error {
        Error::Repository {
            repo: self.path.clone(),
            what: what.into(),
            detail: detail.to_string(),
        }
    }

    pub(super) fn hash_kind(&self) -> gix::hash::Kind {
        self.inner.object_hash()
    }

    /// Raw object data and kind.
    pub(super) fn object(&self, id: ObjectId) -> Result<(gix::objs::Kind, Vec<u8>)> {
        let object = self
            .inner
            .find_object(id)
            .map_err(|e| self.err(format!("object {id}"), e))?;
        Ok((object.kind, object.data.clone()))
    }

    pub(super) fn commit_data(&self, id: ObjectId) -> Result<Vec<u8>> {
        match self.object(id)? {
            (gix::objs::Kind::Commit, data) => Ok(data),
            (kind, _) => Err(self.err(format!("commit {id}"), format!("it is a {kind}"))),
        }
    }

    pub(super) fn commit_id(&self, hex: &str) -> Result<ObjectId> {
        let id =
            ObjectId::from_hex(hex.as_bytes()).map_err(|e| self.err(format!("commit {hex}"), e))?;
        self.commit_data(id)?;
        Ok(id)
    }

    fn parents(&self, id: ObjectId) -> Result<Vec<ObjectId>> {
        let data = self.commit_data(id)?;
        let commit = CommitRef::from_bytes(&data, self.hash_kind())
            .map_err(|e| self.err(format!("commit {id}"), e))?;
        Ok(commit.parents().collect())
    }

    /// Commits reachable from `tip` and not from `since`, newest first (breadth-first), and
    /// whether `since` is reachable from `tip` (the walk stops at ancestors of `since`, and on
    /// any path from `tip` to `since` the first of them is `since` itself).
    pub(super) fn range(&self, tip: ObjectId, since: ObjectId) -> Result<(Vec<ObjectId>, bool)> {
        let mut excluded = HashSet::new();
        let mut queue = VecDeque::from([since]);
        while let Some(id) = queue.pop_front() {
            if excluded.insert(id) {
                queue.extend(self.parents(id)?);
            }
        }
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut contains_since = false;
        let mut queue = VecDeque::from([tip]);
        while let Some(id) = queue.pop_front() {
            if id == since {
                contains_since = true;
            }
            if excluded.contains(&id) || !seen.insert(id) {
                continue;
            }
            out.push(id);
            queue.extend(self.parents(id)?);
        }
        Ok((out, contains_since))
    }

    /// Entries of a tree: (name, is tree, mode bits, id), names as stored. A tree with two
    /// entries of one name (also after case folding) is malformed: `Err(path)`.
    fn tree_entries(&self, id: ObjectId, prefix: &str) -> Result<Result<Vec<TreeEntry>, String>> {
        let (kind, data) = self.object(id)?;
        if kind != gix::objs::Kind::Tree {
            return Err(self.err(format!("tree {id}"), format!("it is a {kind}")));
        }
        let tree = gix::objs::TreeRef::from_bytes(&data, self.hash_kind())
            .map_err(|e| self.err(format!("tree {id}"), e))?;
        let mut names = HashSet::new();
        let mut entries = Vec::with_capacity(tree.entries.len());
        for e in &tree.entries {
            let folded = crate::export::fold(&String::from_utf8_lossy(e.filename));
            if !names.insert(folded) {
                return Ok(Err(join(prefix, &String::from_utf8_lossy(e.filename))));
            }
            entries.push(TreeEntry {
                name: e.filename.to_vec(),
                tree: e.mode.is_tree(),
                mode: u32::from(e.mode.value()),
                id: e.oid.to_owned(),
            });
        }
        Ok(Ok(entries))
    }

    /// Adds to `out` every path that differs between trees `a` and `b` (either may be absent);
    /// `Err(path)` when a tree on the way is malformed.
    fn diff_trees(
        &self,
        a: Option<ObjectId>,
        b: Option<ObjectId>,
        prefix: &str,
        out: &mut BTreeSet<String>,
    ) -> Result<Result<(), String>> {
        if a == b {
            return Ok(Ok(()));
        }
        let list = |t: Option<ObjectId>| -> Result<Result<Vec<TreeEntry>, String>> {
            t.map_or(Ok(Ok(Vec::new())), |t| self.tree_entries(t, prefix))
        };
        let left = match list(a)? {
            Ok(l) => l,
            Err(path) => return Ok(Err(path)),
        };
        let right = match list(b)? {
            Ok(r) => r,
            Err(path) => return Ok(Err(path)),
        };
        let names: BTreeSet<&[u8]> = left
            .iter()
            .chain(right.iter())
            .map(|e| e.name.as_slice())
            .collect();
        for name in names {
            let l = left.iter().find(|e| e.name == name);
            let r = right.iter().find(|e| e.name == name);
            if let (Some(l), Some(r)) = (l, r)
                && l == r
            {
                continue;
            }
            let path = join(prefix, &String::from_utf8_lossy(name));
            let sub = |e: Option<&TreeEntry>| e.filter(|e| e.tree).map(|e| e.id);
            let (lt, rt) = (sub(l), sub(r));
            if (lt.is_some() || rt.is_some())
                && let Err(bad) = self.diff_trees(lt, rt, &path, out)?
            {
                return Ok(Err(bad));
            }
            if l.is_some_and(|e| !e.tree) || r.is_some_and(|e| !e.tree) {
                out.insert(path);
            }
        }
        Ok(Ok(()))
    }

    /// Paths a commit changes relative to any of its parents (all paths for a root commit):
    /// a merge must satisfy the rules of everything it brings in. `Err(path)` names a
    /// malformed tree.
    pub(super) fn changed_paths(
        &self,
        commit: &CommitRef<'_>,
    ) -> Result<Result<BTreeSet<String>, String>> {
        let mut out = BTreeSet::new();
        let tree = Some(commit.tree());
        let parents: Vec<ObjectId> = commit.parents().collect();
        if parents.is_empty()
            && let Err(bad) = self.diff_trees(None, tree, "", &mut out)?
        {
            return Ok(Err(bad));
        }
        for parent in parents {
            let data = self.commit_data(parent)?;
            let parent = CommitRef::from_bytes(&data, self.hash_kind())
                .map_err(|e| self.err(format!("commit {parent}"), e))?;
            if let Err(bad) = self.diff_trees(Some(parent.tree()), tree, "", &mut out)? {
                return Ok(Err(bad));
            }
        }
        Ok(Ok(out))
    }
}

/// One entry of a tree, as [`Repo::diff_trees`] compares them.
#[derive(PartialEq, Eq)]
struct TreeEntry {
    name: Vec<u8>,
    tree: bool,
    mode: u32,
    id: ObjectId,
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}/{name}")
    }
}

pub(super) fn person(sig: &gix::actor::SignatureRef<'_>) -> String {
    format!(
        "{} <{}>",
        sig.name.to_string().trim(),
        sig.email.to_string().trim()
    )
}
