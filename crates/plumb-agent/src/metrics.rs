//! The agent's Prometheus metrics (`plumb_*`), registered once into a `prometheus-client`
//! [`Registry`] and served by [`crate::http`] at `/metrics`.
//!
//! [`Metrics`] is cheap to clone (every metric is an `Arc` inside), so each reconciler and the
//! webhook receiver keep a clone and record into the same registry.

use std::fmt::Write as _;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Which reconciler a reconcile belongs to (label `kind`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ReconcileKind {
    /// A `GitSource` reconcile (fetch and verify).
    GitSource,
    /// A `ChartSource` reconcile (resolve, download, unpack).
    ChartSource,
    /// A `Sync` reconcile (render, plan, apply).
    Sync,
}

impl ReconcileKind {
    /// The label value: `GitSource`, `ChartSource` or `Sync`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GitSource => "GitSource",
            Self::ChartSource => "ChartSource",
            Self::Sync => "Sync",
        }
    }
}

impl EncodeLabelValue for ReconcileKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// How an operation ended (label `result`): `success` or `failure`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// It did what it was asked.
    Success,
    /// It failed (the error is in the object's conditions and the logs).
    Failure,
}

impl Outcome {
    /// The label value: `success` or `failure`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }

    /// `Success` for `Ok`, `Failure` for `Err`.
    pub fn of<T, E>(result: &Result<T, E>) -> Self {
        if result.is_ok() {
            Self::Success
        } else {
            Self::Failure
        }
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// What the webhook receiver did with a request (label `result`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum WebhookResult {
    /// Signature valid; the event was handled (possibly triggering nothing, e.g. a ping).
    Accepted,
    /// Unknown receiver, or a missing or wrong signature/token.
    Unauthorized,
    /// Authenticated but unusable: body too large, malformed payload, server-side error.
    Rejected,
}

impl WebhookResult {
    /// The label value: `accepted`, `unauthorized` or `rejected`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Unauthorized => "unauthorized",
            Self::Rejected => "rejected",
        }
    }
}

impl EncodeLabelValue for WebhookResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    kind: ReconcileKind,
    result: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncLabels {
    sync: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectFailureLabels {
    sync: String,
    /// [`plumb_kube::FailureKind::as_str`].
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: Outcome,
}

/// What kind of request the agent sent to the API server (labels of `plumb_api_requests`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabels {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `apply`, `delete`,
    /// `deletecollection`, or the HTTP method of anything else.
    pub verb: String,
    /// The resource, with its subresource (`deployments`, `syncs/status`); `discovery` for
    /// the discovery documents.
    pub resource: String,
    /// `true` for server-side dry-runs (which write nothing).
    pub dry_run: bool,
}

