//! Disaster recovery drill: the cluster is lost; a new, empty one is bootstrapped against the
//! fleet repository (the agent's own manifests, a second Sync and its apps) and everything comes
//! back through the agent Pods. The time from `plumb bootstrap` to every Sync Ready is the
//! recovery time (RTO); the test prints it.

use std::net::IpAddr;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use plumb_agent::api::Sync;
use plumb_testsupport::git::{GitServers, ServerOptions, Signing};
use plumb_testsupport::kube::{PrivateControlPlane, eventually};
use plumb_testsupport::world::condition_is;
use serde_json::json;

use super::*;

/// The fleet's second Sync: the apps, from the GitSource `plumb bootstrap` creates.
const APPS_SYNC: &str = "apiVersion: plumb.dev/v1alpha1
kind: Sync
metadata: {name: apps, namespace: plumb-system}
spec:
  sourceRef: {name: plumb-system}
  path: apps
  prune: true
  interval: 10m
";

/// How many ConfigMaps the apps hold.
const APP_CONFIGMAPS: usize = 20;

#[tokio::test]
async fn bootstrap_restores_an_empty_cluster_from_git_and_prints_the_recovery_time() -> Result<()> {
    if !enabled() {
        return Ok(());
    }
    let _serial = SERIAL.lock().await;
    let plane = PrivateControlPlane::up_with_only_real_node()
        .await
        .context("starting a private control plane with the real node as its only node")?;
    let result = drill(&plane).await;
    if result.is_err() {
        diagnose(&plane).await;
    }
    plane.down()?;
    result
}

async fn drill(plane: &PrivateControlPlane) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("plumb-recovery-")
        .tempdir()?;
    let image = load_image(plane, dir.path()).await?;
    let kubeconfig = plane.kubeconfig().to_str().context("kubeconfig path")?;

    // The Git server over https with basic auth, its certificate naming the address at which
    // the node's Pods reach it.
    let host: IpAddr = plane.node_host_address()?.parse()?;
    let servers = GitServers::start_reachable_at(ServerOptions::default(), Some(host))?;
    plane.expose_to_node(servers.https_port()).await?;
    let url = format!("https://{host}:{}/fleet.git", servers.https_port());

    // The fleet repository as the lost cluster left it: the agent's own manifests (`plumb
    // install --export`), the apps' Sync, and the apps.
    let repo = servers.create_repo("fleet")?;
    let wt = repo.work_tree()?;
    let export = plumb(kubeconfig, &["install", "--export", "--image", &image]).await?;
    wt.write("clusters/prod/plumb.yaml", export)?;
    wt.write("clusters/prod/apps.yaml", APPS_SYNC)?;
    let mut apps = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n");
    for i in 0..APP_CONFIGMAPS {
        apps.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: app-{i:02}, namespace: demo}}\n\
             data: {{value: restored}}\n"
        ));
    }
    wt.write("apps/demo.yaml", apps)?;
    let commit = wt.commit("the fleet", &Signing::None)?;
    wt.push()?;

    // What an operator keeps outside the cluster: the Git credentials, created first.
    let client = plane.client().await?;
    let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": AGENT_NAMESPACE } }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    let ca = std::fs::read_to_string(servers.ca_cert_path())?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {
            "name": "fleet-auth",
            "annotations": { "plumb.dev/credential-hosts": host.to_string() }
        },
        "stringData": {
            "username": servers.username(), "password": servers.password(), "caFile": ca
        }
    }))?;
    Api::<Secret>::namespaced(client.clone(), AGENT_NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await?;

    let started = Instant::now();
    plumb(
        kubeconfig,
        &[
            "bootstrap",
            "--git",
            &url,
            "--path",
            "clusters/prod",
            "--secret-ref",
            "fleet-auth",
            "--image",
            &image,
        ],
    )
    .await?;
    let syncs: Api<Sync> = Api::all(client.clone());
    let ready = eventually(
        "every Sync to be Ready with the fleet's commit",
        PODS_READY + WAIT,
        || {
            let (syncs, commit) = (syncs.clone(), commit.clone());
            async move {
                let list = syncs.list(&ListParams::default()).await?;
                let all_ready = list.items.len() == 2
                    && list.items.iter().all(|s| {
                        let value = serde_json::to_value(s).unwrap_or_default();
                        condition_is(&value, "Ready", "True")
                            && value["status"]["lastAppliedRevision"]
                                .as_str()
                                .is_some_and(|r| r.ends_with(&commit))
                    });
                Ok(all_ready.then_some(list.items))
            }
        },
    )
    .await?;
    let rto = started.elapsed();

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "demo");
    let restored = cms
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|c| c.name_any().starts_with("app-"))
        .count();
    ensure!(
        restored == APP_CONFIGMAPS,
        "{restored} of {APP_CONFIGMAPS} ConfigMaps restored"
    );
    let names: Vec<String> = ready.iter().map(ResourceExt::name_any).collect();
    println!(
        "DR drill: `plumb bootstrap` of an empty cluster to every Sync Ready ({}; the agent's \
         own manifests, a Namespace and {APP_CONFIGMAPS} ConfigMaps): RTO {:.1} s",
        names.join(", "),
        rto.as_secs_f64()
    );
    Ok(())
}
