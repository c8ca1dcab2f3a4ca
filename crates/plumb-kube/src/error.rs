//! Errors of Plumb's Kubernetes I/O. A failure of one object is an [`ObjectError`]: the
//! object, where its manifest came from, what kind of refusal it was and the API error itself;
//! the CLI, the Sync status, events and metrics all read the same value.

use std::fmt;
use std::sync::Arc;

use plumb_core::{ObjectKey, SourceLocation};

/// Why the API server refused (or failed) one object's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureKind {
    /// Another field manager owns fields of the object (server-side apply conflict).
    Conflict,
    /// A field that cannot change after creation was changed.
    Immutable,
    /// The object does not pass validation (schema, admission).
    Invalid,
    /// The identity applying it may not.
    Forbidden,
    /// The object (or its namespace) does not exist.
    NotFound,
    /// Server errors, throttling, timeouts, connection failures: a retry may pass.
    Transient,
    /// A hook object failed or did not complete in time (see `plumb_core::phases`).
    Hook,
    /// An object did not become healthy before the next wave within the timeout.
    Unhealthy,
    /// Any other refusal.
    Other,
}

impl FailureKind {
    /// Every kind.
    pub const ALL: [FailureKind; 9] = [
        FailureKind::Conflict,
        FailureKind::Immutable,
        FailureKind::Invalid,
        FailureKind::Forbidden,
        FailureKind::NotFound,
        FailureKind::Transient,
        FailureKind::Hook,
        FailureKind::Unhealthy,
        FailureKind::Other,
    ];

    /// Classifies an API error.
    pub fn of(err: &kube::Error) -> Self {
        if is_transient(err) {
            return FailureKind::Transient;
        }
        let kube::Error::Api(status) = err else {
            return FailureKind::Other;
        };
        if status.message.contains("field is immutable") {
            return FailureKind::Immutable;
        }
        match status.code {
            409 => FailureKind::Conflict,
            403 => FailureKind::Forbidden,
            404 => FailureKind::NotFound,
            // A schema mismatch in server-side apply is a 500 with this message.
            400 | 422 | 500 => FailureKind::Invalid,
            _ => FailureKind::Other,
        }
    }

    /// A short, stable name (metric label, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Conflict => "conflict",
            FailureKind::Immutable => "immutable",
            FailureKind::Invalid => "invalid",
            FailureKind::Forbidden => "forbidden",
            FailureKind::NotFound => "not_found",
            FailureKind::Transient => "transient",
            FailureKind::Hook => "hook",
            FailureKind::Unhealthy => "unhealthy",
            FailureKind::Other => "other",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The failure of one object's request, as the user sees it: `<object> (<file:line>): <why>`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{object}{}: {message}", .location.as_ref().map(|l| format!(" ({l})")).unwrap_or_default())]
pub struct ObjectError {
    /// The object.
    pub object: ObjectKey,
    /// Where its manifest was defined, when known.
    pub location: Option<SourceLocation>,
    /// What kind of refusal.
    pub kind: FailureKind,
    /// The server's reason with a hint for the common cases (see [`describe_api_error`]).
    pub message: String,
    /// The API error, when there was one.
    #[source]
    pub source: Option<Arc<kube::Error>>,
}

impl ObjectError {
    /// The failure of `object`'s request with `err`; `force_hint`: suggest
    /// `--force-conflicts` for a conflict.
    pub fn from_api(
        object: ObjectKey,
        location: Option<SourceLocation>,
        err: kube::Error,
        force_hint: bool,
    ) -> Self {
        Self {
            object,
            location,
            kind: FailureKind::of(&err),
            message: describe_api_error(&err, force_hint),
            source: Some(Arc::new(err)),
        }
    }

    /// A failure that is not an API error (e.g. a kind no longer served).
    pub fn other(object: ObjectKey, location: Option<SourceLocation>, message: String) -> Self {
        Self {
            object,
            location,
            kind: FailureKind::Other,
            message,
            source: None,
        }
    }

    /// A failure of `kind` that is not an API error (a hook that failed, a wave that did
    /// not become healthy).
    pub fn new(
        object: ObjectKey,
        location: Option<SourceLocation>,
        kind: FailureKind,
        message: String,
    ) -> Self {
        Self {
            object,
            location,
            kind,
            message,
            source: None,
        }
    }

