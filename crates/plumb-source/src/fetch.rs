//! Fetching sources into a cache of bare repositories and producing [`Artifact`]s.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::export::ExportLimits;
use crate::git::Git;
use crate::refs::GitRef;
use crate::verify::{Verification, VerifyPolicy};

/// Errors of fetching and resolving. Messages never contain credentials.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL is not one Plumb fetches from.
    #[error("invalid source URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// The URL carries a password or token, which would leak into process lists and logs.
    #[error(
        "the source URL contains credentials (user:password@); remove them from the URL and \
         pass them as basic-auth or token credentials instead"
    )]
    UrlHasCredentials,
    /// The server refused the credentials (or none were given).
    #[error("authentication to {url} failed: {detail}. Check the credentials")]
    Auth {
        /// The URL.
        url: String,
        /// git's message.
        detail: String,
    },
    /// The ssh host key is unknown or changed.
    #[error("ssh host key of {url} is not in the given known_hosts (or has changed): {detail}")]
    HostKey {
        /// The URL.
        url: String,
        /// git's message.
        detail: String,
    },
    /// TLS verification of the https server failed.
    #[error(
        "TLS verification of {url} failed: {detail}. Give the CA file that signed its certificate"
    )]
    Tls {
        /// The URL.
        url: String,
        /// git's message.
        detail: String,
    },
    /// The repository does not exist on the server.
    #[error("repository {url} not found: {detail}")]
    RepositoryNotFound {
        /// The URL.
        url: String,
        /// git's message.
        detail: String,
    },
    /// Another git failure (network, server error).
    #[error("git {action} of {url} failed: {detail}")]
    Git {
        /// What git was doing.
        action: String,
        /// The URL.
        url: String,
        /// git's message, secrets removed.
        detail: String,
    },
    /// git took longer than the timeout and was killed.
    #[error("git {action} of {url} timed out after {after:?}")]
    Timeout {
        /// What git was doing.
        action: String,
        /// The URL.
        url: String,
        /// The timeout.
        after: Duration,
    },
    /// The branch or tag does not exist.
    #[error("{git_ref} not found in {url}")]
    RefNotFound {
        /// The ref.
        git_ref: GitRef,
        /// The URL.
        url: String,
    },
    /// No tag matches the semver range.
    #[error("no tag of {url} matches semver range {range:?}")]
    NoMatchingTag {
        /// The range.
        range: String,
        /// The URL.
        url: String,
    },
    /// Another process holds the cache lock for too long.
    #[error("timed out after {after:?} waiting for the cache lock {path}")]
    LockTimeout {
        /// The lock file.
        path: String,
        /// How long we waited.
        after: Duration,
    },
    /// Local I/O failed (cache directory, spawning git).
    #[error("cannot use {what}: {source}")]
    Io {
        /// What was being used.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Plain http was asked for together with credentials, which it would send in clear text.
    #[error(
        "credentials are never sent over plain http ({url}); use https, or drop the \
         credentials for a public internal server"
    )]
    InsecureWithCredentials {
        /// The URL.
        url: String,
    },
    /// The remote sent objects that fail git's object checks (e.g. a tree with duplicate
    /// entries or a `.git` name): nothing is stored or exported.
    #[error("git {action} of {url} refused malformed objects: {detail}")]
    BadObjects {
        /// What git was doing.
        action: String,
        /// The URL.
        url: String,
        /// git's fsck message.
        detail: String,
    },
    /// A blocking task panicked or was cancelled.
    #[error("internal task failed: {detail}")]
    Task {
        /// The join error.
        detail: String,
    },
}

