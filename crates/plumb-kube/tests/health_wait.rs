//! The health wait against the real API server: it costs no request per object.

use std::time::Duration;

use anyhow::Result;
use plumb_core::{HealthStatus, Inventory, Manifest, SyncId};
use plumb_kube::{Engine, NoProgress, SyncOptions};
use plumb_testsupport::kube::{TestNamespace, recording_client};
use serde_json::json;

fn manifests(ns: &str) -> Vec<Manifest> {
    let mut out = Vec::new();
    for i in 0..3 {
        let name = format!("web-{i}");
        for doc in [
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": name, "namespace": ns}, "data": {"k": "v"}}),
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": name, "namespace": ns},
                   "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": name, "namespace": ns},
                   "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                            "template": {"metadata": {"labels": {"app": name}},
                                         "spec": {"containers": [{"name": "app",
                                                                  "image": "registry.example/app:1"}]}}}}),
        ] {
            out.push(Manifest::from_value(doc, None).expect("a valid manifest"));
        }
    }
    out
}

#[tokio::test]
async fn a_health_wait_makes_no_request_per_object() -> Result<()> {
    let (client, requests) = recording_client(kube::Config::infer().await?)?;
    let ns = TestNamespace::create(&client, "health").await?;
    let engine = Engine::new(client.clone());
    let opts = SyncOptions::new(SyncId::new(ns.name(), "health"));
    let report = engine
        .sync(
            manifests(ns.name()),
            &Inventory::default(),
            &opts,
            &NoProgress,
        )
        .await?;
    assert!(report.failures.is_empty(), "{:?}", report.failures);

    requests.lock().unwrap().clear();
    // The Deployments were just created: their controller and the kwok nodes make them
    // available after the wait has started, which it sees through its watch.
    let verdicts = engine
        .wait_healthy(&report.applied, Duration::from_secs(120))
        .await?;
    assert_eq!(verdicts.len(), 9);
    assert!(
        verdicts
            .iter()
            .all(|(_, v)| v.status == HealthStatus::Healthy),
        "{verdicts:?}"
    );

    let seen = requests.lock().unwrap().clone();
    let path = |r: &str| r.split_whitespace().nth(1).unwrap_or_default().to_owned();
    let per_object: Vec<&String> = seen
        .iter()
        .filter(|r| {
            let p = path(r);
            let p = p.split('?').next().unwrap_or_default();
            ["/configmaps/", "/services/", "/deployments/"]
                .iter()
                .any(|kind| p.contains(kind))
        })
        .collect();
    assert!(
        per_object.is_empty(),
        "requests per object: {per_object:#?}"
    );
    assert!(
        !seen
            .iter()
            .any(|r| r.contains("/configmaps") || r.contains("/services")),
        "kinds healthy once present are not waited for: {seen:#?}"
    );
    let deployments: Vec<&String> = seen.iter().filter(|r| r.contains("/deployments")).collect();
    let lists = deployments
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .count();
    let watches = deployments
        .iter()
        .filter(|r| r.contains("watch=true"))
        .count();
    assert_eq!(lists, 1, "one LIST of the Deployments: {deployments:#?}");
    assert!(
        (1..=2).contains(&watches),
        "a WATCH of the Deployments (again at most once, after a timeout): {deployments:#?}"
    );
    assert!(
        deployments
            .iter()
            .all(|r| r.contains("labelSelector=plumb.dev%2Fsync-name%3Dhealth")),
        "the watch selects the sync's objects: {deployments:#?}"
    );
    Ok(())
}
