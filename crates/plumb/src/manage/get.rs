//! `plumb get sources|charts|syncs`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::NOTHING};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::ListParams;
use kube::{Api, Resource, ResourceExt};
use plumb_agent::api::{ChartSource, GitSource, Sync};
use serde::Serialize;

use super::{Format, age, connect, print_objects, ready, ready_status, short_revision};
use crate::cli::Global;

/// What to list.
#[derive(Debug, Subcommand)]
pub enum GetCommand {
    /// GitSources: READY, REVISION (the fetched commit), SUSPENDED, AGE, MESSAGE.
    #[command(visible_alias = "source", alias = "gitsources", alias = "gitsource")]
    Sources(GetArgs),
    /// ChartSources: READY, REVISION (`<version>@sha256:<digest>` fetched), SUSPENDED, AGE,
    /// MESSAGE.
    #[command(alias = "chart", alias = "chartsources", alias = "chartsource")]
    Charts(GetArgs),
    /// Syncs: READY, REVISION (last applied), SUSPENDED, AGE, MESSAGE.
    #[command(visible_alias = "sync")]
    Syncs(GetArgs),
}

/// Arguments of `plumb get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// Only this one.
    pub name: Option<String>,
    /// Namespace to list (default: the kubeconfig context's namespace, else `default`).
    #[arg(short, long, conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// One table row.
struct Row {
    namespace: String,
    name: String,
    ready: String,
    revision: String,
    suspended: bool,
    age: String,
    message: String,
}

impl Row {
    fn new<K: Resource>(
        obj: &K,
        conditions: &[Condition],
        revision: Option<&str>,
        suspended: bool,
    ) -> Self {
        Row {
            namespace: obj.namespace().unwrap_or_default(),
            name: obj.name_any(),
            ready: ready_status(conditions).to_owned(),
            revision: revision.map(short_revision).unwrap_or_default(),
            suspended,
            age: obj
                .meta()
                .creation_timestamp
                .as_ref()
                .map(|t| age(&t.0))
                .unwrap_or_default(),
            message: ready(conditions)
                .map(|c| c.message.clone())
                .unwrap_or_default(),
        }
    }
}

pub async fn run(global: &Global, command: GetCommand) -> Result<ExitCode> {
    match command {
        GetCommand::Sources(args) => {
            let items: Vec<GitSource> = list(global, &args).await?;
            let rows = items
                .iter()
                .map(|s| {
                    let status = s.status.clone().unwrap_or_default();
                    let revision = status.artifact.as_ref().map(|a| a.revision.as_str());
                    Row::new(s, &status.conditions, revision, s.spec.suspend)
                })
                .collect();
            show(&args, items, rows)
        }
        GetCommand::Charts(args) => {
            let items: Vec<ChartSource> = list(global, &args).await?;
            let rows = items
                .iter()
                .map(|s| {
                    let status = s.status.clone().unwrap_or_default();
                    let revision = status.artifact.as_ref().map(|a| a.revision.as_str());
                    Row::new(s, &status.conditions, revision, s.spec.suspend)
                })
                .collect();
            show(&args, items, rows)
        }
        GetCommand::Syncs(args) => {
            let items: Vec<Sync> = list(global, &args).await?;
            let rows = items
                .iter()
                .map(|s| {
                    let status = s.status.clone().unwrap_or_default();
                    let revision = status.last_applied_revision.as_deref();
                    Row::new(s, &status.conditions, revision, s.spec.suspend)
                })
                .collect();
            show(&args, items, rows)
        }
    }
}

async fn list<K>(global: &Global, args: &GetArgs) -> Result<Vec<K>>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let (client, ns) = connect(global, args.namespace.as_deref()).await?;
    let api: Api<K> = if args.all_namespaces {
        Api::all(client)
    } else {
        Api::namespaced(client, &ns)
    };
    let kind = K::kind(&());
    let mut items = match &args.name {
        Some(name) => {
            let obj = api
                .get_opt(name)
                .await
                .with_context(|| format!("reading {kind} {name}"))?;
            obj.into_iter().filter(|o| o.name_any() == *name).collect()
        }
        None => {
            api.list(&ListParams::default())
                .await
                .with_context(|| {
                    format!(
                        "listing {kind}s (are the CRDs installed? run `plumb install --crds-only`)"
                    )
                })?
                .items
        }
    };
    items.sort_by_key(|o| (o.namespace(), o.name_any()));
    if items.is_empty() {
        let place = if args.all_namespaces {
            "any namespace".to_owned()
        } else {
            format!("namespace {ns}")
        };
        eprintln!("no {kind} found in {place}");
    }
    Ok(items)
}

fn show<K: Serialize>(args: &GetArgs, items: Vec<K>, rows: Vec<Row>) -> Result<ExitCode> {
    if args.output != Format::Table {
        let values = items
            .iter()
            .map(|item| {
                let mut value = serde_json::to_value(item)?;
                // Noise for readers, as in `kubectl get -o yaml`.
                if let Some(meta) = value["metadata"].as_object_mut() {
                    meta.remove("managedFields");
                }
                Ok::<_, serde_json::Error>(value)
            })
            .collect::<Result<Vec<_>, _>>()?;
        print_objects(args.output, values)?;
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new();
    table.load_style(NOTHING);
    let mut header = Vec::new();
    if args.all_namespaces {
        header.push("NAMESPACE");
    }
    header.extend(["NAME", "READY", "REVISION", "SUSPENDED", "AGE", "MESSAGE"]);
    table.set_header(header);
    for r in rows {
        let mut cells = Vec::new();
        if args.all_namespaces {
            cells.push(r.namespace);
        }
        cells.extend([
            r.name,
            r.ready,
            r.revision,
            r.suspended.to_string(),
            r.age,
            r.message,
        ]);
        table.add_row(cells);
    }
    println!("{table}");
    Ok(ExitCode::SUCCESS)
}
