//! The API server's view: request counters, waiting for quiet, namespaces.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};

use crate::metrics::RequestCounts;
use plumb_testsupport::http::samples;

/// `apiserver_request_total`, summed as [`RequestCounts::of`] does, from a raw `GET /metrics`.
pub async fn request_counts(client: &Client) -> anyhow::Result<RequestCounts> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .context("building GET /metrics")?;
    let text = client
        .request_text(request)
        .await
        .context("GET /metrics of the API server")?;
    Ok(RequestCounts::of(&samples(
        &text,
        "apiserver_request_total",
    )))
}

/// Waits until no writes (other than leases and events) happen for `quiet`.
///
/// After a cold sync the deployment controller keeps writing (a ReplicaSet and a status per
/// Deployment) for a while; measuring the next run before it is done would slow it down. On
/// `scripts/testenv` (controller-manager at 200 QPS) it keeps pace with the sync; on a cluster
/// with the default client-side limit (--kube-api-qps 20) it takes minutes after 1000
/// Deployments. Past `timeout` that trickle is small next to a sync's rate and the no-op write
/// count filters it out (it writes ReplicaSets and status subresources), so the run goes ahead.
pub async fn settle_for(client: &Client, quiet: Duration, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last = request_counts(client).await?.background_writes;
    let mut quiet_since = Instant::now();
    while start.elapsed() < timeout {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = request_counts(client).await?.background_writes;
        if now != last {
            quiet_since = Instant::now();
            last = now;
        } else if quiet_since.elapsed() >= quiet {
            return Ok(());
        }
    }
    log!(
        "control plane still busy after {}s; measuring anyway",
        timeout.as_secs()
    );
    Ok(())
}

/// [`settle_for`] with 3 quiet seconds and a 60 s timeout.
pub async fn settle(client: &Client) -> anyhow::Result<()> {
    settle_for(client, Duration::from_secs(3), Duration::from_secs(60)).await
}

/// Creates `ns`, first deleting (and waiting for) a leftover from an earlier run.
pub async fn fresh_namespace(client: &Client, ns: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(ns).await?.is_some() {
        log!("deleting leftover namespace {ns}");
        // An agent of an earlier run is gone: nothing else releases its Syncs and GitSources.
        api.delete(ns, &DeleteParams::background()).await.ok();
        plumb_testsupport::kube::release_plumb_finalizers(client, ns).await?;
        let deadline = Instant::now() + Duration::from_secs(300);
        while api.get_opt(ns).await?.is_some() {
            if Instant::now() > deadline {
                bail!("namespace {ns} was not deleted within 300s");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let namespace: Namespace =
        serde_json::from_value(serde_json::json!({ "metadata": { "name": ns } }))?;
    api.create(&PostParams::default(), &namespace)
        .await
        .with_context(|| format!("creating namespace {ns}"))?;
    // The namespace controller publishes kube-root-ca.crt into every new namespace; let it
    // finish before anything is measured.
    settle(client).await
}

/// Deletes `namespaces` without waiting for them to be gone; failures are only logged.
pub async fn delete_namespaces(client: &Client, namespaces: &[String]) {
    let api: Api<Namespace> = Api::all(client.clone());
    for ns in namespaces {
        match api.delete(ns, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => log!("warning: cannot delete namespace {ns}: {e}"),
        }
    }
}