    /// Whether a retry may pass.
    pub fn is_transient(&self) -> bool {
        self.kind == FailureKind::Transient
    }
}

/// One `  <object error>` line per failure.
fn lines(failures: &[ObjectError]) -> String {
    failures
        .iter()
        .map(|f| format!("  {f}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What went wrong talking to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Building a client or reading the kubeconfig failed.
    #[error("cannot connect to the cluster: {context}: {source}")]
    Connect {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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
    #[error("server-side dry-run failed, nothing was applied:\n{}", lines(.failures))]
    DryRun {
        /// Each refused object, in object order.
        failures: Vec<ObjectError>,
    },
    /// Writing some objects failed after others had been written (a later stage, or a write
    /// after a passing dry-run). Nothing was pruned.
    #[error(
        "{} object(s) failed to apply ({written} written before or beside them; nothing was \
         pruned):\n{}",
        .failures.len(),
        lines(.failures)
    )]
    Apply {
        /// Each failed object, in apply order.
        failures: Vec<ObjectError>,
        /// How many objects were created or configured in this attempt.
        written: usize,
    },
    /// A wait did not finish in time.
    #[error("timed out after {seconds}s waiting for {what}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The timeout.
        seconds: u64,
    },
    /// A watch failed.
    #[error("{context}: {source}")]
    Watch {
        /// What was watched.
        context: String,
        /// The watch error.
        #[source]
        source: kube::runtime::wait::Error,
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
            Error::Connect { .. } | Error::Discovery(_) | Error::Timeout { .. } => true,
            Error::Unhealthy { .. } | Error::Watch { .. } => true,
            Error::Inventory { .. } => true,
            Error::Api { source, .. } => is_transient(source),
            // Only when every refusal was transient (server errors, throttling, timeouts); a
            // refusal of the object itself comes back on retry.
            Error::DryRun { failures } | Error::Apply { failures, .. } => failures
                .iter()
                .all(|f| f.is_transient() || f.kind == FailureKind::Unhealthy),
            Error::UnknownKind { .. } | Error::Plan(_) => false,
        }
    }

    /// The objects that failed, for a dry-run or apply failure.
    pub fn object_failures(&self) -> &[ObjectError] {
        match self {
            Error::DryRun { failures } | Error::Apply { failures, .. } => failures,
            _ => &[],
        }
    }

    pub(crate) fn connect(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Connect {
            context: context.into(),
            source: source.into(),
        }
    }

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Connect { .. } => "connect",
            Error::Discovery(_) => "discovery",
            Error::UnknownKind { .. } => "unknown_kind",
            Error::DryRun { .. } => "dry_run",
            Error::Apply { .. } => "apply",
            Error::Timeout { .. } => "timeout",
            Error::Unhealthy { .. } => "unhealthy",
            Error::Watch { .. } => "watch",
            Error::Inventory { .. } => "inventory",
            Error::Plan(e) => e.metric_label(),
            Error::Api { .. } => "api",
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether an API error says nothing about the request itself.
pub fn is_transient(err: &kube::Error) -> bool {
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
pub fn describe_api_error(err: &kube::Error, force_hint: bool) -> String {
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
    }

    fn failure(err: kube::Error) -> ObjectError {
        let key = ObjectKey::new("", "ConfigMap", Some("ns"), "c");
        ObjectError::from_api(key, None, err, true)
    }

    #[test]
    fn a_dry_run_is_retryable_only_when_every_refusal_was_transient() {
        let dry = Error::DryRun {
            failures: vec![failure(api(503, "")), failure(api(429, ""))],
        };
        assert!(dry.is_retryable());
        let dry = Error::DryRun {
            failures: vec![failure(api(503, "")), failure(api(422, "Invalid"))],
        };
        assert!(!dry.is_retryable());
    }

    #[test]
    fn every_failure_is_classified_and_keeps_its_source() {
        for (err, kind) in [
            (api(409, "Conflict"), FailureKind::Conflict),
            (api(403, "Forbidden"), FailureKind::Forbidden),
            (api(404, "NotFound"), FailureKind::NotFound),
            (api(422, "Invalid"), FailureKind::Invalid),
            (
                api_with(
                    422,
                    "Invalid",
                    "spec.selector: Invalid value: field is immutable",
                ),
                FailureKind::Immutable,
            ),
            (
                api_with(500, "", "failed to create typed patch object (x)"),
                FailureKind::Invalid,
            ),
            (api(503, ""), FailureKind::Transient),
            (api(429, "TooManyRequests"), FailureKind::Transient),
        ] {
            let f = failure(err);
            assert_eq!(f.kind, kind, "{f}");
            assert!(std::error::Error::source(&f).is_some(), "{f}");
        }
        let located = ObjectError::from_api(
            ObjectKey::new("", "ConfigMap", Some("ns"), "c"),
            Some(SourceLocation {
                file: "apps/c.yaml".into(),
                line: 7,
                document: 1,
            }),
            api(409, "Conflict"),
            true,
        );
        assert_eq!(
            located.to_string(),
            "ConfigMap/ns/c (apps/c.yaml:7 (document 1)): conflict with another field manager: m \
             (re-run with --force-conflicts to take these fields over)"
        );
        let err = Error::Apply {
            failures: vec![located],
            written: 2,
        };
        assert!(
            err.to_string()
                .contains("\n  ConfigMap/ns/c (apps/c.yaml:7"),
            "{err}"
        );
        assert_eq!(err.object_failures()[0].kind, FailureKind::Conflict);
    }
}
