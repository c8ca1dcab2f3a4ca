//! Provenance: commit and tag signatures (SSH and OpenPGP) checked in-process against allowed
//! signers, over the tip or over every new commit, with per-path rules.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::fmt;
use std::path::Path;

use gix::ObjectId;
use gix::objs::{CommitRef, CommitRefIter, TagRef, TagRefIter};
use serde::Serialize;

use crate::keyring::{Keyring, PgpVerdict};
use crate::policy::PathPolicy;
use crate::signers::AllowedSigners;

/// The SSH signature namespace git uses.
const GIT_NAMESPACE: &str = "git";

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

/// A repository opened for object reads.
struct Repo {
    inner: gix::Repository,
    path: String,
}

impl Repo {
    fn open(path: &Path) -> Result<Self> {
        let inner = gix::open_opts(path, gix::open::Options::isolated()).map_err(|e| {
            Error::Repository {
                repo: path.display().to_string(),
                what: "the repository".into(),
                detail: e.to_string(),
            }
        })?;
        Ok(Self {
            inner,
            path: path.display().to_string(),
        })
    }

    fn err(&self, what: impl Into<String>, detail: impl fmt::Display) -> Error {
        Error::Repository {
            repo: self.path.clone(),
            what: what.into(),
            detail: detail.to_string(),
        }
    }

    fn hash_kind(&self) -> gix::hash::Kind {
        self.inner.object_hash()
    }

    /// Raw object data and kind.
    fn object(&self, id: ObjectId) -> Result<(gix::objs::Kind, Vec<u8>)> {
        let object = self
            .inner
            .find_object(id)
            .map_err(|e| self.err(format!("object {id}"), e))?;
        Ok((object.kind, object.data.clone()))
    }

    fn commit_data(&self, id: ObjectId) -> Result<Vec<u8>> {
        match self.object(id)? {
            (gix::objs::Kind::Commit, data) => Ok(data),
            (kind, _) => Err(self.err(format!("commit {id}"), format!("it is a {kind}"))),
        }
    }

    fn commit_id(&self, hex: &str) -> Result<ObjectId> {
        let id =
            ObjectId::from_hex(hex.as_bytes()).map_err(|e| self.err(format!("commit {hex}"), e))?;
        self.commit_data(id)?;
        Ok(id)
    }

    fn parents(&self, id: ObjectId) -> Result<Vec<ObjectId>> {
        let data = self.commit_data(id)?;
        let commit = CommitRef::from_bytes(&data, self.hash_kind())
            .map_err(|e| self.err(format!("commit {id}"), e))?;
        Ok(commit.parents().collect())
    }

    /// Commits reachable from `tip` and not from `since`, newest first (breadth-first), and
    /// whether `since` is reachable from `tip` (the walk stops at ancestors of `since`, and on
    /// any path from `tip` to `since` the first of them is `since` itself).
    fn range(&self, tip: ObjectId, since: ObjectId) -> Result<(Vec<ObjectId>, bool)> {
        let mut excluded = HashSet::new();
        let mut queue = VecDeque::from([since]);
        while let Some(id) = queue.pop_front() {
            if excluded.insert(id) {
                queue.extend(self.parents(id)?);
            }
        }
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut contains_since = false;
        let mut queue = VecDeque::from([tip]);
        while let Some(id) = queue.pop_front() {
            if id == since {
                contains_since = true;
            }
            if excluded.contains(&id) || !seen.insert(id) {
                continue;
            }
            out.push(id);
            queue.extend(self.parents(id)?);
        }
        Ok((out, contains_since))
    }

    /// Entries of a tree: (name, is tree, mode bits, id), names as stored. A tree with two
    /// entries of one name (also after case folding) is malformed: `Err(path)`.
    fn tree_entries(&self, id: ObjectId, prefix: &str) -> Result<Result<Vec<TreeEntry>, String>> {
        let (kind, data) = self.object(id)?;
        if kind != gix::objs::Kind::Tree {
            return Err(self.err(format!("tree {id}"), format!("it is a {kind}")));
        }
        let tree = gix::objs::TreeRef::from_bytes(&data, self.hash_kind())
            .map_err(|e| self.err(format!("tree {id}"), e))?;
        let mut names = HashSet::new();
        let mut entries = Vec::with_capacity(tree.entries.len());
        for e in &tree.entries {
            let folded = crate::export::fold(&String::from_utf8_lossy(e.filename));
            if !names.insert(folded) {
                return Ok(Err(join(prefix, &String::from_utf8_lossy(e.filename))));
            }
            entries.push(TreeEntry {
                name: e.filename.to_vec(),
                tree: e.mode.is_tree(),
                mode: u32::from(e.mode.value()),
                id: e.oid.to_owned(),
            });
        }
        Ok(Ok(entries))
    }

