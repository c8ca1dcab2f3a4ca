//! Disaster recovery drill, from a first cluster to a second.
//!
//! Cluster A is bootstrapped from the fleet repository (the agent's own manifests, a second
//! Sync and its apps) and runs from it: the agent upgrades itself from Git, first a new image
//! tag, then a new flag of its container (`--lease-duration`, which the new Pods write into the
//! Lease they take over), each rolled out through the agent itself with no revision lost (the
//! rollouts' revisions and the next one are all applied and in the history). Then cluster A is
//! lost (its control plane and node stop) and cluster B, a new, empty one, is bootstrapped
//! against the same repository at the same URL: every Sync Ready with the last revision, the
//! apps restored, the agent as Git last had it (the new tag and flag). The time from `plumb
//! bootstrap` to every Sync Ready on B is the recovery time (RTO); the test prints it.
//!
//! The two clusters run one after the other (each has the real node, its kubelet and
//! containerd); B's node gets A's host address, so that the Git server's URL and certificate
//! serve both.

use std::net::IpAddr;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client, ResourceExt};
use plumb_agent::api::Sync;
use plumb_testsupport::git::{GitServers, Repo, ServerOptions, Signing, WorkTree};
use plumb_testsupport::kube::{PlaneOptions, PrivateControlPlane, eventually};
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

/// The agent's flag changed in Git, and the Lease duration the new Pods then write.
const LEASE_FLAG: [&str; 2] = ["--lease-duration", "20s"];
const LEASE_SECONDS: i32 = 20;

/// The fleet repository and its server, which outlive cluster A.
struct Fleet {
    servers: GitServers,
    _repo: Repo,
    wt: WorkTree,
    host: IpAddr,
    url: String,
    /// The image `plumb bootstrap` installed on A, and the tag Git upgraded it to.
    image: String,
    next: String,
    /// Every commit A applied, in order; the last one is what B must come back with.
    commits: Vec<String>,
}

#[tokio::test]
async fn a_second_cluster_is_restored_from_the_repository_the_first_upgraded_itself_from()
-> Result<()> {
    if !enabled() {
        return Ok(());
    }
    let _serial = SERIAL.lock().await;
    let a = PrivateControlPlane::up_with_only_real_node()
        .await
        .context("starting cluster A: a private control plane with the real node")?;
    let fleet = match first_cluster(&a).await {
        Ok(fleet) => fleet,
        Err(e) => {
            diagnose(&a).await;
            a.down()?;
            return Err(e);
        }
    };
    // Cluster A is lost: its control plane, node and Pods are gone.
    a.down()?;
    let b = PrivateControlPlane::up_with_only_real_node_and(PlaneOptions {
        node_host_address: Some(fleet.host.to_string()),
        ..PlaneOptions::default()
    })
    .await
    .context("starting cluster B: an empty private control plane with the real node")?;
    let result = second_cluster(&b, &fleet).await;
    if result.is_err() {
        diagnose(&b).await;
    }
    b.down()?;
    result
}

/// Cluster A: bootstrapped from the fleet repository, then upgraded from Git (a new image tag,
/// a new flag) and a commit after that applied.
async fn first_cluster(plane: &PrivateControlPlane) -> Result<Fleet> {
    let image = load_image(plane).await?;
    let kubeconfig = plane.kubeconfig().to_str().context("kubeconfig path")?;

    // The Git server over https with basic auth, its certificate naming the address at which
    // the node's Pods reach it.
    let host: IpAddr = plane.node_host_address()?.parse()?;
    let servers = GitServers::start_reachable_at(ServerOptions::default(), Some(host))?;
    plane.expose_to_node(servers.https_port()).await?;
    let url = format!("https://{host}:{}/fleet.git", servers.https_port());

    // The fleet repository: the agent's own manifests (`plumb install --export`), the apps'
    // Sync, and the apps.
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

    let client = plane.client().await?;
    create_credentials(&client, &servers, host).await?;
    let started = Instant::now();
    bootstrap(kubeconfig, &url, &image).await?;
    let syncs: Api<Sync> = Api::all(client.clone());
    all_syncs_ready(&syncs, &commit).await?;
    println!(
        "cluster A: `plumb bootstrap` to every Sync Ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The agent manages itself: a new tag of its image (the same content under a second name,
    // as a registry would serve a new release) committed to its manifests in Git.
    let next = format!("{image}-next");
    plane.tag_image(&image, &next).await?;
    ensure!(
        export.matches(image.as_str()).count() == 1,
        "one image reference in {export}"
    );
    let upgraded = export.replace(&image, &next);
    wt.write("clusters/prod/plumb.yaml", &upgraded)?;
    let tag_rollout = wt.commit("plumb: the next image", &Signing::None)?;
    wt.push()?;
    poke_source(&client).await?;
    let new_pods = rolled_out(&client, &next, None).await?;
    let leader = new_leader(&client, &new_pods, None).await?;
    println!("cluster A: rolled out {next} through the agent itself; {leader} leads");

    // Then a flag of its container, changed in Git: rolled out through itself as well, and
    // the new Pods lead with it (the Lease they write says the new duration).
    let flagged = with_lease_flag(&upgraded)?;
    wt.write("clusters/prod/plumb.yaml", &flagged)?;
    let flag_rollout = wt.commit("plumb: a longer lease", &Signing::None)?;
    wt.push()?;
    poke_source(&client).await?;
    let new_pods = rolled_out(&client, &next, Some(&LEASE_FLAG)).await?;
    let leader = new_leader(&client, &new_pods, Some(LEASE_SECONDS)).await?;
    println!(
        "cluster A: rolled out `{}` through the agent itself; {leader} leads with a \
         {LEASE_SECONDS} s Lease",
        LEASE_FLAG.join(" ")
    );

    // The new Pods keep going: the next commit is applied, and every revision is in the history.
    wt.write(
        "apps/after.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: after-upgrade, namespace: demo}\ndata: {value: applied}\n",
    )?;
    let after = wt.commit("apps: after the upgrades", &Signing::None)?;
    wt.push()?;
    poke_source(&client).await?;
    let ready = all_syncs_ready(&syncs, &after).await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "demo");
    ensure!(
        cms.get_opt("after-upgrade").await?.is_some(),
        "the commit after the upgrades was not applied"
    );
    let commits = vec![commit, tag_rollout, flag_rollout, after];
    for sync in &ready {
        let value = serde_json::to_value(sync)?;
        let revisions: Vec<&str> = value["status"]["history"]
            .as_array()
            .map(|h| h.iter().filter_map(|e| e["revision"].as_str()).collect())
            .unwrap_or_default();
        for commit in &commits {
            ensure!(
                revisions.iter().any(|r| r.ends_with(commit.as_str())),
                "Sync {}: revision {commit} is missing from its history {revisions:?}",
                sync.name_any()
            );
        }
    }
    Ok(Fleet {
        servers,
        _repo: repo,
        wt,
        host,
        url,
        image,
        next,
        commits,
    })
}

