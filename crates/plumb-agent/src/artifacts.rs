//! The artifact store: the exported trees Syncs render, one directory per export.
//!
//! - Every fetch exports into a staging directory of its own (never shared between
//!   operations), which becomes the artifact by an atomic rename to a name no other export
//!   uses (`<commit>.<unique>`), so a directory never changes once it is an artifact.
//! - A Sync renders from an [`Artifact`] handle it holds for the whole render; a replaced
//!   artifact's directory is removed only when the last handle is dropped (reference-counted
//!   collection), so nothing disappears under a render and a half-removed directory never
//!   renders as fewer objects (which a prune would then delete).
//! - A new export links the files its commit did not change from the current artifact
//!   (`plumb_source::export::Reuse`: same path, mode and blob, and the same bytes on disk)
//!   instead of creating them again; artifacts are never written after they are stored, so
//!   the shared files never change.
//! - The recorded tree digest is checked on disk right before each render.
//! - Directories left by an earlier process are collected when the source is next stored.
//! - The list of exported files (path, mode, Git object id) of a source's last few commits is
//!   kept in memory, so that a Sync can tell that none of the files its render reads changed
//!   between the revision it applied and a new one, without reading the disk.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use plumb_core::Manifest;
use plumb_source::export::{ExportedFile, Reuse};

use crate::error::{Error, Result};

/// Prefix of staging directories inside a source's directory.
const STAGING_PREFIX: &str = ".staging-";

/// Commits per source whose exported file lists are kept (see [`ArtifactStore::files_of`]):
/// the current one, the one most Syncs applied before it, and one more for a Sync lagging
/// behind (one further back renders as usual). About 120 bytes per file each.
const FILE_LISTS_KEPT: usize = 3;

/// The exported files of one commit, sorted by path.
pub type FileList = Arc<[ExportedFile]>;

/// Per source (namespace, name): (commit, its files) of its last few commits, newest last.
type FileLists = HashMap<(String, String), VecDeque<(String, FileList)>>;

/// One exported revision of a GitSource. Dropping the last handle of a retired artifact
/// removes its directory.
#[derive(Debug)]
pub struct Artifact {
    /// The commit id.
    pub commit: String,
    /// The directory holding the export (unique to this export).
    pub dir: PathBuf,
    /// The digest of the exported tree.
    pub tree_digest: String,
    /// Whether its signatures were verified (the GitSource had `spec.verify`).
    pub verified: bool,
    retired: AtomicBool,
    live: Arc<Mutex<HashSet<PathBuf>>>,
}

impl Drop for Artifact {
    fn drop(&mut self) {
        if self.retired.load(Ordering::SeqCst) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        self.live
            .lock()
            .expect("artifact store lock poisoned")
            .remove(&self.dir);
    }
}

/// A staging directory for one export; removed when dropped unless stored.
#[derive(Debug)]
pub struct Staging {
    dir: Option<tempfile::TempDir>,
    parent: PathBuf,
    live: Arc<Mutex<HashSet<PathBuf>>>,
}

impl Staging {
    /// Where the export writes (a fresh, empty directory exists there only after the export;
    /// the fetcher creates it).
    pub fn path(&self) -> PathBuf {
        self.dir
            .as_ref()
            .map(|d| d.path().join("tree"))
            .unwrap_or_default()
    }
}

/// The store of every GitSource's current artifact.
#[derive(Debug)]
pub struct ArtifactStore {
    root: PathBuf,
    current: Mutex<HashMap<(String, String), Arc<Artifact>>>,
    /// Directories of artifacts and stagings in use by this process.
    live: Arc<Mutex<HashSet<PathBuf>>>,
    /// Per source, the exported files of its last few commits, newest last.
    files: Mutex<FileLists>,
}