/// Result with [`enum@Error`] as default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Network trouble, timeouts, locks and I/O may pass; configuration problems do not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Git { .. }
                | Error::Timeout { .. }
                | Error::LockTimeout { .. }
                | Error::Io { .. }
                | Error::Task { .. }
        )
    }

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidUrl { .. } => "fetch_invalid_url",
            Error::UrlHasCredentials => "fetch_url_has_credentials",
            Error::Auth { .. } => "fetch_auth",
            Error::HostKey { .. } => "fetch_host_key",
            Error::Tls { .. } => "fetch_tls",
            Error::RepositoryNotFound { .. } => "fetch_repository_not_found",
            Error::Git { .. } => "fetch_git",
            Error::Timeout { .. } => "fetch_timeout",
            Error::RefNotFound { .. } => "fetch_ref_not_found",
            Error::NoMatchingTag { .. } => "fetch_no_matching_tag",
            Error::LockTimeout { .. } => "fetch_lock_timeout",
            Error::Io { .. } => "fetch_io",
            Error::Task { .. } => "fetch_task",
            Error::InsecureWithCredentials { .. } => "fetch_insecure_with_credentials",
            Error::BadObjects { .. } => "fetch_bad_objects",
        }
    }

    /// Sorts a git failure by its (already redacted) stderr.
    pub(crate) fn classify(action: &str, url: &str, stderr: String) -> Self {
        let url = url.to_owned();
        let has = |needle: &str| stderr.contains(needle);
        if has("fsck error") || has("duplicateEntries") || has("hasDotgit") {
            Error::BadObjects {
                action: action.to_owned(),
                url,
                detail: stderr,
            }
        } else if has("Host key verification failed")
            || has("REMOTE HOST IDENTIFICATION HAS CHANGED")
        {
            Error::HostKey {
                url,
                detail: stderr,
            }
        } else if has("Authentication failed")
            || has("Permission denied")
            || has("could not read Username")
            || has("could not read Password")
            || has("terminal prompts disabled")
            || has("The requested URL returned error: 401")
            || has("The requested URL returned error: 403")
        {
            Error::Auth {
                url,
                detail: stderr,
            }
        } else if has("server certificate verification failed")
            || has("SSL certificate problem")
            || has("unable to get local issuer certificate")
        {
            Error::Tls {
                url,
                detail: stderr,
            }
        } else if has("does not appear to be a git repository")
            || has("repository not found")
            || has("Repository not found")
            || has("The requested URL returned error: 404")
        {
            Error::RepositoryNotFound {
                url,
                detail: stderr,
            }
        } else {
            Error::Git {
                action: action.to_owned(),
                url,
                detail: stderr,
            }
        }
    }
}

/// How to authenticate to the remote.
#[derive(Clone, Debug, Default)]
pub enum Credentials {
    /// Anonymous (or `file://` and local paths).
    #[default]
    None,
    /// https basic auth; a personal access token goes in `password`.
    Basic {
        /// User name (for tokens often `git` or `x-access-token`).
        username: String,
        /// Password or token; handed to git through the environment only.
        password: SecretString,
    },
    /// https `Authorization: Bearer` token (passed as `http.extraHeader` via the environment).
    Bearer {
        /// The token.
        token: SecretString,
    },
    /// ssh with a private key file (mode 0600, no passphrase) and a known_hosts file that
    /// must hold the server's host key.
    Ssh {
        /// Private key file.
        private_key: PathBuf,
        /// known_hosts file.
        known_hosts: PathBuf,
    },
}

/// Transport options.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Credentials.
    pub credentials: Credentials,
    /// PEM file of CAs to trust for https instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Limit for each git command; the process is killed after it.
    pub timeout: Duration,
    /// Permit `http://` URLs (no transport security: anyone on the path can change what is
    /// fetched, so use it with signature verification). Never together with credentials.
    pub allow_insecure_http: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            credentials: Credentials::None,
            ca_file: None,
            timeout: Duration::from_secs(300),
            allow_insecure_http: false,
        }
    }
}

