//! Per-path signing policy: commits touching a path prefix must be signed by named signers.
//!
//! ```yaml
//! rules:
//!   - path: prod/            # a directory prefix (a trailing / is optional)
//!     signers:               # SSH principals, OpenPGP user ids, emails or fingerprints
//!       - alice@example.com
//!       - 0123456789ABCDEF0123456789ABCDEF01234567
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Errors reading a policy file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The YAML does not describe a policy.
    #[error("invalid signing policy {origin}: {reason}")]
    Parse {
        /// Where the policy came from.
        origin: String,
        /// What is wrong (with line and column from the YAML parser where known).
        reason: String,
    },
    /// The file cannot be read.
    #[error("cannot read signing policy {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Result with [`enum@Error`] as default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Only a failed read may succeed on retry.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Read { .. })
    }

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Parse { .. } => "policy_parse",
            Error::Read { .. } => "policy_read",
        }
    }
}

/// A set of [`PathRule`]s; every rule whose path a commit touches must be satisfied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathPolicy {
    /// The rules.
    #[serde(default)]
    pub rules: Vec<PathRule>,
}

/// Commits touching `path` must be signed by one of `signers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathRule {
    /// A path prefix relative to the repository root, e.g. `prod/` or `clusters/eu/app.yaml`.
    pub path: String,
    /// Principals allowed to sign such commits.
    pub signers: Vec<String>,
}

impl PathRule {
    /// Whether the repository path `changed` lies at or under this rule's path.
    pub fn covers(&self, changed: &str) -> bool {
        let prefix = self.path.trim_start_matches("./").trim_matches('/');
        prefix.is_empty()
            || changed == prefix
            || changed
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

impl PathPolicy {
    /// Parses the YAML text.
    pub fn parse_yaml(text: &str) -> Result<Self> {
        Self::parse(text, "text")
    }

    /// Reads and parses a YAML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, origin: &str) -> Result<Self> {
        let err = |reason: String| Error::Parse {
            origin: origin.to_owned(),
            reason,
        };
        let policy: PathPolicy =
            serde_saphyr::from_str(text).map_err(|e| err(without_content(&e.to_string())))?;
        for (i, rule) in policy.rules.iter().enumerate() {
            if rule.signers.is_empty() {
                return Err(err(format!("rule {} names no signers", i + 1)));
            }
            if rule.path.split('/').any(|c| c == "..") || rule.path.starts_with('/') {
                return Err(err(format!(
                    "the path of rule {} must be relative without '..'",
                    i + 1
                )));
            }
        }
        Ok(policy)
    }

    /// The rules covering `changed`.
    pub fn rules_for<'a>(&'a self, changed: &'a str) -> impl Iterator<Item = &'a PathRule> + 'a {
        self.rules.iter().filter(move |r| r.covers(changed))
    }
}

/// A parser message reduced to where the problem is: serde's messages quote the offending
/// value, and the text may be a Secret that is not a policy at all.
fn without_content(message: &str) -> String {
    let location = message.find("line ").map(|i| {
        message[i..]
            .split(['\n', ':', ';'])
            .next()
            .unwrap_or_default()
            .trim()
    });
    let expected = "expected `rules:` with a list of `{path, signers}`";
    match location {
        Some(at) if !at.is_empty() => format!("{at}: not a signing policy ({expected})"),
        _ => format!("not a signing policy ({expected})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rules_and_matches_prefixes() {
        let policy = PathPolicy::parse_yaml(
            "rules:\n  - path: prod/\n    signers: [alice@x.org]\n  - path: a/b.yaml\n    signers: [bob]\n",
        )
        .expect("valid policy");
        assert_eq!(policy.rules.len(), 2);
        assert!(policy.rules[0].covers("prod/app.yaml"));
        assert!(policy.rules[0].covers("prod"));
        assert!(!policy.rules[0].covers("production/app.yaml"));
        assert!(policy.rules[1].covers("a/b.yaml"));
        assert_eq!(policy.rules_for("prod/x").count(), 1);
    }

    #[test]
    fn parse_errors_never_quote_the_text() {
        for secret in [
            "password: hunter2-s3cret\n",
            "rules: hunter2-s3cret\n",
            "hunter2-s3cret",
            "rules:\n  - path: hunter2-s3cret\n    signers: hunter2-s3cret\n",
            "rules:\n  - hunter2-s3cret: x\n",
        ] {
            let err = PathPolicy::parse_yaml(secret)
                .expect_err(secret)
                .to_string();
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn refuses_bad_policies() {
        for bad in [
            "rules:\n  - path: prod/\n    signers: []\n",
            "rules:\n  - path: ../x\n    signers: [a]\n",
            "rules:\n  - path: x\n    signers: [a]\n    extra: 1\n",
            "rules: 5\n",
        ] {
            assert!(PathPolicy::parse_yaml(bad).is_err(), "{bad}");
        }
    }
}
