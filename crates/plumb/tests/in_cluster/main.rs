//! The agent as a Pod: `plumb install --image REF` on a private control plane whose only node is
//! the real one of `scripts/testenv` (kubelet, containerd, runc), with Plumb's own image.
//!
//! Two agent Pods run the Deployment of `deploy/agent.yaml` unchanged: as its ServiceAccount
//! (in-cluster config: the projected token and CA, `KUBERNETES_SERVICE_HOST/PORT` of the
//! `kubernetes` Service, which the node routes to the API server), Ready by their probes, one
//! leading (the Lease). Through them a GitSource (a Git server of plumb-testsupport on loopback,
//! published to the node's Pods) and a Sync are applied, a hand edit is healed, and deleting the
//! leader Pod hands over: the other takes the Lease and keeps reconciling. Then `plumb
//! uninstall` against the agent Pods, keeping what the Sync applied (`--keep-objects`) and, after
//! a new install, deleting it.
//!
//! The image: `PLUMB_TEST_IMAGE_ARCHIVE` (an archive of `scripts/image`, as `scripts/test`
//! builds it), else `scripts/image --binary <this plumb>` builds one from the binary under test
//! (once per run, in `target/tmp/in-cluster-image`).
//! Runs with the real node, by default in `scripts/test`: `PLUMB_TEST_REAL_NODE=1 cargo test -p
//! plumb --test in_cluster`; `PLUMB_TEST_REAL_NODE=0` skips it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, LogParams};
use kube::{Api, Client, ResourceExt};
use plumb_testsupport::kube::{PrivateControlPlane, eventually};

mod agent;
mod privilege;
mod recovery;

/// One private control plane with a real node at a time: each runs a kubelet and containerd.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

pub(crate) fn configmap(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: \"{value}\"\n"
    )
}

/// Runs this crate's `plumb` with `args` against the private control plane; its stdout.
async fn plumb(kubeconfig: &str, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(["--kubeconfig", kubeconfig])
        .args(args)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "plumb {} failed ({}):\n{stdout}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// The agent image in the real node's containerd; returns its reference.
async fn load_image(plane: &PrivateControlPlane) -> Result<String> {
    // `scripts/image` names every image it builds so.
    let reference = format!("ghcr.io/plumb-dev/plumb:{}", env!("CARGO_PKG_VERSION"));
    let archive = image_archive().await?;
    plane.import_image(archive).await?;
    Ok(reference)
}

/// `PLUMB_TEST_IMAGE_ARCHIVE`, else an archive `scripts/image --binary` builds (once per run of
/// these tests) from the plumb binary under test.
async fn image_archive() -> Result<&'static Path> {
    static ARCHIVE: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();
    let path = ARCHIVE
        .get_or_try_init(|| async {
            if let Some(archive) = std::env::var_os("PLUMB_TEST_IMAGE_ARCHIVE") {
                return Ok(PathBuf::from(archive));
            }
            let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("in-cluster-image");
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/image");
            let out = tokio::process::Command::new(script)
                .arg("--binary")
                .arg(env!("CARGO_BIN_EXE_plumb"))
                .arg("--out")
                .arg(&out_dir)
                .arg("--no-load")
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
            let archive = stdout
                .lines()
                .find_map(|l| l.strip_prefix("archive "))
                .with_context(|| format!("scripts/image named no archive:\n{stdout}"))?;
            Ok::<_, anyhow::Error>(PathBuf::from(archive))
        })
        .await?;
    Ok(path.as_path())
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

/// What a failed test prints: the agent Pods, the kubelet's and containerd's logs.
async fn diagnose(plane: &PrivateControlPlane) {
    if let Ok(client) = plane.client().await {
        eprintln!("{}", agent_pod_logs(&client).await);
    }
    eprintln!(
        "kubelet log (last lines):\n{}\n\ncontainerd log (last lines):\n{}",
        plane.log_tail_of("kubelet", 40),
        plane.log_tail_of("containerd", 15)
    );
}
