//! The webhook receiver: `POST /hook/<receiver>` turns a Git host's push notification into an
//! immediate fetch of the matching `GitSource`s.
//!
//! # Configuring a receiver
//! A receiver named `<receiver>` is a Secret named `plumb-receiver-<receiver>` in the agent's
//! namespace with two keys:
//! - `type`: `github`, `gitlab` or `generic`;
//! - `token`: the shared secret (leading and trailing whitespace is ignored).
//!
//! The receivers are read from a watch of the Secrets in that namespace (a namespaced list and
//! watch, nothing cluster-wide), so creating, rotating or deleting a receiver Secret takes effect
//! as soon as the watch delivers the change (well under a second), and a request costs no API
//! call until it is authenticated: outside traffic cannot become API server load. Requests that
//! arrive before the watch has listed the Secrets wait for it (up to [`SYNC_WAIT`], then 503).
//!
//! # Authentication (constant-time comparisons; anything else is 401 and triggers nothing)
//! - `github`: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(body, token)>`. Only `X-GitHub-Event:
//!   push` triggers; `ping` and other events answer 200 and trigger nothing.
//! - `gitlab`: `X-Gitlab-Token: <token>`. Only `X-Gitlab-Event: Push Hook` or `Tag Push Hook`
//!   triggers; other events answer 200 and trigger nothing.
//! - `generic`: `X-Signature: sha256=<hex HMAC-SHA256(body, token)>`, e.g.
//!   `curl -H "X-Signature: sha256=$(printf %s "$BODY" | openssl dgst -sha256 -hmac "$TOKEN" -r |
//!   cut -d' ' -f1)" -d "$BODY" https://plumb.example/hook/<receiver>`. Every authenticated request
//!   is a push. The body may be empty or any JSON; a JSON object with a string `url` narrows the
//!   trigger to that repository.
//!
//! Bodies over [`DEFAULT_BODY_LIMIT`] (configurable) answer 413.
//!
//! # What a push triggers
//! Every `GitSource`, in any namespace, annotated `plumb.dev/receiver: <receiver>`
//! ([`RECEIVER_ANNOTATION`]); when the payload names the repository (GitHub `repository.clone_url`,
//! `ssh_url`, `html_url`; GitLab `project.git_http_url`, `git_ssh_url`, `web_url`), only those
//! whose `spec.url` is the same repository (compared without scheme, user, port, trailing `/`
//! and `.git`, host case-insensitive). Triggering sets the annotation
//! [`RECONCILE_REQUEST_ANNOTATION`] to the current RFC 3339 time; the GitSource reconciler fetches
//! on that change. The answer is 202 with `{"triggered": ["namespace/name", ...]}`.
//!
//! # RBAC
//! `list` and `watch` on `secrets` in the agent's namespace; `list` and `patch` on
//! `gitsources.plumb.dev` in every namespace whose sources may be triggered (used only for
//! authenticated pushes).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use hmac::{Hmac, Mac};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use secrecy::{ExposeSecret, SecretSlice};
use serde_json::{Value, json};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::api::{GitSource, RECONCILE_REQUEST_ANNOTATION};
use crate::metrics::{Metrics, WebhookResult};

/// Annotation on a `GitSource` naming the receiver whose pushes trigger it.
pub const RECEIVER_ANNOTATION: &str = "plumb.dev/receiver";
/// Prefix of a receiver's Secret name: `plumb-receiver-<receiver>`.
pub const RECEIVER_SECRET_PREFIX: &str = "plumb-receiver-";
/// Largest accepted request body: 1 MiB (GitHub caps payloads at 25 MB, but push payloads of
/// that size are not needed: only the repository URLs are read).
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// How long a request waits for the first list of receiver Secrets before it answers 503.
pub const SYNC_WAIT: Duration = Duration::from_secs(10);

/// How the receiver finds its Secrets and the GitSources to trigger.
#[derive(Clone)]
pub struct WebhookConfig {
    /// Client used to read receiver Secrets, list GitSources and annotate them.
    pub client: Client,
    /// Namespace of the receiver Secrets (the agent's own namespace).
    pub namespace: String,
    /// Where `plumb_webhook_requests_total` is counted, if anywhere.
    pub metrics: Option<Metrics>,
    /// Largest accepted body in bytes; larger ones answer 413.
    pub body_limit: usize,
}

impl WebhookConfig {
    /// Receivers configured in `namespace`, with the default body limit and no metrics.
    pub fn new(client: Client, namespace: impl Into<String>) -> Self {
        Self {
            client,
            namespace: namespace.into(),
            metrics: None,
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }

    /// Counts requests in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Sets the largest accepted body.
    pub fn with_body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }
}