    /// Adds to `out` every path that differs between trees `a` and `b` (either may be absent);
    /// `Err(path)` when a tree on the way is malformed.
    fn diff_trees(
        &self,
        a: Option<ObjectId>,
        b: Option<ObjectId>,
        prefix: &str,
        out: &mut BTreeSet<String>,
    ) -> Result<Result<(), String>> {
        if a == b {
            return Ok(Ok(()));
        }
        let list = |t: Option<ObjectId>| -> Result<Result<Vec<TreeEntry>, String>> {
            t.map_or(Ok(Ok(Vec::new())), |t| self.tree_entries(t, prefix))
        };
        let left = match list(a)? {
            Ok(l) => l,
            Err(path) => return Ok(Err(path)),
        };
        let right = match list(b)? {
            Ok(r) => r,
            Err(path) => return Ok(Err(path)),
        };
        let names: BTreeSet<&[u8]> = left
            .iter()
            .chain(right.iter())
            .map(|e| e.name.as_slice())
            .collect();
        for name in names {
            let l = left.iter().find(|e| e.name == name);
            let r = right.iter().find(|e| e.name == name);
            if let (Some(l), Some(r)) = (l, r)
                && l == r
            {
                continue;
            }
            let path = join(prefix, &String::from_utf8_lossy(name));
            let sub = |e: Option<&TreeEntry>| e.filter(|e| e.tree).map(|e| e.id);
            let (lt, rt) = (sub(l), sub(r));
            if (lt.is_some() || rt.is_some())
                && let Err(bad) = self.diff_trees(lt, rt, &path, out)?
            {
                return Ok(Err(bad));
            }
            if l.is_some_and(|e| !e.tree) || r.is_some_and(|e| !e.tree) {
                out.insert(path);
            }
        }
        Ok(Ok(()))
    }

    /// Paths a commit changes relative to any of its parents (all paths for a root commit):
    /// a merge must satisfy the rules of everything it brings in. `Err(path)` names a
    /// malformed tree.
    fn changed_paths(&self, commit: &CommitRef<'_>) -> Result<Result<BTreeSet<String>, String>> {
        let mut out = BTreeSet::new();
        let tree = Some(commit.tree());
        let parents: Vec<ObjectId> = commit.parents().collect();
        if parents.is_empty()
            && let Err(bad) = self.diff_trees(None, tree, "", &mut out)?
        {
            return Ok(Err(bad));
        }
        for parent in parents {
            let data = self.commit_data(parent)?;
            let parent = CommitRef::from_bytes(&data, self.hash_kind())
                .map_err(|e| self.err(format!("commit {parent}"), e))?;
            if let Err(bad) = self.diff_trees(Some(parent.tree()), tree, "", &mut out)? {
                return Ok(Err(bad));
            }
        }
        Ok(Ok(out))
    }
}

/// One entry of a tree, as [`Repo::diff_trees`] compares them.
#[derive(PartialEq, Eq)]
struct TreeEntry {
    name: Vec<u8>,
    tree: bool,
    mode: u32,
    id: ObjectId,
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}/{name}")
    }
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

fn person(sig: &gix::actor::SignatureRef<'_>) -> String {
    format!(
        "{} <{}>",
        sig.name.to_string().trim(),
        sig.email.to_string().trim()
    )
}