/// Everything one fetch needs.
#[derive(Clone, Debug)]
pub struct SourceRequest {
    /// `https://host/repo.git`, `ssh://user@host[:port]/path`, `user@host:path`,
    /// `file:///path` or an absolute local path. Never with a password in it.
    pub url: String,
    /// What to check out.
    pub git_ref: GitRef,
    /// Transport options.
    pub options: FetchOptions,
    /// Extra gitignore-style patterns excluded from the export, on top of `.plumbignore`.
    pub ignore: Vec<String>,
    /// Signature verification; `None` exports without checking provenance.
    pub verify: Option<VerifyPolicy>,
    /// The last verified (applied) commit, where range verification starts.
    pub last_verified: Option<String>,
    /// Limits of the exported tree.
    pub limits: ExportLimits,
}

impl SourceRequest {
    /// A request for `git_ref` of `url` with default options, no verification.
    pub fn new(url: impl Into<String>, git_ref: GitRef) -> Self {
        Self {
            url: url.into(),
            git_ref,
            options: FetchOptions::default(),
            ignore: Vec::new(),
            verify: None,
            last_verified: None,
            limits: ExportLimits::default(),
        }
    }
}

/// A fetched, verified and exported revision: what the engine renders from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Artifact {
    /// The source URL.
    pub url: String,
    /// The ref as requested.
    pub git_ref: GitRef,
    /// The full ref it resolved to (`refs/heads/main`, `refs/tags/v1.2.0`), `None` for a
    /// commit pin.
    pub resolved_ref: Option<String>,
    /// The commit id.
    pub commit: String,
    /// Digest of the exported tree (see [`crate::export::ExportedTree::tree_digest`]).
    pub tree_digest: String,
    /// The directory holding the exported files.
    pub dir: PathBuf,
    /// Files and symlinks exported.
    pub files: usize,
    /// The signature record, when verification was asked for.
    pub verification: Option<Verification>,
}

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

        let exported = {
            let (repo, commit, dest, ignore, limits) = (
                repo.clone(),
                commit.clone(),
                dest.to_owned(),
                request.ignore.clone(),
                request.limits,
            );
            blocking(move || {
                crate::export::export_tree_with(&repo, &commit, &dest, &ignore, &limits)
            })
            .await??
        };
        Ok(Artifact {
            url,
            git_ref: request.git_ref.clone(),
            resolved_ref,
            commit,
            tree_digest: exported.tree_digest,
            dir: dest.to_owned(),
            files: exported.files,
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

/// Resolves `git_ref` in the cache repository to (commit, full ref, tag name to verify).
async fn resolve(
    git: &Git,
    repo: &Path,
    url: &str,
    git_ref: &GitRef,
) -> crate::Result<(String, Option<String>, Option<String>)> {
    let peel = |full: String| async move {
        let spec = format!("{full}^{{commit}}");
        let out = git
            .run(
                "rev-parse",
                Some(repo),
                &[
                    "rev-parse",
                    "--verify",
                    "--quiet",
                    "--end-of-options",
                    &spec,
                ],
            )
            .await;
        match out {
            Ok(out) if !out.trim().is_empty() => Ok(Some(out.trim().to_owned())),
            Ok(_) | Err(Error::Git { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    };
    let not_found = || Error::RefNotFound {
        git_ref: git_ref.clone(),
        url: url.to_owned(),
    };
    match git_ref {
        GitRef::Branch(name) => {
            let full = format!("refs/heads/{name}");
            let commit = peel(full.clone()).await?.ok_or_else(not_found)?;
            Ok((commit, Some(full), None))
        }
        GitRef::Tag(name) => {
            let full = format!("refs/tags/{name}");
            let commit = peel(full.clone()).await?.ok_or_else(not_found)?;
            Ok((commit, Some(full), Some(name.clone())))
        }
        GitRef::Semver(range) => {
            let listing = git
                .run(
                    "for-each-ref",
                    Some(repo),
                    &["for-each-ref", "--format=%(refname:strip=2)", "refs/tags/"],
                )
                .await?;
            let name = crate::refs::pick_semver(range, listing.lines())?
                .ok_or_else(|| Error::NoMatchingTag {
                    range: range.clone(),
                    url: url.to_owned(),
                })?
                .to_owned();
            let full = format!("refs/tags/{name}");
            let commit = peel(full.clone()).await?.ok_or_else(not_found)?;
            Ok((commit, Some(full), Some(name)))
        }
        GitRef::Commit(id) => {
            let id = id.to_ascii_lowercase();
            if let Some(commit) = peel(id.clone()).await? {
                return Ok((commit, None, None));
            }
            // Not on any branch or tag: ask for the object itself (servers allow reachable ids
            // with protocol v2).
            git.run(
                "fetch",
                Some(repo),
                &[
                    "fetch",
                    "--quiet",
                    "--no-tags",
                    "--no-write-fetch-head",
                    "--no-recurse-submodules",
                    "--no-auto-maintenance",
                    "--",
                    url,
                    &id,
                ],
            )
            .await
            .map_err(|_| not_found())?;
            let commit = peel(id).await?.ok_or_else(not_found)?;
            Ok((commit, None, None))
        }
    }
}

/// Whether `url` is plain `http://`.
pub fn is_http(url: &str) -> bool {
    url.trim()
        .split_once("://")
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("http"))
}

/// Refuses URLs that are not https, ssh, file or local paths, or that carry credentials.
pub fn check_url(url: &str) -> Result<()> {
    check_url_with(url, false)
}

/// [`check_url`], also accepting `http://` when `allow_http`.
pub fn check_url_with(url: &str, allow_http: bool) -> Result<()> {
    let url = url.trim();
    let invalid = |reason| {
        Err(Error::InvalidUrl {
            url: url.to_owned(),
            reason,
        })
    };
    if url.is_empty() {
        return invalid("it is empty");
    }
    if url.starts_with('-') {
        return invalid("it starts with '-'");
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::InvalidUrl {
            url: url.escape_debug().to_string(),
            reason: "it contains whitespace or control characters",
        });
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority = rest.split('/').next().unwrap_or_default();
        let userinfo = authority.rsplit_once('@').map(|(u, _)| u);
        match scheme.to_ascii_lowercase().as_str() {
            "https" => {
                if userinfo.is_some() {
                    return Err(Error::UrlHasCredentials);
                }
            }
            "ssh" => {
                if userinfo.is_some_and(|u| u.contains(':')) {
                    return Err(Error::UrlHasCredentials);
                }
            }
            "file" => {}
            "http" if allow_http => {
                if userinfo.is_some() {
                    return Err(Error::UrlHasCredentials);
                }
            }
            "http" => {
                return invalid(
                    "plain http is not allowed; use https (or opt in to insecure http for \
                     this source)",
                );
            }
            _ => return invalid("only https://, ssh://, file:// and local paths are supported"),
        }
        return Ok(());
    }
    if url.starts_with('/') {
        return Ok(());
    }
    // scp-like `user@host:path`: a colon before any slash.
    if let Some((host, _)) = url.split_once(':')
        && !host.is_empty()
        && !host.contains('/')
    {
        if url.contains("::") {
            return invalid("transport helpers (`<transport>::`) are not allowed");
        }
        return Ok(());
    }
    invalid("use https://, ssh://, user@host:path, file:// or an absolute path")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        for good in [
            "https://git.example.com/a.git",
            "ssh://git@example.com:22/a.git",
            "git@example.com:org/a.git",
            "file:///srv/a.git",
            "/srv/a.git",
        ] {
            assert!(check_url(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-uhttps://x",
            "http://x/a.git",
            "ext::sh -c touch% /tmp/pwned",
            "fd::17",
            "relative/path",
            "https://x/a b",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        let err = check_url("https://user:s3cr3t@x/a.git").expect_err("credentials refused");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        assert!(matches!(
            check_url("https://token@x/a.git"),
            Err(Error::UrlHasCredentials)
        ));
    }
}
