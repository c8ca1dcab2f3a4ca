//! Where an export reads trees and blobs from: a repository, or memory for tests and fuzzing.

use std::collections::HashMap;
use std::path::Path;

use gix::ObjectId;

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

/// Where an export reads trees and blobs from: a repository
/// ([`export_tree`](super::export_tree)) or, for tests and fuzzing, memory ([`MemSource`]).
/// Errors are messages; the export adds the path.
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

pub(super) struct GixSource<'a> {
    pub(super) repo: &'a gix::Repository,
    pub(super) path: &'a Path,
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
