//! Helm charts through the CLI: `plumb render`, `plumb sync` and `plumb diff` of a chart
//! directory with the Helm flags, against the real control plane and the real `helm`.

use super::*;

const CHART: &str = "apiVersion: v2\nname: shop\nversion: 0.1.0\n";
const VALUES: &str = "colour: red\nsize: small\n";
const SETTINGS: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-settings
data:
  colour: {{ .Values.colour | quote }}
  size: {{ .Values.size | quote }}
  namespace: {{ .Release.Namespace | quote }}
  kube: {{ .Capabilities.KubeVersion.Version | quote }}
";
/// Renders only where the cluster serves the Widget kind (its CRD comes with the chart).
const WIDGET: &str = "{{- if .Capabilities.APIVersions.Has \"example.com/v1/Widget\" }}
apiVersion: example.com/v1
kind: Widget
metadata:
  name: {{ .Release.Name }}-widget
spec:
  size: {{ .Values.size | quote }}
{{- end }}
";

pub(super) fn crd(group: &str) -> String {
    format!(
        "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.{group}
spec:
  group: {group}
  names: {{kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"
    )
}

fn chart(d: &Path) {
    write(d, "shop/Chart.yaml", CHART);
    write(d, "shop/values.yaml", VALUES);
    write(d, "shop/templates/settings.yaml", SETTINGS);
}

fn settings(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    for doc in text.split("---\n") {
        if let Ok(v) = serde_saphyr::from_str::<Value>(doc)
            && v["kind"] == "ConfigMap"
        {
            return v;
        }
    }
    panic!("no ConfigMap in {}", self::text(out));
}

#[test]
fn render_a_chart_with_the_helm_flags() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    chart(d);
    write(d, "env/prod.yaml", "colour: blue\nsize: medium\n");
    let chart_dir = d.join("shop");
    let values = d.join("env/prod.yaml");
    let out = plumb(&[
        "render",
        chart_dir.to_str().unwrap(),
        "--root",
        d.to_str().unwrap(),
        "--values",
        values.to_str().unwrap(),
        "--set-json",
        "size=\"large\"",
        "--release-name",
        "web",
        "-n",
        "shop",
        "--kube-version",
        "v1.33.1",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let cm = settings(&out);
    assert_eq!(cm["metadata"]["name"], "web-settings");
    assert_eq!(cm["data"]["colour"], "blue");
    assert_eq!(cm["data"]["size"], "large");
    assert_eq!(cm["data"]["namespace"], "shop");
    assert_eq!(cm["data"]["kube"], "v1.33.1");

    // A values file outside the root is refused, naming it.
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "v.yaml", "colour: stolen\n");
    let file = outside.path().join("v.yaml");
    let out = plumb(&[
        "render",
        chart_dir.to_str().unwrap(),
        "--root",
        d.to_str().unwrap(),
        "--values",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is outside the root"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn sync_a_chart_upgrade_it_and_refuse_a_broken_one() {
    let (client, ns, dir) = setup("helm").await;
    let d = dir.path();
    let group = format!("{}.example.com", ns.name());
    chart(d);
    write(d, "shop/crds/widgets.yaml", &crd(&group));
    write(
        d,
        "shop/templates/widget.yaml",
        &WIDGET.replace("example.com", &group),
    );
    let shop = d.join("shop");
    let shop = shop.to_str().unwrap();

    // The CRD comes from crds/ with --include-crds; the Widget only renders once the cluster
    // serves the kind (.Capabilities from discovery), so the first sync creates the CRD and
    // the settings, the second the Widget as well.
    let (out, report) = sync_json(Path::new(shop), "shop", ns.name(), &["--include-crds"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        action_of(
            &report,
            &format!("CustomResourceDefinition/widgets.{group}")
        ),
        "created"
    );
    assert_eq!(action_of(&report, "ConfigMap/shop-settings"), "created");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    let cm = cms.get("shop-settings").await.unwrap();
    let data = cm.data.unwrap();
    assert_eq!(data["colour"], "red");
    assert_eq!(data["namespace"], ns.name());
    assert_eq!(
        data["kube"],
        client.apiserver_version().await.unwrap().git_version
    );
    let (out, report) = sync_json(Path::new(shop), "shop", ns.name(), &["--include-crds"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(action_of(&report, "Widget/shop-widget"), "created");

    // An upgrade: values change -> configured; diff shows it first.
    let out = plumb(&[
        "diff",
        shop,
        "--name",
        "shop",
        "-n",
        ns.name(),
        "--include-crds",
        "--set-json",
        "colour=\"green\"",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let diff = String::from_utf8_lossy(&out.stdout);
    assert!(diff.contains("+  colour: green"), "{}", text(&out));
    let (out, report) = sync_json(
        Path::new(shop),
        "shop",
        ns.name(),
        &["--include-crds", "--set-json", "colour=\"green\""],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(action_of(&report, "ConfigMap/shop-settings"), "configured");
    assert_eq!(action_of(&report, "Widget/shop-widget"), "unchanged");
    assert_eq!(
        cms.get("shop-settings").await.unwrap().data.unwrap()["colour"],
        "green"
    );

    // A broken template: exit 1, the template and line named, nothing written.
    let before = cms.get("shop-settings").await.unwrap().resource_version();
    write(
        d,
        "shop/templates/settings.yaml",
        &format!(
            "{SETTINGS}  broken: {{{{ required \"colour.shade is required\" .Values.colour.shade }}}}\n"
        ),
    );
    let (out, _) = sync_json(Path::new(shop), "shop", ns.name(), &["--include-crds"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr_has(&out, "colour.shade"), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("shop/templates/settings.yaml:10:"),
        "{}",
        text(&out)
    );
    assert_eq!(
        cms.get("shop-settings").await.unwrap().resource_version(),
        before
    );
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    Api::<CustomResourceDefinition>::all(client)
        .delete(&format!("widgets.{group}"), &Default::default())
        .await
        .unwrap();
}

fn stderr_has(out: &Output, what: &str) -> bool {
    String::from_utf8_lossy(&out.stderr).contains(what)
}

#[tokio::test]
async fn sync_a_chart_from_git_with_values_files_of_the_repository() {
    let (client, ns, cache) = setup("helmgit").await;
    let repo = plumb_testsupport::git::Repo::local("charts").unwrap();
    let wt = repo.work_tree().unwrap();
    wt.write("shop/Chart.yaml", CHART).unwrap();
    wt.write("shop/values.yaml", VALUES).unwrap();
    wt.write("shop/templates/settings.yaml", SETTINGS).unwrap();
    wt.write("env/prod.yaml", "colour: blue\n").unwrap();
    wt.commit("chart", &Default::default()).unwrap();
    wt.push().unwrap();
    let url = repo.file_url();
    let cache = cache.path().join("cache");
    let out = plumb(&[
        "sync",
        "--git",
        &url,
        "--branch",
        "main",
        "--path",
        "shop",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--values",
        "env/prod.yaml",
        "--release-name",
        "web",
        "--name",
        "shop",
        "-n",
        ns.name(),
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    let data = cms.get("web-settings").await.unwrap().data.unwrap();
    assert_eq!(data["colour"], "blue");
    assert_eq!(data["size"], "small");
}

#[tokio::test]
async fn render_and_sync_a_chart_with_lookup() {
    let (client, ns, dir) = setup("helm-lookup").await;
    let d = dir.path();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    let source: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "source"}, "data": {"greeting": "from the cluster"}
    }))
    .unwrap();
    cms.create(&Default::default(), &source).await.unwrap();
    write(
        d,
        "look/Chart.yaml",
        "apiVersion: v2\nname: look\nversion: 0.1.0\n",
    );
    write(
        d,
        "look/templates/copy.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: copy\ndata:\n  found: {{ with lookup \"v1\" \"ConfigMap\" .Release.Namespace \"source\" }}{{ .data.greeting | quote }}{{ else }}\"none\"{{ end }}\n",
    );
    let look = d.join("look");
    let look = look.to_str().unwrap();
    let found = |out: &Output| {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let doc: Value = serde_saphyr::from_str(text.trim_start_matches("---\n")).unwrap();
        doc["data"]["found"].as_str().unwrap_or_default().to_owned()
    };

    // Off (the default): lookup finds nothing, as in `helm template`.
    let out = plumb(&["render", look, "-n", ns.name()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(found(&out), "none");
    // On: read through the proxy as the kubeconfig's identity.
    let out = plumb(&["render", look, "-n", ns.name(), "--lookup"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(found(&out), "from the cluster");
    // A chart that brings a CRD in crds/ and renders an object of it renders with lookup
    // before the cluster serves the kind (the proxy's discovery lists it).
    let group = format!("{}.lookup.example.com", ns.name());
    write(
        d,
        "kinds/Chart.yaml",
        "apiVersion: v2\nname: kinds\nversion: 0.1.0\n",
    );
    write(d, "kinds/crds/widgets.yaml", &crd(&group));
    write(
        d,
        "kinds/templates/widget.yaml",
        &format!("apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: w\n"),
    );
    let kinds = d.join("kinds");
    let out = plumb(&[
        "render",
        kinds.to_str().unwrap(),
        "-n",
        ns.name(),
        "--lookup",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("kind: Widget"),
        "{}",
        text(&out)
    );
    let out = plumb(&["render", look, "--lookup", "--kube-version", "v1.30.0"]);
    assert!(!out.status.success());
    assert!(
        stderr_has(&out, "leave out --kube-version"),
        "{}",
        text(&out)
    );

    // sync applies what the lookup found; again (the object now exists, applied by Plumb,
    // without Helm's ownership labels) it is unchanged.
    let (out, report) = sync_json(Path::new(look), "look", ns.name(), &["--lookup"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(action_of(&report, "ConfigMap/copy"), "created");
    assert_eq!(
        cms.get("copy").await.unwrap().data.unwrap()["found"],
        "from the cluster"
    );
    let (out, report) = sync_json(Path::new(look), "look", ns.name(), &["--lookup"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(action_of(&report, "ConfigMap/copy"), "unchanged");
}
