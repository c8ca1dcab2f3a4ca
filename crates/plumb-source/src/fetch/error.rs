//! The errors of fetching and resolving.

use std::time::Duration;

use crate::refs::GitRef;

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