impl ApiRequestLabels {
    /// Classifies a request by its method, path, query and content type.
    pub fn of(method: &http::Method, uri: &http::Uri, content_type: Option<&str>) -> Self {
        let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
        // /api/v1/... and /apis/<group>/<version>/...
        let rest = match segments.as_slice() {
            ["api", _version, rest @ ..] => rest,
            ["apis", _group, _version, rest @ ..] => rest,
            _ => &[][..],
        };
        let (resource, name, subresource) = match rest {
            [] => (None, None, None),
            ["namespaces", _ns, resource, tail @ ..] => {
                (Some(*resource), tail.first().copied(), tail.get(1).copied())
            }
            [resource, tail @ ..] => (Some(*resource), tail.first().copied(), tail.get(1).copied()),
        };
        let query = uri.query().unwrap_or("");
        let has = |param: &str| {
            query.split('&').any(|kv| {
                kv == param || kv.starts_with(&format!("{param}=")) && !kv.ends_with("=false")
            })
        };
        let verb = match *method {
            http::Method::GET if name.is_some() || resource.is_none() => "get",
            http::Method::GET if has("watch") => "watch",
            http::Method::GET => "list",
            http::Method::POST => "create",
            http::Method::PUT => "update",
            http::Method::PATCH if content_type == Some("application/apply-patch+yaml") => "apply",
            http::Method::PATCH => "patch",
            http::Method::DELETE if name.is_some() => "delete",
            http::Method::DELETE => "deletecollection",
            ref other => other.as_str(),
        }
        .to_ascii_lowercase();
        let resource = match (resource, subresource) {
            (None, _) => "discovery".to_owned(),
            (Some(r), None) => r.to_owned(),
            (Some(r), Some(sub)) => format!("{r}/{sub}"),
        };
        Self {
            verb,
            resource,
            dry_run: has("dryRun"),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    receiver: String,
    result: WebhookResult,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 10 ms .. ~82 s: from a no-op reconcile to a large apply or a slow clone.
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

/// All of the agent's metrics. Clone it freely; clones record into the same registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    reconcile_duration: HistogramFamily<ReconcileLabels>,
    reconciles: Family<ReconcileLabels, Counter>,
    drift_detected: Family<SyncLabels, Counter>,
    drift_corrected: Family<SyncLabels, Counter>,
    managed_objects: Family<SyncLabels, Gauge>,
    object_failures: Family<ObjectFailureLabels, Counter>,
    fetch_duration: HistogramFamily<ResultLabels>,
    verification_failures: Counter,
    webhook_requests: Family<WebhookLabels, Counter>,
    api_requests: Family<ApiRequestLabels, Counter>,
    renderings_held: Gauge,
    renderings_held_max: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Metrics that are not (yet) in any registry: they record, but nobody can scrape them.
    /// Useful in tests and for components run without the HTTP server.
    pub fn new() -> Self {
        Self {
            reconcile_duration: Family::new_with_constructor(duration_histogram),
            reconciles: Family::default(),
            drift_detected: Family::default(),
            drift_corrected: Family::default(),
            managed_objects: Family::default(),
            object_failures: Family::default(),
            fetch_duration: Family::new_with_constructor(duration_histogram),
            verification_failures: Counter::default(),
            webhook_requests: Family::default(),
            api_requests: Family::default(),
            renderings_held: Gauge::default(),
            renderings_held_max: Gauge::default(),
        }
    }

    /// Creates the metrics and registers them in `registry` (call once per registry: registering
    /// twice duplicates the series in the output).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::new();
        metrics.register_into(registry);
        metrics
    }

    /// Registers these metrics in `registry` (call once per registry).
    pub fn register_into(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "plumb_reconcile_duration",
            "Duration of GitSource and Sync reconciles, by kind and result",
            Unit::Seconds,
            self.reconcile_duration.clone(),
        );
        registry.register(
            "plumb_reconciles",
            "Reconciles finished, by kind and result",
            self.reconciles.clone(),
        );
        registry.register(
            "plumb_drift_detected",
            "Managed objects found changed in the cluster by someone other than Plumb, by Sync",
            self.drift_detected.clone(),
        );
        registry.register(
            "plumb_drift_corrected",
            "Drifted objects re-applied to their state in Git, by Sync",
            self.drift_corrected.clone(),
        );
        registry.register(
            "plumb_managed_objects",
            "Objects in each Sync's inventory",
            self.managed_objects.clone(),
        );
        registry.register(
            "plumb_object_failures",
            "Objects a Sync could not validate, apply or prune, by Sync and kind of failure \
             (conflict, immutable, invalid, forbidden, not_found, transient, other)",
            self.object_failures.clone(),
        );
        registry.register_with_unit(
            "plumb_fetch_duration",
            "Duration of Git fetches, by result",
            Unit::Seconds,
            self.fetch_duration.clone(),
        );
        registry.register(
            "plumb_verification_failures",
            "Commits or tags refused because their signature did not verify",
            self.verification_failures.clone(),
        );
        registry.register(
            "plumb_webhook_requests",
            "Webhook requests, by receiver and result",
            self.webhook_requests.clone(),
        );
        registry.register(
            "plumb_api_requests",
            "Requests the agent sent to the Kubernetes API server, by verb, resource and dry-run",
            self.api_requests.clone(),
        );
        registry.register(
            "plumb_sync_renderings_held",
            "Syncs holding a rendering (rendering, or applying what they rendered) right now",
            self.renderings_held.clone(),
        );
        registry.register(
            "plumb_sync_renderings_held_max",
            "The most Syncs that held a rendering at once since the agent started (bounded by \
             the agent's render slots)",
            self.renderings_held_max.clone(),
        );
    }

