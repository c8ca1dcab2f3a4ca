//! The API server's own ceiling for the benchmark's writes: a minimal client that applies the
//! same objects (server-side apply, forced) with high concurrency, with no dry-run and no reads.

use std::time::Instant;

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _, stream};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::Value;

use crate::apps::{app_name, app_yaml};

/// The app objects of `apps` apps, `per_sync` per namespace of `targets`, with their namespace.
pub fn objects(apps: u32, per_sync: u32, targets: &[String]) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for i in 0..apps {
        let ns = &targets[(i / per_sync) as usize];
        let docs: Vec<Value> = serde_saphyr::from_multiple(&app_yaml(&app_name(i), 0))
            .context("parsing the generated app")?;
        for mut doc in docs.into_iter().filter(|d| !d.is_null()) {
            doc["metadata"]["namespace"] = Value::String(ns.clone());
            out.push(doc);
        }
    }
    Ok(out)
}

/// Applies `objects` with `concurrency` requests in flight; seconds until the last is written.
pub async fn apply_all(
    client: &Client,
    objects: Vec<Value>,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    stream::iter(objects)
        .map(|obj| async move {
            let api_version = obj["apiVersion"].as_str().unwrap_or_default();
            let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
            let kind = obj["kind"].as_str().unwrap_or_default();
            let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
            let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar)
                .patch(
                    name,
                    &PatchParams::apply("ceiling").force(),
                    &Patch::Apply(&obj),
                )
                .await
                .with_context(|| format!("applying {kind} {ns}/{name}"))?;
            anyhow::Ok(())
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(start.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_app_object_goes_to_its_syncs_namespace() {
        let targets = vec!["a".to_owned(), "b".to_owned()];
        let objects = objects(4, 2, &targets).expect("parses");
        assert_eq!(objects.len(), 16);
        let in_b: Vec<&str> = objects
            .iter()
            .filter(|o| o["metadata"]["namespace"] == "b")
            .map(|o| o["metadata"]["name"].as_str().expect("named"))
            .collect();
        assert_eq!(in_b.len(), 8);
        assert!(in_b.iter().all(|n| *n == "app-0002" || *n == "app-0003"));
        assert!(objects.iter().any(|o| o["kind"] == "Deployment"));
    }
}
