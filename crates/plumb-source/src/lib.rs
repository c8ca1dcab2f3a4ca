//! Sources for Plumb: Git (fetch, refs, signature verification) and Helm charts ([`chart`]).
//!
//! [`Fetcher::fetch`] brings a remote into a local cache of bare repositories (the hardened
//! `git` CLI), resolves a [`GitRef`], verifies signatures in-process ([`verify`]) and exports
//! the tree into a directory ([`export`]), returning an [`Artifact`].

#![warn(clippy::unwrap_used)]

pub mod chart;
pub mod export;
pub mod fetch;
pub mod keyring;
pub mod policy;
pub mod refs;
pub mod signers;
pub mod verify;

mod git;

pub use export::ExportedTree;
pub use fetch::{Artifact, Credentials, FetchOptions, Fetcher, SourceRequest};
pub use keyring::Keyring;
pub use policy::{PathPolicy, PathRule};
pub use refs::GitRef;
pub use signers::AllowedSigners;
pub use verify::{
    SignatureKind, Verification, VerifiedCommit, VerifiedTag, VerifyMode, VerifyPolicy,
};

/// Any error of a fetch: fetching, resolving, verifying or exporting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Fetching or resolving failed.
    #[error(transparent)]
    Fetch(#[from] fetch::Error),
    /// A signature check failed.
    #[error(transparent)]
    Verify(#[from] verify::Error),
    /// The tree cannot be exported safely.
    #[error(transparent)]
    Export(#[from] export::Error),
    /// The ref is invalid.
    #[error(transparent)]
    Ref(#[from] refs::Error),
    /// Fetching a chart (Helm repository or OCI registry) failed.
    #[error(transparent)]
    Chart(#[from] chart::Error),
}

/// Result with [`enum@Error`] as default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether trying again later may succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Fetch(e) => e.is_retryable(),
            Error::Verify(e) => e.is_retryable(),
            Error::Export(e) => e.is_retryable(),
            Error::Ref(e) => e.is_retryable(),
            Error::Chart(e) => e.is_retryable(),
        }
    }

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Fetch(e) => e.metric_label(),
            Error::Verify(e) => e.metric_label(),
            Error::Export(e) => e.metric_label(),
            Error::Ref(e) => e.metric_label(),
            Error::Chart(e) => e.metric_label(),
        }
    }
}