    /// Sets the number of Syncs holding a rendering now, and the most at once so far.
    pub fn set_renderings_held(&self, now: usize, max: usize) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.renderings_held.set(gauge(now));
        self.renderings_held_max.set(gauge(max));
    }

    /// A Kubernetes client for `config` whose every request is counted in
    /// `plumb_api_requests` (a watch counts once per connection, not per event).
    pub fn client(&self, config: kube::Config) -> Result<kube::Client, kube::Error> {
        let requests = self.api_requests.clone();
        let layer =
            tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
                let content_type = req
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok());
                requests
                    .get_or_create(&ApiRequestLabels::of(req.method(), req.uri(), content_type))
                    .inc();
                req
            });
        Ok(kube::client::ClientBuilder::try_from(config)?
            .with_layer(&layer)
            .build())
    }

    /// Records a finished reconcile: its duration and the count.
    pub fn observe_reconcile(&self, kind: ReconcileKind, result: Outcome, duration: Duration) {
        let labels = ReconcileLabels { kind, result };
        self.reconcile_duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
        self.reconciles.get_or_create(&labels).inc();
    }

    /// Counts one drifted object of `sync` (`namespace/name`).
    pub fn drift_detected(&self, sync: &str) {
        self.drift_detected.get_or_create(&sync_labels(sync)).inc();
    }

    /// Counts one drifted object of `sync` (`namespace/name`) put back to its state in Git.
    pub fn drift_corrected(&self, sync: &str) {
        self.drift_corrected.get_or_create(&sync_labels(sync)).inc();
    }

    /// Sets the number of objects `sync` (`namespace/name`) manages.
    pub fn set_managed_objects(&self, sync: &str, count: usize) {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        self.managed_objects
            .get_or_create(&sync_labels(sync))
            .set(count);
    }

    /// Counts one object of `sync` (`namespace/name`) that failed with `kind`.
    pub fn object_failed(&self, sync: &str, kind: plumb_kube::FailureKind) {
        self.object_failures
            .get_or_create(&ObjectFailureLabels {
                sync: sync.to_owned(),
                kind: kind.as_str().to_owned(),
            })
            .inc();
    }

    /// Drops the per-Sync series of a deleted Sync, so they do not linger in the output.
    pub fn forget_sync(&self, sync: &str) {
        let labels = sync_labels(sync);
        self.drift_detected.remove(&labels);
        self.drift_corrected.remove(&labels);
        self.managed_objects.remove(&labels);
        for kind in plumb_kube::FailureKind::ALL {
            self.object_failures.remove(&ObjectFailureLabels {
                sync: sync.to_owned(),
                kind: kind.as_str().to_owned(),
            });
        }
    }

    /// Records a finished Git fetch.
    pub fn observe_fetch(&self, result: Outcome, duration: Duration) {
        self.fetch_duration
            .get_or_create(&ResultLabels { result })
            .observe(duration.as_secs_f64());
    }

    /// Counts a commit or tag refused by signature verification.
    pub fn verification_failed(&self) {
        self.verification_failures.inc();
    }

    /// Counts a webhook request to `receiver`.
    pub fn webhook_request(&self, receiver: &str, result: WebhookResult) {
        self.webhook_requests
            .get_or_create(&WebhookLabels {
                receiver: receiver.to_owned(),
                result,
            })
            .inc();
    }
}

fn sync_labels(sync: &str) -> SyncLabels {
    SyncLabels {
        sync: sync.to_owned(),
    }
}

/// Encodes `registry` in the OpenMetrics text format (what `/metrics` serves).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

