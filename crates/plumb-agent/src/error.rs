//! Errors of the reconcilers. Messages never carry credentials (the source and kube layers
//! scrub them).

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Fetching or verifying the Git source failed.
    #[error(transparent)]
    Source(#[from] plumb_source::Error),
    /// Fetching a ChartSource's chart failed.
    #[error("{what}: {source}")]
    Chart {
        /// `chart "x" version "y" from URL`.
        what: String,
        /// Why.
        #[source]
        source: plumb_source::chart::Error,
    },
    /// Rendering the manifests failed.
    #[error(transparent)]
    Render(#[from] plumb_render::RenderError),
    /// Planning, validating or applying failed.
    #[error(transparent)]
    Kube(#[from] plumb_kube::Error),
    /// The spec (or a Secret/ConfigMap it names) is wrong.
    #[error("{0}")]
    Spec(String),
    /// Leader election failed to start.
    #[error("leader election: {0}")]
    LeaderElection(#[from] crate::leader::Error),
    /// The agent lost its leader Lease: it stops reconciling and restarts as a standby.
    #[error("lost the leader Lease; restarting as a standby")]
    LostLeadership,
    /// Something the object depends on is not ready yet; retried soon.
    #[error("{0}")]
    NotReady(String),
    /// A Kubernetes API call failed.
    #[error("{context}: {source}")]
    Api {
        /// What was being done.
        context: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A local file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether retrying without a change to the spec or the source may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Source(e) => e.is_retryable(),
            Error::Chart { source, .. } => source.is_retryable(),
            Error::Render(e) => e.is_retryable(),
            Error::Kube(e) => e.is_retryable(),
            Error::Spec(_) => false,
            Error::LeaderElection(_) | Error::LostLeadership => true,
            Error::NotReady(_) | Error::Api { .. } | Error::Io { .. } => true,
        }
    }

    /// The objects that failed to validate, apply or prune, each with its kind of failure.
    pub fn object_failures(&self) -> &[plumb_kube::ObjectError] {
        match self {
            Error::Kube(e) => e.object_failures(),
            _ => &[],
        }
    }

    /// Whether this is a commit signature verification failure.
    pub fn is_verification_failure(&self) -> bool {
        matches!(self, Error::Source(plumb_source::Error::Verify(_)))
    }

    /// The condition reason (CamelCase) for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Source(plumb_source::Error::Verify(_)) => "VerificationFailed",
            Error::Source(_) | Error::Chart { .. } => "FetchFailed",
            Error::Render(_) => "RenderFailed",
            Error::Kube(plumb_kube::Error::DryRun { .. }) => "ValidationFailed",
            Error::Kube(plumb_kube::Error::Plan(_)) => "PlanFailed",
            Error::Kube(plumb_kube::Error::Unhealthy { .. }) => "HealthCheckFailed",
            Error::Kube(_) => "ApplyFailed",
            Error::Spec(_) => "InvalidSpec",
            Error::LeaderElection(_) | Error::LostLeadership => "LeaderElection",
            Error::NotReady(_) => "DependencyNotReady",
            Error::Api { .. } | Error::Io { .. } => "ReconcileError",
        }
    }

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Source(e) => e.metric_label(),
            Error::Chart { source, .. } => source.metric_label(),
            Error::Render(e) => e.metric_label(),
            Error::Kube(e) => e.metric_label(),
            Error::Spec(_) => "spec",
            Error::LeaderElection(_) | Error::LostLeadership => "leader_election",
            Error::NotReady(_) => "not_ready",
            Error::Api { .. } => "api",
            Error::Io { .. } => "io",
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
