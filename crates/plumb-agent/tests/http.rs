//! The HTTP server over a real TCP socket: metrics, health, readiness, no webhook routes,
//! graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use plumb_agent::http::{self, HttpState, Readiness};
use plumb_agent::metrics::{Metrics, Outcome, ReconcileKind};
use plumb_testsupport::http::Reply;
use prometheus_client::registry::Registry;
use tokio::net::TcpStream;

/// One request on a fresh connection, through the tests' one HTTP client.
async fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Reply {
    plumb_testsupport::http::request(addr, method, path, &[], body)
        .await
        .expect("a response")
}

struct Server {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(state: HttpState) -> Server {
    let listener = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(http::serve_on(listener, state, async {
        let _ = stopped.await;
    }));
    Server { addr, stop, task }
}

#[tokio::test]
async fn metrics_health_and_readiness() {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let readiness = Readiness::new();
    let server = start(HttpState::new(Arc::new(registry), readiness.clone())).await;
    let addr = server.addr;

    let healthz = request(addr, "GET", "/healthz", b"").await;
    assert_eq!((healthz.status, healthz.body.as_str()), (200, "ok"));

    // Not ready until told so.
    assert_eq!(request(addr, "GET", "/readyz", b"").await.status, 503);
    readiness.set(true);
    assert_eq!(request(addr, "GET", "/readyz", b"").await.status, 200);
    readiness.set(false);
    assert_eq!(request(addr, "GET", "/readyz", b"").await.status, 503);

    // What is recorded after the server started shows up in the next scrape.
    metrics.observe_reconcile(
        ReconcileKind::Sync,
        Outcome::Success,
        Duration::from_millis(5),
    );
    metrics.set_managed_objects("apps/web", 3);
    let scrape = request(addr, "GET", "/metrics", b"").await;
    assert_eq!(scrape.status, 200);
    assert_eq!(
        scrape.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(
        scrape
            .body
            .contains(r#"plumb_reconciles_total{kind="Sync",result="success"} 1"#),
        "{}",
        scrape.body
    );
    assert!(
        scrape
            .body
            .contains(r#"plumb_managed_objects{sync="apps/web"} 3"#)
    );
    assert!(scrape.body.trim_end().ends_with("# EOF"));

    assert_eq!(request(addr, "GET", "/nope", b"").await.status, 404);
    // No webhook routes unless enabled.
    assert_eq!(
        request(addr, "POST", "/hook/github", b"{}").await.status,
        404
    );
    // Metrics are read-only.
    assert_eq!(request(addr, "POST", "/metrics", b"").await.status, 405);

    // Graceful shutdown: the server returns and stops accepting.
    server.stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("the server stops on shutdown")
        .unwrap()
        .unwrap();
    // A bare connect: the port itself must be closed, which no HTTP client shows as such.
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn the_metrics_port_serves_no_webhooks() {
    let server = start(HttpState::new(
        Arc::new(Registry::default()),
        Readiness::new(),
    ))
    .await;
    assert_eq!(
        request(server.addr, "POST", "/hook/x", b"{}").await.status,
        404
    );
    assert_eq!(
        request(server.addr, "GET", "/healthz", b"").await.status,
        200
    );
}