/// The content type of [`encode`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_appears_with_its_labels() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.observe_reconcile(
            ReconcileKind::GitSource,
            Outcome::Success,
            Duration::from_millis(30),
        );
        metrics.observe_reconcile(
            ReconcileKind::Sync,
            Outcome::Failure,
            Duration::from_secs(2),
        );
        metrics.drift_detected("apps/web");
        metrics.drift_detected("apps/web");
        metrics.drift_corrected("apps/web");
        metrics.set_managed_objects("apps/web", 4);
        metrics.observe_fetch(Outcome::Success, Duration::from_millis(250));
        metrics.verification_failed();
        metrics.webhook_request("github", WebhookResult::Unauthorized);
        metrics.object_failed("apps/web", plumb_kube::FailureKind::Forbidden);
        metrics.set_renderings_held(1, 2);

        let text = encode(&registry);
        for line in [
            "# TYPE plumb_reconcile_duration_seconds histogram",
            "# UNIT plumb_reconcile_duration_seconds seconds",
            r#"plumb_reconcile_duration_seconds_count{kind="GitSource",result="success"} 1"#,
            r#"plumb_reconcile_duration_seconds_sum{kind="Sync",result="failure"} 2.0"#,
            "# TYPE plumb_reconciles counter",
            r#"plumb_reconciles_total{kind="GitSource",result="success"} 1"#,
            r#"plumb_reconciles_total{kind="Sync",result="failure"} 1"#,
            r#"plumb_drift_detected_total{sync="apps/web"} 2"#,
            r#"plumb_drift_corrected_total{sync="apps/web"} 1"#,
            "# TYPE plumb_managed_objects gauge",
            r#"plumb_managed_objects{sync="apps/web"} 4"#,
            r#"plumb_fetch_duration_seconds_count{result="success"} 1"#,
            "plumb_verification_failures_total 1",
            r#"plumb_webhook_requests_total{receiver="github",result="unauthorized"} 1"#,
            r#"plumb_object_failures_total{sync="apps/web",kind="forbidden"} 1"#,
            "plumb_sync_renderings_held 1",
            "plumb_sync_renderings_held_max 2",
            "# EOF",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    fn classify(method: &str, uri: &str, content_type: Option<&str>) -> (String, String, bool) {
        let l = ApiRequestLabels::of(
            &method.parse().unwrap(),
            &uri.parse().unwrap(),
            content_type,
        );
        (l.verb, l.resource, l.dry_run)
    }

    #[test]
    fn api_requests_are_classified_by_verb_resource_and_dry_run() {
        let cases = [
            (
                "GET",
                "/api/v1/namespaces/a/configmaps/x",
                None,
                ("get", "configmaps", false),
            ),
            (
                "GET",
                "/api/v1/namespaces/a/configmaps?labelSelector=l",
                None,
                ("list", "configmaps", false),
            ),
            (
                "GET",
                "/apis/apps/v1/deployments?watch=true&resourceVersion=1",
                None,
                ("watch", "deployments", false),
            ),
            (
                "GET",
                "/api/v1/namespaces/a",
                None,
                ("get", "namespaces", false),
            ),
            (
                "GET",
                "/api/v1/namespaces",
                None,
                ("list", "namespaces", false),
            ),
            ("GET", "/apis/apps/v1", None, ("get", "discovery", false)),
            ("GET", "/api", None, ("get", "discovery", false)),
            (
                "PATCH",
                "/apis/apps/v1/namespaces/a/deployments/web?fieldManager=plumb&dryRun=All",
                Some("application/apply-patch+yaml"),
                ("apply", "deployments", true),
            ),
            (
                "PATCH",
                "/apis/plumb.dev/v1alpha1/namespaces/a/syncs/web/status",
                Some("application/merge-patch+json"),
                ("patch", "syncs/status", false),
            ),
            (
                "POST",
                "/api/v1/namespaces/a/events",
                None,
                ("create", "events", false),
            ),
            (
                "PUT",
                "/apis/coordination.k8s.io/v1/namespaces/a/leases/l",
                None,
                ("update", "leases", false),
            ),
            (
                "DELETE",
                "/api/v1/namespaces/a/configmaps/x",
                None,
                ("delete", "configmaps", false),
            ),
            (
                "GET",
                "/api/v1/configmaps?watch=false",
                None,
                ("list", "configmaps", false),
            ),
        ];
        for (method, uri, ct, (verb, resource, dry_run)) in cases {
            assert_eq!(
                classify(method, uri, ct),
                (verb.to_owned(), resource.to_owned(), dry_run),
                "{method} {uri}"
            );
        }
    }

    #[test]
    fn forgotten_syncs_leave_the_output() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.set_managed_objects("apps/web", 4);
        metrics.drift_detected("apps/web");
        metrics.object_failed("apps/web", plumb_kube::FailureKind::Conflict);
        metrics.forget_sync("apps/web");
        assert!(!encode(&registry).contains("apps/web"));
    }
}
