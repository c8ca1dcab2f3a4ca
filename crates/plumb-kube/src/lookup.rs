//! Helm's `lookup`, read-only: a loopback HTTP proxy to the API server that lives for one
//! render.
//!
//! `helm template` cannot read the cluster; with `--dry-run=server` its `lookup` function
//! can, through whatever kubeconfig it gets. Plumb never gives Helm a credential: Helm gets a
//! kubeconfig naming only `http://127.0.0.1:<port>/<token>`, with a random token made for
//! this render ([`LookupProxy::token`]) as the path prefix (client-go sends no credentials over
//! plain http, but keeps a server URL's path). The proxy checks the token, strips it and
//! forwards a request only when it is a read:
//!
//! - method `GET` (no `HEAD`, no writes), no protocol upgrade (exec, attach and port-forward
//!   upgrade a `GET`), no watch (`?watch=`, `/watch/` paths);
//! - a discovery path (`/version`, `/api`, `/apis`, `/api/v1`, `/apis/<group>[/<version>]`)
//!   or an object or a list: `<prefix>/<resource>[/<name>]` or
//!   `<prefix>/namespaces/<ns>/<resource>[/<name>]`, never a subresource (so no `proxy`,
//!   `log`, `exec`) and no `%`-escapes;
//! - only the query parameters a get or list takes (selectors, `limit`, `continue`,
//!   `resourceVersion`...);
//! - none of the request's headers but `Accept`: impersonation and authorization headers are
//!   never passed on.
//!
//! It forwards with the client it was started with: the agent's credentials and the Sync's
//! impersonation, the identity its apply uses, so that identity's RBAC decides what a chart
//! may read (Secrets included: a chart may read what its Sync could apply a Pod to read).
//! Requests, each response's size and the total are capped ([`LookupLimits`]); everything is
//! counted ([`LookupStats`]). Refusals are answered with a Kubernetes `Status` that says why,
//! which Helm shows in its error.
//!
//! Helm's server-side dry-run maps every rendered object's kind through discovery, so a chart
//! that brings its own CRDs (in `crds/`) and renders objects of them could not render on a
//! cluster that does not serve them yet. [`LookupProxy::start_with_kinds`] takes such kinds
//! ([`ExtraKind`]): discovery answers (`/apis` in both the aggregated and the legacy form,
//! `/apis/<group>`, `/apis/<group>/<version>`) list them besides what the cluster serves, when
//! the cluster does not serve them itself. Nothing else changes: reads of their objects are
//! forwarded, and the API server answers them as not found.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, Request, StatusCode, header};
use subtle::ConstantTimeEq;

/// Starting the proxy failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No loopback port could be bound.
    #[error("starting the lookup proxy on loopback: {0}")]
    Bind(#[source] std::io::Error),
}

/// What one render may ask through the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupLimits {
    /// Requests forwarded in all (default 10,000: Helm's server-side dry-run reads each
    /// rendered object once, besides discovery and the chart's lookups).
    pub max_requests: u64,
    /// Largest response body forwarded, in bytes (default 16 MiB).
    pub max_response_bytes: usize,
    /// Largest total of response bodies, in bytes (default 256 MiB).
    pub max_total_bytes: u64,
}

impl Default for LookupLimits {
    fn default() -> Self {
        LookupLimits {
            max_requests: 10_000,
            max_response_bytes: 16 * 1024 * 1024,
            max_total_bytes: 256 * 1024 * 1024,
        }
    }
}

/// What the proxy did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LookupStats {
    /// Requests forwarded to the API server, per method (only ever `GET`).
    pub forwarded: BTreeMap<String, u64>,
    /// Requests refused (not forwarded), in all.
    pub refused: u64,
    /// The first few refusals: method, path and why (never a header or a body).
    pub refusals: Vec<String>,
    /// Bytes of response bodies passed back.
    pub bytes: u64,
}

impl LookupStats {
    /// Requests forwarded, in all.
    pub fn forwarded_total(&self) -> u64 {
        self.forwarded.values().sum()
    }
}

/// How many refusals [`LookupStats::refusals`] keeps.
const KEPT_REFUSALS: usize = 5;

struct Shared {
    client: kube::Client,
    token: String,
    limits: LookupLimits,
    stats: Mutex<LookupStats>,
    extra: Vec<ExtraKind>,
}

/// A kind that discovery through the proxy lists even when the cluster does not serve it
/// (yet): a CRD the chart brings itself (`plumb_render::chart_crd_kinds` finds them).
pub use plumb_core::object::CrdKind as ExtraKind;

