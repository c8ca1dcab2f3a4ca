//! The webhook receiver against the real control plane, over a real TCP socket: receiver
//! Secrets, signature checks, and the GitSources a push triggers.

mod github;
mod receivers;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use hmac::{Hmac, Mac};
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use plumb_agent::api::{GitSource, RECONCILE_REQUEST_ANNOTATION};
use plumb_agent::http;
use plumb_agent::metrics::{self, Metrics};
use plumb_agent::webhook::{self, RECEIVER_ANNOTATION, WebhookConfig};
use plumb_testsupport::http as client;
use plumb_testsupport::kube::eventually;
use plumb_testsupport::world::World;
use prometheus_client::registry::Registry;
use serde_json::json;
use sha2::Sha256;

// ---- requests, through the tests' one HTTP client ----

type Reply = client::Reply;

/// `POST path` as a Git host sends it (JSON).
async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    client::post(addr, path, &all, body)
        .await
        .expect("a response")
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    client::get(addr, path).await.expect("a response")
}

// ---- cluster fixtures ----

/// A test's world: the shared World's namespace (CRDs installed) with a receiver Secret, the
/// webhook routes on a port of their own, served with a client whose every API request is
/// counted in `registry`.
struct Fixture {
    w: World,
    addr: SocketAddr,
    receiver: String,
    registry: Arc<Registry>,
}

impl Fixture {
    /// `kind` is the receiver type; the receiver's name is unique to this test run, so
    /// concurrent tests never trigger each other's GitSources.
    async fn new(prefix: &str, kind: &str, token: &str) -> Result<Self> {
        let w = World::new(prefix).await?;
        let receiver = format!("{prefix}-{}", w.suffix());
        w.create_receiver(&receiver, kind, token).await?;

        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let registry = Arc::new(registry);
        let counted = metrics.client(kube::Config::infer().await?)?;
        let hooks = webhook::router(WebhookConfig::new(counted, w.ns()).with_metrics(metrics));
        let listener = http::bind("127.0.0.1:0".parse()?).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(http::serve_webhook_on(
            listener,
            hooks,
            std::future::pending(),
        ));
        Ok(Self {
            w,
            addr,
            receiver,
            registry,
        })
    }

    fn path(&self) -> String {
        format!("/hook/{}", self.receiver)
    }

    /// Creates a GitSource for `url`, annotated with this test's receiver when `annotated`.
    async fn source(&self, name: &str, url: &str, annotated: bool) -> Result<()> {
        let mut annotations = BTreeMap::new();
        if annotated {
            annotations.insert(RECEIVER_ANNOTATION, self.receiver.as_str());
        }
        let source: GitSource = serde_json::from_value(json!({
            "apiVersion": "plumb.dev/v1alpha1",
            "kind": "GitSource",
            "metadata": { "name": name, "annotations": annotations },
            "spec": { "url": url },
        }))?;
        Api::<GitSource>::namespaced(self.w.client().clone(), self.w.ns())
            .create(&PostParams::default(), &source)
            .await
            .with_context(|| format!("creating GitSource {name}"))?;
        Ok(())
    }

    /// The GitSource's reconcile-request annotation, if set.
    async fn requested(&self, name: &str) -> Result<Option<String>> {
        let source = Api::<GitSource>::namespaced(self.w.client().clone(), self.w.ns())
            .get(name)
            .await?;
        Ok(source
            .annotations()
            .get(RECONCILE_REQUEST_ANNOTATION)
            .cloned())
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.w.ns())
    }

    /// `plumb_api_requests_total` of the receiver's client, summed over series matching
    /// `filter` (a substring of the labels).
    fn api_requests(&self, filter: &str) -> f64 {
        metrics::encode(&self.registry)
            .lines()
            .filter(|l| l.starts_with("plumb_api_requests_total{") && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until the receiver's watch of Secrets is established (its list is in and the
    /// watch request sent), so that counting requests from here on sees only what requests
    /// cause.
    async fn wait_watching(&self) -> Result<()> {
        // A request waits for the list; the watch follows it.
        post(self.addr, "/hook/nobody", &[], b"{}").await;
        eventually("the receiver Secrets to be watched", WAIT, || async {
            Ok((self.api_requests(r#"verb="watch",resource="secrets""#) >= 1.0).then_some(()))
        })
        .await
    }

    async fn create_receiver_secret(&self, receiver: &str, kind: &str, token: &str) -> Result<()> {
        self.w.create_receiver(receiver, kind, token).await
    }
}

const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn sign(token: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("any key length");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

fn github_push(repo: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "ref": "refs/heads/main",
        "after": "0123456789abcdef0123456789abcdef01234567",
        "repository": {
            "full_name": format!("acme/{repo}"),
            "clone_url": format!("https://github.com/acme/{repo}.git"),
            "ssh_url": format!("git@github.com:acme/{repo}.git"),
            "html_url": format!("https://github.com/acme/{repo}"),
        },
    }))
    .expect("JSON")
}

const TOKEN: &str = "It's a Secret to Everybody";
