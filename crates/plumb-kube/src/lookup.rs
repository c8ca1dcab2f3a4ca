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
}

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
    let mut out = Response::new(Body::from(bytes));
    *out.status_mut() = parts.status;
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
        out.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
    }
    out
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
