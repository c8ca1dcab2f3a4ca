//! End-to-end tests of `plumb sync` and `plumb diff` against the real control plane.
//! Each test works in namespaces of its own.

use std::path::Path;
use std::process::Output;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use kube::{Api, Client, ResourceExt};
use plumb_testsupport::kube::{TestNamespace, client};
use serde_json::{Value, json};
use tempfile::TempDir;

/// Runs the plumb binary.
fn plumb(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("plumb runs")
}

fn text(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn write(dir: &Path, name: &str, content: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

fn sync_json(dir: &Path, name: &str, ns: &str, extra: &[&str]) -> (Output, Value) {
    let mut args = vec![
        "sync",
        dir.to_str().unwrap(),
        "--name",
        name,
        "-n",
        ns,
        "-o",
        "json",
    ];
    args.extend_from_slice(extra);
    let out = plumb(&args);
    let value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, value)
}

/// The change reported for the object `Kind/name`.
fn change_of(report: &Value, object: &str) -> Value {
    let (kind, name) = object.split_once('/').unwrap();
    report["changes"]
        .as_array()
        .unwrap_or_else(|| panic!("no changes in {report}"))
        .iter()
        .find(|c| c["object"]["kind"] == kind && c["object"]["name"] == name)
        .unwrap_or_else(|| panic!("{object} not in {report:#}"))
        .clone()
}

/// The action reported for the object `Kind/name`.
fn action_of(report: &Value, object: &str) -> String {
    change_of(report, object)["action"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn configmap(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: \"{value}\"\n"
    )
}

fn deployment(name: &str, replicas: u32, extra_pod_spec: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
{extra_pod_spec}      containers:
      - name: app
        image: nginx:1.27
"
    )
}

async fn setup(prefix: &str) -> (Client, TestNamespace, TempDir) {
    let client = client().await.unwrap();
    let ns = TestNamespace::create(&client, prefix).await.unwrap();
    (client, ns, tempfile::tempdir().unwrap())
}

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
async fn manual_edit_shows_in_diff_and_sync_restores_it() {
    let (client, ns, dir) = setup("drift").await;
    let d = dir.path();
    write(d, "cm.yaml", &configmap("conf", "from-git"));
    write(
        d,
        "secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  password: hunter2-from-git\n",
    );
    let out = plumb(&[
        "sync",
        d.to_str().unwrap(),
        "--name",
        "drift",
        "-n",
        ns.name(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let diff = plumb(&[
        "diff",
        d.to_str().unwrap(),
        "--name",
        "drift",
        "-n",
        ns.name(),
    ]);
    assert_eq!(diff.status.code(), Some(0), "no drift yet: {}", text(&diff));

    // Someone edits a managed field by hand.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    cms.patch(
        "conf",
        &PatchParams::default(),
        &Patch::Merge(json!({ "data": { "value": "edited-by-hand" } })),
    )
    .await
    .unwrap();
    let diff = plumb(&[
        "diff",
        d.to_str().unwrap(),
        "--name",
        "drift",
        "-n",
        ns.name(),
    ]);
    assert_eq!(diff.status.code(), Some(1), "{}", text(&diff));
    let shown = String::from_utf8_lossy(&diff.stdout);
    assert!(shown.contains("-  value: edited-by-hand"), "{shown}");
    assert!(shown.contains("+  value: from-git"), "{shown}");
    assert!(
        !shown.contains("hunter2"),
        "Secret values must never be shown: {shown}"
    );

    let (out, report) = sync_json(d, "drift", ns.name(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(action_of(&report, "ConfigMap/conf"), "configured");
    assert_eq!(
        cms.get("conf").await.unwrap().data.unwrap()["value"],
        "from-git"
    );
}

#[tokio::test]
async fn a_foreign_object_of_the_same_name_is_never_pruned() {
    let (client, ns, dir) = setup("foreign").await;
    let d = dir.path();
    write(
        d,
        "cm.yaml",
        &format!(
            "{}---\n{}",
            configmap("mine", "1"),
            configmap("shared", "1")
        ),
    );
    let out = plumb(&[
        "sync",
        d.to_str().unwrap(),
        "--name",
        "owner",
        "-n",
        ns.name(),
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // Someone else replaces "shared" with an object of their own (no plumb labels).
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    cms.delete("shared", &Default::default()).await.unwrap();
    let foreign: ConfigMap = serde_json::from_value(
        json!({ "metadata": { "name": "shared" }, "data": { "v": "theirs" } }),
    )
    .unwrap();
    cms.create(&PostParams::default(), &foreign).await.unwrap();

    write(d, "cm.yaml", &configmap("mine", "1"));
    let (out, report) = sync_json(d, "owner", ns.name(), &["--prune"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        action_of(&report, "ConfigMap/shared"),
        "skipped",
        "{report:#}"
    );
    assert_eq!(
        cms.get("shared").await.unwrap().data.unwrap()["v"],
        "theirs"
    );
}

#[tokio::test]
async fn invalid_manifests_fail_naming_the_culprit_and_change_nothing() {
    let (client, ns, dir) = setup("invalid").await;
    let d = dir.path();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());

    // Bad YAML: the file and line are named, nothing is applied.
    write(d, "good.yaml", &configmap("good", "1"));
    write(
        d,
        "bad.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [unclosed\n",
    );
    let out = plumb(&[
        "sync",
        d.to_str().unwrap(),
        "--name",
        "inv",
        "-n",
        ns.name(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(
        cms.get_opt("good").await.unwrap().is_none(),
        "nothing may be applied"
    );

    // Unknown kind: the object and file are named.
    write(
        d,
        "bad.yaml",
        "apiVersion: nope.example.com/v1\nkind: Gizmo\nmetadata:\n  name: g\n",
    );
    let out = plumb(&[
        "sync",
        d.to_str().unwrap(),
        "--name",
        "inv",
        "-n",
        ns.name(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Gizmo") && err.contains("bad.yaml"), "{err}");
    assert!(
        cms.get_opt("good").await.unwrap().is_none(),
        "nothing may be applied"
    );

    // Schema error: the server-side dry-run refuses it, naming the object; nothing is written.
    write(
        d,
        "bad.yaml",
        &deployment("broken", 1, "").replace("replicas: 1", "replicas: many"),
    );
    let out = plumb(&[
        "sync",
        d.to_str().unwrap(),
        "--name",
        "inv",
        "-n",
        ns.name(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("dry-run") && err.contains("Deployment") && err.contains("broken"),
        "{err}"
    );
    assert!(
        cms.get_opt("good").await.unwrap().is_none(),
        "nothing may be applied"
    );
}

#[tokio::test]
async fn an_empty_directory_prunes_nothing_without_allow_empty() {
    let (client, ns, dir) = setup("empty").await;
    let d = dir.path();
    write(d, "cm.yaml", &configmap("keep", "1"));
    let out = plumb(&["sync", d.to_str().unwrap(), "--name", "e", "-n", ns.name()]);
    assert!(out.status.success(), "{}", text(&out));

    std::fs::remove_file(d.join("cm.yaml")).unwrap();
    let out = plumb(&[
        "sync",
        d.to_str().unwrap(),
        "--name",
        "e",
        "-n",
        ns.name(),
        "--prune",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("allowEmpty")
            || String::from_utf8_lossy(&out.stderr).contains("allow-empty"),
        "{}",
        text(&out)
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    assert!(cms.get_opt("keep").await.unwrap().is_some());

    let out = plumb(&[
        "sync",
        d.to_str().unwrap(),
        "--name",
        "e",
        "-n",
        ns.name(),
        "--prune",
        "--allow-empty",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(cms.get_opt("keep").await.unwrap().is_none());
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
async fn conflicts_fail_unless_forced_and_dry_run_writes_nothing() {
    let (client, ns, dir) = setup("conflict").await;
    let d = dir.path();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    // Another manager owns the field first.
    cms.patch(
        "owned",
        &PatchParams::apply("someone-else"),
        &Patch::Apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "owned" }, "data": { "value": "theirs" }
        })),
    )
    .await
    .unwrap();
    write(d, "cm.yaml", &configmap("owned", "ours"));

    let out = plumb(&[
        "sync",
        d.to_str().unwrap(),
        "--name",
        "c",
        "-n",
        ns.name(),
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("conflict")
            && err.contains("someone-else")
            && err.contains("--force-conflicts"),
        "{err}"
    );

    let out = plumb(&["sync", d.to_str().unwrap(), "--name", "c", "-n", ns.name()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        cms.get("owned").await.unwrap().data.unwrap()["value"],
        "theirs"
    );

    let (out, report) = sync_json(d, "c", ns.name(), &["--force-conflicts", "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(action_of(&report, "ConfigMap/owned"), "configured");
    assert_eq!(
        cms.get("owned").await.unwrap().data.unwrap()["value"],
        "theirs",
        "dry run wrote"
    );

    let out = plumb(&[
        "sync",
        d.to_str().unwrap(),
        "--name",
        "c",
        "-n",
        ns.name(),
        "--force-conflicts",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        cms.get("owned").await.unwrap().data.unwrap()["value"],
        "ours"
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

#[tokio::test]
async fn objects_another_sync_owns_are_refused_unless_adopted() {
    let (client, ns, dir) = setup("owned").await;
    let d = dir.path();
    write(
        d,
        "cm.yaml",
        &format!("{}---\n{}", configmap("a", "1"), configmap("b", "1")),
    );
    let (out, _) = sync_json(d, "first", ns.name(), &[]);
    assert!(out.status.success(), "{}", text(&out));

    // A second sync unit with the same manifests: refused, naming the owner; nothing written.
    write(
        d,
        "cm.yaml",
        &format!("{}---\n{}", configmap("a", "2"), configmap("b", "2")),
    );
    let out = plumb(&[
        "sync",
        d.to_str().unwrap(),
        "--name",
        "second",
        "-n",
        ns.name(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "ConfigMap/{}/a (owned by sync {}/first)",
            ns.name(),
            ns.name()
        )) && stderr.contains("--adopt"),
        "{}",
        text(&out)
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    let a = cms.get("a").await.unwrap();
    assert_eq!(a.data.as_ref().unwrap()["value"], "1");
    assert_eq!(a.labels()["plumb.dev/sync-name"], "first");

    // Adopted explicitly: the second unit takes them over.
    let (out, _) = sync_json(d, "second", ns.name(), &["--adopt"]);
    assert!(out.status.success(), "{}", text(&out));
    let a = cms.get("a").await.unwrap();
    assert_eq!(a.data.as_ref().unwrap()["value"], "2");
    assert_eq!(a.labels()["plumb.dev/sync-name"], "second");
}
