//! Helm charts with the real `helm` (built by `scripts/testenv build`, on PATH): values and
//! their precedence, CRDs, `.Capabilities`, post-rendering, hooks kept, errors naming the
//! template and line, and what the sandbox refuses (symlinks, paths out of the root, missing
//! dependencies, schema references) without any network access.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use plumb_render::{
    Capabilities, ChartOptions, PostRenderer, RenderError, RenderOptions, ValuesLayer, render_path,
};
use serde_json::json;

use crate::write;

fn helm() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("helm"))
                .find(|p| p.is_file())
        })
        .expect(
            "helm must be on PATH (scripts/testenv build builds it; scripts/test puts it on PATH)",
        )
}

/// A chart `app` in `dir` (relative to the root `root`): a ConfigMap from values, a hook Job,
/// a test Pod.
fn chart(root: &Path, dir: &str) {
    write(
        root,
        &format!("{dir}/Chart.yaml"),
        "apiVersion: v2\nname: app\nversion: 0.1.0\n",
    );
    write(
        root,
        &format!("{dir}/values.yaml"),
        "greeting: hello\ncolour: red\nsize: small\nshape: round\n",
    );
    write(
        root,
        &format!("{dir}/templates/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-settings\n  namespace: {{ .Release.Namespace }}\ndata:\n  greeting: {{ .Values.greeting | quote }}\n  colour: {{ .Values.colour | quote }}\n  size: {{ .Values.size | quote }}\n  shape: {{ .Values.shape | quote }}\n",
    );
    write(
        root,
        &format!("{dir}/templates/hook.yaml"),
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {{ .Release.Name }}-migrate\n  annotations:\n    helm.sh/hook: pre-install,pre-upgrade\n    helm.sh/hook-weight: \"-1\"\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: m\n        image: busybox\n",
    );
    write(
        root,
        &format!("{dir}/templates/tests/test.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {{ .Release.Name }}-test\n  annotations:\n    helm.sh/hook: test\nspec:\n  containers:\n  - name: t\n    image: busybox\n",
    );
}

fn opts(chart: ChartOptions) -> RenderOptions {
    RenderOptions {
        helm: Some(helm()),
        chart,
        ..RenderOptions::default()
    }
}

fn data(m: &plumb_core::Manifest, key: &str) -> String {
    m.object["data"][key]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_chart_renders_with_release_namespace_and_hooks_kept() {
    let t = tempfile::tempdir().unwrap();
    chart(t.path(), "deploy/app");
    let ms = render_path(
        t.path(),
        Path::new("deploy/app"),
        &opts(ChartOptions {
            release_name: Some("web".into()),
            namespace: Some("shop".into()),
            ..ChartOptions::default()
        }),
    )
    .unwrap();
    let names: Vec<_> = ms
        .iter()
        .map(|m| format!("{}/{}", m.kind(), m.name()))
        .collect();
    // Test hooks are for `helm test`, never applied; other hooks stay, with their annotations.
    assert_eq!(
        names,
        ["ConfigMap/web-settings", "Job/web-migrate"],
        "{names:?}"
    );
    let cm = &ms[0];
    assert_eq!(cm.namespace(), Some("shop"));
    assert_eq!(data(cm, "greeting"), "hello");
    assert_eq!(
        cm.source.as_ref().unwrap().file,
        PathBuf::from("deploy/app/templates/cm.yaml")
    );
    assert_eq!(
        ms[1].object["metadata"]["annotations"]["helm.sh/hook"],
        "pre-install,pre-upgrade"
    );
    // Without options: the chart's name is the release name, `default` the namespace.
    let ms = render_path(
        t.path(),
        Path::new("deploy/app"),
        &opts(ChartOptions::default()),
    )
    .unwrap();
    assert_eq!(ms[0].name(), "app-settings");
    assert_eq!(ms[0].namespace(), Some("default"));
}

#[test]
fn values_precedence_files_in_order_then_inline_layers() {
    let t = tempfile::tempdir().unwrap();
    chart(t.path(), "app");
    write(
        t.path(),
        "env/base.yaml",
        "colour: blue\nsize: medium\nshape: square\n",
    );
    write(t.path(), "env/prod.yaml", "size: large\nshape: oval\n");
    let ms = render_path(
        t.path(),
        Path::new("app"),
        &opts(ChartOptions {
            values_files: vec!["env/base.yaml".into(), "./env/prod.yaml".into()],
            values: vec![
                ValuesLayer::from_yaml("first inline", "shape: triangle\n").unwrap(),
                ValuesLayer::at_path("second inline", "greeting", json!("hi")).unwrap(),
            ],
            ..ChartOptions::default()
        }),
    )
    .unwrap();
    let cm = &ms[0];
    // values.yaml < base.yaml < prod.yaml < inline layers, in order.
    assert_eq!(data(cm, "colour"), "blue");
    assert_eq!(data(cm, "size"), "large");
    assert_eq!(data(cm, "shape"), "triangle");
    assert_eq!(data(cm, "greeting"), "hi");
    // Inline values that are no map are refused, naming where they came from.
    let e = render_path(
        t.path(),
        Path::new("app"),
        &opts(ChartOptions {
            values: vec![ValuesLayer {
                origin: "spec.helm.values".into(),
                values: json!([1, 2]),
            }],
            ..ChartOptions::default()
        }),
    )
    .unwrap_err();
    assert!(e.to_string().contains("spec.helm.values"), "{e}");
}

#[test]
fn crds_only_when_asked() {
    let t = tempfile::tempdir().unwrap();
    chart(t.path(), "app");
    write(
        t.path(),
        "app/crds/widgets.yaml",
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.example.com\nspec:\n  group: example.com\n  names: {kind: Widget, plural: widgets}\n  scope: Namespaced\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema: {type: object}\n",
    );
    let without = render_path(t.path(), Path::new("app"), &opts(ChartOptions::default())).unwrap();
    assert!(
        without
            .iter()
            .all(|m| m.kind() != "CustomResourceDefinition")
    );
    let with = render_path(
        t.path(),
        Path::new("app"),
        &opts(ChartOptions {
            include_crds: true,
            ..ChartOptions::default()
        }),
    )
    .unwrap();
    let crd = with
        .iter()
        .find(|m| m.kind() == "CustomResourceDefinition")
        .expect("the CRD is rendered");
    assert_eq!(
        crd.source.as_ref().unwrap().file,
        PathBuf::from("app/crds/widgets.yaml")
    );
}

#[test]
fn capabilities_reach_the_chart() {
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "app/Chart.yaml",
        "apiVersion: v2\nname: app\nversion: 0.1.0\n",
    );
    write(
        t.path(),
        "app/templates/caps.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: caps\ndata:\n  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n  modern: {{ semverCompare \">=1.35.0-0\" .Capabilities.KubeVersion.Version | quote }}\n  monitoring: {{ .Capabilities.APIVersions.Has \"monitoring.coreos.com/v1/ServiceMonitor\" | quote }}\n",
    );
    let ms = render_path(
        t.path(),
        Path::new("app"),
        &opts(ChartOptions {
            capabilities: Some(Capabilities {
                kube_version: Some("v1.35.4".into()),
                api_versions: vec![
                    "monitoring.coreos.com/v1".into(),
                    "monitoring.coreos.com/v1/ServiceMonitor".into(),
                ],
            }),
            ..ChartOptions::default()
        }),
    )
    .unwrap();
    assert_eq!(data(&ms[0], "kube"), "v1.35.4");
    assert_eq!(data(&ms[0], "modern"), "true");
    assert_eq!(data(&ms[0], "monitoring"), "true");
    let ms = render_path(
        t.path(),
        Path::new("app"),
        &opts(ChartOptions {
            capabilities: Some(Capabilities {
                kube_version: Some("v1.29.0".into()),
                api_versions: vec![],
            }),
            ..ChartOptions::default()
        }),
    )
    .unwrap();
    assert_eq!(data(&ms[0], "modern"), "false");
    assert_eq!(data(&ms[0], "monitoring"), "false");
}

#[test]
fn post_renderer_patches_the_output_with_kustomize() {
    let t = tempfile::tempdir().unwrap();
    chart(t.path(), "app");
    write(
        t.path(),
        "app/templates/deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: web\n        image: nginx:1.0\n",
    );
    let ms = render_path(
        t.path(),
        Path::new("app"),
        &opts(ChartOptions {
            post_renderers: vec![PostRenderer {
                patches: vec![json!({
                    "patch": "- op: add\n  path: /metadata/labels\n  value: {team: blue}\n",
                    "target": {"kind": "ConfigMap"},
                })],
                images: vec![json!({"name": "nginx", "newTag": "2.0"})],
            }],
            ..ChartOptions::default()
        }),
    )
    .unwrap();
    let cm = ms.iter().find(|m| m.kind() == "ConfigMap").unwrap();
    assert_eq!(cm.label("team"), Some("blue"));
    let deploy = ms.iter().find(|m| m.kind() == "Deployment").unwrap();
    assert_eq!(
        deploy.object["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:2.0"
    );
    // Hooks survive post-rendering, annotations included.
    let job = ms.iter().find(|m| m.kind() == "Job").unwrap();
    assert!(job.object["metadata"]["annotations"]["helm.sh/hook"].is_string());
    // A post-renderer patch that reads a file is refused by the Kustomize pre-build check.
    let e = render_path(
        t.path(),
        Path::new("app"),
        &opts(ChartOptions {
            post_renderers: vec![PostRenderer {
                patches: vec![json!({"path": "../../../etc/passwd"})],
                images: vec![],
            }],
            ..ChartOptions::default()
        }),
    )
    .unwrap_err();
    assert!(matches!(e, RenderError::HelmPostRender { .. }), "{e}");
}

#[test]
fn template_errors_name_the_chart_template_and_line() {
    let t = tempfile::tempdir().unwrap();
    chart(t.path(), "charts/web");
    write(
        t.path(),
        "charts/web/templates/broken.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: broken\ndata:\n  x: {{ .Values.nested.deeper.value }}\n",
    );
    let e = render_path(
        t.path(),
        Path::new("charts/web"),
        &opts(ChartOptions::default()),
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(&e, RenderError::HelmTemplate { file, line: 6, .. } if file == Path::new("charts/web/templates/broken.yaml")),
        "{text}"
    );
    assert!(
        text.starts_with("charts/web/templates/broken.yaml:6:"),
        "{text}"
    );
    assert!(text.contains("rendering chart charts/web failed"), "{text}");

    // A required value says which.
    write(
        t.path(),
        "charts/web/templates/broken.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: broken\ndata:\n  x: {{ required \"image.tag is required\" .Values.image }}\n",
    );
    let e = render_path(
        t.path(),
        Path::new("charts/web"),
        &opts(ChartOptions::default()),
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("charts/web/templates/broken.yaml:6:"),
        "{text}"
    );
    assert!(text.contains("image.tag is required"), "{text}");

    // Output that is no Kubernetes object names its template.
    write(
        t.path(),
        "charts/web/templates/broken.yaml",
        "apiVersion: v1\nmetadata:\n  name: broken\n",
    );
    let e = render_path(
        t.path(),
        Path::new("charts/web"),
        &opts(ChartOptions::default()),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("charts/web/templates/broken.yaml"),
        "{e}"
    );
}

#[test]
fn output_limits_hold() {
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "app/Chart.yaml",
        "apiVersion: v2\nname: app\nversion: 0.1.0\n",
    );
    write(
        t.path(),
        "app/templates/many.yaml",
        "{{- range $i := until 50 }}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{{ $i }}\ndata:\n  pad: {{ repeat 1000 \"x\" | quote }}\n{{- end }}\n",
    );
    let small = RenderOptions {
        max_total_size: 20_000,
        ..opts(ChartOptions::default())
    };
    let e = render_path(t.path(), Path::new("app"), &small).unwrap_err();
    assert!(
        matches!(&e, RenderError::TotalTooLarge { path, limit: 20_000 } if path == Path::new("app")),
        "{e}"
    );
    assert!(e.to_string().contains("20000 bytes"), "{e}");
    let few = RenderOptions {
        max_documents: 10,
        ..opts(ChartOptions::default())
    };
    let e = render_path(t.path(), Path::new("app"), &few).unwrap_err();
    assert!(
        matches!(&e, RenderError::TooManyDocuments { limit: 10, .. }),
        "{e}"
    );
    // Within the limits, every object of the range is there.
    assert_eq!(
        render_path(t.path(), Path::new("app"), &opts(ChartOptions::default()))
            .unwrap()
            .len(),
        50
    );
}

#[cfg(unix)]
#[test]
fn values_files_are_checked_like_any_source_path() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("repo");
    chart(&root, "app");
    write(t.path(), "outside.yaml", "greeting: stolen\n");
    std::os::unix::fs::symlink(t.path().join("outside.yaml"), root.join("linked.yaml")).unwrap();
    let with = |file: &str| {
        render_path(
            &root,
            Path::new("app"),
            &opts(ChartOptions {
                values_files: vec![file.into()],
                ..ChartOptions::default()
            }),
        )
        .unwrap_err()
    };
    let e = with("linked.yaml");
    assert!(
        matches!(&e, RenderError::Symlink { path } if path == Path::new("linked.yaml")),
        "{e}"
    );
    let e = with("../outside.yaml");
    assert!(matches!(e, RenderError::OutsideRoot { .. }), "{e}");
    let e = with("/etc/hostname");
    assert!(matches!(e, RenderError::OutsideRoot { .. }), "{e}");
    let e = with("missing.yaml");
    assert!(e.to_string().starts_with("missing.yaml:"), "{e}");
}

#[cfg(unix)]
#[test]
fn symlinks_in_the_chart_are_refused() {
    let t = tempfile::tempdir().unwrap();
    chart(t.path(), "app");
    std::os::unix::fs::symlink("/etc/hostname", t.path().join("app/templates/host.txt")).unwrap();
    let e = render_path(t.path(), Path::new("app"), &opts(ChartOptions::default())).unwrap_err();
    assert!(
        matches!(&e, RenderError::Symlink { path } if path == Path::new("app/templates/host.txt")),
        "{e}"
    );
}

/// A loopback listener that counts connections: the sandbox must make none.
struct Trap {
    listener: TcpListener,
}

impl Trap {
    fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Trap { listener }
    }

    fn url(&self) -> String {
        format!("http://{}", self.listener.local_addr().unwrap())
    }

    fn connections(&self) -> usize {
        std::iter::from_fn(|| self.listener.accept().ok()).count()
    }
}

