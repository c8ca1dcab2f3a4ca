//! Errors of Plumb's Kubernetes I/O.

use plumb_core::ObjectKey;

/// What went wrong talking to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Building a client or reading the kubeconfig failed.
    #[error("cannot connect to the cluster: {0}")]
    Connect(String),
    /// API discovery failed.
    #[error("API discovery failed: {0}")]
    Discovery(#[source] kube::Error),
    /// A manifest names a kind the API server does not serve (and no CRD in the same sync
    /// defines it).
    #[error("{object}: the cluster has no resource for kind {kind} in {api_version}{source_hint}")]
    UnknownKind {
        /// The object.
        object: Box<ObjectKey>,
        /// Its kind.
        kind: String,
        /// Its apiVersion.
        api_version: String,
        /// " (defined in file:line)" or empty.
        source_hint: String,
    },
    /// The server-side dry-run refused one or more objects; nothing was written.
    #[error("server-side dry-run failed, nothing was applied:\n{}", .failures.join("\n"))]
    DryRun {
        /// One line per refused object: the object, where it was defined, the server's reason.
        failures: Vec<String>,
        /// Whether every refusal was transient (server errors, throttling, timeouts), so that
        /// trying again may pass; a refusal of the object itself is not.
        retryable: bool,
    },
    /// Writing some objects failed after others had been written (a later stage, or a write
    /// after a passing dry-run). Nothing was pruned.
    #[error(
        "{} object(s) failed to apply ({written} written before or beside them; nothing was \
         pruned):\n{}",
        .failures.len(),
        .failures.join("\n")
    )]
    Apply {
        /// One line per failed object.
        failures: Vec<String>,
        /// How many objects were created or configured in this attempt.
        written: usize,
        /// Whether every failure was transient.
        retryable: bool,
    },
    /// A wait did not finish in time.
    #[error("timed out after {seconds}s waiting for {what}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The timeout.
        seconds: u64,
    },
    /// Objects did not become healthy within the timeout.
    #[error("timed out after {seconds}s waiting for health; not healthy:\n{}", .unhealthy.join("\n"))]
    Unhealthy {
        /// The timeout.
        seconds: u64,
        /// One line per object that is not healthy: key, status and reason.
        unhealthy: Vec<String>,
        /// Every object's last verdict.
        verdicts: Vec<(plumb_core::ObjectKey, plumb_core::HealthVerdict)>,
    },
    /// Reading or writing the inventory failed.
    #[error("inventory {name} in namespace {namespace}: {message}")]
    Inventory {
        /// Namespace of the inventory object.
        namespace: String,
        /// Name of the inventory object.
        name: String,
        /// What failed.
        message: String,
    },
    /// Planning refused the desired state.
    #[error(transparent)]
    Plan(#[from] plumb_core::PlanError),
    /// Any other API error.
    #[error("{context}: {source}")]
    Api {
        /// What was being done.
        context: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// Whether trying again later may succeed (network, server errors), as opposed to errors in
    /// the desired state itself.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect(_) | Error::Discovery(_) | Error::Timeout { .. } => true,
            Error::Unhealthy { .. } => true,
            Error::Inventory { .. } => true,
            Error::Api { source, .. } => is_transient(source),
            Error::DryRun { retryable, .. } | Error::Apply { retryable, .. } => *retryable,
            Error::UnknownKind { .. } | Error::Plan(_) => false,
        }
    }

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Connect(_) => "connect",
            Error::Discovery(_) => "discovery",
            Error::UnknownKind { .. } => "unknown_kind",
            Error::DryRun { .. } => "dry_run",
            Error::Apply { .. } => "apply",
            Error::Timeout { .. } => "timeout",
            Error::Unhealthy { .. } => "unhealthy",
            Error::Inventory { .. } => "inventory",
            Error::Plan(e) => e.metric_label(),
            Error::Api { .. } => "api",
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why one object's request failed: the user-facing message and whether it may pass on retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiFailure {
    /// See [`describe_api_error`].
    pub message: String,
    /// Server errors, throttling, timeouts and connection failures; not a refusal of the
    /// object (invalid, forbidden, conflict, immutable, not found).
    pub transient: bool,
}

impl ApiFailure {
    pub(crate) fn new(err: &kube::Error, force_hint: bool) -> Self {
        Self {
            message: describe_api_error(err, force_hint),
            transient: is_transient(err),
        }
    }
}

/// Whether an API error says nothing about the request itself.
pub(crate) fn is_transient(err: &kube::Error) -> bool {
    match err {
        // Server-side apply reports a manifest that does not fit the schema as a 500
        // ("failed to create typed patch object"): a refusal of the object, not an outage.
        kube::Error::Api(status)
            if status
                .message
                .contains("failed to create typed patch object") =>
        {
            false
        }
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        _ => true,
    }
}

/// A one-line, user-facing rendering of an API error for one object: the server's message,
/// with a hint for the common cases (conflicts, immutable fields).
pub(crate) fn describe_api_error(err: &kube::Error, force_hint: bool) -> String {
    match err {
        kube::Error::Api(status) => {
            let message = status.message.trim();
            if status.code == 409 && status.reason == "Conflict" && force_hint {
                format!(
                    "conflict with another field manager: {message} \
                     (re-run with --force-conflicts to take these fields over)"
                )
            } else if message.contains("field is immutable") {
                format!(
                    "immutable field changed: {message} \
                     (delete and re-create the object to change it)"
                )
            } else if status.reason.is_empty() {
                format!("{message} (HTTP {})", status.code)
            } else {
                format!("{message} ({})", status.reason)
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str) -> kube::Error {
        api_with(code, reason, "m")
    }

    fn api_with(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn only_server_side_trouble_is_transient() {
        for code in [500, 503, 504, 429] {
            assert!(is_transient(&api(code, "")), "{code}");
        }
        for (code, reason) in [
            (422, "Invalid"),
            (409, "Conflict"),
            (403, "Forbidden"),
            (404, "NotFound"),
        ] {
            assert!(!is_transient(&api(code, reason)), "{code}");
        }
        // What the API server answers for a manifest that does not fit its schema.
        assert!(!is_transient(&api_with(
            500,
            "",
            "failed to create typed patch object (ns/w1; g/v1, Kind=Widget): .spec.size: \
             expected numeric (int or float), got string"
        )));
        let dry = Error::DryRun {
            failures: vec!["x".into()],
            retryable: true,
        };
        assert!(dry.is_retryable());
        let dry = Error::DryRun {
            failures: vec!["x".into()],
            retryable: false,
        };
        assert!(!dry.is_retryable());
    }
}