impl Shared {
    fn stats(&self) -> std::sync::MutexGuard<'_, LookupStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running proxy; it stops when dropped.
pub struct LookupProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for LookupProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LookupProxy")
            .field("addr", &self.addr)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl LookupProxy {
    /// Starts a proxy on a free loopback port that forwards reads with `client` (which
    /// carries the credentials and the impersonation to read as).
    pub async fn start(client: kube::Client, limits: LookupLimits) -> Result<LookupProxy, Error> {
        Self::start_with_kinds(client, limits, Vec::new()).await
    }

    /// Like [`LookupProxy::start`], with discovery listing `extra` kinds where the cluster does
    /// not serve them (a chart's own CRDs, for its first install).
    pub async fn start_with_kinds(
        client: kube::Client,
        limits: LookupLimits,
        extra: Vec<ExtraKind>,
    ) -> Result<LookupProxy, Error> {
        let extra = extra
            .into_iter()
            .filter(|k| !k.group.is_empty() && !k.version.is_empty() && !k.plural.is_empty())
            .collect();
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(Error::Bind)?;
        let addr = listener.local_addr().map_err(Error::Bind)?;
        let token: String = rand::random::<[u8; 32]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let shared = Arc::new(Shared {
            client,
            token,
            limits,
            stats: Mutex::new(LookupStats::default()),
            extra,
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the lookup proxy stopped");
            }
        });
        Ok(LookupProxy {
            addr,
            shared,
            shutdown: Some(tx),
            task,
        })
    }

    /// The proxy's address: `http://127.0.0.1:<port>` (a request's path must start with
    /// `/<token>`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token every request's path must start with (`/<token>/api/v1/...`): random, made
    /// for this proxy only. It reads what the proxy's identity may read while the proxy runs;
    /// never log it.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// What the proxy did so far.
    pub fn stats(&self) -> LookupStats {
        self.shared.stats().clone()
    }
}

impl Drop for LookupProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Helm has exited by now; a connection it left open must not keep the proxy alive.
        self.task.abort();
    }
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request<Body>) -> Response {
    let method = req.method().clone();
    let Some(path) = strip_token(req.uri().path(), &shared.token).map(str::to_owned) else {
        let mut stats = shared.stats();
        stats.refused += 1;
        if stats.refusals.len() < KEPT_REFUSALS {
            stats.refusals.push(format!("{method}: no valid token"));
        }
        return status_response(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "plumb's lookup proxy refused a request without its token",
        );
    };
    let refuse = |status: StatusCode, reason: &str, why: String| {
        let mut stats = shared.stats();
        stats.refused += 1;
        if stats.refusals.len() < KEPT_REFUSALS {
            stats.refusals.push(format!("{method} {path}: {why}"));
        }
        status_response(
            status,
            reason,
            &format!("plumb's lookup proxy refused {method} {path}: {why}"),
        )
    };
    if method != Method::GET {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "only reads (GET) are forwarded: a chart's lookup never writes".into(),
        );
    }
    if req.headers().contains_key(header::UPGRADE)
        || req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("upgrade"))
        })
    {
        return refuse(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "protocol upgrades (exec, attach, port-forward) are not forwarded".into(),
        );
    }
    if let Err(why) = read_path(&path) {
        return refuse(StatusCode::FORBIDDEN, "Forbidden", why.into());
    }
    if let Err(why) = read_query(req.uri().query().unwrap_or("")) {
        return refuse(StatusCode::FORBIDDEN, "Forbidden", why);
    }
    {
        let mut stats = shared.stats();
        if stats.forwarded_total() >= shared.limits.max_requests {
            drop(stats);
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                format!(
                    "this render used its {} requests",
                    shared.limits.max_requests
                ),
            );
        }
        *stats.forwarded.entry(method.to_string()).or_default() += 1;
    }
    let path_and_query = match req.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.clone(),
    };
    let mut upstream = Request::builder().method(Method::GET).uri(path_and_query);
    if let Some(accept) = req.headers().get(header::ACCEPT) {
        upstream = upstream.header(header::ACCEPT, accept.clone());
    }
    let upstream = match upstream.body(kube::client::Body::empty()) {
        Ok(r) => r,
        Err(e) => {
            return status_response(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string());
        }
    };
    let response = match shared.client.send(upstream).await {
        Ok(r) => r,
        Err(e) => {
            return status_response(
                StatusCode::BAD_GATEWAY,
                "ServiceUnavailable",
                &format!("plumb's lookup proxy could not reach the API server: {e}"),
            );
        }
    };
    let (parts, body) = response.into_parts();
    let limit = shared.limits.max_response_bytes;
    let bytes = match axum::body::to_bytes(Body::new(body), limit).await {
        Ok(b) => b,
        Err(_) => {
            return refuse(
                StatusCode::INSUFFICIENT_STORAGE,
                "RequestEntityTooLarge",
                format!("the response is larger than {limit} bytes or broke off"),
            );
        }
    };
    {
        let mut stats = shared.stats();
        stats.bytes += bytes.len() as u64;
        if stats.bytes > shared.limits.max_total_bytes {
            drop(stats);
            return refuse(
                StatusCode::INSUFFICIENT_STORAGE,
                "RequestEntityTooLarge",
                format!(
                    "this render read more than {} bytes",
                    shared.limits.max_total_bytes
                ),
            );
        }
    }
    let mut content_type = parts.headers.get(header::CONTENT_TYPE).cloned();
    let mut status = parts.status;
    let shown = content_type
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut bytes = bytes;
    if let Some((new_status, body)) = with_extra_kinds(&shared.extra, &path, status, shown, &bytes)
    {
        // A made-up answer (the cluster's was a 404) is plain JSON; a merged one keeps its
        // type (client-go tells the aggregated form of discovery by it).
        if status != new_status {
            content_type = Some(HeaderValue::from_static("application/json"));
        }
        status = new_status;
        bytes = axum::body::Bytes::from(body);
    }
    let mut out = Response::new(Body::from(bytes));
    *out.status_mut() = status;
    if let Some(ct) = content_type {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    out
}

