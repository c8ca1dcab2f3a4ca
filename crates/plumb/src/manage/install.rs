//! `plumb install`: the CRDs and the in-cluster agent.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use plumb_core::{Action, Inventory, SyncId};
use plumb_kube::SyncOptions;
use serde_json::Value;

use super::{write_stdout, yaml_documents};
use crate::cli::{Global, parse_duration};

/// The CRDs, generated from the API types (`plumb_agent::api::crds_yaml`).
const CRDS_YAML: &str = include_str!("../../../../deploy/crds.yaml");
/// The agent's Namespace, RBAC, Deployment and Service.
const AGENT_YAML: &str = include_str!("../../../../deploy/agent.yaml");
/// The namespace `deploy/agent.yaml` uses.
pub(super) const DEFAULT_NAMESPACE: &str = "plumb-system";
/// The agent image, without tag.
const IMAGE_REPOSITORY: &str = "ghcr.io/plumb-dev/plumb";
/// The sync unit `plumb install` applies as (it marks nothing as owned).
const INSTALL_SYNC: &str = "plumb-install";
/// The ServiceAccount `--multi-tenant` applies Syncs as when they name none: every namespace
/// has one, and it has no rights until an admin grants them.
pub const MULTI_TENANT_SERVICE_ACCOUNT: &str = "default";

/// Arguments of `plumb install`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Print the manifests as multi-document YAML instead of applying them.
    #[arg(long)]
    pub export: bool,
    /// Only the CRDs (for an agent that runs outside the cluster, e.g. `plumb agent` on a laptop).
    #[arg(long)]
    pub crds_only: bool,
    /// Namespace for the agent.
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Agent image (default: ghcr.io/plumb-dev/plumb at this plumb's version).
    #[arg(long)]
    pub image: Option<String>,
    /// Lock the agent down for tenants: Syncs that name no serviceAccountName are applied as the
    /// `default` ServiceAccount of their namespace (`--default-service-account default`), and
    /// Syncs may not refer to GitSources or Syncs of other namespaces
    /// (`--no-cross-namespace-refs`). See README.md, "Multi-tenant install".
    #[arg(long)]
    pub multi_tenant: bool,
    /// Validate everything with a server-side dry-run; write nothing. The namespace must exist
    /// (the API server checks namespaced objects against it).
    #[arg(long, conflicts_with = "export")]
    pub dry_run: bool,
    /// How long to wait for the CRDs to become Established.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub timeout: Duration,
}

pub async fn run(global: &Global, args: &InstallArgs) -> Result<ExitCode> {
    install(global, args, &[]).await
}

