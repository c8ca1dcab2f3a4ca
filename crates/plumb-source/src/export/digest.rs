//! The tree digest: one `sha256:` value over exported paths, modes and contents, computed the
//! same way while exporting and later from what is on disk.

use std::fmt::Write as _;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::{Error, Kind, Result};

pub(super) fn hash_entry(hasher: &mut Sha256, kind: Kind, path: &str, content: &[u8]) {
    hasher.update(kind.mode().as_bytes());
    hasher.update(b" ");
    hasher.update(path.as_bytes());
    hasher.update(b"\0");
    hasher.update((content.len() as u64).to_be_bytes());
    hasher.update(content);
}

pub(super) fn finish(hasher: Sha256) -> String {
    let mut digest = String::from("sha256:");
    for byte in hasher.finalize() {
        let _ = write!(digest, "{byte:02x}");
    }
    digest
}

/// The digest [`export_tree`](super::export_tree) reports, computed from what is in `dir` now
/// (files, executable bits and symlink targets; directories count only through their
/// contents). Links are not followed. Blocking.
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
