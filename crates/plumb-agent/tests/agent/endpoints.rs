//! The agent's endpoints end to end, in-process as `plumb agent` runs it (its requests
//! counted, `--agent-namespace` the test namespace): `/metrics`, `/healthz` and `/readyz`
//! after applying a signed commit and healing drift, and the webhook receiver refusing a bad
//! signature and fetching on a good one. (Moved from the plumb crate's `agent_process` tests:
//! they need no process.)

use std::time::Instant;

use anyhow::Context as _;
use hmac::{Hmac, Mac};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::PostParams;
use plumb_testsupport::http::{self, sample};
use sha2::Sha256;

use super::*;

/// What `plumb agent --agent-namespace <the test namespace>` configures.
fn like_the_binary(w: &World) -> impl Fn(&mut AgentConfig) + use<> {
    let ns = w.ns().to_owned();
    move |c: &mut AgentConfig| c.agent_namespace = Some(ns.clone())
}

/// `sha256=<hex HMAC-SHA256(body, token)>`, the generic receiver's `X-Signature`.
fn hmac_signature(token: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(digest.len() * 2);
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    format!("sha256={hex}")
}

/// The commit of the GitSource's artifact and the time of its last fetch.
async fn fetched(w: &World) -> Result<(Option<String>, Option<String>)> {
    let st = w.sources().get("repo").await?.status.unwrap_or_default();
    Ok((st.artifact.map(|a| a.commit), st.last_fetch_time))
}

