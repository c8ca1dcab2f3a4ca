//! The outcome of one apply: what happened to each object.
//!
//! One [`ChangeSet`] value feeds CLI output, the Sync status (history counts), events and
//! metrics alike (fluxcd/pkg `ssa/changeset.go`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::object::ObjectKey;

/// What happened to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Did not exist; now created.
    Created,
    /// Existed and differed; now updated.
    Configured,
    /// Existed and already matched (detected by dry-run, nothing written).
    Unchanged,
    /// Deleted because it left the desired state.
    Pruned,
    /// Deliberately not touched (e.g. a prune refused because we do not own the object).
    Skipped,
    /// The operation failed; `message` says why.
    Failed,
}

impl Action {
    /// All actions, in display order.
    pub const ALL: [Action; 6] = [
        Action::Created,
        Action::Configured,
        Action::Unchanged,
        Action::Pruned,
        Action::Skipped,
        Action::Failed,
    ];

    /// Lowercase name, as shown to users and used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
            Action::Pruned => "pruned",
            Action::Skipped => "skipped",
            Action::Failed => "failed",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to one object, with an optional human-readable reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The object.
    pub key: ObjectKey,
    /// What happened.
    pub action: Action,
    /// Why (always set for `Failed` and `Skipped` by convention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.key, self.action)?;
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

/// Per-action counts of a [`ChangeSet`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeCounts {
    /// Number of created objects.
    pub created: usize,
    /// Number of configured objects.
    pub configured: usize,
    /// Number of unchanged objects.
    pub unchanged: usize,
    /// Number of pruned objects.
    pub pruned: usize,
    /// Number of skipped objects.
    pub skipped: usize,
    /// Number of failed objects.
    pub failed: usize,
}

impl ChangeCounts {
    /// The count for one action.
    pub fn get(&self, action: Action) -> usize {
        match action {
            Action::Created => self.created,
            Action::Configured => self.configured,
            Action::Unchanged => self.unchanged,
            Action::Pruned => self.pruned,
            Action::Skipped => self.skipped,
            Action::Failed => self.failed,
        }
    }

    fn slot(&mut self, action: Action) -> &mut usize {
        match action {
            Action::Created => &mut self.created,
            Action::Configured => &mut self.configured,
            Action::Unchanged => &mut self.unchanged,
            Action::Pruned => &mut self.pruned,
            Action::Skipped => &mut self.skipped,
            Action::Failed => &mut self.failed,
        }
    }
}

impl fmt::Display for ChangeCounts {
    /// `2 created, 1 configured, 5 unchanged` (zero counts omitted; `no changes` if all zero).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = Action::ALL
            .iter()
            .filter(|a| self.get(**a) > 0)
            .map(|a| format!("{} {a}", self.get(*a)))
            .collect();
        if parts.is_empty() {
            f.write_str("no changes")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// The outcome of one apply, in the order the operations happened.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSet {
    /// One entry per object touched (or deliberately not touched).
    pub entries: Vec<Change>,
}

impl ChangeSet {
    /// An empty change set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one outcome.
    pub fn push(&mut self, key: ObjectKey, action: Action, message: Option<String>) {
        self.entries.push(Change {
            key,
            action,
            message,
        });
    }

    /// Appends all entries of `other`.
    pub fn extend(&mut self, other: ChangeSet) {
        self.entries.extend(other.entries);
    }

    /// Counts per action.
    pub fn counts(&self) -> ChangeCounts {
        let mut c = ChangeCounts::default();
        for e in &self.entries {
            *c.slot(e.action) += 1;
        }
        c
    }

    /// True if any entry failed.
    pub fn has_failures(&self) -> bool {
        self.entries.iter().any(|e| e.action == Action::Failed)
    }

    /// True if anything was created, configured or pruned.
    pub fn has_changes(&self) -> bool {
        self.entries.iter().any(|e| {
            matches!(
                e.action,
                Action::Created | Action::Configured | Action::Pruned
            )
        })
    }
}

impl fmt::Display for ChangeSet {
    /// One line per entry: `Deployment.apps/ns/name configured`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.entries {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_display_and_json() {
        let mut cs = ChangeSet::new();
        let k = |n: &str| ObjectKey::new("", "ConfigMap", Some("ns"), n);
        cs.push(k("a"), Action::Created, None);
        cs.push(k("b"), Action::Created, None);
        cs.push(k("c"), Action::Unchanged, None);
        assert!(!cs.has_failures());
        assert!(cs.has_changes());
        cs.push(k("d"), Action::Failed, Some("forbidden".into()));
        assert!(cs.has_failures());
        let counts = cs.counts();
        assert_eq!(counts.created, 2);
        assert_eq!(counts.to_string(), "2 created, 1 unchanged, 1 failed");
        assert_eq!(ChangeCounts::default().to_string(), "no changes");
        assert_eq!(
            cs.to_string(),
            "ConfigMap/ns/a created\nConfigMap/ns/b created\nConfigMap/ns/c unchanged\nConfigMap/ns/d failed: forbidden\n"
        );
        let json = serde_json::to_string(&cs.entries[3]).unwrap();
        assert_eq!(
            json,
            r#"{"key":{"group":"","kind":"ConfigMap","namespace":"ns","name":"d"},"action":"failed","message":"forbidden"}"#
        );
        assert_eq!(Action::Pruned.to_string(), "pruned");
    }
}
