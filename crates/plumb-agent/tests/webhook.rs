//! The webhook receiver against the real control plane, over a real TCP socket: receiver
//! Secrets, signature checks, and the GitSources a push triggers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use hmac::{Hmac, Mac};
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};
use plumb_agent::api::{GitSource, RECONCILE_REQUEST_ANNOTATION};
use plumb_agent::http;
use plumb_agent::metrics::{self, Metrics};
use plumb_agent::webhook::{self, RECEIVER_ANNOTATION, WebhookConfig};
use plumb_testsupport::kube::{TestNamespace, client, eventually};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---- a hand-written HTTP/1.1 client (no client crate needed) ----

struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    send(addr, "POST", path, headers, body).await
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, "GET", path, &[], b"").await
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let (mut reader, mut writer) = stream.into_split();
    // Write and read at once: the server may answer (413) before it has read the whole body.
    let write = async move {
        let _ = writer.write_all(head.as_bytes()).await;
        let _ = writer.write_all(body).await;
        writer
    };
    let read = async move {
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
        raw
    };
    let (_writer, raw) = tokio::join!(write, read);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    Reply {
        status,
        body: body.to_owned(),
    }
}

// ---- cluster fixtures ----

async fn apply_crds(client: &Client) -> Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds.yaml");
    plumb_testsupport::kube::apply_crds(client, &path).await
}

/// A test's world: a namespace with a receiver Secret, the webhook routes on a port of their
/// own, served with a client whose every API request is counted in `registry`.
struct Fixture {
    client: Client,
    ns: TestNamespace,
    addr: SocketAddr,
    receiver: String,
    registry: Arc<Registry>,
}