#[tokio::test]
async fn agent_process_applies_a_signed_commit_and_serves_metrics() -> Result<()> {
    let w = World::without_agent("proc").await?;
    let configure = like_the_binary(&w);
    let launcher = InProcess {
        client: None,
        configure: &configure,
    };
    let agent = w.spawn(&launcher, AgentSpec::new("proc-agent")).await?;

    let first = w.commit(
        &[("app/cm.yaml", &configmap("settings", "v1"))],
        w.signing(),
    )?;
    w.create(w.git_source("repo").verify("range")).await?;
    w.create(w.sync("app")).await?;
    let sync = w.wait_applied("app", &first).await?;
    let st = sync.status.unwrap_or_default();
    assert!(
        st.history
            .first()
            .and_then(|h| h.signer.as_deref())
            .is_some_and(|s| s.contains("alice@example.com")),
        "the applied commit's signer is recorded: {:?}",
        st.history
    );
    w.wait_value("settings", "v1").await?;

    // A manual edit by another field manager is undone.
    w.configmaps()
        .patch(
            "settings",
            &PatchParams {
                field_manager: Some("kubectl-edit".into()),
                ..Default::default()
            },
            &Patch::Merge(json!({ "data": { "value": "edited by hand" } })),
        )
        .await?;
    w.wait_value("settings", "v1").await?;

    // The endpoints a Deployment's probes and Prometheus use.
    for path in ["/healthz", "/readyz"] {
        let reply = http::get(agent.metrics_addr(), path).await?;
        assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
    }
    let sync_label = format!("{}/app", w.ns());
    // The drift counter is bumped just after the re-apply: give it a moment.
    let addr = agent.metrics_addr();
    let text = eventually(
        "/metrics to count the reconcile and the drift",
        WAIT,
        || {
            let sync_label = sync_label.clone();
            async move {
                let reply = http::get(addr, "/metrics").await?;
                anyhow::ensure!(reply.status == 200, "GET /metrics: {}", reply.status);
                let counted = reply
                    .body
                    .contains(r#"plumb_reconciles_total{kind="Sync",result="success"}"#)
                    && reply
                        .body
                        .contains(&format!(r#"drift_corrected_total{{sync="{sync_label}"}}"#));
                Ok(counted.then_some(reply.body))
            }
        },
    )
    .await?;
    assert!(
        !text.contains("plumb_plumb_"),
        "metric names carry a doubled prefix:\n{text}"
    );
    let reconciles = sample(
        &text,
        r#"plumb_reconciles_total{kind="Sync",result="success"}"#,
    );
    assert!(
        reconciles.is_some_and(|n| n >= 1.0),
        "no successful Sync reconcile in:\n{text}"
    );
    let corrected = sample(
        &text,
        &format!(r#"plumb_drift_corrected_total{{sync="{sync_label}"}}"#),
    );
    assert!(
        corrected.is_some_and(|n| n >= 1.0),
        "the healed edit is not counted:\n{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"plumb_managed_objects{{sync="{sync_label}"}}"#)
        ),
        Some(1.0),
        "managed objects:\n{text}"
    );
    assert!(
        text.contains("plumb_reconcile_duration_seconds_count"),
        "{text}"
    );

    let _ = agent.stop().await;
    Ok(())
}

#[tokio::test]
async fn webhook_process_rejects_bad_hmac_and_triggers_on_good() -> Result<()> {
    const TOKEN: &str = "a shared webhook secret";
    let w = World::without_agent("hook").await?;
    // Receivers trigger annotated GitSources in every namespace: a name of this run only.
    let receiver = format!("hook-{}", w.suffix());
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": format!("plumb-receiver-{receiver}") },
        "stringData": { "type": "generic", "token": TOKEN },
    }))?;
    Api::<Secret>::namespaced(w.client().clone(), w.ns())
        .create(&PostParams::default(), &secret)
        .await?;
    let configure = like_the_binary(&w);
    let launcher = InProcess {
        client: None,
        configure: &configure,
    };
    let agent = w
        .spawn(&launcher, AgentSpec::new("hook-agent").webhook())
        .await?;
    let hook = agent.webhook_addr().context("the webhook address")?;
    // The webhook port (the one Git hosts reach) serves hooks only: no metrics, no health.
    for path in ["/metrics", "/healthz", "/readyz"] {
        let reply = http::get(hook, path).await?;
        assert_eq!(reply.status, 404, "GET {path} on the webhook port");
    }

    let first = w.commit(&[("app/cm.yaml", &configmap("hooked", "1"))], w.signing())?;
    w.create(w.git_source("repo").verify("range").receiver(&receiver))
        .await?;
    w.create(w.sync("app")).await?;
    w.wait_applied("app", &first).await?;
    let (commit, fetched_at) = fetched(&w).await?;
    assert_eq!(commit.as_deref(), Some(first.as_str()));

    // A push the agent cannot know of: the GitSource's interval is an hour.
    let second = w.commit(&[("app/cm.yaml", &configmap("hooked", "2"))], w.signing())?;
    let body = serde_json::to_vec(&json!({ "url": w.repo().file_url() }))?;
    let path = format!("/hook/{receiver}");

    // Signed with another token: refused, nothing fetched.
    let wrong = hmac_signature("not the token", &body);
    let reply = http::post(hook, &path, &[("X-Signature", &wrong)], &body).await?;
    assert_eq!(reply.status, 401, "{}", reply.body);
    let unsigned = http::post(hook, &path, &[], &body).await?;
    assert_eq!(unsigned.status, 401, "{}", unsigned.body);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let gs = w.sources().get("repo").await?;
    assert_eq!(
        gs.annotations().get(RECONCILE_REQUEST_ANNOTATION),
        None,
        "a refused request asked for a fetch"
    );
    assert_eq!(
        fetched(&w).await?,
        (commit, fetched_at),
        "the GitSource fetched after a refused request"
    );
    w.wait_value("hooked", "1").await?;

    // Correctly signed: accepted, the source fetches and the Sync applies the push at once.
    let started = Instant::now();
    let good = hmac_signature(TOKEN, &body);
    let reply = http::post(
        hook,
        &path,
        &[("X-Signature", &good), ("Content-Type", "application/json")],
        &body,
    )
    .await?;
    assert!(
        (200..300).contains(&reply.status),
        "{}: {}",
        reply.status,
        reply.body
    );
    assert_eq!(
        reply.json()["triggered"],
        json!([format!("{}/repo", w.ns())]),
        "{}",
        reply.body
    );
    w.inner
        .wait_applied::<Sync>("app", &second, Duration::from_secs(20))
        .await?;
    w.wait_value("hooked", "2").await?;
    eprintln!("webhook push applied in {:.1?}", started.elapsed());

    // Both requests were counted under the receiver's name.
    let metrics = http::get(agent.metrics_addr(), "/metrics").await?.body;
    assert!(
        metrics.contains(&format!(
            r#"plumb_webhook_requests_total{{receiver="{receiver}",result="unauthorized"}} 2"#
        )) && metrics.contains(&format!(
            r#"plumb_webhook_requests_total{{receiver="{receiver}",result="accepted"}} 1"#
        )),
        "{metrics}"
    );
    assert!(!metrics.contains(TOKEN));

    let _ = agent.stop().await;
    Ok(())
}