/// The receiver's routes (`POST /hook/{receiver}`), to serve on a port of their own (see
/// [`crate::http::serve_webhook_on`]). Starts the watch of the receiver Secrets, which runs
/// until the router (and every clone of it) is dropped; call it inside a Tokio runtime.
pub fn router(config: WebhookConfig) -> Router {
    let limit = config.body_limit;
    let receivers = Receivers::watch(config.client.clone(), &config.namespace);
    Router::new()
        .route("/hook/{receiver}", post(hook))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(HookState { config, receivers })
}

#[derive(Clone)]
struct HookState {
    config: WebhookConfig,
    receivers: Receivers,
}

/// The configured receivers, kept up to date by a watch of the Secrets in one namespace.
#[derive(Clone)]
struct Receivers {
    by_name: Arc<RwLock<HashMap<String, Arc<Receiver>>>>,
    synced: tokio::sync::watch::Receiver<bool>,
    _task: Arc<AbortOnDrop>,
}

/// Stops the watch when the last handle to the receivers goes away.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Receivers {
    /// Starts watching the Secrets of `namespace`.
    fn watch(client: Client, namespace: &str) -> Self {
        let by_name = Arc::new(RwLock::new(HashMap::new()));
        let (synced_tx, synced) = tokio::sync::watch::channel(false);
        let api: Api<Secret> = Api::namespaced(client, namespace);
        let map = by_name.clone();
        let namespace = namespace.to_owned();
        let task = tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default()).default_backoff();
            let mut stream = std::pin::pin!(stream);
            // A (re)list builds a new map; the old one serves until it is complete.
            let mut listing: Option<HashMap<String, Arc<Receiver>>> = None;
            while let Some(event) = stream.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        tracing::warn!(namespace = %namespace, error = %e, "watching webhook receiver Secrets");
                        continue;
                    }
                };
                match event {
                    watcher::Event::Init => listing = Some(HashMap::new()),
                    watcher::Event::InitApply(secret) => {
                        if let (Some(listing), Some((name, receiver))) =
                            (listing.as_mut(), parse_receiver(&secret, &namespace))
                        {
                            listing.insert(name, Arc::new(receiver));
                        }
                    }
                    watcher::Event::InitDone => {
                        if let Some(listing) = listing.take() {
                            *map.write().expect("receivers lock poisoned") = listing;
                        }
                        synced_tx.send_replace(true);
                    }
                    watcher::Event::Apply(secret) => {
                        let Some(name) = receiver_name(&secret) else {
                            continue;
                        };
                        let mut map = map.write().expect("receivers lock poisoned");
                        match parse_receiver(&secret, &namespace) {
                            Some((_, receiver)) => map.insert(name, Arc::new(receiver)),
                            None => map.remove(&name),
                        };
                    }
                    watcher::Event::Delete(secret) => {
                        if let Some(name) = receiver_name(&secret) {
                            map.write().expect("receivers lock poisoned").remove(&name);
                        }
                    }
                }
            }
        });
        Self {
            by_name,
            synced,
            _task: Arc::new(AbortOnDrop(task.abort_handle())),
        }
    }

    /// The receiver `name`, once the first list is in (`Err` when it is not after `wait`).
    async fn get(&self, name: &str, wait: Duration) -> Result<Option<Arc<Receiver>>, ()> {
        let mut synced = self.synced.clone();
        match tokio::time::timeout(wait, synced.wait_for(|s| *s)).await {
            Ok(Ok(_)) => {}
            _ => return Err(()),
        }
        Ok(self
            .by_name
            .read()
            .expect("receivers lock poisoned")
            .get(name)
            .cloned())
    }
}

/// The receiver a Secret configures, by its name: `plumb-receiver-<receiver>`.
fn receiver_name(secret: &Secret) -> Option<String> {
    secret
        .name_any()
        .strip_prefix(RECEIVER_SECRET_PREFIX)
        .filter(|r| valid_receiver_name(r))
        .map(str::to_owned)
}

/// The kind of Git host a receiver speaks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReceiverType {
    GitHub,
    GitLab,
    Generic,
}

struct Receiver {
    kind: ReceiverType,
    token: SecretSlice<u8>,
}