/// A discovery answer with `extra`'s kinds added where the cluster's answer lacks them:
/// `None` leaves the answer as it is.
fn with_extra_kinds(
    extra: &[ExtraKind],
    path: &str,
    status: StatusCode,
    content_type: &str,
    body: &[u8],
) -> Option<(StatusCode, Vec<u8>)> {
    use serde_json::{Value, json};
    if extra.is_empty() {
        return None;
    }
    let resource = |k: &ExtraKind| {
        json!({
            "name": k.plural, "singularName": k.singular, "namespaced": k.namespaced,
            "kind": k.kind, "verbs": ["get", "list"],
        })
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["apis"] if status == StatusCode::OK => {
            let mut doc: Value = serde_json::from_slice(body).ok()?;
            if content_type.contains("apidiscovery.k8s.io") {
                let items = doc.get_mut("items")?.as_array_mut()?;
                for k in extra {
                    let entry = json!({
                        "resource": k.plural,
                        "responseKind": {"group": k.group, "version": k.version, "kind": k.kind},
                        "scope": if k.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": k.singular,
                        "verbs": ["get", "list"],
                    });
                    let at = match items.iter().position(|g| g["metadata"]["name"] == k.group) {
                        Some(at) => at,
                        None => {
                            items.push(json!({"metadata": {"name": k.group}, "versions": []}));
                            items.len() - 1
                        }
                    };
                    let versions = items[at]["versions"].as_array_mut()?;
                    let v = match versions.iter().position(|v| v["version"] == k.version) {
                        Some(v) => v,
                        None => {
                            versions.push(json!({"version": k.version, "resources": [], "freshness": "Current"}));
                            versions.len() - 1
                        }
                    };
                    let resources = versions[v]["resources"].as_array_mut()?;
                    if !resources.iter().any(|r| r["resource"] == k.plural) {
                        resources.push(entry);
                    }
                }
            } else {
                let groups = doc.get_mut("groups")?.as_array_mut()?;
                for k in extra {
                    let gv = json!({"groupVersion": format!("{}/{}", k.group, k.version), "version": k.version});
                    match groups.iter_mut().find(|g| g["name"] == k.group) {
                        Some(g) => {
                            let versions = g["versions"].as_array_mut()?;
                            if !versions.iter().any(|v| v["version"] == k.version) {
                                versions.push(gv);
                            }
                        }
                        None => groups.push(json!({
                            "name": k.group, "versions": [gv.clone()], "preferredVersion": gv,
                        })),
                    }
                }
            }
            Some((status, serde_json::to_vec(&doc).ok()?))
        }
        ["apis", group] if status == StatusCode::NOT_FOUND => {
            let versions: Vec<Value> = extra
                .iter()
                .filter(|k| k.group == *group)
                .map(|k| json!({"groupVersion": format!("{}/{}", k.group, k.version), "version": k.version}))
                .collect();
            let first = versions.first()?.clone();
            let doc = json!({
                "kind": "APIGroup", "apiVersion": "v1", "name": group,
                "versions": versions, "preferredVersion": first,
            });
            Some((StatusCode::OK, serde_json::to_vec(&doc).ok()?))
        }
        ["apis", group, version] => {
            let ours: Vec<&ExtraKind> = extra
                .iter()
                .filter(|k| k.group == *group && k.version == *version)
                .collect();
            if ours.is_empty() {
                return None;
            }
            let mut doc: Value = match status {
                StatusCode::NOT_FOUND => json!({
                    "kind": "APIResourceList", "apiVersion": "v1",
                    "groupVersion": format!("{group}/{version}"), "resources": [],
                }),
                StatusCode::OK => serde_json::from_slice(body).ok()?,
                _ => return None,
            };
            let resources = doc.get_mut("resources")?.as_array_mut()?;
            for k in ours {
                if !resources.iter().any(|r| r["name"] == k.plural) {
                    resources.push(resource(k));
                }
            }
            Some((StatusCode::OK, serde_json::to_vec(&doc).ok()?))
        }
        _ => None,
    }
}

