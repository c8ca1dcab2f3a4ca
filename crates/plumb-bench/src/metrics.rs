//! Counters from Prometheus text: the API server's `apiserver_request_total` and the agent's
//! `plumb_api_requests_total`.

use plumb_testsupport::http::{Sample, samples};

/// Verbs that change something (as `apiserver_request_total` spells them).
const WRITE_VERBS: [&str; 6] = [
    "APPLY",
    "PATCH",
    "POST",
    "PUT",
    "DELETE",
    "DELETECOLLECTION",
];

/// The resources the generated apps consist of (plumb's inventory is a ConfigMap, so an
/// inventory write would be counted too). The metric has no namespace or client label, so
/// restricting to these resources, and waiting for the controllers to go quiet before each
/// measured run (see `cluster::settle`), is what keeps other clients' writes out of the count.
pub const BENCH_RESOURCES: [&str; 4] = ["configmaps", "serviceaccounts", "services", "deployments"];

/// Written all the time by the control plane itself (leader election, node heartbeats, events).
const BACKGROUND_RESOURCES: [&str; 2] = ["leases", "events"];

/// Request counts of interest from one scrape of the API server's `apiserver_request_total`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RequestCounts {
    /// Non-dry-run writes to [`BENCH_RESOURCES`] (main resource only).
    pub writes: f64,
    /// Dry-run writes to [`BENCH_RESOURCES`] (main resource only).
    pub dry_runs: f64,
    /// Reads (and watches) of [`BENCH_RESOURCES`] (main resource only).
    pub reads: f64,
    /// Every non-dry-run write to any resource but leases and events, subresources included:
    /// what `settle` waits to go quiet.
    pub background_writes: f64,
    /// Every request of every client, to any resource.
    pub total: f64,
}

impl RequestCounts {
    /// Sums the samples of `apiserver_request_total`.
    ///
    /// `dry_run` is "All" for dry-run requests and "" otherwise, so dry-runs are told apart.
    /// Only main-resource requests (no subresource: controllers write `status` continuously)
    /// count, except in `background_writes`.
    pub fn of(samples: &[Sample]) -> Self {
        let mut s = Self::default();
        for sample in samples {
            s.total += sample.value;
            let resource = sample.label("resource");
            let is_write = WRITE_VERBS.contains(&sample.label("verb"));
            let dry_run = !sample.label("dry_run").is_empty();
            if is_write && !dry_run && !BACKGROUND_RESOURCES.contains(&resource) {
                s.background_writes += sample.value;
            }
            if !BENCH_RESOURCES.contains(&resource) || !sample.label("subresource").is_empty() {
                continue;
            }
            if is_write && dry_run {
                s.dry_runs += sample.value;
            } else if is_write {
                s.writes += sample.value;
            } else {
                s.reads += sample.value;
            }
        }
        s
    }

    /// The requests made between `self` (before) and `after`.
    pub fn delta(&self, after: &Self) -> RequestDelta {
        // Counters are integral; the difference of two of them is exact in f64.
        let d = |a: f64, b: f64| (b - a) as i64;
        RequestDelta {
            writes: d(self.writes, after.writes),
            dry_runs: d(self.dry_runs, after.dry_runs),
            reads: d(self.reads, after.reads),
            background_writes: d(self.background_writes, after.background_writes),
            total: d(self.total, after.total),
        }
    }
}

/// Requests made during a run (see [`RequestCounts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestDelta {
    pub writes: i64,
    pub dry_runs: i64,
    pub reads: i64,
    pub background_writes: i64,
    pub total: i64,
}

impl std::fmt::Display for RequestDelta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{{'writes': {}, 'dry_runs': {}, 'reads': {}, 'background_writes': {}}}",
            self.writes, self.dry_runs, self.reads, self.background_writes
        )
    }
}

/// The sum of every sample of counter `name` (e.g. `rest_client_requests_total`, the requests
/// a Go client sent, or `plumb_api_requests_total`).
pub fn counter_sum(text: &str, name: &str) -> f64 {
    samples(text, name).iter().fold(0.0, |sum, s| sum + s.value)
}

/// The agent's `plumb_api_requests_total` keyed by (verb, resource, dry_run), in text order.
pub fn agent_requests(text: &str) -> Vec<((String, String, String), f64)> {
    let mut out: Vec<((String, String, String), f64)> = Vec::new();
    for s in samples(text, "plumb_api_requests_total") {
        let key = (
            s.label("verb").to_owned(),
            s.label("resource").to_owned(),
            s.label("dry_run").to_owned(),
        );
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = s.value,
            None => out.push((key, s.value)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const APISERVER: &str = r#"# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="configmaps",scope="resource",subresource="",verb="POST",version="v1"} 7
apiserver_request_total{code="200",component="apiserver",dry_run="All",group="",resource="configmaps",scope="resource",subresource="",verb="APPLY",version="v1"} 400
apiserver_request_total{code="200",component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="status",verb="PUT",version="v1"} 100
apiserver_request_total{code="200",component="apiserver",dry_run="",group="apps",resource="deployments",scope="namespace",subresource="",verb="LIST",version="v1"} 3
apiserver_request_total{code="200",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 900
apiserver_request_total{code="201",component="apiserver",dry_run="",group="apps",resource="replicasets",scope="resource",subresource="",verb="POST",version="v1"} 5
apiserver_request_total_other{verb="POST",resource="configmaps"} 1000
apiserver_request_duration_seconds_bucket{le="0.1",verb="POST"} 12
"#;

    #[test]
    fn apiserver_requests_are_counted_by_kind() {
        let samples = samples(APISERVER, "apiserver_request_total");
        assert_eq!(samples.len(), 6);
        assert_eq!(samples[0].label("verb"), "POST");
        assert_eq!(samples[0].label("dry_run"), "");
        assert_eq!(samples[1].label("dry_run"), "All");
        let counts = RequestCounts::of(&samples);
        assert_eq!(
            counts,
            RequestCounts {
                writes: 7.0,
                dry_runs: 400.0,
                reads: 3.0,
                // The configmap POST, the deployment status PUT and the replicaset POST; not
                // the lease or the dry-run.
                background_writes: 112.0,
                total: 1415.0,
            }
        );
        let mut later = counts;
        later.writes += 4.0;
        let d = counts.delta(&later);
        assert_eq!((d.writes, d.dry_runs, d.reads), (4, 0, 0));
    }

    #[test]
    fn counters_are_summed_over_their_labels() {
        let text = "# TYPE rest_client_requests_total counter\n\
                    rest_client_requests_total{code=\"200\",host=\"127.0.0.1:6443\",method=\"GET\"} 40\n\
                    rest_client_requests_total{code=\"201\",host=\"127.0.0.1:6443\",method=\"POST\"} 2\n\
                    rest_client_request_duration_seconds_count{verb=\"GET\"} 1000\n";
        assert_eq!(counter_sum(text, "rest_client_requests_total"), 42.0);
        assert_eq!(counter_sum(text, "plumb_api_requests_total"), 0.0);
    }

    #[test]
    fn agent_requests_are_keyed_by_verb_resource_and_dry_run() {
        let text = "plumb_api_requests_total{verb=\"get\",resource=\"gitsources\",dry_run=\"false\"} 20\n\
                    plumb_api_requests_total{verb=\"apply\",resource=\"configmaps\",dry_run=\"true\"} 4\n";
        let r = agent_requests(text);
        assert_eq!(
            r,
            vec![
                (("get".into(), "gitsources".into(), "false".into()), 20.0),
                (("apply".into(), "configmaps".into(), "true".into()), 4.0),
            ]
        );
    }
}
