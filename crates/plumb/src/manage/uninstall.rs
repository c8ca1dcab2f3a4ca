//! `plumb uninstall`: every Sync, GitSource and ChartSource (deleted through the running agent, which
//! prunes or orphans what they applied), then the agent's own objects, then the CRDs.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, Resource, ResourceExt};
use plumb_agent::api::{ChartSource, GitSource, Sync};
use plumb_kube::Cluster as _;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::install::{DEFAULT_NAMESPACE, agent_manifests, crd_manifests};
use crate::cli::{Global, parse_duration};

/// Arguments of `plumb uninstall`.
#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Leave every object the Syncs applied in the cluster, as they are: each Sync is suspended
    /// before it is deleted, so the agent orphans its objects. By default the agent deletes
    /// them (each Sync is set to prune first).
    #[arg(long)]
    pub keep_objects: bool,
    /// Namespace of the agent.
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Keep the CRDs.
    #[arg(long)]
    pub keep_crds: bool,
    /// How long to wait for the agent to finish the Syncs' and GitSources' deletion.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub timeout: Duration,
}

pub async fn run(global: &Global, args: &UninstallArgs) -> Result<ExitCode> {
    let client = plumb_kube::client(global.kubeconfig.as_deref(), global.context.as_deref())
        .await
        .context("cannot build a Kubernetes client (check --kubeconfig, --context, KUBECONFIG)")?;
    let crds_served = Api::<CustomResourceDefinition>::all(client.clone())
        .get_opt("syncs.plumb.dev")
        .await
        .context("reading the Sync CRD")?
        .is_some();
    if crds_served {
        // Syncs first: while the agent runs, their deletion prunes (or orphans) what they
        // applied; then the GitSources they read.
        let spec = if args.keep_objects {
            json!({ "spec": { "suspend": true } })
        } else {
            json!({ "spec": { "suspend": false, "prune": true } })
        };
        delete_all::<Sync>(&client, Some(&spec), args.timeout).await?;
        delete_all::<GitSource>(&client, None, args.timeout).await?;
        // ChartSources carry the agent's finalizer too (it removes their artifacts). A
        // cluster whose CRDs predate them has none to delete.
        let charts_served = Api::<CustomResourceDefinition>::all(client.clone())
            .get_opt("chartsources.plumb.dev")
            .await
            .context("reading the ChartSource CRD")?
            .is_some();
        if charts_served {
            delete_all::<ChartSource>(&client, None, args.timeout).await?;
        }
    }

    let engine = plumb_kube::Engine::new(client.clone());
    let resolver = engine
        .resolver()
        .await
        .context("discovering the cluster's API resources")?;
    let mut agent = agent_manifests(&args.namespace, "unused", false)?;
    // Workloads before their RBAC, the Namespace last.
    agent.reverse();
    for doc in &agent {
        if delete(&engine, &resolver, doc).await? {
            println!("✔ {} deleted", plumb_core::ObjectKey::from_object(doc));
        }
    }
    if !args.keep_crds {
        for crd in &crd_manifests()? {
            if delete(&engine, &resolver, crd).await? {
                let name = crd["metadata"]["name"].as_str().unwrap_or_default();
                println!("✔ CustomResourceDefinition {name} deleted");
            }
        }
    }
    let kept = if args.keep_objects {
        "; the objects the Syncs applied are left in the cluster"
    } else {
        ""
    };
    println!("✔ Plumb uninstalled{kept}");
    Ok(ExitCode::SUCCESS)
}

/// Deletes the object `doc` names (in the background); false when it did not exist or its
/// kind is not served.
async fn delete(
    engine: &plumb_kube::Engine,
    resolver: &plumb_kube::discovery::Resolver,
    doc: &serde_json::Value,
) -> Result<bool> {
    let key = plumb_core::ObjectKey::from_object(doc);
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = plumb_core::split_api_version(api_version);
    let Some(kind) = resolver.resolve_gvk(group, version, &key.kind) else {
        return Ok(false);
    };
    match engine
        .cluster()
        .delete(&kind, key.namespace.as_deref(), &key.name, None)
        .await
    {
        Ok(()) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context(format!("deleting {key}"))),
    }
}

/// Deletes every `K` in every namespace (after a merge patch with `spec`, when given), and waits
/// until the agent has let each go (its finalizer removed), at most `timeout` in all.
async fn delete_all<K>(
    client: &Client,
    spec: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned
        + Send
        + 'static,
{
    let kind = K::kind(&());
    let all: Api<K> = Api::all(client.clone());
    let items = all
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing {kind}s"))?
        .items;
    let mut waits = Vec::new();
    for item in &items {
        let (ns, name) = (item.namespace().unwrap_or_default(), item.name_any());
        let api: Api<K> = Api::namespaced(client.clone(), &ns);
        if let Some(spec) = spec {
            api.patch(&name, &PatchParams::default(), &Patch::Merge(spec))
                .await
                .with_context(|| format!("preparing {kind} {ns}/{name} for its deletion"))?;
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("deleting {kind} {ns}/{name}")));
            }
        }
        let uid = item.uid().unwrap_or_default();
        waits.push(async move {
            let gone = await_condition(api, &name, conditions::is_deleted(&uid)).await;
            (format!("{ns}/{name}"), gone.is_ok())
        });
    }
    let results = tokio::time::timeout(timeout, futures::future::join_all(waits)).await;
    match results {
        Ok(done) if done.iter().all(|(_, ok)| *ok) => {
            if !items.is_empty() {
                println!("✔ {} {kind}(s) deleted", items.len());
            }
            Ok(())
        }
        _ => {
            let left: Vec<String> = all
                .list(&ListParams::default())
                .await
                .map(|l| {
                    l.items
                        .iter()
                        .map(|i| format!("{}/{}", i.namespace().unwrap_or_default(), i.name_any()))
                        .collect()
                })
                .unwrap_or_default();
            bail!(
                "{kind}s still being deleted after {}s: {}; the agent removes their finalizer \
                 plumb.dev/finalizer once it has handled the deletion: is it running? Nothing \
                 else was removed. Their deletion stays pending: an agent that starts later \
                 finishes it as this command asked (pruning or keeping what they applied). \
                 Without an agent: kubectl patch {} NAME --type=merge -p \
                 '{{\"metadata\":{{\"finalizers\":null}}}}', which leaves their objects as they \
                 are",
                timeout.as_secs(),
                left.join(", "),
                kind.to_lowercase()
            )
        }
    }
}