#[test]
fn dependencies_must_be_vendored_and_nothing_is_fetched() {
    let trap = Trap::new();
    let t = tempfile::tempdir().unwrap();
    chart(t.path(), "app");
    write(
        t.path(),
        "app/Chart.yaml",
        &format!(
            "apiVersion: v2\nname: app\nversion: 0.1.0\ndependencies:\n- name: redis\n  version: 1.0.0\n  repository: {}\n",
            trap.url()
        ),
    );
    let e = render_path(t.path(), Path::new("app"), &opts(ChartOptions::default())).unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(&e, RenderError::HelmDependencyMissing { name, line: 5, .. } if name == "redis"),
        "{text}"
    );
    assert!(text.starts_with("app/Chart.yaml:5:"), "{text}");
    assert!(text.contains("app/charts"), "{text}");
    assert_eq!(trap.connections(), 0);

    // Vendored as a directory, it renders (with its values under its name).
    write(
        t.path(),
        "app/charts/redis/Chart.yaml",
        "apiVersion: v2\nname: redis\nversion: 1.0.0\n",
    );
    write(
        t.path(),
        "app/charts/redis/templates/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: redis-{{ .Values.port }}\n",
    );
    write(t.path(), "app/charts/redis/values.yaml", "port: 6379\n");
    let ms = render_path(t.path(), Path::new("app"), &opts(ChartOptions::default())).unwrap();
    let redis = ms
        .iter()
        .find(|m| m.name() == "redis-6379")
        .expect("subchart rendered");
    assert_eq!(
        redis.source.as_ref().unwrap().file,
        PathBuf::from("app/charts/redis/templates/cm.yaml")
    );

    // As an archive (helm package), too.
    let charts = t.path().join("app/charts");
    let status = Command::new(helm())
        .args(["package", "redis", "--destination", "."])
        .current_dir(&charts)
        .env("HELM_CONFIG_HOME", t.path().join(".h/config"))
        .env("HELM_CACHE_HOME", t.path().join(".h/cache"))
        .env("HELM_DATA_HOME", t.path().join(".h/data"))
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_dir_all(charts.join("redis")).unwrap();
    assert!(charts.join("redis-1.0.0.tgz").is_file());
    let ms = render_path(t.path(), Path::new("app"), &opts(ChartOptions::default())).unwrap();
    assert!(ms.iter().any(|m| m.name() == "redis-6379"));
    assert_eq!(trap.connections(), 0);
}