impl ArtifactStore {
    /// A store under `root` (`root/<namespace>/<name>/...`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            current: Mutex::default(),
            live: Arc::default(),
            files: Mutex::default(),
        }
    }

    /// The directory holding every export of GitSource `ns/name`.
    pub fn source_dir(&self, ns: &str, name: &str) -> PathBuf {
        self.root.join(ns).join(name)
    }

    /// A staging directory for one export of `ns/name`, unique to this operation.
    pub fn staging(&self, ns: &str, name: &str) -> Result<Staging> {
        let parent = self.source_dir(ns, name);
        let io = |source| Error::Io {
            context: format!("creating a staging directory in {}", parent.display()),
            source,
        };
        std::fs::create_dir_all(&parent).map_err(io)?;
        let dir = tempfile::Builder::new()
            .prefix(STAGING_PREFIX)
            .tempdir_in(&parent)
            .map_err(io)?;
        self.live
            .lock()
            .expect("artifact store lock poisoned")
            .insert(dir.path().to_owned());
        Ok(Staging {
            dir: Some(dir),
            parent,
            live: self.live.clone(),
        })
    }

    /// The current artifact of `ns/name`, held by the caller for as long as it reads it.
    pub fn get(&self, ns: &str, name: &str) -> Option<Arc<Artifact>> {
        self.lock().get(&(ns.to_owned(), name.to_owned())).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<Artifact>>> {
        self.current.lock().expect("artifact store lock poisoned")
    }

    /// Makes the export in `staging` the current artifact of `ns/name`, unless the current
    /// one is the same commit and still intact on disk (then `staging` is dropped). The
    /// replaced artifact is retired: its directory goes when its last reader is done.
    pub fn store(
        &self,
        ns: &str,
        name: &str,
        mut staging: Staging,
        commit: &str,
        tree_digest: &str,
        verified: bool,
    ) -> Result<Arc<Artifact>> {
        let key = (ns.to_owned(), name.to_owned());
        if let Some(current) = self.lock().get(&key).cloned()
            && current.commit == commit
            && current.tree_digest == tree_digest
            && current.verified == verified
            && plumb_source::export::verify_dir(&current.dir, tree_digest).is_ok()
        {
            return Ok(current);
        }
        let tmp = staging
            .dir
            .take()
            .expect("a staging directory is stored once");
        let unique = tmp
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(STAGING_PREFIX))
            .unwrap_or("0")
            .to_owned();
        let final_dir = staging.parent.join(format!("{commit}.{unique}"));
        let tree = tmp.path().join("tree");
        std::fs::rename(&tree, &final_dir).map_err(|source| Error::Io {
            context: format!("storing the artifact in {}", final_dir.display()),
            source,
        })?;
        {
            let mut live = self.live.lock().expect("artifact store lock poisoned");
            live.remove(tmp.path());
            live.insert(final_dir.clone());
        }
        drop(tmp);
        let artifact = Arc::new(Artifact {
            commit: commit.to_owned(),
            dir: final_dir,
            tree_digest: tree_digest.to_owned(),
            verified,
            retired: AtomicBool::new(false),
            live: self.live.clone(),
        });
        let previous = self.lock().insert(key, artifact.clone());
        if let Some(previous) = previous {
            previous.retired.store(true, Ordering::SeqCst);
        }
        self.collect(&staging.parent);
        Ok(artifact)
    }

    /// Records the files this agent exported for `commit` of `ns/name` (from its own export
    /// of that commit, after verification when the source verifies). An export of the same
    /// commit with other files (the ignore patterns changed) makes that commit's list
    /// unknown: which one a Sync applied cannot be told apart any more.
    pub fn record_files(&self, ns: &str, name: &str, commit: &str, files: FileList) {
        let mut all = self.files.lock().expect("artifact store lock poisoned");
        let lists = all.entry((ns.to_owned(), name.to_owned())).or_default();
        if let Some(i) = lists.iter().position(|(c, _)| c == commit) {
            let (_, known) = lists.remove(i).expect("found above");
            if known != files {
                return;
            }
        }
        lists.push_back((commit.to_owned(), files));
        while lists.len() > FILE_LISTS_KEPT {
            lists.pop_front();
        }
    }

    /// The files this agent exported for `commit` of `ns/name`, if it is one of the last few
    /// recorded and was always exported with the same files.
    pub fn files_of(&self, ns: &str, name: &str, commit: &str) -> Option<FileList> {
        let all = self.files.lock().expect("artifact store lock poisoned");
        all.get(&(ns.to_owned(), name.to_owned()))?
            .iter()
            .find(|(c, _)| c == commit)
            .map(|(_, f)| f.clone())
    }

    /// The current artifact of `ns/name` with its file list, for the next export to link its
    /// unchanged files from ([`plumb_source::export::Reuse`]); the handle keeps the directory
    /// in place for as long as the caller holds it.
    pub fn reuse(&self, ns: &str, name: &str) -> Option<(Arc<Artifact>, Reuse)> {
        let current = self.get(ns, name)?;
        let entries = self.files_of(ns, name, &current.commit)?;
        let reuse = Reuse {
            dir: current.dir.clone(),
            entries,
        };
        Some((current, reuse))
    }

    /// Retires the artifact of `ns/name` (its GitSource was deleted).
    pub fn remove(&self, ns: &str, name: &str) {
        self.files
            .lock()
            .expect("artifact store lock poisoned")
            .remove(&(ns.to_owned(), name.to_owned()));
        if let Some(previous) = self.lock().remove(&(ns.to_owned(), name.to_owned())) {
            previous.retired.store(true, Ordering::SeqCst);
        }
        self.collect(&self.source_dir(ns, name));
    }

    /// Removes the directories below `dir` that nothing in this process uses (left by an
    /// earlier process, or retired ones whose removal failed).
    fn collect(&self, dir: &Path) {
        let live = self
            .live
            .lock()
            .expect("artifact store lock poisoned")
            .clone();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !live.contains(&path) {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // The TempDir removes the directory itself.
        if let Some(dir) = &self.dir {
            self.live
                .lock()
                .expect("artifact store lock poisoned")
                .remove(dir.path());
        }
    }
}

