//! The agent as two Pods: install, leadership, reconciling, drift, handover, uninstall.

use std::collections::BTreeSet;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};
use plumb_agent::api::Sync;
use plumb_testsupport::git::GitServers;
use plumb_testsupport::kube::{PrivateControlPlane, eventually};
use plumb_testsupport::world::{Remote, World};

use super::*;

#[tokio::test]
async fn the_agent_runs_as_two_pods_heals_drift_and_hands_over_when_the_leader_pod_goes()
-> Result<()> {
    if !enabled() {
        return Ok(());
    }
    let _serial = SERIAL.lock().await;
    let plane = PrivateControlPlane::up_with_only_real_node()
        .await
        .context("starting a private control plane with the real node as its only node")?;
    let result = agent_in_pods(&plane).await;
    if result.is_err() {
        diagnose(&plane).await;
    }
    plane.down()?;
    result
}

async fn agent_in_pods(plane: &PrivateControlPlane) -> Result<()> {
    let image = load_image(plane).await?;

    // The Git server listens on loopback; the agent's Pods reach it at the node's host address.
    let servers = GitServers::start()?;
    plane.expose_to_node(servers.http_port()).await?;
    let w = World::private_with_remote(plane, "incluster", Remote::Http(&servers)).await?;
    let url = format!(
        "http://{}:{}/incluster.git",
        plane.node_host_address()?,
        servers.http_port()
    );

    let kubeconfig = plane.kubeconfig().to_str().context("kubeconfig path")?;
    plumb(kubeconfig, &["install", "--image", &image]).await?;

    // Two Pods of the Deployment, on the real node, as its ServiceAccount, Ready by their probes.
    let client = w.client().clone();
    let pods: Api<Pod> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    let ready = ready_agent_pods(&pods, 2).await?;
    for pod in &ready {
        let spec = pod.spec.as_ref().context("a Pod without spec")?;
        ensure!(
            spec.node_name.as_deref() == Some("localhost"),
            "{} runs on {:?}, not on the real node",
            pod.name_any(),
            spec.node_name
        );
        ensure!(
            spec.service_account_name.as_deref() == Some("plumb-agent"),
            "{} runs as {:?}",
            pod.name_any(),
            spec.service_account_name
        );
        ensure!(
            spec.containers[0].image.as_deref() == Some(image.as_str()),
            "{} runs {:?}",
            pod.name_any(),
            spec.containers[0].image
        );
    }
    let names: BTreeSet<String> = ready.iter().map(ResourceExt::name_any).collect();

    // One of them leads: it holds the Lease under its Pod name.
    let leases: Api<Lease> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    let leader = eventually("one agent Pod to hold the Lease", WAIT, || {
        let (leases, names) = (leases.clone(), names.clone());
        async move { Ok(holder(&leases).await?.filter(|h| names.contains(h))) }
    })
    .await?;
    println!("agent Pods {names:?}, leader {leader}");

    // A GitSource and a Sync, applied by the agent in its Pod (in-cluster credentials only).
    let first = w.commit(&[("app/cm.yaml", &configmap("settings", "1"))], w.signing())?;
    w.create(
        w.git_source("repo")
            .verify("range")
            .spec(serde_json::json!({ "url": url })),
    )
    .await?;
    w.create(w.sync("app")).await?;
    w.wait_applied::<Sync>("app", &first, WAIT).await?;
    w.wait_value("settings", "1").await?;

    // Drift: a hand edit is taken back.
    w.edit_by_hand("settings", "by hand").await?;
    w.wait_value("settings", "1").await?;

    // The leader Pod goes (as in a node drain or a rollout): another agent Pod takes the Lease
    // over: the standby, or the Deployment's replacement Pod if it wins the race (the leader
    // releases the Lease on SIGTERM, and either may acquire it first).
    pods.delete(&leader, &DeleteParams::default()).await?;
    let successor = eventually("another agent Pod to take the Lease", WAIT, || {
        let (leases, leader) = (leases.clone(), leader.clone());
        async move {
            Ok(holder(&leases)
                .await?
                .filter(|h| *h != leader && h.starts_with("plumb-agent-")))
        }
    })
    .await?;
    println!("{leader} deleted; {successor} leads");

    // ... and keeps reconciling: a new commit is applied and drift is healed again.
    let second = w.commit(&[("app/cm.yaml", &configmap("settings", "2"))], w.signing())?;
    w.poke_source().await?;
    w.wait_applied::<Sync>("app", &second, WAIT).await?;
    w.wait_value("settings", "2").await?;
    w.edit_by_hand("settings", "by hand again").await?;
    w.wait_value("settings", "2").await?;

    // The Deployment replaced the deleted Pod; the new one is Ready and stands by.
    let now = ready_agent_pods(&pods, 2).await?;
    ensure!(
        !now.iter().any(|p| p.name_any() == leader),
        "the deleted leader {leader} is still listed as Ready"
    );
    ensure!(holder(&leases).await?.as_deref() == Some(successor.as_str()));

    // Uninstall through the agent Pods, keeping what the Sync applied: the same object stays.
    let cms = w.configmaps();
    let uid = cms.get("settings").await?.uid();
    let out = plumb(kubeconfig, &["uninstall", "--keep-objects", "--keep-crds"]).await?;
    ensure!(
        out.contains("Deployment.apps/plumb-system/plumb-agent deleted"),
        "{out}"
    );
    ensure!(
        w.api::<Sync>()
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
    );
    ensure!(
        cms.get("settings").await?.uid() == uid,
        "the kept ConfigMap was replaced"
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    eventually("the agent's namespace to be gone", WAIT, || {
        let namespaces = namespaces.clone();
        async move {
            Ok(namespaces
                .get_opt(AGENT_NAMESPACE)
                .await?
                .is_none()
                .then_some(()))
        }
    })
    .await?;
    ensure!(
        cms.get("settings").await?.uid() == uid,
        "the kept ConfigMap was deleted"
    );

    // Installed again, the same Sync takes its objects back; uninstalled, the agent deletes them.
    plumb(kubeconfig, &["install", "--image", &image]).await?;
    ready_agent_pods(&pods, 2).await?;
    w.create(
        w.git_source("repo")
            .verify("range")
            .spec(serde_json::json!({ "url": url })),
    )
    .await?;
    w.create(w.sync("app")).await?;
    w.wait_applied::<Sync>("app", &second, WAIT).await?;
    let out = plumb(kubeconfig, &["uninstall"]).await?;
    ensure!(
        out.contains("CustomResourceDefinition syncs.plumb.dev deleted"),
        "{out}"
    );
    ensure!(
        cms.get_opt("settings").await?.is_none(),
        "the Sync's ConfigMap is still there"
    );
    Ok(())
}
