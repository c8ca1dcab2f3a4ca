//! What to check out: branch, tag, semver range over tags or an exact commit.

use std::fmt;

use serde::Serialize;

/// Errors in a [`GitRef`] given by the user.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The branch or tag name breaks git's ref name rules (`git check-ref-format`).
    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName {
        /// `branch` or `tag`.
        what: &'static str,
        /// The name as given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A commit pin that is not a full hexadecimal object id.
    #[error("invalid commit {commit:?}: give the full 40 (SHA-1) or 64 (SHA-256) hex digit id")]
    InvalidCommit {
        /// The id as given.
        commit: String,
    },
    /// A semver range that does not parse.
    #[error("invalid semver range {range:?}: {source}")]
    InvalidRange {
        /// The range as given.
        range: String,
        /// Why it does not parse.
        #[source]
        source: semver::Error,
    },
}

/// Result with [`enum@Error`] as default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Always false: the input has to change.
    pub fn is_retryable(&self) -> bool {
        false
    }

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidName { .. } => "invalid_ref_name",
            Error::InvalidCommit { .. } => "invalid_commit",
            Error::InvalidRange { .. } => "invalid_semver_range",
        }
    }
}

/// The revision a source follows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GitRef {
    /// The tip of a branch (`refs/heads/<name>`); follows force pushes.
    Branch(String),
    /// A tag (`refs/tags/<name>`), lightweight or annotated.
    Tag(String),
    /// The tag with the highest version matching a semver range such as `>=1.2.0 <2.0.0`
    /// (comparators separated by spaces or commas); tags may carry a leading `v`.
    Semver(String),
    /// An exact commit id (full hex).
    Commit(String),
}

impl GitRef {
    /// Checks names, ranges and ids before anything reaches `git`.
    pub fn validate(&self) -> Result<()> {
        match self {
            GitRef::Branch(name) => check_ref_name("branch", name),
            GitRef::Tag(name) => check_ref_name("tag", name),
            GitRef::Semver(range) => parse_range(range).map(|_| ()),
            GitRef::Commit(id) => {
                if (id.len() == 40 || id.len() == 64) && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(())
                } else {
                    Err(Error::InvalidCommit { commit: id.clone() })
                }
            }
        }
    }
}

impl fmt::Display for GitRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GitRef::Branch(name) => write!(f, "branch {name}"),
            GitRef::Tag(name) => write!(f, "tag {name}"),
            GitRef::Semver(range) => write!(f, "semver {range}"),
            GitRef::Commit(id) => write!(f, "commit {id}"),
        }
    }
}

/// Checks a branch or tag name (without `refs/heads/` or `refs/tags/`) against the rules of
/// `git check-ref-format`, and also refuses a leading `-` so it can never be read as an option.
pub fn check_ref_name(what: &'static str, name: &str) -> Result<()> {
    let fail = |reason| {
        Err(Error::InvalidName {
            what,
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return fail("it is empty");
    }
    if name.starts_with('-') {
        return fail("it starts with '-'");
    }
    if name == "@" {
        return fail("it is '@'");
    }
    if name.contains("..") {
        return fail("it contains '..'");
    }
    if name.contains("@{") {
        return fail("it contains '@{'");
    }
    if name.contains("//") || name.starts_with('/') || name.ends_with('/') {
        return fail("it has an empty path component");
    }
    if name.ends_with('.') {
        return fail("it ends with '.'");
    }
    if name
        .bytes()
        .any(|b| b < 0x20 || b == 0x7f || b" ~^:?*[\\".contains(&b))
    {
        return fail("it contains a control character, space or one of ~^:?*[\\");
    }
    for component in name.split('/') {
        if component.starts_with('.') {
            return fail("a component starts with '.'");
        }
        if component.ends_with(".lock") {
            return fail("a component ends with '.lock'");
        }
    }
    Ok(())
}

/// Parses a semver range; comparators may be separated by whitespace (`>=1.2.0 <2.0.0`) or
/// commas (`>=1.2.0, <2.0.0`).
pub fn parse_range(range: &str) -> Result<semver::VersionReq> {
    let mut comparators: Vec<String> = Vec::new();
    let mut pending_operator = String::new();
    for token in range.split(|c: char| c == ',' || c.is_whitespace()) {
        if token.is_empty() {
            continue;
        }
        if token.chars().all(|c| "<>=~^".contains(c)) {
            pending_operator.push_str(token);
            continue;
        }
        comparators.push(format!("{pending_operator}{token}"));
        pending_operator.clear();
    }
    if !pending_operator.is_empty() {
        comparators.push(pending_operator);
    }
    semver::VersionReq::parse(&comparators.join(", ")).map_err(|source| Error::InvalidRange {
        range: range.to_owned(),
        source,
    })
}

/// The version a tag name stands for: `1.2.3` or `v1.2.3`; `None` for other tags.
pub fn tag_version(tag: &str) -> Option<semver::Version> {
    semver::Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()
}

/// Picks the tag with the highest version matching `range` (ties, e.g. `v1.0.0` and `1.0.0`,
/// go to the name that sorts first). `None` when no tag matches.
pub fn pick_semver<'a>(
    range: &str,
    tags: impl IntoIterator<Item = &'a str>,
) -> Result<Option<&'a str>> {
    let req = parse_range(range)?;
    let mut best: Option<(semver::Version, &'a str)> = None;
    for tag in tags {
        let Some(version) = tag_version(tag) else {
            continue;
        };
        if !req.matches(&version) {
            continue;
        }
        let better = match &best {
            None => true,
            Some((v, name)) => version > *v || (version == *v && tag < *name),
        };
        if better {
            best = Some((version, tag));
        }
    }
    Ok(best.map(|(_, tag)| tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names_follow_git_rules() {
        for good in ["main", "release/1.x", "v1.2.3", "feature-a_b"] {
            assert!(check_ref_name("branch", good).is_ok(), "{good}");
        }
        for bad in [
            "", "-x", "a..b", "a b", "a:b", "/a", "a/", "a//b", ".a", "a/.b", "a.lock", "a.", "@",
            "a@{1}", "a\\b", "a*", "a\nb",
        ] {
            assert!(check_ref_name("branch", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn commits_must_be_full_hex_ids() {
        assert!(GitRef::Commit("a".repeat(40)).validate().is_ok());
        assert!(GitRef::Commit("abc123".into()).validate().is_err());
        assert!(GitRef::Commit("g".repeat(40)).validate().is_err());
    }

    #[test]
    fn semver_picks_the_highest_matching_tag() {
        let tags = [
            "v1.0.0",
            "1.2.0",
            "v1.10.0",
            "v2.0.0",
            "latest",
            "v1.11.0-rc.1",
        ];
        assert_eq!(
            pick_semver(">=1.2.0 <2.0.0", tags).expect("valid"),
            Some("v1.10.0")
        );
        assert_eq!(
            pick_semver(">= 1.0.0, < 1.5", tags).expect("valid"),
            Some("1.2.0")
        );
        assert_eq!(pick_semver("^3", tags).expect("valid"), None);
        assert!(pick_semver("not a range", tags).is_err());
    }
}