/// Cluster B: empty, bootstrapped against the same repository; every Sync Ready is the RTO.
async fn second_cluster(plane: &PrivateControlPlane, fleet: &Fleet) -> Result<()> {
    // The release images, as the new cluster's nodes would pull them from a registry.
    let image = load_image(plane).await?;
    ensure!(image == fleet.image, "{image} is not {}", fleet.image);
    plane.tag_image(&image, &fleet.next).await?;
    let host: IpAddr = plane.node_host_address()?.parse()?;
    ensure!(
        host == fleet.host,
        "cluster B's node has the host address {host}, not A's {}",
        fleet.host
    );
    plane.expose_to_node(fleet.servers.https_port()).await?;
    let kubeconfig = plane.kubeconfig().to_str().context("kubeconfig path")?;
    let client = plane.client().await?;
    // Empty: not even Plumb's CRDs.
    ensure!(
        Api::<CustomResourceDefinition>::all(client.clone())
            .get_opt("syncs.plumb.dev")
            .await?
            .is_none(),
        "cluster B is not empty: it has the Sync CRD"
    );

    // What an operator keeps outside the cluster: the Git credentials; then the same bootstrap
    // with the release Git names.
    create_credentials(&client, &fleet.servers, host).await?;
    let last = fleet.commits.last().context("no commit")?;
    let started = Instant::now();
    bootstrap(kubeconfig, &fleet.url, &fleet.next).await?;
    let syncs: Api<Sync> = Api::all(client.clone());
    let ready = all_syncs_ready(&syncs, last).await?;
    let rto = started.elapsed();

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "demo");
    let restored = cms
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|c| c.name_any().starts_with("app-") || c.name_any() == "after-upgrade")
        .count();
    ensure!(
        restored == APP_CONFIGMAPS + 1,
        "{restored} of {} ConfigMaps restored",
        APP_CONFIGMAPS + 1
    );
    let names: Vec<String> = ready.iter().map(ResourceExt::name_any).collect();
    println!(
        "DR drill: cluster A lost; `plumb bootstrap` of an empty cluster B against A's repository \
         to every Sync Ready ({}; the agent's own manifests, a Namespace and {} ConfigMaps): \
         RTO {:.1} s",
        names.join(", "),
        APP_CONFIGMAPS + 1,
        rto.as_secs_f64()
    );

    // The agent as Git last had it: the new tag and the new flag, leading with it (bootstrap
    // installed it without the flag; Git's Deployment rolls it, after every Sync is Ready).
    let pods = rolled_out(&client, &fleet.next, Some(&LEASE_FLAG)).await?;
    let leader = new_leader(&client, &pods, Some(LEASE_SECONDS)).await?;
    println!(
        "cluster B: the agent runs {} with `{}` as in Git, {:.1} s after `plumb bootstrap`; \
         {leader} leads",
        fleet.next,
        LEASE_FLAG.join(" "),
        started.elapsed().as_secs_f64()
    );
    // And it goes on from Git: a commit made after the recovery is applied.
    fleet.wt.write(
        "apps/after-recovery.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: after-recovery, namespace: demo}\ndata: {value: applied}\n",
    )?;
    let next_commit = fleet
        .wt
        .commit("apps: after the recovery", &Signing::None)?;
    fleet.wt.push()?;
    poke_source(&client).await?;
    all_syncs_ready(&syncs, &next_commit).await?;
    ensure!(
        cms.get_opt("after-recovery").await?.is_some(),
        "the commit after the recovery was not applied"
    );
    Ok(())
}

