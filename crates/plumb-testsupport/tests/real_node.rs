//! Proof that the opt-in real node of `scripts/testenv` runs Pods: a private control plane with
//! the node (kubelet, containerd, runc, CNI bridge), a Pod of the offline test image run to
//! completion there, its logs read through the API server (which reaches the kubelet).
//!
//! Opt-in, like the node: `PLUMB_TEST_REAL_NODE=1 cargo test -p plumb-testsupport --test
//! real_node`. Without the variable the test says it is skipped and returns.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, LogParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, ResourceExt};
use plumb_testsupport::kube::PrivateControlPlane;
use serde_json::json;

/// The label (value "true") and taint key (NoSchedule, value "true") of the real node.
const REAL_NODE_LABEL: &str = "plumb.dev/real-node";
/// The real node's test image: prints its arguments and `$PLUMB_MESSAGE`, then exits.
const TEST_IMAGE: &str = "plumb.dev/testenv/hello:1";

fn enabled() -> bool {
    if std::env::var("PLUMB_TEST_REAL_NODE").as_deref() == Ok("1") {
        return true;
    }
    println!(
        "skipped: the real-node test runs only with PLUMB_TEST_REAL_NODE=1 (it starts a kubelet \
         and containerd: scripts/testenv node up)"
    );
    false
}

#[tokio::test]
async fn a_pod_runs_to_completion_on_the_real_node_and_its_logs_are_served() {
    if !enabled() {
        return;
    }
    let plane = PrivateControlPlane::up_with_real_node()
        .await
        .expect("starting a private control plane with the real node");
    let result = run_pod(&plane).await;
    if let Err(e) = &result {
        eprintln!(
            "kubelet log (last lines):\n{}\n\ncontainerd log (last lines):\n{}",
            plane.log_tail_of("kubelet", 30),
            plane.log_tail_of("containerd", 15)
        );
        plane.down().expect("stopping the private control plane");
        panic!("{e:#}");
    }
    plane.down().expect("stopping the private control plane");
}

async fn run_pod(plane: &PrivateControlPlane) -> anyhow::Result<()> {
    use anyhow::{Context as _, ensure};
    let client = plane.client().await?;

    // One real node, labelled and tainted; the kwok nodes carry neither.
    let nodes: Api<Node> = Api::all(client.clone());
    let real = nodes
        .list(&ListParams::default().labels(&format!("{REAL_NODE_LABEL}=true")))
        .await?;
    ensure!(
        real.items.len() == 1,
        "expected one real node, found {:?}",
        real.items.iter().map(|n| n.name_any()).collect::<Vec<_>>()
    );
    let node = &real.items[0];
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| {
            ts.iter()
                .any(|t| t.key == REAL_NODE_LABEL && t.effect == "NoSchedule")
        });
    ensure!(tainted, "the real node {} is not tainted", node.name_any());

    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "hello-real-node" },
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": { REAL_NODE_LABEL: "true" },
            "tolerations": [{
                "key": REAL_NODE_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"
            }],
            "containers": [{
                "name": "hello",
                "image": TEST_IMAGE,
                "args": ["hello", "from", "the", "real", "node"],
                "env": [{ "name": "PLUMB_MESSAGE", "value": "env reached the container" }]
            }]
        }
    }))?;
    pods.create(&PostParams::default(), &pod).await?;

    let done = tokio::time::timeout(
        Duration::from_secs(90),
        await_condition(pods.clone(), "hello-real-node", |p: Option<&Pod>| {
            p.and_then(|p| p.status.as_ref())
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|phase| phase == "Succeeded" || phase == "Failed")
        }),
    )
    .await
    .context("the Pod did not finish within 90 s")??
    .context("the Pod disappeared")?;
    let phase = done.status.as_ref().and_then(|s| s.phase.clone());
    let on = done.spec.as_ref().and_then(|s| s.node_name.clone());
    ensure!(
        phase.as_deref() == Some("Succeeded"),
        "the Pod ended {phase:?}: {:?}",
        done.status
    );
    ensure!(
        on.as_deref() == Some(node.name_any().as_str()),
        "the Pod ran on {on:?}, not on the real node {}",
        node.name_any()
    );

    // Through the API server, which dials the kubelet.
    let logs = pods
        .logs("hello-real-node", &LogParams::default())
        .await
        .context("reading the Pod's logs through the API server")?;
    println!("logs of hello-real-node on {}:\n{logs}", node.name_any());
    ensure!(
        logs == "hello from the real node\nenv reached the container\n",
        "unexpected logs: {logs:?}"
    );

    pods.delete("hello-real-node", &DeleteParams::default())
        .await?;
    Ok(())
}