impl Fixture {
    /// `kind` is the receiver type; the receiver's name is unique to this test run, so
    /// concurrent tests never trigger each other's GitSources.
    async fn new(prefix: &str, kind: &str, token: &str) -> Result<Self> {
        let client = client().await?;
        apply_crds(&client).await?;
        let ns = TestNamespace::create(&client, prefix).await?;
        let suffix = ns.name().rsplit('-').next().expect("a suffix").to_owned();
        let receiver = format!("{prefix}-{suffix}");
        let secret: Secret = serde_json::from_value(json!({
            "metadata": { "name": format!("plumb-receiver-{receiver}") },
            "stringData": { "type": kind, "token": token },
        }))?;
        Api::<Secret>::namespaced(client.clone(), ns.name())
            .create(&PostParams::default(), &secret)
            .await?;

        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let registry = Arc::new(registry);
        let counted = metrics.client(kube::Config::infer().await?)?;
        let hooks = webhook::router(WebhookConfig::new(counted, ns.name()).with_metrics(metrics));
        let listener = http::bind("127.0.0.1:0".parse()?).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(http::serve_webhook_on(
            listener,
            hooks,
            std::future::pending(),
        ));
        Ok(Self {
            client,
            ns,
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
        Api::<GitSource>::namespaced(self.client.clone(), self.ns.name())
            .create(&PostParams::default(), &source)
            .await
            .with_context(|| format!("creating GitSource {name}"))?;
        Ok(())
    }

    /// The GitSource's reconcile-request annotation, if set.
    async fn requested(&self, name: &str) -> Result<Option<String>> {
        let source = Api::<GitSource>::namespaced(self.client.clone(), self.ns.name())
            .get(name)
            .await?;
        Ok(source
            .annotations()
            .get(RECONCILE_REQUEST_ANNOTATION)
            .cloned())
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.ns.name())
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
        let secret: Secret = serde_json::from_value(json!({
            "metadata": { "name": format!("plumb-receiver-{receiver}") },
            "stringData": { "type": kind, "token": token },
        }))?;
        Api::<Secret>::namespaced(self.client.clone(), self.ns.name())
            .create(&PostParams::default(), &secret)
            .await?;
        Ok(())
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

#[tokio::test]
async fn github_push_triggers_only_the_matching_sources() -> Result<()> {
    let fx = Fixture::new("gh", "github", TOKEN).await?;
    // Same repository, spelled the ssh way: must match the https URL of the payload.
    fx.source("app", "ssh://git@GitHub.com/acme/app.git", true)
        .await?;
    fx.source("other", "https://github.com/acme/other.git", true)
        .await?;
    fx.source("unannotated", "https://github.com/acme/app.git", false)
        .await?;
    let body = github_push("app");
    let signature = sign(TOKEN, &body);

    // Bad signature (signed with another token, or over another body): 401, nothing triggered.
    let wrong = sign("not the token", &body);
    for headers in [
        vec![
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", wrong.as_str()),
        ],
        vec![
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", "sha256=00"),
        ],
        vec![("X-GitHub-Event", "push")],
    ] {
        let reply = post(fx.addr, &fx.path(), &headers, &body).await;
        assert_eq!(reply.status, 401, "{headers:?}: {}", reply.body);
    }
    let tampered = post(
        fx.addr,
        &fx.path(),
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &signature),
        ],
        &github_push("other"),
    )
    .await;
    assert_eq!(tampered.status, 401, "a signature over another body");
    for name in ["app", "other", "unannotated"] {
        assert_eq!(
            fx.requested(name).await?,
            None,
            "{name} was triggered by a refused request"
        );
    }

    // A ping is accepted and triggers nothing.
    let ping_body = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
    let ping = post(
        fx.addr,
        &fx.path(),
        &[
            ("X-GitHub-Event", "ping"),
            ("X-Hub-Signature-256", &sign(TOKEN, ping_body)),
        ],
        ping_body,
    )
    .await;
    assert_eq!(ping.status, 200, "{}", ping.body);
    assert_eq!(ping.json()["triggered"], json!([]));
    assert_eq!(fx.requested("app").await?, None);

    // A valid push triggers the matching source only.
    let before = jiff::Timestamp::now();
    let reply = post(
        fx.addr,
        &fx.path(),
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &signature),
        ],
        &body,
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.json()["triggered"], json!([fx.key("app")]));
    let requested = fx
        .requested("app")
        .await?
        .context("app was not triggered")?;
    let at: jiff::Timestamp = requested
        .parse()
        .context("the annotation is an RFC 3339 time")?;
    assert!(
        at >= before - jiff::SignedDuration::from_secs(1),
        "{at} is older than the push"
    );
    assert_eq!(fx.requested("other").await?, None);
    assert_eq!(fx.requested("unannotated").await?, None);

    // A refused request afterwards leaves the annotation as it was.
    let reply = post(
        fx.addr,
        &fx.path(),
        &[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &wrong)],
        &body,
    )
    .await;
    assert_eq!(reply.status, 401);
    assert_eq!(fx.requested("app").await?, Some(requested));

    // An unknown receiver is refused like a bad signature.
    let reply = post(
        fx.addr,
        "/hook/nobody-here",
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &signature),
        ],
        &body,
    )
    .await;
    assert_eq!(reply.status, 401);

    // Every request was counted, the token never shows.
    let text = metrics::encode(&fx.registry);
    assert!(
        text.contains(&format!(
            r#"plumb_webhook_requests_total{{receiver="{}",result="accepted"}} 2"#,
            fx.receiver
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            r#"plumb_webhook_requests_total{{receiver="{}",result="unauthorized"}} 5"#,
            fx.receiver
        )),
        "{text}"
    );
    assert!(!text.contains(TOKEN));
    Ok(())
}

#[tokio::test]
async fn a_push_without_repository_urls_triggers_every_annotated_source() -> Result<()> {
    let fx = Fixture::new("ghall", "github", TOKEN).await?;
    fx.source("one", "https://github.com/acme/one.git", true)
        .await?;
    fx.source("two", "https://example.com/acme/two.git", true)
        .await?;
    let body = br#"{"ref":"refs/heads/main"}"#;
    let reply = post(
        fx.addr,
        &fx.path(),
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &sign(TOKEN, body)),
        ],
        body,
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let mut triggered: Vec<String> = serde_json::from_value(reply.json()["triggered"].clone())?;
    triggered.sort();
    assert_eq!(triggered, vec![fx.key("one"), fx.key("two")]);
    Ok(())
}

