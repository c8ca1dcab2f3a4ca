//! Chart archives kept on disk between renders, so that a chart's dependencies are not
//! downloaded again for every render of a chart from Git.
//!
//! The cache never decides *what* is fetched, only saves the download: the index or manifest
//! is resolved first, every time, with the requester's own credentials, and an archive is
//! taken from the cache only under a key made of the repository URL the requester resolved
//! against, the chart, the resolved version and the digest that resolution promised. So a
//! requester without access to a private repository cannot resolve it and never reaches its
//! cached archive, and one that names the digest of a private archive in a repository of its
//! own gets another key. The archive's digest is checked again on every read: a file changed
//! on disk is removed and downloaded again. The cache is bounded in bytes; the least recently
//! used archives go first.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// A directory of chart archives, content-checked and size-bounded.
#[derive(Clone, Debug)]
pub struct ArchiveCache {
    dir: PathBuf,
    max_bytes: u64,
}

/// A cached archive's name for (repository, chart, version, digest).
#[derive(Clone, Debug)]
pub(super) struct Key {
    file: String,
    /// `sha256:<hex>` the archive's bytes must have.
    digest: String,
}

impl Key {
    /// The key of the archive of `chart` `version` resolved from `repository`, whose bytes
    /// have `digest` (`sha256:<hex>`); `None` when the digest is no sha256 one (nothing to
    /// check a cached file against).
    pub(super) fn new(repository: &str, chart: &str, version: &str, digest: &str) -> Option<Self> {
        let hex = digest.strip_prefix("sha256:")?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut h = Sha256::new();
        for part in [repository, chart, version, digest] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        Some(Self {
            file: format!("{}.tgz", hex_of(&h.finalize())),
            digest: digest.to_ascii_lowercase(),
        })
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ArchiveCache {
    /// A cache in `dir` (made when first written) of at most `max_bytes` of archives.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        Self {
            dir: dir.into(),
            max_bytes,
        }
    }

    /// The archive under `key`, when cached with the right digest and at most `max_size`
    /// bytes; a file that fails the check is removed. Blocking.
    pub(super) fn get(&self, key: &Key, max_size: u64) -> Option<Vec<u8>> {
        let path = self.dir.join(&key.file);
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if !meta.is_file() || meta.len() > max_size {
            let _ = std::fs::remove_file(&path);
            return None;
        }
        let bytes = std::fs::read(&path).ok()?;
        if super::client::sha256_digest(&bytes) != key.digest {
            tracing::warn!(file = %path.display(), "a cached chart archive does not match its digest: removed");
            let _ = std::fs::remove_file(&path);
            return None;
        }
        // Most recently used: kept longest.
        if let Ok(file) = std::fs::File::options().append(true).open(&path) {
            let _ = file.set_modified(std::time::SystemTime::now());
        }
        Some(bytes)
    }

    /// Keeps `bytes` (already checked against `key`'s digest) under `key`, then removes the
    /// least recently used archives beyond the bound. Failures only cost a later download.
    /// Blocking.
    pub(super) fn put(&self, key: &Key, bytes: &[u8]) {
        if bytes.len() as u64 > self.max_bytes {
            return;
        }
        if let Err(e) = self.write(key, bytes) {
            tracing::debug!(error = %e, "a chart archive was not cached");
            return;
        }
        self.evict();
    }

    fn write(&self, key: &Key, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write as _;
        std::fs::create_dir_all(&self.dir)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".partial-")
            .tempfile_in(&self.dir)?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.dir.join(&key.file)).map_err(|e| e.error)?;
        Ok(())
    }

    /// Removes the least recently used archives until the rest fit the bound.
    fn evict(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tgz"))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
        files.sort();
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }

    /// The cache's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn keys_differ_by_repository_chart_version_and_digest() {
        let k = |r: &str, c: &str, v: &str| Key::new(r, c, v, D).expect("a sha256 digest").file;
        let a = k("https://a/stable", "app", "1.0.0");
        assert_ne!(a, k("https://b/stable", "app", "1.0.0"));
        assert_ne!(a, k("https://a/stable", "other", "1.0.0"));
        assert_ne!(a, k("https://a/stable", "app", "1.0.1"));
        // No field can be shifted into the next.
        assert_ne!(k("https://a/x", "y", "1"), k("https://a/", "xy", "1"));
        assert!(Key::new("r", "c", "v", "md5:abc").is_none());
        assert!(Key::new("r", "c", "v", "sha256:../../x").is_none());
    }

    #[test]
    fn a_changed_file_is_refused_and_the_bound_keeps_the_newest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ArchiveCache::new(dir.path(), 10);
        let bytes = b"archive";
        let digest = super::super::client::sha256_digest(bytes);
        let key = Key::new("r", "c", "1", &digest).expect("key");
        cache.put(&key, bytes);
        assert_eq!(cache.get(&key, 100).as_deref(), Some(&bytes[..]));
        assert_eq!(cache.get(&key, 3), None, "larger than the limit");
        cache.put(&key, bytes);
        std::fs::write(dir.path().join(&key.file), b"changed").expect("write");
        assert_eq!(cache.get(&key, 100), None);
        assert!(!dir.path().join(&key.file).exists());
        // Two archives of 7 bytes do not fit 10: the older goes.
        cache.put(&key, bytes);
        let other = b"second!";
        let key2 =
            Key::new("r", "c", "2", &super::super::client::sha256_digest(other)).expect("key");
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1);
        std::fs::File::options()
            .append(true)
            .open(dir.path().join(&key.file))
            .and_then(|f| f.set_modified(old))
            .expect("set the first one's mtime");
        cache.put(&key2, other);
        assert_eq!(cache.get(&key2, 100).as_deref(), Some(&other[..]));
        assert_eq!(cache.get(&key, 100), None);
    }
}