/// Renders `path` of `artifact` after checking its digest on disk, on a blocking thread
/// (Kustomize may run for up to a minute), holding the artifact for the whole render.
pub async fn render(artifact: Arc<Artifact>, path: Option<String>) -> Result<Vec<Manifest>> {
    render_with(artifact, path, None).await
}

/// [`render`], with `chart` options when the path is (or must be) a Helm chart.
pub async fn render_with(
    artifact: Arc<Artifact>,
    path: Option<String>,
    chart: Option<plumb_render::ChartOptions>,
) -> Result<Vec<Manifest>> {
    tokio::task::spawn_blocking(move || {
        plumb_source::export::verify_dir(&artifact.dir, &artifact.tree_digest)
            .map_err(|e| Error::Source(plumb_source::Error::Export(e)))?;
        let opts = plumb_render::RenderOptions {
            chart: chart.unwrap_or_default(),
            ..plumb_render::RenderOptions::default()
        };
        render_dir_with(&artifact.dir, path.as_deref(), &opts)
    })
    .await
    .map_err(|e| Error::Io {
        context: "rendering".into(),
        source: std::io::Error::other(e.to_string()),
    })?
}

/// Renders `path` of the per-render copy `copy` (its `root` directory; see
/// `syncs::helm`), then removes the copy.
pub async fn render_copy(
    copy: tempfile::TempDir,
    path: Option<String>,
    chart: Option<plumb_render::ChartOptions>,
) -> Result<Vec<Manifest>> {
    tokio::task::spawn_blocking(move || {
        let opts = plumb_render::RenderOptions {
            chart: chart.unwrap_or_default(),
            ..plumb_render::RenderOptions::default()
        };
        let rendered = render_dir_with(&copy.path().join("root"), path.as_deref(), &opts);
        drop(copy);
        rendered
    })
    .await
    .map_err(|e| Error::Io {
        context: "rendering".into(),
        source: std::io::Error::other(e.to_string()),
    })?
}

/// Renders `path` (relative; empty or `.` for the root) of the directory `dir`.
pub fn render_dir(dir: &Path, path: Option<&str>) -> Result<Vec<Manifest>> {
    render_dir_with(dir, path, &plumb_render::RenderOptions::default())
}

