//! The errors of a verification, and why a commit or tag is rejected.

use std::fmt;

use serde::Serialize;

/// Errors of a verification.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A commit or tag failed verification; nothing from this revision may be applied.
    #[error("{what} {id} by {author} rejected: {reason}")]
    Rejected {
        /// `commit` or `tag`.
        what: &'static str,
        /// The object id (or tag name) that failed.
        id: String,
        /// Its author (tagger for a tag), `Name <email>`.
        author: String,
        /// Why.
        reason: Box<FailureReason>,
    },
    /// The last verified commit given for a range check is not in the repository.
    #[error(
        "last verified commit {since} is not in the repository; verify from scratch \
         (without a previous commit) after checking the history by hand"
    )]
    SinceNotFound {
        /// The commit id.
        since: String,
    },
    /// The new tip does not contain the last verified commit: the history was rolled back or
    /// rewritten (a force push), so "every new commit is signed" cannot be established.
    #[error(
        "commit {tip} does not contain the last verified commit {since}: the history was \
         rolled back or rewritten (force push), and nothing from it is applied. If the new \
         history is intended, check it by hand, then trust it again: re-create the GitSource \
         (the agent) or verify without --since (the CLI)"
    )]
    NotDescendant {
        /// The new tip.
        tip: String,
        /// The last verified commit.
        since: String,
    },
    /// Neither allowed SSH signers nor OpenPGP keys were given, so nothing could pass.
    #[error("verification needs allowed SSH signers or OpenPGP keys; none were given")]
    NoTrustedKeys,
    /// The repository or one of its objects cannot be read.
    #[error("cannot read {what} in {repo}: {detail}")]
    Repository {
        /// The repository path.
        repo: String,
        /// What was being read.
        what: String,
        /// The underlying error.
        detail: String,
    },
}

/// Result with [`enum@Error`] as default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Rejections and configuration errors stay until someone acts; only reading may be
    /// transient.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Repository { .. })
    }

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Rejected { reason, .. } => reason.metric_label(),
            Error::SinceNotFound { .. } => "verify_since_not_found",
            Error::NotDescendant { .. } => "verify_not_descendant",
            Error::NoTrustedKeys => "verify_no_trusted_keys",
            Error::Repository { .. } => "verify_repository",
        }
    }
}

/// Why a commit or tag is rejected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum FailureReason {
    /// It carries no signature.
    Unsigned,
    /// A lightweight tag: there is no tag object to sign.
    LightweightTag,
    /// A signature in a format Plumb does not verify (e.g. X.509).
    UnsupportedFormat,
    /// The signature cannot be parsed.
    Malformed {
        /// Parser message.
        detail: String,
    },
    /// No allowed signer or keyring key made the signature.
    UnknownKey {
        /// The signing key's fingerprint when known.
        key: String,
    },
    /// The signature does not match the signed content (tampered or corrupt).
    BadSignature {
        /// The key that supposedly signed.
        key: String,
    },
    /// The key is allowed, but not at this time or not for git's namespace.
    SignerNotValid {
        /// The allowed signer's principals.
        principal: String,
        /// `valid-before`/`valid-after`/namespace detail.
        detail: String,
    },
    /// An annotated tag object names another tag than the ref that points at it (e.g. an old
    /// signed release's tag object moved under a new tag name).
    TagNameMismatch {
        /// The name inside the signed tag object.
        signed_name: String,
        /// The ref's tag name.
        ref_name: String,
    },
    /// A tree of the commit holds two entries of one name (git never writes such trees).
    MalformedTree {
        /// The duplicated path.
        path: String,
    },
    /// The signer is valid but a path rule names other signers for a path the commit touches.
    NotAllowedForPath {
        /// The changed path.
        path: String,
        /// The rule's path prefix.
        rule: String,
        /// Who signed.
        signer: String,
        /// Who may sign for the rule.
        allowed: Vec<String>,
    },
}

impl FailureReason {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            FailureReason::Unsigned => "verify_unsigned",
            FailureReason::LightweightTag => "verify_lightweight_tag",
            FailureReason::UnsupportedFormat => "verify_unsupported_format",
            FailureReason::Malformed { .. } => "verify_malformed",
            FailureReason::UnknownKey { .. } => "verify_unknown_key",
            FailureReason::BadSignature { .. } => "verify_bad_signature",
            FailureReason::SignerNotValid { .. } => "verify_signer_not_valid",
            FailureReason::NotAllowedForPath { .. } => "verify_not_allowed_for_path",
            FailureReason::TagNameMismatch { .. } => "verify_tag_name_mismatch",
            FailureReason::MalformedTree { .. } => "verify_malformed_tree",
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureReason::Unsigned => write!(f, "unsigned (no signature)"),
            FailureReason::LightweightTag => {
                write!(
                    f,
                    "lightweight tag cannot be signed; use a signed annotated tag"
                )
            }
            FailureReason::UnsupportedFormat => {
                write!(
                    f,
                    "unsupported signature format (only SSH and OpenPGP are verified)"
                )
            }
            FailureReason::Malformed { detail } => write!(f, "malformed signature: {detail}"),
            FailureReason::UnknownKey { key } => {
                write!(
                    f,
                    "unknown key {key}: not in the allowed signers or the keyring"
                )
            }
            FailureReason::BadSignature { key } => write!(
                f,
                "bad signature by key {key}: the signed content was changed or the signature is corrupt"
            ),
            FailureReason::SignerNotValid { principal, detail } => {
                write!(f, "signer {principal} not valid: {detail}")
            }
            FailureReason::TagNameMismatch {
                signed_name,
                ref_name,
            } => write!(
                f,
                "the signed tag object is named {signed_name:?}, but the ref is tag \
                 {ref_name:?}: a signed tag cannot be reused under another name"
            ),
            FailureReason::MalformedTree { path } => write!(
                f,
                "malformed tree: {path:?} appears twice in one directory (git never writes \
                 such trees)"
            ),
            FailureReason::NotAllowedForPath {
                path,
                rule,
                signer,
                allowed,
            } => write!(
                f,
                "signer {signer} not allowed for path {path} (rule {rule} allows {})",
                allowed.join(", ")
            ),
        }
    }
}
