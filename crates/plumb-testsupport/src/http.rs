//! The one HTTP client of the tests: plain HTTP/1.1 to servers on loopback (the agent's
//! metrics, health and webhook ports).
//!
//! Built on `reqwest` without TLS and without proxies (no `HTTP_PROXY` from the environment):
//! every request goes to the loopback address it names, on a connection of its own.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The headers, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The body (decoded from chunked transfer encoding), as text.
    pub body: String,
}

impl Reply {
    /// The body as JSON (`Null` if it is none).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `method path` with `headers` and `body` to `addr` (which must be a loopback address)
/// and reads the whole response; fails on connection errors and after 20 s.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply> {
    ensure!(
        addr.ip().is_loopback(),
        "test HTTP requests go to loopback only, not {addr}"
    );
    // A client per request: a fresh connection, as a probe or a Git host's webhook makes it.
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(20))
        .build()
        .context("building the HTTP client")?;
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .with_context(|| format!("invalid HTTP method {method:?}"))?;
    let mut req = client
        .request(method.clone(), format!("http://{addr}{path}"))
        .body(body.to_vec());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("{method} http://{addr}{path}"))?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("reading the answer to {method} http://{addr}{path}"))?;
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Reply> {
    request(addr, "GET", path, &[], b"").await
}

/// `POST path` with `headers` and `body`.
pub async fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply> {
    request(addr, "POST", path, headers, body).await
}

/// A loopback address with a free port: bound and released at once, so whoever binds it a
/// moment later may find it taken by another process (retry with another one then).
pub fn free_addr() -> Result<SocketAddr> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(listener.local_addr()?)
}

/// The value of the sample `series` (name and labels, exactly as exposed) in the Prometheus
/// text `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.split(' ').next())
            .and_then(|v| v.parse().ok())
    })
}

/// The sum of every sample of counter `name` in `text` whose labels include all of `labels`
/// (`key="value"` each).
pub fn counter(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|rest| {
            let (labels_part, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels
                .iter()
                .all(|want| labels_part.split(',').any(|l| l == *want))
                .then(|| value.split(' ').next()?.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}