/// The Git credentials in the agent's namespace (created first, as `plumb bootstrap` asks).
async fn create_credentials(client: &Client, servers: &GitServers, host: IpAddr) -> Result<()> {
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
    Ok(())
}

async fn bootstrap(kubeconfig: &str, url: &str, image: &str) -> Result<()> {
    plumb(
        kubeconfig,
        &[
            "bootstrap",
            "--git",
            url,
            "--path",
            "clusters/prod",
            "--secret-ref",
            "fleet-auth",
            "--image",
            image,
        ],
    )
    .await?;
    Ok(())
}

/// `export` with [`LEASE_FLAG`] added to the agent container's arguments, after
/// `--leader-elect`.
fn with_lease_flag(export: &str) -> Result<String> {
    let lines: Vec<&str> = export.lines().collect();
    let at: Vec<usize> = (0..lines.len())
        .filter(|&i| matches!(lines[i].trim(), "- --leader-elect" | "- \"--leader-elect\""))
        .collect();
    ensure!(at.len() == 1, "one `- --leader-elect` line in {export}");
    let indent = &lines[at[0]][..lines[at[0]].len() - lines[at[0]].trim_start().len()];
    let mut out: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    for (n, arg) in LEASE_FLAG.iter().enumerate() {
        out.insert(at[0] + 1 + n, format!("{indent}- \"{arg}\""));
    }
    Ok(out.join("\n") + "\n")
}

/// Waits until the agent's Deployment runs `image` (and has `flag` among its container's
/// arguments, when given) on two updated, Ready Pods; returns those Pods' names.
async fn rolled_out(client: &Client, image: &str, flag: Option<&[&str; 2]>) -> Result<Vec<String>> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    let what = match flag {
        Some(flag) => format!(
            "the agent's Deployment to roll out {image} with `{}`",
            flag.join(" ")
        ),
        None => format!("the agent's Deployment to roll out {image}"),
    };
    eventually(&what, PODS_READY, || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get("plumb-agent").await?;
            let container = d
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .map(|s| s.containers[0].clone())
                .context("the agent's Deployment has no container")?;
            let args = container.args.unwrap_or_default();
            let has_flag = flag.is_none_or(|f| args.windows(2).any(|w| w == f.as_slice()));
            let status = d.status.unwrap_or_default();
            let done = container.image.as_deref() == Some(image)
                && has_flag
                && d.metadata.generation == status.observed_generation
                && status.updated_replicas == Some(2)
                && status.ready_replicas == Some(2)
                && status.replicas == Some(2);
            Ok(done.then_some(()))
        }
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    let running = ready_agent_pods(&pods, 2).await?;
    for pod in &running {
        let container = pod
            .spec
            .as_ref()
            .map(|s| s.containers[0].clone())
            .context("a Pod without spec")?;
        ensure!(
            container.image.as_deref() == Some(image),
            "{} runs {:?}",
            pod.name_any(),
            container.image
        );
        if let Some(flag) = flag {
            let args = container.args.unwrap_or_default();
            ensure!(
                args.windows(2).any(|w| w == flag.as_slice()),
                "{} runs without `{}`: {args:?}",
                pod.name_any(),
                flag.join(" ")
            );
        }
    }
    Ok(running.iter().map(ResourceExt::name_any).collect())
}

/// Waits until one of `pods` holds the Lease (with `seconds` as its duration, when given).
async fn new_leader(client: &Client, pods: &[String], seconds: Option<i32>) -> Result<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    eventually("an agent Pod of the rollout to lead", WAIT, || {
        let leases = leases.clone();
        async move {
            let Some(spec) = leases.get_opt(LEASE).await?.and_then(|l| l.spec) else {
                return Ok(None);
            };
            let duration_ok = seconds.is_none_or(|s| spec.lease_duration_seconds == Some(s));
            Ok(spec
                .holder_identity
                .filter(|h| pods.contains(h) && duration_ok))
        }
    })
    .await
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
async fn poke_source(client: &Client) -> Result<()> {
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

#[test]
fn the_lease_flag_goes_after_leader_elect() {
    // As `plumb install --export` writes it.
    let export = "spec:\n  args:\n  - agent\n  - \"--leader-elect\"\n  - \"--cache-dir\"\n";
    assert_eq!(
        with_lease_flag(export).unwrap(),
        "spec:\n  args:\n  - agent\n  - \"--leader-elect\"\n  - \"--lease-duration\"\n  - \"20s\"\n  - \"--cache-dir\"\n"
    );
}