#[test]
fn schema_references_to_files_or_urls_are_refused() {
    let trap = Trap::new();
    let t = tempfile::tempdir().unwrap();
    chart(t.path(), "app");
    // A schema of its own is checked by Helm, naming what is wrong.
    write(
        t.path(),
        "app/values.schema.json",
        r##"{"$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "properties": {"size": {"$ref": "#/definitions/size"}}, "definitions": {"size": {"type": "string", "enum": ["small", "large"]}}}"##,
    );
    render_path(t.path(), Path::new("app"), &opts(ChartOptions::default())).unwrap();
    let e = render_path(
        t.path(),
        Path::new("app"),
        &opts(ChartOptions {
            values: vec![ValuesLayer::at_path("inline", "size", json!("huge")).unwrap()],
            ..ChartOptions::default()
        }),
    )
    .unwrap_err();
    assert!(e.to_string().contains("size"), "{e}");

    for target in [
        format!("{}/schema.json", trap.url()),
        "file:///etc/hostname".to_owned(),
        "../../outside.json".to_owned(),
    ] {
        write(
            t.path(),
            "app/values.schema.json",
            &format!(
                "{{\n  \"type\": \"object\",\n  \"properties\": {{\n    \"size\": {{\"$ref\": \"{target}\"}}\n  }}\n}}\n"
            ),
        );
        let e =
            render_path(t.path(), Path::new("app"), &opts(ChartOptions::default())).unwrap_err();
        assert!(
            matches!(&e, RenderError::HelmSchemaRef { path, line: 4, value, .. }
                if path == Path::new("app/values.schema.json") && *value == target),
            "{e}"
        );
    }
    assert_eq!(trap.connections(), 0);
}

