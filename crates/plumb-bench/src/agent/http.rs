//! Plain HTTP to the agent on loopback: its `/readyz` and `/metrics`, and the webhook.

use std::time::Duration;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A client for `http://127.0.0.1:<port>` (hyper, the one kube itself uses).
#[derive(Clone)]
pub struct Loopback {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Loopback {
    pub fn new() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends a request to `127.0.0.1:port`; fails unless the answer is 2xx. Returns the body.
    pub async fn send(
        &self,
        method: http::Method,
        port: u16,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let uri = format!("http://127.0.0.1:{port}{path}");
        let mut request = http::Request::builder().method(method.clone()).uri(&uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .with_context(|| format!("building {method} {uri}"))?;
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        let (status, body) = tokio::time::timeout(timeout, exchange)
            .await
            .with_context(|| format!("{method} {uri}: no answer within {timeout:?}"))?
            .with_context(|| format!("{method} {uri}"))?;
        let body = String::from_utf8_lossy(&body).into_owned();
        if !status.is_success() {
            bail!(
                "{method} {uri}: {status} {}",
                body.chars().take(500).collect::<String>()
            );
        }
        Ok(body)
    }

    /// `GET http://127.0.0.1:port{path}`.
    pub async fn get(&self, port: u16, path: &str, timeout: Duration) -> anyhow::Result<String> {
        self.send(http::Method::GET, port, path, &[], Vec::new(), timeout)
            .await
    }
}
