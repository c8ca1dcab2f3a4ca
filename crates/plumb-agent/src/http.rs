//! The agent's HTTP servers: the metrics port with `/metrics` (OpenMetrics), `/healthz`,
//! `/readyz`; and, when enabled, the webhook port with the receiver's `POST /hook/<receiver>`
//! only ([`serve_webhook_on`]), so that what faces the Git hosts (often the Internet) exposes
//! neither metrics nor health.
//!
//! Use [`bind`] then [`serve_on`] to learn the bound address (port 0 in tests), or [`serve`] to
//! do both.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::metrics::{OPENMETRICS_CONTENT_TYPE, encode};

/// Whether the agent is ready to serve (`/readyz`); shared between whoever decides (e.g. the
/// startup sequence, once caches are synced) and the server. Starts not ready.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// A flag that starts not ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the agent ready (`true`) or not (`false`).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether `/readyz` currently answers 200.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What the server serves.
#[derive(Clone)]
pub struct HttpState {
    /// The registry `/metrics` encodes (see [`crate::metrics::Metrics::register`]).
    pub registry: Arc<Registry>,
    /// The flag `/readyz` reports.
    pub readiness: Readiness,
}

impl HttpState {
    /// Metrics and health endpoints only; not ready until `readiness` says so.
    pub fn new(registry: Arc<Registry>, readiness: Readiness) -> Self {
        Self {
            registry,
            readiness,
        }
    }
}

#[derive(Clone)]
struct Shared {
    registry: Arc<Registry>,
    readiness: Readiness,
}

/// The router for `state`: `GET /metrics`, `GET /healthz`, `GET /readyz`. Anything else is
/// 404.
pub fn router(state: HttpState) -> Router {
    let shared = Shared {
        registry: state.registry,
        readiness: state.readiness,
    };
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(shared)
}

/// Binds a listener on `addr` (port 0 picks a free port; `local_addr()` tells which).
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `state` on `listener` until `shutdown` completes, then stops accepting and lets
/// in-flight requests finish.
pub async fn serve_on(
    listener: TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP server listening");
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves the webhook receiver's routes alone (see [`crate::webhook::router`]) on `listener`
/// until `shutdown` completes: anything but `POST /hook/<receiver>` is 404.
pub async fn serve_webhook_on(
    listener: TcpListener,
    webhook: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "webhook receiver listening");
    }
    axum::serve(listener, webhook)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `addr` and serves `state` until `shutdown` completes (see [`serve_on`]).
pub async fn serve(
    addr: SocketAddr,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_on(bind(addr).await?, state, shutdown).await
}

async fn metrics(State(shared): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        encode(&shared.registry),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(shared): State<Shared>) -> (StatusCode, &'static str) {
    if shared.readiness.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