fn check_commit(repo: &Repo, id: ObjectId, policy: &VerifyPolicy) -> Result<CommitVerdict> {
    let data = repo.commit_data(id)?;
    let commit = CommitRef::from_bytes(&data, repo.hash_kind())
        .map_err(|e| repo.err(format!("commit {id}"), e))?;
    let author = commit
        .author()
        .map(|a| person(&a))
        .map_err(|e| repo.err(format!("author of commit {id}"), e))?;
    let committer_sig = commit
        .committer()
        .map_err(|e| repo.err(format!("committer of commit {id}"), e))?;
    let committer = person(&committer_sig);
    let time = committer_sig
        .time()
        .map_err(|e| repo.err(format!("committer time of commit {id}"), e))?
        .seconds;
    let summary = commit
        .message
        .to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let signature = CommitRefIter::signature(&data, repo.hash_kind())
        .map_err(|e| repo.err(format!("signature of commit {id}"), e))?;
    let mut verdict = match signature {
        None => Verdict::Rejected(FailureReason::Unsigned),
        Some((sig, signed)) => verify_signature(sig.as_ref(), &signed.to_bstring(), time, policy),
    };
    if let Verdict::Passed(signer) = &verdict
        && !policy.paths.rules.is_empty()
    {
        match repo.changed_paths(&commit)? {
            Err(path) => verdict = Verdict::Rejected(FailureReason::MalformedTree { path }),
            Ok(changed) => {
                if let Some(reason) = path_violation(&changed, signer, policy) {
                    verdict = Verdict::Rejected(reason);
                }
            }
        }
    }
    Ok(CommitVerdict {
        commit: id.to_string(),
        author,
        committer,
        time,
        summary,
        verdict,
    })
}

fn check_tag(repo: &Repo, name: &str, policy: &VerifyPolicy) -> Result<TagVerdict> {
    let full = format!("refs/tags/{name}");
    let mut reference = repo
        .inner
        .find_reference(full.as_str())
        .map_err(|e| repo.err(format!("tag {name}"), e))?;
    // The direct target tells annotated from lightweight tags; peeling would replace it.
    let direct = match reference.target().try_id() {
        Some(id) => id.to_owned(),
        None => reference
            .peel_to_id()
            .map_err(|e| repo.err(format!("tag {name}"), e))?
            .detach(),
    };
    let (kind, data) = repo.object(direct)?;
    if kind != gix::objs::Kind::Tag {
        return Ok(TagVerdict {
            tag: name.to_owned(),
            object: direct.to_string(),
            tagger: String::new(),
            time: 0,
            verdict: Verdict::Rejected(FailureReason::LightweightTag),
        });
    }
    let tag = TagRef::from_bytes(&data, repo.hash_kind())
        .map_err(|e| repo.err(format!("tag {name}"), e))?;
    let tagger = tag
        .tagger()
        .map_err(|e| repo.err(format!("tagger of tag {name}"), e))?;
    let (tagger, time) = match tagger {
        Some(t) => (person(&t), t.time().map(|t| t.seconds).unwrap_or_default()),
        None => (String::new(), 0),
    };
    let mut verdict = match TagRefIter::signature(&data) {
        None => Verdict::Rejected(FailureReason::Unsigned),
        Some((sig, signed)) => verify_signature(sig.data, &signed.to_bstring(), time, policy),
    };
    if matches!(verdict, Verdict::Passed(_)) && tag.name != name.as_bytes() {
        verdict = Verdict::Rejected(FailureReason::TagNameMismatch {
            signed_name: tag.name.to_string(),
            ref_name: name.to_owned(),
        });
    }
    Ok(TagVerdict {
        tag: name.to_owned(),
        object: direct.to_string(),
        tagger,
        time,
        verdict,
    })
}

/// Verifies an armored signature over `payload` made at `time` (Unix seconds).
pub fn verify_signature(
    signature: &[u8],
    payload: &[u8],
    time: i64,
    policy: &VerifyPolicy,
) -> Verdict {
    let trimmed = signature.trim_ascii_start();
    if trimmed.starts_with(b"-----BEGIN SSH SIGNATURE-----") {
        verify_ssh(trimmed, payload, time, &policy.allowed_signers)
    } else if trimmed.starts_with(b"-----BEGIN PGP SIGNATURE-----") {
        match policy.keyring.verify(trimmed, payload, now()) {
            Err(detail) => Verdict::Rejected(FailureReason::Malformed { detail }),
            Ok(PgpVerdict::UnknownKey) => Verdict::Rejected(FailureReason::UnknownKey {
                key: "(OpenPGP signature by a key not in the keyring)".into(),
            }),
            Ok(PgpVerdict::NotValid { signer, reason }) => {
                Verdict::Rejected(FailureReason::SignerNotValid {
                    principal: signer.principal(),
                    detail: reason,
                })
            }
            Ok(PgpVerdict::Valid(signer)) => Verdict::Passed(Signer {
                principal: signer.principal(),
                fingerprint: signer.fingerprint,
                kind: SignatureKind::Pgp,
                identities: signer.user_ids,
            }),
        }
    } else {
        Verdict::Rejected(FailureReason::UnsupportedFormat)
    }
}

