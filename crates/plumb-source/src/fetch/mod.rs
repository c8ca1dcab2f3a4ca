//! Fetching sources into a cache of bare repositories and producing [`Artifact`]s.

mod error;
mod fetcher;
mod resolve;
mod url;

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Serialize;

use crate::export::{ExportLimits, Reuse};
use crate::refs::GitRef;
use crate::verify::{Verification, VerifyPolicy};

pub use error::{Error, Result};
pub use fetcher::Fetcher;
pub use url::{check_url, check_url_with, is_http};

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
    /// An earlier export of this source whose unchanged files the export links instead of
    /// writing (see [`crate::export::export_tree_reusing`]); its directory must stay as it is
    /// until the fetch returns.
    pub reuse: Option<Reuse>,
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
            reuse: None,
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
    /// What was exported, sorted by path (see [`crate::export::ExportedTree::entries`]).
    #[serde(skip)]
    pub entries: std::sync::Arc<[crate::export::ExportedFile]>,
    /// The signature record, when verification was asked for.
    pub verification: Option<Verification>,
}