#[tokio::test]
async fn oversize_bodies_are_refused() -> Result<()> {
    let fx = Fixture::new("big", "github", TOKEN).await?;
    fx.source("app", "https://github.com/acme/app.git", true)
        .await?;
    // Correctly signed, but one byte over the 1 MiB limit.
    let body = vec![b' '; webhook::DEFAULT_BODY_LIMIT + 1];
    let reply = post(
        fx.addr,
        &fx.path(),
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &sign(TOKEN, &body)),
        ],
        &body,
    )
    .await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert_eq!(fx.requested("app").await?, None);
    Ok(())
}

#[tokio::test]
async fn gitlab_token() -> Result<()> {
    let fx = Fixture::new("gl", "gitlab", TOKEN).await?;
    fx.source("app", "https://gitlab.example.com/acme/app.git", true)
        .await?;
    fx.source("other", "https://gitlab.example.com/acme/other.git", true)
        .await?;
    let body = serde_json::to_vec(&json!({
        "object_kind": "push",
        "project": {
            "git_http_url": "https://gitlab.example.com/acme/app.git",
            "git_ssh_url": "git@gitlab.example.com:acme/app.git",
            "web_url": "https://gitlab.example.com/acme/app",
        },
    }))?;

    for headers in [
        vec![("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "wrong")],
        vec![
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Token", "It's a Secret to Everybod"),
        ],
        vec![("X-Gitlab-Event", "Push Hook")],
    ] {
        let reply = post(fx.addr, &fx.path(), &headers, &body).await;
        assert_eq!(reply.status, 401, "{headers:?}: {}", reply.body);
    }
    assert_eq!(fx.requested("app").await?, None);

    // Other events are accepted and trigger nothing.
    let reply = post(
        fx.addr,
        &fx.path(),
        &[("X-Gitlab-Event", "Issue Hook"), ("X-Gitlab-Token", TOKEN)],
        b"{}",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(fx.requested("app").await?, None);

    let reply = post(
        fx.addr,
        &fx.path(),
        &[
            ("X-Gitlab-Event", "Tag Push Hook"),
            ("X-Gitlab-Token", TOKEN),
        ],
        &body,
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.json()["triggered"], json!([fx.key("app")]));
    assert!(fx.requested("app").await?.is_some());
    assert_eq!(fx.requested("other").await?, None);
    Ok(())
}

#[tokio::test]
async fn generic_hmac() -> Result<()> {
    let fx = Fixture::new("gen", "generic", TOKEN).await?;
    fx.source("app", "https://git.example.com/acme/app.git", true)
        .await?;
    fx.source("other", "https://git.example.com/acme/other.git", true)
        .await?;
    let body = br#"{"url":"https://git.example.com/acme/app"}"#;

    let reply = post(
        fx.addr,
        &fx.path(),
        &[("X-Signature", &sign("wrong", body))],
        body,
    )
    .await;
    assert_eq!(reply.status, 401);
    // A GitHub header does not stand in for the generic one.
    let reply = post(
        fx.addr,
        &fx.path(),
        &[("X-Hub-Signature-256", &sign(TOKEN, body))],
        body,
    )
    .await;
    assert_eq!(reply.status, 401);
    assert_eq!(fx.requested("app").await?, None);

    let reply = post(
        fx.addr,
        &fx.path(),
        &[("X-Signature", &sign(TOKEN, body))],
        body,
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.json()["triggered"], json!([fx.key("app")]));
    assert!(fx.requested("app").await?.is_some());
    assert_eq!(fx.requested("other").await?, None);
    Ok(())
}

#[tokio::test]
async fn refused_requests_cost_no_api_requests() -> Result<()> {
    let fx = Fixture::new("quiet", "github", TOKEN).await?;
    fx.source("app", "https://github.com/acme/app.git", true)
        .await?;
    fx.wait_watching().await?;
    let before = fx.api_requests("");
    let body = github_push("app");
    let wrong = sign("not the token", &body);
    for _ in 0..20 {
        // Unknown receivers (plausible names), invalid names, bad and missing signatures.
        for (path, headers) in [
            (
                "/hook/no-such-receiver".to_owned(),
                vec![
                    ("X-GitHub-Event", "push"),
                    ("X-Hub-Signature-256", wrong.as_str()),
                ],
            ),
            ("/hook/UPPER".to_owned(), vec![("X-GitHub-Event", "push")]),
            (
                fx.path(),
                vec![
                    ("X-GitHub-Event", "push"),
                    ("X-Hub-Signature-256", wrong.as_str()),
                ],
            ),
            (fx.path(), vec![("X-GitHub-Event", "push")]),
        ] {
            let reply = post(fx.addr, &path, &headers, &body).await;
            assert_eq!(reply.status, 401, "{path} {headers:?}: {}", reply.body);
        }
    }
    assert_eq!(
        fx.api_requests(""),
        before,
        "refused webhook requests reached the API server"
    );
    assert_eq!(fx.requested("app").await?, None);

    // An authenticated push does the work (lists and patches GitSources).
    let reply = post(
        fx.addr,
        &fx.path(),
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &sign(TOKEN, &body)),
        ],
        &body,
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert!(fx.api_requests("") > before);
    Ok(())
}

#[tokio::test]
async fn receivers_created_or_rotated_after_start_take_effect() -> Result<()> {
    let fx = Fixture::new("late", "generic", TOKEN).await?;
    fx.source("app", "https://git.example.com/acme/app.git", true)
        .await?;
    fx.wait_watching().await?;
    let body = br#"{"url":"https://git.example.com/acme/app"}"#;

    // A receiver that did not exist when the receiver started.
    let late = format!("{}-2", fx.receiver);
    let path = format!("/hook/{late}");
    let reply = post(
        fx.addr,
        &path,
        &[("X-Signature", &sign("first", body))],
        body,
    )
    .await;
    assert_eq!(reply.status, 401, "unknown yet: {}", reply.body);
    fx.create_receiver_secret(&late, "generic", "first").await?;
    eventually("the new receiver to be served", WAIT, || async {
        let reply = post(
            fx.addr,
            &path,
            &[("X-Signature", &sign("first", body))],
            body,
        )
        .await;
        Ok((reply.status != 401).then_some(reply.status))
    })
    .await
    .and_then(|status| {
        anyhow::ensure!(status == 200 || status == 202, "answered {status}");
        Ok(())
    })?;

    // Rotating its token: the new one works, the old one stops working.
    let secrets = Api::<Secret>::namespaced(fx.client.clone(), fx.ns.name());
    secrets
        .patch(
            &format!("plumb-receiver-{late}"),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({ "stringData": { "token": "second" } })),
        )
        .await?;
    eventually("the rotated token to be in force", WAIT, || async {
        let old = post(
            fx.addr,
            &path,
            &[("X-Signature", &sign("first", body))],
            body,
        )
        .await;
        Ok((old.status == 401).then_some(()))
    })
    .await?;
    let reply = post(
        fx.addr,
        &path,
        &[("X-Signature", &sign("second", body))],
        body,
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);

    // Deleting it: refused again.
    secrets
        .delete(&format!("plumb-receiver-{late}"), &Default::default())
        .await?;
    eventually("the deleted receiver to be refused", WAIT, || async {
        let reply = post(
            fx.addr,
            &path,
            &[("X-Signature", &sign("second", body))],
            body,
        )
        .await;
        Ok((reply.status == 401).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_webhook_port_serves_nothing_but_hooks() -> Result<()> {
    let fx = Fixture::new("only", "github", TOKEN).await?;
    for path in ["/metrics", "/healthz", "/readyz", "/"] {
        let reply = get(fx.addr, path).await;
        assert_eq!(reply.status, 404, "GET {path}: {}", reply.body);
    }
    let reply = get(fx.addr, &fx.path()).await;
    assert_eq!(reply.status, 405, "GET on a hook");
    Ok(())
}