/// The current time in Unix seconds.
fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn verify_ssh(signature: &[u8], payload: &[u8], time: i64, allowed: &AllowedSigners) -> Verdict {
    let sig = match ssh_key::SshSig::from_pem(signature) {
        Ok(sig) => sig,
        Err(e) => {
            return Verdict::Rejected(FailureReason::Malformed {
                detail: e.to_string(),
            });
        }
    };
    let key_data = sig.public_key();
    let fingerprint = key_data.fingerprint(ssh_key::HashAlg::Sha256).to_string();
    let entries: Vec<_> = allowed.for_key(key_data).collect();
    if entries.is_empty() {
        return Verdict::Rejected(FailureReason::UnknownKey { key: fingerprint });
    }
    let key = ssh_key::PublicKey::from(key_data.clone());
    if key.verify(GIT_NAMESPACE, payload, &sig).is_err() {
        return Verdict::Rejected(FailureReason::BadSignature { key: fingerprint });
    }
    let mut last_problem = None;
    let mut principals = Vec::new();
    for entry in entries {
        if !entry.allows_namespace(GIT_NAMESPACE) {
            last_problem = Some((
                entry.principal(),
                format!("namespace git not allowed (line {})", entry.line),
            ));
            continue;
        }
        if let Err(detail) = entry.check_time(time) {
            last_problem = Some((entry.principal(), detail));
            continue;
        }
        principals.extend(entry.principals.iter().cloned());
    }
    if principals.is_empty() {
        let (principal, detail) = last_problem.unwrap_or_default();
        return Verdict::Rejected(FailureReason::SignerNotValid { principal, detail });
    }
    Verdict::Passed(Signer {
        principal: principals.join(","),
        fingerprint,
        kind: SignatureKind::Ssh,
        identities: principals,
    })
}

/// Whether `rule_name` designates `signer`: an SSH principal pattern of the signer matching
/// the name, or for OpenPGP the key fingerprint, a user id or the email inside one.
fn signer_matches(signer: &Signer, rule_name: &str) -> bool {
    match signer.kind {
        SignatureKind::Ssh => crate::signers::match_pattern_list(rule_name, &signer.identities),
        SignatureKind::Pgp => crate::keyring::PgpSigner {
            fingerprint: signer.fingerprint.clone(),
            signing_key: String::new(),
            user_ids: signer.identities.clone(),
        }
        .matches(rule_name),
    }
}

fn path_violation(
    changed: &BTreeSet<String>,
    signer: &Signer,
    policy: &VerifyPolicy,
) -> Option<FailureReason> {
    // `.plumbignore` decides which files are exported at all: changing it may drop (and so
    // prune) files under any rule's path, so it must satisfy every rule.
    if changed.contains(crate::export::IGNORE_FILE) {
        for rule in &policy.paths.rules {
            if !rule.signers.iter().any(|name| signer_matches(signer, name)) {
                return Some(FailureReason::NotAllowedForPath {
                    path: format!(
                        "{} (it can hide files under {})",
                        crate::export::IGNORE_FILE,
                        rule.path
                    ),
                    rule: rule.path.clone(),
                    signer: signer.principal.clone(),
                    allowed: rule.signers.clone(),
                });
            }
        }
    }
    for path in changed {
        for rule in policy.paths.rules_for(path) {
            if !rule.signers.iter().any(|name| signer_matches(signer, name)) {
                return Some(FailureReason::NotAllowedForPath {
                    path: path.clone(),
                    rule: rule.path.clone(),
                    signer: signer.principal.clone(),
                    allowed: rule.signers.clone(),
                });
            }
        }
    }
    None
}