/// The outcome of one request, before it becomes a response.
enum Reply {
    Unauthorized(&'static str),
    Rejected(StatusCode, String),
    Ignored(String),
    Triggered(Vec<String>),
}

async fn hook(
    State(state): State<HookState>,
    Path(receiver): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut known = false;
    let config = &state.config;
    let reply = handle(&state, &receiver, &headers, body, &mut known).await;
    let (result, response) = match reply {
        Reply::Unauthorized(why) => {
            tracing::warn!(receiver = %receiver, reason = why, "webhook request refused");
            (
                WebhookResult::Unauthorized,
                (StatusCode::UNAUTHORIZED, "unauthorized\n").into_response(),
            )
        }
        Reply::Rejected(status, message) => {
            tracing::warn!(receiver = %receiver, %status, %message, "webhook request rejected");
            (WebhookResult::Rejected, (status, message).into_response())
        }
        Reply::Ignored(message) => {
            tracing::info!(receiver = %receiver, %message, "webhook event ignored");
            (
                WebhookResult::Accepted,
                (
                    StatusCode::OK,
                    axum::Json(json!({ "message": message, "triggered": [] })),
                )
                    .into_response(),
            )
        }
        Reply::Triggered(triggered) => {
            tracing::info!(receiver = %receiver, ?triggered, "webhook push triggered fetches");
            (
                WebhookResult::Accepted,
                (
                    StatusCode::ACCEPTED,
                    axum::Json(json!({ "triggered": triggered })),
                )
                    .into_response(),
            )
        }
    };
    if let Some(metrics) = &config.metrics {
        // Receiver names come from the caller: only configured ones become label values.
        let label = if known { receiver.as_str() } else { "unknown" };
        metrics.webhook_request(label, result);
    }
    response
}

async fn handle(
    state: &HookState,
    receiver: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    known: &mut bool,
) -> Reply {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return Reply::Rejected(rejection.status(), rejection.body_text()),
    };
    if !valid_receiver_name(receiver) {
        return Reply::Unauthorized("invalid receiver name");
    }
    let receiver_config = match state.receivers.get(receiver, SYNC_WAIT).await {
        Ok(Some(r)) => {
            *known = true;
            r
        }
        Ok(None) => return Reply::Unauthorized("unknown receiver"),
        Err(()) => {
            tracing::error!(namespace = %state.config.namespace,
                "the webhook receiver Secrets are not listed yet (check the agent's RBAC: list and watch on secrets)");
            return Reply::Rejected(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot read the receiver configuration; retry later\n".into(),
            );
        }
    };
    if let Err(why) = authenticate(&receiver_config, headers, &body) {
        return Reply::Unauthorized(why);
    }

    let urls = match receiver_config.kind {
        ReceiverType::GitHub => match header(headers, "x-github-event") {
            Some("push") => match payload(&body) {
                Ok(p) => repository_urls(&p, "repository", &["clone_url", "ssh_url", "html_url"]),
                Err(reply) => return reply,
            },
            Some(event) => {
                return Reply::Ignored(format!("GitHub event {event:?} triggers nothing"));
            }
            None => {
                return Reply::Rejected(
                    StatusCode::BAD_REQUEST,
                    "missing X-GitHub-Event header\n".into(),
                );
            }
        },
        ReceiverType::GitLab => match header(headers, "x-gitlab-event") {
            Some("Push Hook" | "Tag Push Hook") => match payload(&body) {
                Ok(p) => {
                    repository_urls(&p, "project", &["git_http_url", "git_ssh_url", "web_url"])
                }
                Err(reply) => return reply,
            },
            Some(event) => {
                return Reply::Ignored(format!("GitLab event {event:?} triggers nothing"));
            }
            None => {
                return Reply::Rejected(
                    StatusCode::BAD_REQUEST,
                    "missing X-Gitlab-Event header\n".into(),
                );
            }
        },
        ReceiverType::Generic => serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("url").and_then(Value::as_str).map(normalize_url))
            .into_iter()
            .collect(),
    };

    match trigger(&state.config, receiver, &urls).await {
        Ok(triggered) => Reply::Triggered(triggered),
        Err(reply) => reply,
    }
}

/// Receiver names become part of a Secret name: a DNS label's characters, short enough.
fn valid_receiver_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253 - RECEIVER_SECRET_PREFIX.len()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
}