/// `path` without its first segment when that is `token` (compared in constant time).
fn strip_token<'a>(path: &'a str, token: &str) -> Option<&'a str> {
    let rest = path.strip_prefix('/')?;
    let (given, rest) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    bool::from(given.as_bytes().ct_eq(token.as_bytes())).then_some(rest)
}

/// A Kubernetes `Status` (what client-go reads an error from).
fn status_response(status: StatusCode, reason: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": status.as_u16(),
    });
    let mut out = (status, body.to_string()).into_response();
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    out
}

/// Whether `path` is discovery or a get or list of objects; else why not.
fn read_path(path: &str) -> Result<(), &'static str> {
    if path.contains('%') {
        return Err("escaped paths are not forwarded");
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err("not an API path");
    };
    let segments: Vec<&str> = rest.split('/').collect();
    if segments
        .iter()
        .any(|s| s.is_empty() || *s == "." || *s == "..")
    {
        return Err("not an API path");
    }
    let objects = match segments[..] {
        ["version"] | ["api"] | ["apis"] | ["api", _] | ["apis", _] | ["apis", _, _] => {
            return Ok(());
        }
        ["api", _, ref rest @ ..] => rest,
        ["apis", _, _, ref rest @ ..] => rest,
        _ => return Err("only discovery and objects of the API are forwarded"),
    };
    let resource = match objects {
        ["namespaces"] | ["namespaces", _] => return Ok(()),
        ["namespaces", _, resource] | ["namespaces", _, resource, _] => resource,
        [resource] | [resource, _] => resource,
        _ => return Err("subresources (proxy, log, exec, status, ...) are not forwarded"),
    };
    match *resource {
        "watch" => Err("watches are not forwarded"),
        "proxy" => Err("proxies are not forwarded"),
        _ => Ok(()),
    }
}

