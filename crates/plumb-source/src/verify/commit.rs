//! Checking one commit or one annotated tag: its signature, then the path rules for what the
//! commit changes.

use std::collections::BTreeSet;

use gix::ObjectId;
use gix::objs::{CommitRef, CommitRefIter, TagRef, TagRefIter};

use super::repo::{Repo, person};
use super::signature::verify_signature;
use super::{
    CommitVerdict, FailureReason, Result, SignatureKind, Signer, TagVerdict, Verdict, VerifyPolicy,
};

pub(super) fn check_commit(
    repo: &Repo,
    id: ObjectId,
    policy: &VerifyPolicy,
) -> Result<CommitVerdict> {
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

pub(super) fn check_tag(repo: &Repo, name: &str, policy: &VerifyPolicy) -> Result<TagVerdict> {
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
