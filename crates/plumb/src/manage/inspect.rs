//! `plumb history`, `plumb tree`, `plumb events`: what a Sync did, owns, and reported.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use comfy_table::{Table, presets::NOTHING};
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DynamicObject, ListParams};
use kube::{Api, Client};
use plumb_agent::api::{InventoryItem, Sync};
use plumb_core::{HealthVerdict, health, split_api_version};
use serde_json::json;

use super::{Format, NamespaceArg, age, connect, human_duration, ready, short_revision};
use crate::cli::Global;

/// Arguments of `plumb history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Name of the Sync.
    pub name: String,
    #[command(flatten)]
    pub namespace: NamespaceArg,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Arguments of `plumb tree`.
#[derive(Debug, Args)]
pub struct TreeArgs {
    /// Name of the Sync.
    pub name: String,
    #[command(flatten)]
    pub namespace: NamespaceArg,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Arguments of `plumb events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Name of the Sync.
    pub name: String,
    #[command(flatten)]
    pub namespace: NamespaceArg,
}

async fn get_sync(client: &Client, ns: &str, name: &str) -> Result<Sync> {
    Api::<Sync>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .with_context(|| format!("reading Sync {ns}/{name}"))?
        .with_context(|| format!("Sync {ns}/{name} not found"))
}

pub async fn history(global: &Global, args: &HistoryArgs) -> Result<ExitCode> {
    let (client, ns) = connect(global, args.namespace.namespace.as_deref()).await?;
    let sync = get_sync(&client, &ns, &args.name).await?;
    let history = sync.status.map(|s| s.history).unwrap_or_default();
    if args.output != Format::Table {
        let value = serde_json::to_value(&history)?;
        super::write_stdout(&args.output.render(&value)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if history.is_empty() {
        eprintln!("Sync {ns}/{} has no history yet", args.name);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new();
    table.load_style(NOTHING);
    // The hooks each apply ran (phase, wave, object, result), when any did.
    let with_hooks = history.iter().any(|h| !h.hooks.is_empty());
    let mut header = vec![
        "REVISION", "AUTHOR", "SIGNER", "TIME", "RESULT", "CHANGES", "DURATION", "MESSAGE",
    ];
    if with_hooks {
        header.push("HOOKS");
    }
    table.set_header(header);
    for h in history {
        let mut row = vec![
            short_revision(&h.revision),
            h.author.unwrap_or_default(),
            h.signer.unwrap_or_default(),
            h.time,
            h.result,
            h.changes,
            format_millis(h.duration_ms),
            h.message.unwrap_or_default(),
        ];
        if with_hooks {
            row.push(h.hooks.join("\n"));
        }
        table.add_row(row);
    }
    println!("{table}");
    Ok(ExitCode::SUCCESS)
}

fn format_millis(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        human_duration(Duration::from_millis(ms))
    }
}

/// An inventory id split up: `Kind[.group]/[namespace/]name`.
#[derive(Debug, PartialEq, Eq)]
struct ItemRef {
    group: String,
    version: String,
    kind: String,
    namespace: Option<String>,
    name: String,
}

/// Parses an inventory item; `v` is the apiVersion (`apps/v1`) or the bare version (`v1`).
fn parse_item(item: &InventoryItem) -> Option<ItemRef> {
    let (kind_group, rest) = item.id.split_once('/')?;
    let (kind, group) = kind_group.split_once('.').unwrap_or((kind_group, ""));
    let (namespace, name) = match rest.split_once('/') {
        Some((ns, name)) => (Some(ns.to_owned()), name),
        None => (None, rest),
    };
    let version = split_api_version(&item.v).1;
    if kind.is_empty() || name.is_empty() || version.is_empty() {
        return None;
    }
    Some(ItemRef {
        group: group.to_owned(),
        version: version.to_owned(),
        kind: kind.to_owned(),
        namespace,
        name: name.to_owned(),
    })
}

impl ItemRef {
    /// `Kind[.group]/name` (the namespace is the tree's branch).
    fn label(&self) -> String {
        if self.group.is_empty() {
            format!("{}/{}", self.kind, self.name)
        } else {
            format!("{}.{}/{}", self.kind, self.group, self.name)
        }
    }
}

pub async fn tree(global: &Global, args: &TreeArgs) -> Result<ExitCode> {
    let (client, ns) = connect(global, args.namespace.namespace.as_deref()).await?;
    let sync = get_sync(&client, &ns, &args.name).await?;
    let status = sync.status.clone().unwrap_or_default();
    let resolver = plumb_kube::discovery::Resolver::new(client.clone())
        .await
        .context("discovering the cluster's API resources")?;

    // namespace ("" for cluster-scoped) -> (label, verdict)
    let mut groups: BTreeMap<String, Vec<(String, HealthVerdict)>> = BTreeMap::new();
    for item in &status.inventory {
        let Some(r) = parse_item(item) else {
            groups
                .entry(String::new())
                .or_default()
                .push((item.id.clone(), unknown("unreadable inventory id")));
            continue;
        };
        let (verdict, wave) = live_health(&client, &resolver, &r).await;
        // Every owned object is in the main phase; its wave when it has one.
        let label = match wave {
            Some(w) => format!("{} [wave {w}]", r.label()),
            None => r.label(),
        };
        groups
            .entry(r.namespace.clone().unwrap_or_default())
            .or_default()
            .push((label, verdict));
    }

    if args.output != Format::Table {
        let items: Vec<_> = groups
            .iter()
            .flat_map(|(ns, objects)| {
                objects.iter().map(move |(label, v)| {
                    json!({
                        "namespace": ns,
                        "object": label,
                        "health": v.status.to_string(),
                        "reason": v.reason,
                    })
                })
            })
            .collect();
        let hooks = last_hooks(&status);
        let value = json!({ "sync": format!("{ns}/{}", args.name), "objects": items,
            "hooks": hooks });
        super::write_stdout(&args.output.render(&value)?)?;
        return Ok(ExitCode::SUCCESS);
    }

    let ready_text = match ready(&status.conditions) {
        Some(c) => format!("Ready={}", c.status),
        None => "Ready=Unknown".to_owned(),
    };
    let revision = status
        .last_applied_revision
        .as_deref()
        .map(short_revision)
        .unwrap_or_else(|| "no revision applied".to_owned());
    println!("Sync/{ns}/{} ({ready_text}, {revision})", args.name);
    if groups.is_empty() {
        println!("└── (no objects)");
    }
    let count = groups.len();
    for (i, (namespace, objects)) in groups.into_iter().enumerate() {
        let last_group = i + 1 == count;
        let (branch, indent) = if last_group {
            ("└── ", "    ")
        } else {
            ("├── ", "│   ")
        };
        let title = if namespace.is_empty() {
            "(cluster-scoped)".to_owned()
        } else {
            format!("Namespace {namespace}")
        };
        println!("{branch}{title}");
        let width = objects.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        let n = objects.len();
        for (j, (label, v)) in objects.into_iter().enumerate() {
            let leaf = if j + 1 == n {
                "└── "
            } else {
                "├── "
            };
            let reason = if v.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", v.reason)
            };
            println!("{indent}{leaf}{label:<width$}  {}{reason}", v.status);
        }
    }
    // Hook objects are owned by no inventory: the last apply's, from its history entry.
    let hooks = last_hooks(&status);
    if !hooks.is_empty() {
        println!("Hooks of the last apply (phase, wave, object, result):");
        for line in hooks {
            println!("  {line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The hooks the newest history entry ran.
fn last_hooks(status: &plumb_agent::api::SyncStatus) -> Vec<String> {
    status
        .history
        .first()
        .map(|h| h.hooks.clone())
        .unwrap_or_default()
}

/// A verdict for objects whose health could not be read.
fn unknown(reason: &str) -> HealthVerdict {
    HealthVerdict {
        status: plumb_core::HealthStatus::Degraded,
        reason: reason.to_owned(),
    }
}

async fn live_health(
    client: &Client,
    resolver: &plumb_kube::discovery::Resolver,
    r: &ItemRef,
) -> (HealthVerdict, Option<i32>) {
    let Some(resolved) = resolver.resolve_gvk(&r.group, &r.version, &r.kind) else {
        return (HealthVerdict::missing(), None);
    };
    let api: Api<DynamicObject> = match (&r.namespace, resolved.namespaced) {
        (Some(ns), true) => Api::namespaced_with(client.clone(), ns, &resolved.resource),
        _ => Api::all_with(client.clone(), &resolved.resource),
    };
    match api.get_opt(&r.name).await {
        Ok(Some(obj)) => match serde_json::to_value(&obj) {
            Ok(value) => {
                let annotated = [
                    plumb_core::phases::ARGO_WAVE,
                    plumb_core::phases::HELM_WEIGHT,
                ]
                .iter()
                .any(|a| value["metadata"]["annotations"].get(*a).is_some());
                let wave = annotated.then(|| plumb_core::phases::wave_of_object(&value));
                (health(&value), wave)
            }
            Err(e) => (unknown(&format!("cannot read the object: {e}")), None),
        },
        Ok(None) => (HealthVerdict::missing(), None),
        Err(e) => (unknown(&format!("cannot read the object: {e}")), None),
    }
}

pub async fn events(global: &Global, args: &EventsArgs) -> Result<ExitCode> {
    let (client, ns) = connect(global, args.namespace.namespace.as_deref()).await?;
    let sync = get_sync(&client, &ns, &args.name).await?;
    let source_ns = sync
        .spec
        .source_ref
        .namespace
        .clone()
        .unwrap_or_else(|| ns.clone());
    let source_kind = sync
        .spec
        .source_ref
        .kind
        .clone()
        .unwrap_or_else(|| "GitSource".to_owned());
    let mut events = involving(&client, &ns, "Sync", &args.name).await?;
    events.extend(
        involving(
            &client,
            &source_ns,
            &source_kind,
            &sync.spec.source_ref.name,
        )
        .await?,
    );
    events.sort_by_key(|e| event_time(e).map(|t| t.as_nanosecond()));
    if events.is_empty() {
        eprintln!(
            "no events for Sync {ns}/{} or {source_kind} {source_ns}/{} (events expire after an hour by default)",
            args.name, sync.spec.source_ref.name
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new();
    table.load_style(NOTHING);
    table.set_header(["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]);
    for e in events {
        let seen = event_time(&e).map(|t| age(&t)).unwrap_or_default();
        let object = format!(
            "{}/{}",
            e.involved_object.kind.clone().unwrap_or_default(),
            e.involved_object.name.clone().unwrap_or_default()
        );
        let count = e.count.filter(|c| *c > 1).map(|c| format!(" (x{c})"));
        table.add_row([
            seen,
            e.type_.unwrap_or_default(),
            e.reason.unwrap_or_default(),
            object,
            format!(
                "{}{}",
                e.message.unwrap_or_default(),
                count.unwrap_or_default()
            ),
        ]);
    }
    println!("{table}");
    Ok(ExitCode::SUCCESS)
}

async fn involving(client: &Client, ns: &str, kind: &str, name: &str) -> Result<Vec<Event>> {
    let selector = format!("involvedObject.kind={kind},involvedObject.name={name}");
    let list = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default().fields(&selector))
        .await
        .with_context(|| format!("listing the events of {kind} {ns}/{name}"))?;
    // The selector names no API group: keep only Plumb's kinds, not namesakes of other groups.
    Ok(list
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object
                .api_version
                .as_deref()
                .is_none_or(|v| v.starts_with(plumb_agent::api::GROUP))
        })
        .collect())
}

/// The latest time an event was seen.
fn event_time(e: &Event) -> Option<Timestamp> {
    e.series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
        .or_else(|| e.last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, v: &str) -> InventoryItem {
        InventoryItem {
            id: id.to_owned(),
            v: v.to_owned(),
        }
    }

    #[test]
    fn inventory_ids() {
        let r = parse_item(&item("Deployment.apps/web/frontend", "apps/v1")).unwrap();
        assert_eq!(
            r,
            ItemRef {
                group: "apps".into(),
                version: "v1".into(),
                kind: "Deployment".into(),
                namespace: Some("web".into()),
                name: "frontend".into(),
            }
        );
        assert_eq!(r.label(), "Deployment.apps/frontend");
        let ns = parse_item(&item("Namespace/web", "v1")).unwrap();
        assert_eq!((ns.group.as_str(), ns.namespace), ("", None));
        let crb = parse_item(&item("ClusterRole.rbac.authorization.k8s.io/view", "v1")).unwrap();
        assert_eq!(crb.group, "rbac.authorization.k8s.io");
        assert!(parse_item(&item("nonsense", "v1")).is_none());
    }

    #[test]
    fn durations() {
        assert_eq!(format_millis(250), "250ms");
        assert_eq!(format_millis(1500), "1.5s");
        assert_eq!(format_millis(180_000), "3m");
    }
}