fn render_dir_with(
    dir: &Path,
    path: Option<&str>,
    opts: &plumb_render::RenderOptions,
) -> Result<Vec<Manifest>> {
    // `render_path` reads "", "." and "./x/" as the root and `x`.
    let path = Path::new(path.unwrap_or(""));
    Ok(plumb_render::render_path(dir, path, opts)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exports one file into a staging directory of `store`, as the fetcher does.
    fn export(store: &ArtifactStore, content: &str) -> (Staging, String) {
        let staging = store.staging("ns", "src").expect("staging");
        std::fs::create_dir_all(staging.path()).expect("tree");
        std::fs::write(staging.path().join("cm.yaml"), content).expect("file");
        let digest = plumb_source::export::digest_dir(&staging.path()).expect("digest");
        (staging, digest)
    }

    #[test]
    fn a_replaced_artifact_lives_until_its_last_reader_is_done() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = ArtifactStore::new(tmp.path());
        let (staging, digest) = export(&store, "a: 1\n");
        let first = store
            .store("ns", "src", staging, "c1", &digest, true)
            .expect("stored");
        let reading = store.get("ns", "src").expect("current");
        drop(first);
        let (staging, digest) = export(&store, "a: 2\n");
        let second = store
            .store("ns", "src", staging, "c2", &digest, true)
            .expect("stored");
        // A Sync still renders the first one: it is all there.
        assert!(reading.dir.join("cm.yaml").is_file());
        assert_ne!(reading.dir, second.dir);
        let old = reading.dir.clone();
        drop(reading);
        assert!(!old.exists(), "a retired artifact outlived its last reader");
        assert!(second.dir.join("cm.yaml").is_file());
    }

    #[test]
    fn stagings_are_per_operation_and_leftovers_are_collected() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // What a crashed earlier process left behind.
        let leftover = tmp.path().join("ns/src/c0.old");
        std::fs::create_dir_all(&leftover).expect("leftover");
        let store = ArtifactStore::new(tmp.path());
        let (one, digest) = export(&store, "a: 1\n");
        let (two, _) = export(&store, "a: 1\n");
        assert_ne!(one.path(), two.path());
        let stored = store
            .store("ns", "src", one, "c1", &digest, false)
            .expect("stored");
        assert!(!leftover.exists());
        // The other operation's staging is in use and stays.
        assert!(two.path().is_dir());
        assert!(stored.dir.is_dir());
    }

    #[test]
    fn the_same_intact_commit_keeps_its_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = ArtifactStore::new(tmp.path());
        let (staging, digest) = export(&store, "a: 1\n");
        let first = store
            .store("ns", "src", staging, "c1", &digest, true)
            .expect("stored");
        let (staging, digest) = export(&store, "a: 1\n");
        let again = store
            .store("ns", "src", staging, "c1", &digest, true)
            .expect("stored");
        assert_eq!(first.dir, again.dir);
        // Changed on disk: the next store replaces it.
        std::fs::write(first.dir.join("cm.yaml"), "a: 9\n").expect("tamper");
        let (staging, digest) = export(&store, "a: 1\n");
        let fresh = store
            .store("ns", "src", staging, "c1", &digest, true)
            .expect("stored");
        assert_ne!(first.dir, fresh.dir);
    }

    #[test]
    fn file_lists_are_kept_for_the_last_commits_and_forgotten_when_ambiguous() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = ArtifactStore::new(tmp.path());
        let list = |paths: &[&str]| -> FileList {
            paths
                .iter()
                .map(|p| ExportedFile {
                    path: (*p).to_owned(),
                    mode: "100644",
                    id: plumb_source::export::ObjectId::null(plumb_source::export::HashKind::Sha1),
                })
                .collect()
        };
        for n in 0..=FILE_LISTS_KEPT {
            store.record_files("ns", "src", &format!("c{n}"), list(&["a.yaml"]));
        }
        assert!(
            store.files_of("ns", "src", "c0").is_none(),
            "the oldest is dropped"
        );
        assert!(store.files_of("ns", "src", "c1").is_some());
        assert!(store.files_of("ns", "other", "c1").is_none());
        // The same commit again with the same files: still known.
        store.record_files("ns", "src", "c1", list(&["a.yaml"]));
        assert!(store.files_of("ns", "src", "c1").is_some());
        // ... with other files (other ignore patterns): unknown from now on.
        store.record_files("ns", "src", "c1", list(&["b.yaml"]));
        assert!(store.files_of("ns", "src", "c1").is_none());
        store.remove("ns", "src");
        assert!(store.files_of("ns", "src", "c2").is_none());
    }

    #[tokio::test]
    async fn a_tampered_artifact_is_not_rendered() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = ArtifactStore::new(tmp.path());
        let (staging, digest) = export(
            &store,
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n",
        );
        let artifact = store
            .store("ns", "src", staging, "c1", &digest, true)
            .expect("stored");
        assert_eq!(
            render(artifact.clone(), None).await.expect("renders").len(),
            1
        );
        std::fs::remove_file(artifact.dir.join("cm.yaml")).expect("remove");
        let err = render(artifact, None).await.expect_err("refused");
        assert!(err.to_string().contains("tree digest"), "{err}");
    }
}
