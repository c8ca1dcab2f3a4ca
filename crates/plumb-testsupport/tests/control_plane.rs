//! Proof that the local control plane is a working Kubernetes: workloads become Available on kwok
//! nodes and stay so, namespaces are finalised, and server-side apply reports field-manager
//! conflicts.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::{Condition, await_condition, conditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use plumb_testsupport::kube::{TestNamespace, client};
use serde_json::json;

fn deployment_available() -> impl Condition<Deployment> {
    |d: Option<&Deployment>| {
        d.and_then(|d| d.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Available" && c.status == "True")
            })
    }
}

/// Creates Deployment `web` with 2 replicas through `api`.
async fn create_web(api: &Api<Deployment>) {
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "web", "image": "nginx:1.27" }] }
            }
        }
    }))
    .unwrap();
    api.create(&PostParams::default(), &deployment)
        .await
        .unwrap();
}

#[tokio::test]
async fn deployment_created_through_kube_rs_becomes_available() {
    let client = client().await.unwrap();
    let ns = TestNamespace::create(&client, "deploy").await.unwrap();
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns.name());
    create_web(&api).await;

    let available = tokio::time::timeout(
        Duration::from_secs(90),
        await_condition(api.clone(), "web", deployment_available()),
    )
    .await
    .expect("Deployment did not become Available within 90s (scheduler, kwok, controller-manager)")
    .unwrap()
    .unwrap();
    let status = available.status.unwrap();
    assert_eq!(status.available_replicas, Some(2));
    assert_eq!(status.ready_replicas, Some(2));
}

/// Why `node` is not fit to run Pods, if it is not.
fn node_problem(node: &Node) -> Option<String> {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    match ready {
        Some(c) if c.status == "True" => None,
        Some(c) => Some(format!(
            "node {} is not Ready: Ready={} ({}): {}",
            node.name_any(),
            c.status,
            c.reason.as_deref().unwrap_or_default(),
            c.message.as_deref().unwrap_or_default()
        )),
        None => Some(format!("node {} has no Ready condition", node.name_any())),
    }
}

/// Why `d` (2 replicas) is not fully available, if it is not.
fn deployment_problem(d: &Deployment) -> Option<String> {
    let status = d.status.as_ref();
    let available = status.and_then(|s| s.available_replicas).unwrap_or(0);
    let condition = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Available"));
    match condition {
        Some(c) if c.status == "True" && available == 2 => None,
        _ => Some(format!(
            "Deployment {} has {available} of 2 replicas available (Available condition: {})",
            d.name_any(),
            condition.map_or("none".to_owned(), |c| format!(
                "{} ({}): {}",
                c.status,
                c.reason.as_deref().unwrap_or_default(),
                c.message.as_deref().unwrap_or_default()
            ))
        )),
    }
}

/// The control plane stays healthy, not only right after `up`: nodes stay Ready and a
/// Deployment stays Available for three minutes, more than three node-monitor grace periods of
/// the node lifecycle controller. A node whose heartbeats lapse is marked NotReady, and its
/// Pods' Ready condition False, for good (on kwok nothing sets it back), so every Deployment
/// older than a heartbeat gap would report nothing available. Observed with watches: the first
/// bad event fails the test, at the moment it happens.
#[tokio::test]
async fn nodes_stay_ready_and_a_deployment_stays_available_for_three_minutes() {
    const OBSERVE: Duration = Duration::from_secs(180);
    let client = client().await.unwrap();
    let ns = TestNamespace::create(&client, "steady").await.unwrap();
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns.name());
    create_web(&api).await;
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(api.clone(), "web", deployment_available()),
    )
    .await
    .expect("Deployment did not become Available within 60s")
    .unwrap();

    enum Seen {
        Node(Box<Node>),
        Deployment(Box<Deployment>),
    }
    let nodes = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .map(|e| e.map(|n| Seen::Node(Box::new(n))))
        .boxed();
    let deployments = watcher(api, watcher::Config::default().fields("metadata.name=web"))
        .default_backoff()
        .applied_objects()
        .map(|e| e.map(|d| Seen::Deployment(Box::new(d))))
        .boxed();
    let mut events = futures::stream::select(nodes, deployments);
    let started = tokio::time::Instant::now();
    let mut nodes_seen = BTreeSet::new();
    let mut deployment_seen = false;
    let observed = tokio::time::timeout(OBSERVE, async {
        while let Some(event) = events.next().await {
            let problem = match event {
                Ok(Seen::Node(node)) => {
                    nodes_seen.insert(node.name_any());
                    node_problem(&node)
                }
                Ok(Seen::Deployment(d)) => {
                    deployment_seen = true;
                    deployment_problem(&d)
                }
                // The watcher lists again after an error: every object is seen again.
                Err(e) => {
                    eprintln!("watch error (retrying): {e}");
                    None
                }
            };
            if let Some(problem) = problem {
                return problem;
            }
        }
        "the watch ended".to_owned()
    })
    .await;
    if let Ok(problem) = observed {
        panic!(
            "after {}s of {}s: {problem}\nThe heartbeats of kwok's nodes must reach the node \
             lifecycle controller well inside its --node-monitor-grace-period (scripts/testenv: \
             kwok --node-lease-duration-seconds; a control plane started by an older \
             scripts/testenv lacks it: restart it with `scripts/testenv down && scripts/testenv \
             up`)",
            started.elapsed().as_secs(),
            OBSERVE.as_secs()
        );
    }
    assert!(!nodes_seen.is_empty(), "the watch showed no nodes at all");
    assert!(deployment_seen, "the watch never showed the Deployment");
}

#[tokio::test]
async fn deleting_a_namespace_completes() {
    let client = client().await.unwrap();
    let ns = TestNamespace::create(&client, "nsdel").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    let cm: ConfigMap =
        serde_json::from_value(json!({ "metadata": { "name": "content" }, "data": { "k": "v" } }))
            .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let live = namespaces.get(ns.name()).await.unwrap();
    namespaces
        .delete(ns.name(), &Default::default())
        .await
        .unwrap();
    // The namespace controller must empty it and remove the `kubernetes` finalizer.
    tokio::time::timeout(
        Duration::from_secs(90),
        await_condition(
            namespaces,
            ns.name(),
            conditions::is_deleted(&live.uid().unwrap()),
        ),
    )
    .await
    .expect("namespace was not deleted within 90s (namespace controller)")
    .unwrap();
}

#[tokio::test]
async fn server_side_apply_conflict_between_two_managers_is_reported() {
    let client = client().await.unwrap();
    let ns = TestNamespace::create(&client, "ssa").await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    let body = |value: &str| {
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "shared" },
            "data": { "owner": value }
        })
    };
    api.patch(
        "shared",
        &PatchParams::apply("alice"),
        &Patch::Apply(body("alice")),
    )
    .await
    .unwrap();

    let err = api
        .patch(
            "shared",
            &PatchParams::apply("bob"),
            &Patch::Apply(body("bob")),
        )
        .await
        .expect_err("a second manager changing an owned field must conflict");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 409, "{status:?}");
            assert_eq!(status.reason, "Conflict");
            assert!(status.message.contains("alice"), "{}", status.message);
        }
        other => panic!("expected an API conflict, got {other}"),
    }
    assert_eq!(
        api.get("shared").await.unwrap().data.unwrap()["owner"],
        "alice"
    );

    // Forcing takes the field over.
    api.patch(
        "shared",
        &PatchParams::apply("bob").force(),
        &Patch::Apply(body("bob")),
    )
    .await
    .unwrap();
    assert_eq!(
        api.get("shared").await.unwrap().data.unwrap()["owner"],
        "bob"
    );
}