/// Query parameters a get or a list takes; anything else (a watch above all) is refused.
fn read_query(query: &str) -> Result<(), String> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        match name {
            "labelSelector"
            | "fieldSelector"
            | "limit"
            | "continue"
            | "resourceVersion"
            | "resourceVersionMatch"
            | "timeout"
            | "timeoutSeconds"
            | "pretty" => {}
            "watch" | "sendInitialEvents" | "allowWatchBookmarks" => {
                return Err("watches are not forwarded".into());
            }
            other => {
                return Err(format!(
                    "query parameter {:?} is not forwarded",
                    other.chars().take(64).collect::<String>()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_discovery_and_objects_are_read_paths() {
        for ok in [
            "/version",
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/api/v1/namespaces",
            "/api/v1/namespaces/team-a",
            "/api/v1/namespaces/team-a/configmaps",
            "/api/v1/namespaces/team-a/secrets/db",
            "/api/v1/nodes",
            "/api/v1/nodes/n1",
            "/apis/apps/v1/deployments",
            "/apis/apps/v1/namespaces/a/deployments/web",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin",
        ] {
            assert_eq!(read_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "/",
            "",
            "/healthz",
            "/metrics",
            "/logs/x",
            "/openapi/v2",
            "/api/v1/namespaces/a/pods/p/exec",
            "/api/v1/namespaces/a/pods/p/log",
            "/api/v1/namespaces/a/pods/p/proxy",
            "/api/v1/namespaces/a/pods/p/proxy/x",
            "/api/v1/namespaces/a/services/s:80/proxy/",
            "/api/v1/nodes/n1/proxy",
            "/api/v1/nodes/n1/proxy/metrics",
            "/api/v1/proxy/nodes/n1",
            "/api/v1/watch/configmaps",
            "/api/v1/watch/namespaces/a/configmaps",
            "/api/v1/namespaces/a/watch",
            "/apis/apps/v1/namespaces/a/deployments/web/scale",
            "/api/v1/namespaces/a/configmaps/x/../../secrets",
            "/api/v1/namespaces/a/configmaps//x",
            "/api/v1/namespaces/a/pods%2Fp%2Fexec",
        ] {
            assert!(read_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn discovery_lists_extra_kinds_the_cluster_lacks() {
        let kind = ExtraKind {
            group: "g.example".into(),
            version: "v1".into(),
            kind: "Gadget".into(),
            plural: "gadgets".into(),
            singular: "gadget".into(),
            namespaced: true,
        };
        let extra = [kind];
        let json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).expect("json");
        // Aggregated discovery: a group added, the content type kept by the caller.
        let agg = br#"{"kind":"APIGroupDiscoveryList","items":[{"metadata":{"name":"apps"},"versions":[]}]}"#;
        let (status, body) = with_extra_kinds(
            &extra,
            "/apis",
            StatusCode::OK,
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
            agg,
        )
        .expect("merged");
        assert_eq!(status, StatusCode::OK);
        let doc = json(&body);
        assert_eq!(doc["items"][1]["metadata"]["name"], "g.example");
        assert_eq!(
            doc["items"][1]["versions"][0]["resources"][0]["responseKind"]["kind"],
            "Gadget"
        );
        // Legacy group list.
        let legacy = br#"{"kind":"APIGroupList","groups":[]}"#;
        let (_, body) =
            with_extra_kinds(&extra, "/apis", StatusCode::OK, "application/json", legacy)
                .expect("merged");
        assert_eq!(
            json(&body)["groups"][0]["preferredVersion"]["groupVersion"],
            "g.example/v1"
        );
        // The group and version the cluster does not serve: made up.
        let (status, body) = with_extra_kinds(
            &extra,
            "/apis/g.example/v1",
            StatusCode::NOT_FOUND,
            "",
            b"x",
        )
        .expect("made up");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json(&body)["resources"][0]["name"], "gadgets");
        assert!(
            with_extra_kinds(&extra, "/apis/g.example", StatusCode::NOT_FOUND, "", b"").is_some()
        );
        // Served already: the cluster's answer stays (no duplicate); other paths untouched.
        let served = br#"{"kind":"APIResourceList","resources":[{"name":"gadgets"}]}"#;
        let (_, body) = with_extra_kinds(
            &extra,
            "/apis/g.example/v1",
            StatusCode::OK,
            "application/json",
            served,
        )
        .expect("checked");
        assert_eq!(json(&body)["resources"].as_array().map(Vec::len), Some(1));
        for path in [
            "/apis/other/v1",
            "/apis/g.example/v1/namespaces/a/gadgets/x",
            "/api/v1",
        ] {
            assert!(
                with_extra_kinds(&extra, path, StatusCode::NOT_FOUND, "", b"").is_none(),
                "{path}"
            );
        }
        assert!(with_extra_kinds(&[], "/apis", StatusCode::OK, "", legacy).is_none());
    }

    #[test]
    fn the_token_leads_the_path() {
        assert_eq!(strip_token("/t0k/api/v1", "t0k"), Some("/api/v1"));
        assert_eq!(strip_token("/t0k", "t0k"), Some("/"));
        assert_eq!(strip_token("/t0k/", "t0k"), Some("/"));
        for bad in [
            "/api/v1",
            "/t0kx/api",
            "/t0/api",
            "t0k/api",
            "",
            "/",
            "//t0k/api",
        ] {
            assert_eq!(strip_token(bad, "t0k"), None, "{bad}");
        }
    }

    #[test]
    fn watches_and_unknown_parameters_are_refused() {
        assert_eq!(read_query(""), Ok(()));
        assert_eq!(
            read_query("labelSelector=app%3Dweb&limit=500&continue=abc"),
            Ok(())
        );
        for bad in [
            "watch=true",
            "watch=1",
            "limit=1&watch",
            "sendInitialEvents=true",
            "dryRun=All",
            "follow=true",
            "command=sh",
        ] {
            assert!(read_query(bad).is_err(), "{bad}");
        }
    }
}
