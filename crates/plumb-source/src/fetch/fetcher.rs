//! The [`Fetcher`]: the cache of bare repositories, its locks, and one fetch from URL to
//! exported, verified tree.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::git::Git;

use super::resolve::resolve;
use super::url::{check_url_with, is_http};
use super::{Artifact, Credentials, Error, Result, SourceRequest};

/// Fetches sources into a cache directory of bare repositories (one per URL, reused so a
/// re-fetch transfers only new objects) and exports revisions from them.
///
/// Cheap to clone; clones share the in-process locks. Fetches of the same URL are serialised
/// within the process and, through a lock file, across processes sharing the cache.
#[derive(Clone, Debug)]
pub struct Fetcher {
    cache_dir: PathBuf,
    locks: Arc<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>>,
}

/// Holds a URL's cache entry: the in-process guard and the locked file.
struct CacheLock {
    _file: std::fs::File,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Fetcher {
    /// A fetcher keeping bare repositories under `cache_dir/repos`.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            locks: Arc::default(),
        }
    }

    /// The cache directory.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// The bare repository caching `url`: `cache_dir/repos/<sha256(url) prefix>.git`.
    pub fn repo_path(&self, url: &str) -> PathBuf {
        let mut name = String::new();
        for byte in &Sha256::digest(url.trim().as_bytes())[..16] {
            let _ = write!(name, "{byte:02x}");
        }
        self.cache_dir.join("repos").join(format!("{name}.git"))
    }

    /// Fetches `request.url` into the cache, resolves the ref, verifies signatures (when
    /// asked) and exports the tree into `dest`, which must not exist or be empty. Nothing is
    /// exported when verification fails.
    pub async fn fetch(&self, request: &SourceRequest, dest: &Path) -> crate::Result<Artifact> {
        request.git_ref.validate()?;
        check_url_with(&request.url, request.options.allow_insecure_http)?;
        if is_http(&request.url)
            && !matches!(
                request.options.credentials,
                Credentials::None | Credentials::Ssh { .. }
            )
        {
            return Err(Error::InsecureWithCredentials {
                url: request.url.trim().to_owned(),
            }
            .into());
        }
        let url = request.url.trim().to_owned();
        let repo = self.repo_path(&url);
        let _lock = self.lock(&repo, request.options.timeout).await?;
        let git = Git::new(&url, &request.options)?;
        self.ensure_repo(&git, &repo).await?;
        git.run(
            "fetch",
            Some(&repo),
            &[
                "fetch",
                "--quiet",
                "--prune",
                "--no-tags",
                "--no-write-fetch-head",
                "--no-recurse-submodules",
                "--no-auto-maintenance",
                "--",
                &url,
                "+refs/heads/*:refs/heads/*",
                "+refs/tags/*:refs/tags/*",
            ],
        )
        .await?;
        let (commit, resolved_ref, tag) = resolve(&git, &repo, &url, &request.git_ref).await?;
        tracing::info!(url, git_ref = %request.git_ref, commit, "fetched");

        let started = std::time::Instant::now();
        let verification = match &request.verify {
            None => None,
            Some(policy) => {
                let (repo, commit, since, tag, policy) = (
                    repo.clone(),
                    commit.clone(),
                    request.last_verified.clone(),
                    tag.clone(),
                    policy.clone(),
                );
                let report = blocking(move || {
                    crate::verify::check(&repo, &commit, since.as_deref(), tag.as_deref(), &policy)
                })
                .await??;
                Some(report.into_verification()?)
            }
        };

        let verified_in = started.elapsed();
        let exported = {
            let (repo, commit, dest, ignore, limits, reuse) = (
                repo.clone(),
                commit.clone(),
                dest.to_owned(),
                request.ignore.clone(),
                request.limits,
                request.reuse.clone(),
            );
            blocking(move || {
                crate::export::export_tree_reusing(
                    &repo,
                    &commit,
                    &dest,
                    &ignore,
                    &limits,
                    reuse.as_ref(),
                )
            })
            .await??
        };
        tracing::debug!(
            commit,
            files = exported.files,
            linked = exported.linked,
            verify_ms = verified_in.as_millis() as u64,
            export_ms = (started.elapsed() - verified_in).as_millis() as u64,
            "verified and exported"
        );
        Ok(Artifact {
            url,
            git_ref: request.git_ref.clone(),
            resolved_ref,
            commit,
            tree_digest: exported.tree_digest,
            dir: dest.to_owned(),
            files: exported.files,
            entries: exported.entries.into(),
            verification,
        })
    }

    async fn lock(&self, repo: &Path, timeout: Duration) -> Result<CacheLock> {
        let mutex = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(repo.to_owned()).or_default().clone()
        };
        let guard = mutex.lock_owned().await;
        let parent = repo.parent().unwrap_or(&self.cache_dir);
        std::fs::create_dir_all(parent).map_err(|source| Error::Io {
            what: parent.display().to_string(),
            source,
        })?;
        let path = repo.with_extension("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| Error::Io {
                what: path.display().to_string(),
                source,
            })?;
        let start = tokio::time::Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    if start.elapsed() > timeout {
                        return Err(Error::LockTimeout {
                            path: path.display().to_string(),
                            after: timeout,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(std::fs::TryLockError::Error(source)) => {
                    return Err(Error::Io {
                        what: path.display().to_string(),
                        source,
                    });
                }
            }
        }
        Ok(CacheLock {
            _file: file,
            _guard: guard,
        })
    }

    async fn ensure_repo(&self, git: &Git, repo: &Path) -> Result<()> {
        if repo.join("HEAD").is_file() {
            return Ok(());
        }
        // Initialise beside it and rename, so a crash never leaves a half-made repository.
        let tmp = repo.with_extension(format!("init-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let tmp_str = tmp.to_string_lossy().into_owned();
        git.run("init", None, &["init", "--quiet", "--bare", "--", &tmp_str])
            .await?;
        std::fs::rename(&tmp, repo).map_err(|source| Error::Io {
            what: repo.display().to_string(),
            source,
        })
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task {
            detail: e.to_string(),
        })
}
