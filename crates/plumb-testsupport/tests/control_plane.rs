//! Proof that the local control plane is a working Kubernetes: workloads become Available on kwok
//! nodes, namespaces are finalised, and server-side apply reports field-manager conflicts.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::{Condition, await_condition, conditions};
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

#[tokio::test]
async fn deployment_created_through_kube_rs_becomes_available() {
    let client = client().await.unwrap();
    let ns = TestNamespace::create(&client, "deploy").await.unwrap();
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns.name());
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
