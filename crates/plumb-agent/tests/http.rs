//! The HTTP server over a real TCP socket: metrics, health, readiness, no webhook routes,
//! graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use plumb_agent::http::{self, HttpState, Readiness};
use plumb_agent::metrics::{Metrics, Outcome, ReconcileKind};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response read off the wire.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection, written by hand (no client crate needed).
async fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    parse(&raw)
}

fn parse(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("a complete response head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
            if size == 0 {
                break;
            }
            out.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    Reply {
        status,
        headers,
        body,
    }
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
