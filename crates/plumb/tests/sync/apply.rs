//! What `plumb sync` applies: creates, updates and prunes, CRDs with their resources,
//! Kustomize overlays, Git work trees, namespaces first, many objects of one kind, health.

use super::*;

#[tokio::test]
async fn create_update_prune() {
    let (client, ns, dir) = setup("cup").await;
    let d = dir.path();
    write(d, "a.yaml", &configmap("a", "1"));
    write(
        d,
        "b.yaml",
        &format!("{}---\n{}", configmap("b", "1"), deployment("web", 1, "")),
    );

    let (out, report) = sync_json(d, "app", ns.name(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(action_of(&report, "ConfigMap/a"), "created");
    assert_eq!(action_of(&report, "Deployment/web"), "created");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    let a = cms.get("a").await.unwrap();
    assert_eq!(a.labels()["plumb.dev/sync-name"], "app");
    assert_eq!(a.labels()["plumb.dev/sync-namespace"], ns.name());

    // Update one object, remove another: with --prune it goes, the rest is unchanged.
    write(d, "a.yaml", &configmap("a", "2"));
    write(d, "b.yaml", &deployment("web", 1, ""));
    let (out, report) = sync_json(d, "app", ns.name(), &["--prune"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(action_of(&report, "ConfigMap/a"), "configured");
    assert_eq!(action_of(&report, "ConfigMap/b"), "pruned");
    assert_eq!(action_of(&report, "Deployment/web"), "unchanged");
    assert_eq!(cms.get("a").await.unwrap().data.unwrap()["value"], "2");
    assert!(
        cms.get_opt("b").await.unwrap().is_none(),
        "b must be pruned"
    );

    // A no-op sync writes nothing, not even its inventory: resourceVersions stay as they were.
    let before = cms.get("a").await.unwrap().resource_version();
    let inventory_before = cms
        .get("plumb-inventory-app")
        .await
        .unwrap()
        .resource_version();
    let (out, report) = sync_json(d, "app", ns.name(), &["--prune"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(report["summary"]["unchanged"], 2, "{report:#}");
    assert_eq!(cms.get("a").await.unwrap().resource_version(), before);
    assert_eq!(
        cms.get("plumb-inventory-app")
            .await
            .unwrap()
            .resource_version(),
        inventory_before
    );
}

#[tokio::test]
async fn crd_and_its_custom_resources_in_one_sync() {
    let (client, ns, dir) = setup("crd").await;
    let d = dir.path();
    // A unique group per run: CRDs are cluster-scoped.
    let group = format!("{}.plumb.test", ns.name());
    write(
        d,
        "crd.yaml",
        &plumb_testsupport::kube::widget_crd_yaml(&group),
    );
    write(
        d,
        "widget.yaml",
        &format!("apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: 3\n"),
    );
    let (out, report) = sync_json(d, "crd", ns.name(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(action_of(&report, "Widget/w1"), "created", "{report:#}");
    let ar = ApiResource {
        group: group.clone(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns.name(), &ar);
    assert_eq!(widgets.get("w1").await.unwrap().data["spec"]["size"], 3);

    // Clean up the cluster-scoped CRD.
    let (out, _) = sync_json(
        tempfile::tempdir().unwrap().path(),
        "crd",
        ns.name(),
        &["--prune", "--allow-empty"],
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test]
async fn kustomize_overlay() {
    let (client, ns, dir) = setup("kust").await;
    let d = dir.path();
    write(d, "base/kustomization.yaml", "resources:\n- cm.yaml\n");
    write(d, "base/cm.yaml", &configmap("settings", "base"));
    write(
        d,
        "overlay/kustomization.yaml",
        "resources:\n- ../base\nnamePrefix: prod-\ncommonLabels:\n  env: prod\n",
    );
    // Rendering alone shows the overlay's result.
    let root = d.to_str().unwrap();
    let out = plumb(&[
        "render",
        d.join("overlay").to_str().unwrap(),
        "--root",
        root,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("name: prod-settings"));

    let out = plumb(&[
        "sync",
        d.join("overlay").to_str().unwrap(),
        "--root",
        root,
        "--name",
        "k",
        "-n",
        ns.name(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let cm = Api::<ConfigMap>::namespaced(client, ns.name())
        .get("prod-settings")
        .await
        .unwrap();
    assert_eq!(cm.labels()["env"], "prod");
}

#[tokio::test]
async fn a_git_work_tree_is_the_default_root_of_render_diff_and_sync() {
    let (client, ns, dir) = setup("gitroot").await;
    let d = dir.path();
    write(d, "base/kustomization.yaml", "resources:\n- cm.yaml\n");
    write(d, "base/cm.yaml", &configmap("settings", "base"));
    write(
        d,
        "overlays/prod/kustomization.yaml",
        "resources:\n- ../../base\nnamePrefix: prod-\n",
    );
    let overlay = d.join("overlays/prod");
    let overlay = overlay.to_str().unwrap();

    // Outside a Git work tree the directory itself is the root: the base is out of bounds.
    let out = plumb(&["render", overlay]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("../../base")
            && err.contains("no Git work tree holds it")
            && err.contains("--root"),
        "{err}"
    );

    let git = std::process::Command::new("git")
        .args(["init", "-q"])
        .current_dir(d)
        .status()
        .expect("git runs");
    assert!(git.success());
    let out = plumb(&["render", overlay]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("name: prod-settings"));
    let out = plumb(&["diff", overlay, "--name", "g", "-n", ns.name()]);
    assert_eq!(out.status.code(), Some(1), "differences: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("prod-settings"));
    let out = plumb(&["sync", overlay, "--name", "g", "-n", ns.name()]);
    assert!(out.status.success(), "{}", text(&out));
    let cm = Api::<ConfigMap>::namespaced(client, ns.name())
        .get("prod-settings")
        .await
        .unwrap();
    assert_eq!(cm.data.unwrap()["value"], "base");
    let out = plumb(&["diff", overlay, "--name", "g", "-n", ns.name()]);
    assert_eq!(out.status.code(), Some(0), "no differences: {}", text(&out));
}

#[tokio::test]
async fn wait_reports_health_and_names_what_never_becomes_ready() {
    let (client, ns, dir) = setup("wait").await;
    let d = dir.path();
    write(d, "web.yaml", &deployment("web", 2, ""));
    let (out, report) = sync_json(d, "w", ns.name(), &["--wait", "--timeout", "90s"]);
    assert!(out.status.success(), "{}", text(&out));
    let web = change_of(&report, "Deployment/web");
    assert_eq!(web["health"]["status"], "Healthy", "{report:#}");
    let live = Api::<Deployment>::namespaced(client.clone(), ns.name())
        .get("web")
        .await
        .unwrap();
    assert_eq!(live.status.unwrap().available_replicas, Some(2));

    // Pods that no node can take never become ready: --wait fails at the timeout, naming it.
    write(
        d,
        "stuck.yaml",
        &deployment(
            "stuck",
            1,
            "      nodeSelector: {plumb.test/no-such-node: \"true\"}\n",
        ),
    );
    let out = plumb(&[
        "sync",
        d.to_str().unwrap(),
        "--name",
        "w",
        "-n",
        ns.name(),
        "--wait",
        "--timeout",
        "5s",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("timed out") && err.contains("Deployment") && err.contains("stuck"),
        "{err}"
    );
    assert!(
        !err.contains("/web"),
        "healthy objects are not blamed: {err}"
    );
    // While it waits, it says what it waits for and why (not on a terminal: as lines).
    assert!(
        err.contains("waiting for health: 1 of 2 healthy; awaiting:"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "  Deployment.apps/{}/stuck: Progressing: ",
            ns.name()
        )),
        "{err}"
    );
}

#[tokio::test]
async fn namespaces_in_the_sync_are_created_before_their_objects() {
    let (client, ns, dir) = setup("nsfirst").await;
    let d = dir.path();
    let target = format!("{}-app", ns.name());
    write(
        d,
        "all.yaml",
        &format!(
            "{}---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {target}\n",
            configmap("inside", "1").replace(
                "name: inside",
                &format!("name: inside\n  namespace: {target}")
            )
        ),
    );
    let out = plumb(&["sync", d.to_str().unwrap(), "--name", "n", "-n", ns.name()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        Api::<ConfigMap>::namespaced(client.clone(), &target)
            .get_opt("inside")
            .await
            .unwrap()
            .is_some()
    );
    // Clean up the extra namespace through plumb itself.
    let empty = tempfile::tempdir().unwrap();
    let out = plumb(&[
        "sync",
        empty.path().to_str().unwrap(),
        "--name",
        "n",
        "-n",
        ns.name(),
        "--prune",
        "--allow-empty",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let gone = Api::<Namespace>::all(client)
        .get_opt(&target)
        .await
        .unwrap();
    assert!(gone.is_none_or(|n| n.metadata.deletion_timestamp.is_some()));
}

#[tokio::test]
async fn many_objects_of_one_kind_are_compared_correctly() {
    // Enough ConfigMaps in one namespace that the engine reads them with one LIST.
    let (client, ns, dir) = setup("many").await;
    let d = dir.path();
    let docs: Vec<String> = (0..12)
        .map(|i| configmap(&format!("cm-{i}"), "1"))
        .collect();
    write(d, "cms.yaml", &docs.join("---\n"));
    let (out, report) = sync_json(d, "many", ns.name(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(report["summary"]["created"], 12, "{report:#}");

    let (out, report) = sync_json(d, "many", ns.name(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(report["summary"]["unchanged"], 12, "{report:#}");

    let cms: Api<ConfigMap> = Api::namespaced(client, ns.name());
    cms.patch(
        "cm-7",
        &PatchParams::default(),
        &Patch::Merge(json!({ "data": { "value": "edited" } })),
    )
    .await
    .unwrap();
    let (out, report) = sync_json(d, "many", ns.name(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(action_of(&report, "ConfigMap/cm-7"), "configured");
    assert_eq!(report["summary"]["unchanged"], 11, "{report:#}");
}

/// A custom resource that its new CRD refuses fails the sync after the CRD stage; the JSON
/// report names the object and the kind of failure, and the exit code is 1.
#[tokio::test]
async fn a_refused_custom_resource_is_reported_with_its_kind_of_failure() {
    let (_client, ns, dir) = setup("crd-refused").await;
    let d = dir.path();
    let group = format!("{}.plumb.test", ns.name());
    write(
        d,
        "crd.yaml",
        &plumb_testsupport::kube::widget_crd_yaml(&group),
    );
    write(
        d,
        "widget.yaml",
        &format!(
            "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: big\n"
        ),
    );
    let (out, report) = sync_json(d, "crd", ns.name(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let widget = change_of(&report, "Widget/w1");
    assert_eq!(widget["action"], "failed", "{report:#}");
    assert_eq!(widget["failure"], "invalid", "{report:#}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Widget") && err.contains("widget.yaml:1"),
        "{err}"
    );

    let (out, _) = sync_json(
        tempfile::tempdir().unwrap().path(),
        "crd",
        ns.name(),
        &["--prune", "--allow-empty"],
    );
    assert!(out.status.success(), "{}", text(&out));
}
