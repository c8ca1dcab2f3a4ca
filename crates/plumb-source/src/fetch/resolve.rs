//! Resolving a [`GitRef`] in the cache repository to a commit.

use std::path::Path;

use crate::git::Git;
use crate::refs::GitRef;

use super::Error;

/// Resolves `git_ref` in the cache repository to (commit, full ref, tag name to verify).
pub(super) async fn resolve(
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