/// Installs (or exports) the CRDs, the agent unless `crds_only`, then `extra` objects (which
/// may be GitSources and Syncs: they are applied once the CRDs are Established).
pub async fn install(global: &Global, args: &InstallArgs, extra: &[Value]) -> Result<ExitCode> {
    let crds = crd_manifests()?;
    let agent = if args.crds_only {
        Vec::new()
    } else {
        let image = args
            .image
            .clone()
            .unwrap_or_else(|| format!("{IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION")));
        agent_manifests(&args.namespace, &image, args.multi_tenant)?
    };
    if args.export {
        write_stdout(&yaml_documents(crds.iter().chain(&agent).chain(extra)))?;
        return Ok(ExitCode::SUCCESS);
    }

    let client = plumb_kube::client(global.kubeconfig.as_deref(), global.context.as_deref())
        .await
        .context("cannot build a Kubernetes client (check --kubeconfig, --context, KUBECONFIG)")?;
    let crd_names: Vec<String> = crds
        .iter()
        .filter_map(|c| c["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    let desired = crds
        .into_iter()
        .chain(agent.iter().cloned())
        .chain(extra.iter().cloned())
        .map(|v| plumb_core::Manifest::from_value(v, None))
        .collect::<Result<Vec<_>, _>>()
        .context("a built-in manifest is not a Kubernetes object")?;
    // Through the engine like any sync: a server-side dry-run of everything first, Namespace
    // and CRDs first, custom resources once their CRDs are Established.
    // It owns nothing: no ownership labels, so that a Sync (`plumb bootstrap`'s) may own
    // these objects from Git later, and nothing to prune.
    let mut opts = SyncOptions::new(SyncId::new(&args.namespace, INSTALL_SYNC));
    opts.own = false;
    opts.force_conflicts = true;
    opts.dry_run = args.dry_run;
    opts.crd_timeout = args.timeout;
    let engine = plumb_kube::Engine::new(client.clone());
    let report = engine
        .sync(
            desired,
            &Inventory::default(),
            &opts,
            &plumb_kube::NoProgress,
        )
        .await
        .context("installing")?;
    let suffix = if args.dry_run { " (dry run)" } else { "" };
    for c in &report.changes.entries {
        if c.action != Action::Failed {
            println!("✔ {} applied{suffix} ({})", c.key, c.action);
        }
    }
    if let Some(failure) = report.error() {
        return Err(anyhow::Error::new(failure).context("installing"));
    }
    if args.dry_run {
        println!("✔ the API server accepts every object (dry run: nothing was written)");
        return Ok(ExitCode::SUCCESS);
    }
    let names: Vec<&str> = crd_names.iter().map(String::as_str).collect();
    plumb_kube::await_crds_established(&client, &names, args.timeout)
        .await
        .context("check `kubectl get crd -o yaml` for the CRDs' conditions")?;
    for name in &names {
        println!("✔ CustomResourceDefinition {name} established");
    }
    if !agent.is_empty() {
        println!(
            "✔ agent installed in namespace {} (check: kubectl -n {} get deployment plumb-agent)",
            args.namespace, args.namespace
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The built-in CRDs.
pub(super) fn crd_manifests() -> Result<Vec<Value>> {
    parse_documents(CRDS_YAML).context("parsing the built-in CRDs")
}

/// Parses multi-document YAML, skipping empty documents.
fn parse_documents(text: &str) -> Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text)?;
    Ok(docs.into_iter().filter(Value::is_object).collect())
}

/// The agent's manifests, moved into `namespace` and running `image`; with the lockdown flags
/// when `multi_tenant`.
pub(super) fn agent_manifests(
    namespace: &str,
    image: &str,
    multi_tenant: bool,
) -> Result<Vec<Value>> {
    let mut docs = parse_documents(AGENT_YAML).context("parsing the built-in agent manifests")?;
    for doc in &mut docs {
        relocate(doc, namespace);
        if doc["kind"] == "Deployment" {
            let containers = doc
                .pointer_mut("/spec/template/spec/containers")
                .and_then(Value::as_array_mut)
                .context("the built-in Deployment has no containers")?;
            for c in containers {
                c["image"] = Value::from(image);
                if multi_tenant {
                    let args = c
                        .get_mut("args")
                        .and_then(Value::as_array_mut)
                        .context("the built-in agent container has no args")?;
                    args.extend(
                        [
                            "--default-service-account",
                            MULTI_TENANT_SERVICE_ACCOUNT,
                            "--no-cross-namespace-refs",
                        ]
                        .map(Value::from),
                    );
                }
            }
        }
    }
    Ok(docs)
}

/// Moves an object of `deploy/agent.yaml` from `plumb-system` to `namespace`.
fn relocate(doc: &mut Value, namespace: &str) {
    if doc["kind"] == "Namespace" {
        doc["metadata"]["name"] = Value::from(namespace);
    }
    if doc["metadata"].get("namespace").is_some() {
        doc["metadata"]["namespace"] = Value::from(namespace);
    }
    if let Some(subjects) = doc.get_mut("subjects").and_then(Value::as_array_mut) {
        for s in subjects {
            if s.get("namespace").is_some() {
                s["namespace"] = Value::from(namespace);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_yaml_image_is_this_version() {
        let docs = parse_documents(AGENT_YAML).unwrap();
        let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
        assert_eq!(
            deployment["spec"]["template"]["spec"]["containers"][0]["image"],
            format!("{IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION")),
            "deploy/agent.yaml names another version than the crate: update its image tag"
        );
    }

    #[test]
    fn relocation_moves_every_namespaced_reference() {
        let docs = agent_manifests("elsewhere", "example/plumb:dev", false).unwrap();
        let text = serde_json::to_string(&docs).unwrap();
        assert!(!text.contains(DEFAULT_NAMESPACE), "{text}");
        assert!(text.contains("example/plumb:dev"));
        let ns = docs.iter().find(|d| d["kind"] == "Namespace").unwrap();
        assert_eq!(ns["metadata"]["name"], "elsewhere");
    }

    #[test]
    fn crds_yaml_is_the_generated_one() {
        assert_eq!(CRDS_YAML, plumb_agent::api::crds_yaml());
    }
}