#[test]
fn settings_for_a_directory_that_is_no_chart_and_nested_charts() {
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "plain/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n",
    );
    let e = render_path(
        t.path(),
        Path::new("plain"),
        &opts(ChartOptions {
            include_crds: true,
            ..ChartOptions::default()
        }),
    )
    .unwrap_err();
    assert!(matches!(e, RenderError::NotAChart { .. }), "{e}");
    chart(t.path(), "plain/sub");
    let e = render_path(t.path(), Path::new("plain"), &opts(ChartOptions::default())).unwrap_err();
    assert!(
        matches!(&e, RenderError::NestedChart { path } if path == Path::new("plain/sub")),
        "{e}"
    );
}

#[test]
fn a_missing_helm_binary_is_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    chart(t.path(), "app");
    let o = RenderOptions {
        helm: Some(t.path().join("no-such-helm")),
        ..RenderOptions::default()
    };
    let e = render_path(t.path(), Path::new("app"), &o).unwrap_err();
    assert!(e.to_string().starts_with("app:"), "{e}");
}

#[cfg(unix)]
#[test]
fn a_helm_that_hangs_is_stopped() {
    use std::os::unix::fs::PermissionsExt;
    let bin = tempfile::tempdir().unwrap();
    let fake = bin.path().join("helm");
    std::fs::write(&fake, "#!/bin/sh\nexec sleep 30\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = tempfile::tempdir().unwrap();
    chart(t.path(), "app");
    let o = RenderOptions {
        timeout: std::time::Duration::from_millis(300),
        helm: Some(fake),
        ..RenderOptions::default()
    };
    let e = render_path(t.path(), Path::new("app"), &o).unwrap_err();
    assert!(matches!(e, RenderError::HelmTimeout { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "app: helm template did not finish within 0.3s and was stopped"
    );
    assert!(e.is_retryable());
}
