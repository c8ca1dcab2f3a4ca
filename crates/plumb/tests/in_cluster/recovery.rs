//! Disaster recovery drill: the cluster is lost; a new, empty one is bootstrapped against the
//! fleet repository (the agent's own manifests, a second Sync and its apps) and everything comes
//! back through the agent Pods. The time from `plumb bootstrap` to every Sync Ready is the
//! recovery time (RTO); the test prints it. Then the agent upgrades itself from Git: a new image
//! tag committed to its own manifests rolls its Pods out through itself, the new Pods take the
//! Lease over, and no revision is lost (the rollout's and the next one are both applied and in
//! the history).

use std::net::IpAddr;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, ResourceExt};
use plumb_agent::api::Sync;
use plumb_testsupport::git::{GitServers, ServerOptions, Signing};
use plumb_testsupport::kube::{PrivateControlPlane, eventually};
use plumb_testsupport::world::{RECONCILE_REQUEST_ANNOTATION, condition_is};
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
async fn bootstrap_restores_an_empty_cluster_from_git_then_the_agent_upgrades_itself() -> Result<()>
{
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
    let image = load_image(plane).await?;
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
    wt.write("clusters/prod/plumb.yaml", &export)?;
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
    let ready = all_syncs_ready(&syncs, &commit).await?;
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

    // The agent manages itself: a new tag of its image (the same content under a second name,
    // as a registry would serve a new release) committed to its manifests in Git.
    let next = format!("{image}-next");
    plane.tag_image(&image, &next).await?;
    ensure!(
        export.matches(image.as_str()).count() == 1,
        "one image reference in {export}"
    );
    wt.write("clusters/prod/plumb.yaml", export.replace(&image, &next))?;
    let rollout = wt.commit("plumb: the next image", &Signing::None)?;
    wt.push()?;
    poke_source(&client).await?;
    // Rolled out through itself: both Pods run the new tag and one of them leads.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    eventually(
        "the agent's Deployment to roll out the next image",
        PODS_READY,
        || {
            let (deployments, next) = (deployments.clone(), next.clone());
            async move {
                let d = deployments.get("plumb-agent").await?;
                let image = d
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.spec.as_ref())
                    .and_then(|s| s.containers[0].image.clone());
                let status = d.status.unwrap_or_default();
                let done = image.as_deref() == Some(next.as_str())
                    && d.metadata.generation == status.observed_generation
                    && status.updated_replicas == Some(2)
                    && status.ready_replicas == Some(2)
                    && status.replicas == Some(2);
                Ok(done.then_some(()))
            }
        },
    )
    .await?;
    let upgraded = ready_agent_pods(&pods, 2).await?;
    for pod in &upgraded {
        let image = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers[0].image.as_deref());
        ensure!(
            image == Some(next.as_str()),
            "{} runs {image:?}",
            pod.name_any()
        );
    }
    let new_pods: Vec<String> = upgraded.iter().map(ResourceExt::name_any).collect();
    let leases: Api<Lease> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    let leader = eventually("a Pod of the next image to lead", WAIT, || {
        let (leases, new_pods) = (leases.clone(), new_pods.clone());
        async move { Ok(holder(&leases).await?.filter(|h| new_pods.contains(h))) }
    })
    .await?;
    println!("rolled out {next} through the agent itself; {leader} leads");

    // The new Pods keep going: the next commit is applied, and both revisions are in the history.
    wt.write(
        "apps/after.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: after-upgrade, namespace: demo}\ndata: {value: applied}\n",
    )?;
    let after = wt.commit("apps: after the upgrade", &Signing::None)?;
    wt.push()?;
    poke_source(&client).await?;
    let ready = all_syncs_ready(&syncs, &after).await?;
    ensure!(
        cms.get_opt("after-upgrade").await?.is_some(),
        "the commit after the upgrade was not applied"
    );
    for sync in &ready {
        let value = serde_json::to_value(sync)?;
        let revisions: Vec<&str> = value["status"]["history"]
            .as_array()
            .map(|h| h.iter().filter_map(|e| e["revision"].as_str()).collect())
            .unwrap_or_default();
        for commit in [&commit, &rollout, &after] {
            ensure!(
                revisions.iter().any(|r| r.ends_with(commit.as_str())),
                "Sync {}: revision {commit} is missing from its history {revisions:?}",
                sync.name_any()
            );
        }
    }
    Ok(())
}

/// Waits until both Syncs are Ready with `commit` applied; returns them.
async fn all_syncs_ready(syncs: &Api<Sync>, commit: &str) -> Result<Vec<Sync>> {
    eventually(
        &format!("every Sync to be Ready with {commit}"),
        PODS_READY + WAIT,
        || {
            let syncs = syncs.clone();
            async move {
                let list = syncs.list(&ListParams::default()).await?;
                let all_ready = list.items.len() == 2
                    && list.items.iter().all(|s| {
                        let value = serde_json::to_value(s).unwrap_or_default();
                        condition_is(&value, "Ready", "True")
                            && value["status"]["lastAppliedRevision"]
                                .as_str()
                                .is_some_and(|r| r.ends_with(commit))
                    });
                Ok(all_ready.then_some(list.items))
            }
        },
    )
    .await
}

/// Asks the bootstrap GitSource to fetch now (what `plumb reconcile source` does).
async fn poke_source(client: &kube::Client) -> Result<()> {
    let gvk = GroupVersionKind::gvk("plumb.dev", "v1alpha1", "GitSource");
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        AGENT_NAMESPACE,
        &ApiResource::from_gvk(&gvk),
    );
    let patch = json!({ "metadata": { "annotations": {
        RECONCILE_REQUEST_ANNOTATION: k8s_openapi::jiff::Timestamp::now().to_string()
    } } });
    api.patch(
        "plumb-system",
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .context("requesting a fetch of GitSource plumb-system")?;
    Ok(())
}
