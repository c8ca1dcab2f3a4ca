//! Provenance: commit and tag signatures (SSH and OpenPGP) checked in-process against allowed
//! signers, over the tip or over every new commit, with per-path rules.

mod commit;
mod error;
mod repo;
mod signature;

use std::path::Path;

use gix::objs::CommitRef;
use serde::Serialize;

use crate::keyring::Keyring;
use crate::policy::PathPolicy;
use crate::signers::AllowedSigners;

use commit::{check_commit, check_tag};
pub use error::{Error, FailureReason, Result};
use repo::{Repo, person};
pub use signature::verify_signature;

/// How much history must be signed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    /// Only the resolved commit.
    #[default]
    Head,
    /// Every commit reachable from the new tip and not from the last verified commit; the
    /// tip only when there is no last verified commit.
    Range,
}

/// What is trusted, and how much is checked.
#[derive(Clone, Debug, Default)]
pub struct VerifyPolicy {
    /// Head or range.
    pub mode: VerifyMode,
    /// SSH keys (git's `allowed_signers` format).
    pub allowed_signers: AllowedSigners,
    /// OpenPGP keys.
    pub keyring: Keyring,
    /// Per-path rules; empty means any allowed signer may change any path.
    pub paths: PathPolicy,
}

/// The kind of signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureKind {
    /// sshsig, namespace `git`.
    Ssh,
    /// OpenPGP.
    Pgp,
}

/// Who made a good signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Signer {
    /// SSH: the allowed signer's principals; OpenPGP: the key's first user id.
    pub principal: String,
    /// SSH: `SHA256:...`; OpenPGP: the primary key fingerprint in hex.
    pub fingerprint: String,
    /// SSH or OpenPGP.
    pub kind: SignatureKind,
    /// What path rules match against: SSH principal patterns, or OpenPGP user ids.
    pub identities: Vec<String>,
}

/// The outcome for one commit or tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "lowercase")]
pub enum Verdict {
    /// Signed by an allowed signer, satisfying every path rule.
    Passed(Signer),
    /// Refused.
    Rejected(FailureReason),
}

/// One checked commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CommitVerdict {
    /// Commit id.
    pub commit: String,
    /// `Name <email>`.
    pub author: String,
    /// `Name <email>`.
    pub committer: String,
    /// Committer time, Unix seconds.
    pub time: i64,
    /// First line of the message.
    pub summary: String,
    /// The outcome.
    pub verdict: Verdict,
}

/// The checked annotated tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TagVerdict {
    /// Tag name (`v1.2.3`).
    pub tag: String,
    /// Tag object id (or the commit id for a lightweight tag).
    pub object: String,
    /// `Name <email>` of the tagger, empty if none.
    pub tagger: String,
    /// Tagger time, Unix seconds (0 if none).
    pub time: i64,
    /// The outcome.
    pub verdict: Verdict,
}

/// Every verdict of one check: what `plumb verify` lists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The mode used.
    pub mode: VerifyMode,
    /// The commit checked up to.
    pub tip: String,
    /// The last verified commit the range started from.
    pub since: Option<String>,
    /// Commits, newest first.
    pub commits: Vec<CommitVerdict>,
    /// The tag, when the ref was a tag.
    pub tag: Option<TagVerdict>,
}

/// A verified commit, for the audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifiedCommit {
    /// Commit id.
    pub commit: String,
    /// `Name <email>`.
    pub author: String,
    /// `Name <email>`.
    pub committer: String,
    /// Committer time, Unix seconds.
    pub time: i64,
    /// Principal of the signer.
    pub signer: String,
    /// Fingerprint of the signing key.
    pub fingerprint: String,
    /// SSH or OpenPGP.
    pub kind: SignatureKind,
}

/// A verified annotated tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifiedTag {
    /// Tag name.
    pub tag: String,
    /// Tag object id.
    pub object: String,
    /// `Name <email>`.
    pub tagger: String,
    /// Principal of the signer.
    pub signer: String,
    /// Fingerprint of the signing key.
    pub fingerprint: String,
    /// SSH or OpenPGP.
    pub kind: SignatureKind,
}

/// Proof that a revision passed: every checked commit with its signer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// The mode used.
    pub mode: VerifyMode,
    /// The checked commits, newest first (empty in range mode when nothing is new).
    pub commits: Vec<VerifiedCommit>,
    /// The tag, when the ref was a tag.
    pub tag: Option<VerifiedTag>,
}