/// The receiver configured by `secret`, if it is a receiver Secret (`plumb-receiver-<name>`)
/// with a valid `type` and a `token`; invalid ones are logged (once per change) and ignored.
fn parse_receiver(secret: &Secret, namespace: &str) -> Option<(String, Receiver)> {
    let receiver = receiver_name(secret)?;
    let name = secret.name_any();
    let data = secret.data.clone().unwrap_or_default();
    let kind = match data
        .get("type")
        .map(|v| String::from_utf8_lossy(&v.0).trim().to_owned())
    {
        Some(t) if t == "github" => ReceiverType::GitHub,
        Some(t) if t == "gitlab" => ReceiverType::GitLab,
        Some(t) if t == "generic" => ReceiverType::Generic,
        other => {
            tracing::warn!(secret = %name, namespace = %namespace, r#type = ?other,
                "receiver Secret has no valid `type` (github | gitlab | generic)");
            return None;
        }
    };
    let token = match data.get("token") {
        Some(v) if !v.0.trim_ascii().is_empty() => SecretSlice::from(v.0.trim_ascii().to_vec()),
        _ => {
            tracing::warn!(secret = %name, namespace = %namespace, "receiver Secret has no `token`");
            return None;
        }
    };
    Some((receiver, Receiver { kind, token }))
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn authenticate(receiver: &Receiver, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
    let token = receiver.token.expose_secret();
    match receiver.kind {
        ReceiverType::GitHub => verify_hmac(token, header(headers, "x-hub-signature-256"), body),
        ReceiverType::Generic => verify_hmac(token, header(headers, "x-signature"), body),
        ReceiverType::GitLab => {
            let given = header(headers, "x-gitlab-token").ok_or("missing X-Gitlab-Token")?;
            if bool::from(given.as_bytes().ct_eq(token)) {
                Ok(())
            } else {
                Err("wrong X-Gitlab-Token")
            }
        }
    }
}

fn verify_hmac(token: &[u8], signature: Option<&str>, body: &[u8]) -> Result<(), &'static str> {
    let signature = signature.ok_or("missing signature header")?;
    let hex = signature
        .strip_prefix("sha256=")
        .ok_or("signature is not sha256=<hex>")?;
    let expected = decode_hex(hex.trim()).ok_or("signature is not sha256=<hex>")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(token).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(&expected).map_err(|_| "wrong signature")
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.as_bytes()
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect()
}

fn payload(body: &[u8]) -> Result<Value, Reply> {
    serde_json::from_slice(body).map_err(|e| {
        Reply::Rejected(
            StatusCode::BAD_REQUEST,
            format!("the payload is not JSON ({e}); configure the webhook with content type application/json\n"),
        )
    })
}

/// The normalised repository URLs named by `payload[object][fields..]`.
fn repository_urls(payload: &Value, object: &str, fields: &[&str]) -> BTreeSet<String> {
    fields
        .iter()
        .filter_map(|field| payload.get(object)?.get(field)?.as_str())
        .filter(|url| !url.is_empty())
        .map(normalize_url)
        .collect()
}

/// Reduces a Git URL to `host/path` so that the https, ssh and scp-like spellings of one
/// repository compare equal: no scheme, user or port, no trailing `/` or `.git`, host lowercased.
/// Local paths (and `file://` URLs) keep their path.
pub fn normalize_url(url: &str) -> String {
    let url = url.trim();
    let (authority, path) = if let Some((_scheme, rest)) = url.split_once("://") {
        rest.split_once('/').unwrap_or((rest, ""))
    } else if let Some((host, path)) = url.split_once(':').filter(|(host, _)| !host.contains('/')) {
        // scp-like `[user@]host:path`
        (host, path)
    } else {
        ("", url)
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(bracketed) = host.strip_prefix('[') {
        bracketed.split_once(']').map_or(bracketed, |(h, _)| h)
    } else {
        host.split_once(':').map_or(host, |(h, _)| h)
    };
    let mut path = path.trim_matches('/');
    path = path
        .strip_suffix(".git")
        .unwrap_or(path)
        .trim_end_matches('/');
    format!("{}/{}", host.to_ascii_lowercase(), path)
}

async fn trigger(
    config: &WebhookConfig,
    receiver: &str,
    urls: &BTreeSet<String>,
) -> Result<Vec<String>, Reply> {
    let all: Api<GitSource> = Api::all(config.client.clone());
    let sources = all.list(&ListParams::default()).await.map_err(|e| {
        tracing::error!(error = %e, "listing GitSources for a webhook push");
        Reply::Rejected(
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot list GitSources; retry later\n".into(),
        )
    })?;
    let now = jiff::Timestamp::now().to_string();
    let patch = Patch::Merge(json!({
        "metadata": { "annotations": { RECONCILE_REQUEST_ANNOTATION: now } }
    }));
    let mut triggered = Vec::new();
    let mut failed = false;
    for source in sources {
        if source
            .annotations()
            .get(RECEIVER_ANNOTATION)
            .map(String::as_str)
            != Some(receiver)
        {
            continue;
        }
        if !urls.is_empty() && !urls.contains(&normalize_url(&source.spec.url)) {
            continue;
        }
        let (Some(namespace), name) = (source.namespace(), source.name_any()) else {
            continue;
        };
        let api: Api<GitSource> = Api::namespaced(config.client.clone(), &namespace);
        match api.patch(&name, &PatchParams::default(), &patch).await {
            Ok(_) => triggered.push(format!("{namespace}/{name}")),
            // Deleted since the list: nothing left to fetch.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::error!(gitsource = %format!("{namespace}/{name}"), error = %e, "requesting a fetch");
                failed = true;
            }
        }
    }
    if failed {
        // The sender retries; annotating again is harmless.
        return Err(Reply::Rejected(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "could not request a fetch of every matching GitSource (done: {}); retry later\n",
                triggered.join(", ")
            ),
        ));
    }
    Ok(triggered)
}

#[cfg(test)]
mod tests;
