//! The agent as a Pod: `plumb install --image REF` on a private control plane whose only node is
//! the real one of `scripts/testenv` (kubelet, containerd, runc), with Plumb's own image.
//!
//! Two agent Pods run the Deployment of `deploy/agent.yaml` unchanged: as its ServiceAccount
//! (in-cluster config: the projected token and CA, `KUBERNETES_SERVICE_HOST/PORT` of the
//! `kubernetes` Service, which the node routes to the API server), Ready by their probes, one
//! leading (the Lease). Through them a GitSource (a Git server of plumb-testsupport on loopback,
//! published to the node's Pods) and a Sync are applied, a hand edit is healed, and deleting the
//! leader Pod hands over: the other takes the Lease and keeps reconciling.
//!
//! The image: `PLUMB_TEST_IMAGE_ARCHIVE` (an archive of `scripts/image`, as `scripts/test`
//! builds it), else `scripts/image --binary <this plumb>` builds one from the binary under test.
//! Runs with the real node, by default in `scripts/test`: `PLUMB_TEST_REAL_NODE=1 cargo test -p
//! plumb --test in_cluster`; `PLUMB_TEST_REAL_NODE=0` skips it.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, LogParams};
use kube::{Api, Client, ResourceExt};
use plumb_agent::api::Sync;
use plumb_testsupport::git::GitServers;
use plumb_testsupport::kube::{PrivateControlPlane, eventually};
use plumb_testsupport::world::{Remote, World};

/// Where `plumb install` puts the agent, and its Lease's name.
const AGENT_NAMESPACE: &str = "plumb-system";
const LEASE: &str = "plumb-agent";
const AGENT_SELECTOR: &str = "app.kubernetes.io/name=plumb-agent";
/// Starting two Pods (image already imported) and their probes passing.
const PODS_READY: Duration = Duration::from_secs(180);
const WAIT: Duration = Duration::from_secs(90);

fn enabled() -> bool {
    if std::env::var("PLUMB_TEST_REAL_NODE").as_deref() == Ok("1") {
        return true;
    }
    println!(
        "skipped: the in-cluster test runs only with PLUMB_TEST_REAL_NODE=1 (it starts a kubelet \
         and containerd; scripts/test sets it unless PLUMB_TEST_REAL_NODE=0)"
    );
    false
}

fn configmap(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: \"{value}\"\n"
    )
}

#[tokio::test]
async fn the_agent_runs_as_two_pods_heals_drift_and_hands_over_when_the_leader_pod_goes()
-> Result<()> {
    if !enabled() {
        return Ok(());
    }
    let plane = PrivateControlPlane::up_with_only_real_node()
        .await
        .context("starting a private control plane with the real node as its only node")?;
    let result = agent_in_pods(&plane).await;
    if result.is_err() {
        if let Ok(client) = plane.client().await {
            eprintln!("{}", agent_pod_logs(&client).await);
        }
        eprintln!(
            "kubelet log (last lines):\n{}\n\ncontainerd log (last lines):\n{}",
            plane.log_tail_of("kubelet", 40),
            plane.log_tail_of("containerd", 15)
        );
    }
    plane.down()?;
    result
}

async fn agent_in_pods(plane: &PrivateControlPlane) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("plumb-in-cluster-")
        .tempdir()?;
    let image = load_image(plane, dir.path()).await?;

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
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(["--kubeconfig", kubeconfig, "install", "--image", &image])
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "plumb install failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

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

    // The leader Pod goes (as in a node drain or a rollout): the other takes the Lease over.
    pods.delete(&leader, &DeleteParams::default()).await?;
    let successor = eventually("the other agent Pod to take the Lease", WAIT, || {
        let (leases, names, leader) = (leases.clone(), names.clone(), leader.clone());
        async move {
            Ok(holder(&leases)
                .await?
                .filter(|h| *h != leader && names.contains(h)))
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
    Ok(())
}

/// The agent image in the real node's containerd; returns its reference.
async fn load_image(plane: &PrivateControlPlane, dir: &Path) -> Result<String> {
    // `scripts/image` names every image it builds so.
    let reference = format!("ghcr.io/plumb-dev/plumb:{}", env!("CARGO_PKG_VERSION"));
    if let Some(archive) = std::env::var_os("PLUMB_TEST_IMAGE_ARCHIVE") {
        plane.import_image(Path::new(&archive)).await?;
        return Ok(reference);
    }
    // Built from the binary under test, imported into the node (PLUMB_TESTENV_RUN).
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/image");
    let out = tokio::process::Command::new(script)
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_plumb"))
        .arg("--out")
        .arg(dir)
        .env("PLUMB_TESTENV_RUN", plane.run_dir())
        .output()
        .await
        .context("running scripts/image")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "scripts/image failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    ensure!(
        last == reference,
        "scripts/image printed {last:?} last, not {reference}"
    );
    Ok(reference)
}

/// Waits until `count` agent Pods (not being deleted) are Ready; returns them.
async fn ready_agent_pods(pods: &Api<Pod>, count: usize) -> Result<Vec<Pod>> {
    eventually(
        &format!("{count} agent Pods to be Ready"),
        PODS_READY,
        || {
            let pods = pods.clone();
            async move {
                let list = pods
                    .list(&ListParams::default().labels(AGENT_SELECTOR))
                    .await?;
                let ready: Vec<Pod> = list
                    .items
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
                    .collect();
                Ok((ready.len() == count).then_some(ready))
            }
        },
    )
    .await
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn holder(leases: &Api<Lease>) -> Result<Option<String>> {
    Ok(leases
        .get_opt(LEASE)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity))
}

/// The agent Pods' status and logs (through the API server and the kubelet), for failures.
async fn agent_pod_logs(client: &Client) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    let list = match pods.list(&ListParams::default()).await {
        Ok(list) => list,
        Err(e) => return format!("(listing the agent Pods: {e})"),
    };
    let mut text = String::new();
    for pod in list.items {
        let name = pod.name_any();
        let status = serde_json::to_string(&pod.status).unwrap_or_default();
        let logs = pods
            .logs(
                &name,
                &LogParams {
                    tail_lines: Some(30),
                    ..LogParams::default()
                },
            )
            .await
            .unwrap_or_else(|e| format!("(logs: {e})"));
        text.push_str(&format!(
            "--- Pod {name}\nstatus: {status}\nlogs:\n{logs}\n"
        ));
    }
    if text.is_empty() {
        "(no agent Pods)".to_owned()
    } else {
        text
    }
}