impl Report {
    /// Whether every verdict passed.
    pub fn passed(&self) -> bool {
        self.commits
            .iter()
            .map(|c| &c.verdict)
            .chain(self.tag.iter().map(|t| &t.verdict))
            .all(|v| matches!(v, Verdict::Passed(_)))
    }

    /// The verification record, or the first rejection (the tag first, then the oldest
    /// failing commit, which is usually where a problem started).
    pub fn into_verification(self) -> Result<Verification> {
        let tag = match self.tag {
            None => None,
            Some(t) => match t.verdict {
                Verdict::Passed(s) => Some(VerifiedTag {
                    tag: t.tag,
                    object: t.object,
                    tagger: t.tagger,
                    signer: s.principal,
                    fingerprint: s.fingerprint,
                    kind: s.kind,
                }),
                Verdict::Rejected(reason) => {
                    return Err(Error::Rejected {
                        what: "tag",
                        id: t.tag,
                        author: t.tagger,
                        reason: Box::new(reason),
                    });
                }
            },
        };
        let mut commits = Vec::with_capacity(self.commits.len());
        let mut first_failure = None;
        for c in self.commits {
            match c.verdict {
                Verdict::Passed(s) => commits.push(VerifiedCommit {
                    commit: c.commit,
                    author: c.author,
                    committer: c.committer,
                    time: c.time,
                    signer: s.principal,
                    fingerprint: s.fingerprint,
                    kind: s.kind,
                }),
                Verdict::Rejected(reason) => {
                    first_failure = Some(Error::Rejected {
                        what: "commit",
                        id: c.commit,
                        author: c.author,
                        reason: Box::new(reason),
                    });
                }
            }
        }
        match first_failure {
            Some(err) => Err(err),
            None => Ok(Verification {
                mode: self.mode,
                commits,
                tag,
            }),
        }
    }
}

/// Checks the commits `policy.mode` selects, from `tip` (a commit id) back to `since` (the
/// last verified commit), and the annotated tag `tag` (a tag name, without `refs/tags/`)
/// when given. Works on any repository, bare or not; reads only objects. Blocking.
pub fn check(
    repo_path: &Path,
    tip: &str,
    since: Option<&str>,
    tag: Option<&str>,
    policy: &VerifyPolicy,
) -> Result<Report> {
    if policy.allowed_signers.is_empty() && policy.keyring.is_empty() {
        return Err(Error::NoTrustedKeys);
    }
    let repo = Repo::open(repo_path)?;
    let tip_id = repo.commit_id(tip)?;
    let ids = match (policy.mode, since) {
        (VerifyMode::Head, _) | (VerifyMode::Range, None) => vec![tip_id],
        (VerifyMode::Range, Some(since)) => {
            let since_id = repo.commit_id(since).map_err(|_| Error::SinceNotFound {
                since: since.to_owned(),
            })?;
            let (ids, contains_since) = repo.range(tip_id, since_id)?;
            if !contains_since {
                return Err(Error::NotDescendant {
                    tip: tip_id.to_string(),
                    since: since_id.to_string(),
                });
            }
            // The tip is always checked, also when nothing is new (tip == since): the policy
            // may have changed since it was verified.
            if ids.is_empty() { vec![tip_id] } else { ids }
        }
    };
    let mut commits = Vec::with_capacity(ids.len());
    for id in ids {
        commits.push(check_commit(&repo, id, policy)?);
    }
    let tag = match tag {
        Some(name) => Some(check_tag(&repo, name, policy)?),
        None => None,
    };
    Ok(Report {
        mode: policy.mode,
        tip: tip_id.to_string(),
        since: since.map(str::to_owned),
        commits,
        tag,
    })
}

/// The author (`Name <email>`) of `commit` in the repository at `repo_path`, read as an
/// object (no `git` process, so no repository configuration is consulted). Blocking.
pub fn commit_author(repo_path: &Path, commit: &str) -> Result<String> {
    let repo = Repo::open(repo_path)?;
    let id = repo.commit_id(commit)?;
    let data = repo.commit_data(id)?;
    let parsed = CommitRef::from_bytes(&data, repo.hash_kind())
        .map_err(|e| repo.err(format!("commit {id}"), e))?;
    parsed
        .author()
        .map(|a| person(&a))
        .map_err(|e| repo.err(format!("author of commit {id}"), e))
}
