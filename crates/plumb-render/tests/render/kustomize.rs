//! Building with Kustomize: overlays, failures, what the sandbox refuses (remote resources,
//! bases outside the root, symlinks, Helm, remote plugins, time and size), and local
//! features that still render.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plumb_render::{RenderError, RenderOptions, render, render_path};
use serde_json::json;

use crate::{cm, err, has_kustomize, write};

#[test]
fn kustomize_overlay() {
    assert!(has_kustomize(), "kustomize or kubectl must be on PATH");
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "base/kustomization.yaml",
        "resources:\n- cm.yaml\n",
    );
    write(t.path(), "base/cm.yaml", &cm("settings"));
    write(
        t.path(),
        "prod/kustomization.yaml",
        "resources:\n- ../base\nnamePrefix: prod-\nlabels:\n- pairs:\n    env: prod\n",
    );
    // Files next to a kustomization are not read directly.
    write(t.path(), "prod/ignored.yaml", &cm("not-rendered"));
    let ms = render_path(t.path(), Path::new("prod"), &RenderOptions::default()).unwrap();
    assert_eq!(ms.len(), 1);
    // The document limit covers Kustomize output too.
    let few = RenderOptions {
        max_documents: 0,
        ..RenderOptions::default()
    };
    let e = render_path(t.path(), Path::new("prod"), &few).unwrap_err();
    assert!(
        matches!(&e, RenderError::TooManyDocuments { path, limit: 0 } if path == Path::new("prod")),
        "{e}"
    );
    assert_eq!(ms[0].name(), "prod-settings");
    assert_eq!(ms[0].label("env"), Some("prod"));
    assert_eq!(ms[0].source.as_ref().unwrap().file, PathBuf::from("prod"));
}

#[test]
fn kustomize_failure_carries_stderr() {
    assert!(has_kustomize());
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "app/kustomization.yaml",
        "resources:\n- missing.yaml\n",
    );
    let e = err(t.path());
    let text = e.to_string();
    assert!(matches!(e, RenderError::KustomizeFailed { .. }), "{text}");
    assert!(text.starts_with("app: kustomize build failed"), "{text}");
    assert!(text.contains("missing.yaml"), "{text}");
}

#[test]
fn kustomize_remote_resource_refused() {
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "base/kustomization.yaml",
        "resources:\n- https://github.com/org/repo//deploy?ref=v1\n",
    );
    write(
        t.path(),
        "app/kustomization.yaml",
        "resources:\n- ../base\n",
    );
    let e = render_path(t.path(), Path::new("app"), &RenderOptions::default()).unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(&e, RenderError::RemoteResource { path, .. } if path == Path::new("base/kustomization.yaml")),
        "{text}"
    );
    assert!(text.contains("https://github.com/org/repo"), "{text}");
}

#[test]
fn kustomize_base_outside_root_refused() {
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "repo/app/kustomization.yaml",
        "resources:\n- ../../elsewhere\n",
    );
    write(t.path(), "elsewhere/kustomization.yaml", "resources: []\n");
    let e = render(&t.path().join("repo"), &RenderOptions::default()).unwrap_err();
    assert!(
        matches!(&e, RenderError::ReferenceOutsideRoot { path, field, entry, .. }
            if path == Path::new("app/kustomization.yaml") && field == "resources[0]" && entry == "../../elsewhere"),
        "{e}"
    );
}

#[cfg(unix)]
#[test]
fn kustomize_tree_with_symlink_refused() {
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "app/kustomization.yaml",
        "resources:\n- cm.yaml\n",
    );
    std::os::unix::fs::symlink("/etc/hostname", t.path().join("app/cm.yaml")).unwrap();
    let e = err(t.path());
    assert!(matches!(e, RenderError::Symlink { .. }), "{e}");
}

#[cfg(unix)]
#[test]
fn kustomize_timeout_kills_the_build() {
    use std::os::unix::fs::PermissionsExt;
    let bin = tempfile::tempdir().unwrap();
    let fake = bin.path().join("kustomize");
    fs::write(&fake, "#!/bin/sh\nexec sleep 30\n").unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    let t = tempfile::tempdir().unwrap();
    write(t.path(), "app/kustomization.yaml", "resources: []\n");
    let opts = RenderOptions {
        timeout: Duration::from_millis(300),
        kustomize: Some(fake),
        ..RenderOptions::default()
    };
    let started = std::time::Instant::now();
    let e = render(t.path(), &opts).unwrap_err();
    assert!(matches!(e, RenderError::KustomizeTimeout { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "app: kustomize build did not finish within 0.3s and was stopped"
    );
    // Killed rather than waited for (generous bound: this is not a timing assertion).
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[cfg(unix)]
#[test]
fn kustomize_output_is_size_limited() {
    use std::os::unix::fs::PermissionsExt;
    let bin = tempfile::tempdir().unwrap();
    let fake = bin.path().join("kustomize");
    fs::write(&fake, "#!/bin/sh\nexec yes 'a: b'\n").unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    let t = tempfile::tempdir().unwrap();
    write(t.path(), "app/kustomization.yaml", "resources: []\n");
    let opts = RenderOptions {
        max_total_size: 100_000,
        kustomize: Some(fake),
        ..RenderOptions::default()
    };
    let e = render(t.path(), &opts).unwrap_err();
    assert!(matches!(e, RenderError::TotalTooLarge { .. }), "{e}");
}

#[test]
fn kustomize_helm_charts_refused() {
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "app/kustomization.yaml",
        "helmCharts:\n- name: minecraft\n  repo: https://itzg.github.io/minecraft-server-charts\n  version: 3.1.3\n",
    );
    let e = err(t.path());
    let text = e.to_string();
    assert!(
        matches!(&e, RenderError::KustomizeRefused { path, field, reason: plumb_render::Refusal::Helm, .. }
            if path == Path::new("app/kustomization.yaml") && field == "helmCharts"),
        "{text}"
    );
    assert!(
        text.starts_with("app/kustomization.yaml:1: `helmCharts`: Plumb never enables Helm"),
        "{text}"
    );
    assert_eq!(e.metric_label(), "render_kustomize_helm");
}

#[test]
fn kustomize_remote_plugin_refused() {
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "app/kustomization.yaml",
        "resources: [cm.yaml]\ngenerators:\n- |\n  apiVersion: someteam.example.com/v1\n  kind: SecretsFromVault\n  metadata:\n    name: s\n    annotations:\n      config.kubernetes.io/function: |\n        exec:\n          path: ./vault\n",
    );
    write(t.path(), "app/cm.yaml", &cm("settings"));
    let e = err(t.path());
    assert!(
        matches!(&e, RenderError::KustomizeRefused { reason: plumb_render::Refusal::NotBuiltinPlugin, field, .. }
            if field == "generators[0] (inline) (SecretsFromVault)"),
        "{e}"
    );
}

#[test]
fn kustomize_local_features_still_render() {
    assert!(has_kustomize(), "kustomize or kubectl must be on PATH");
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    write(
        r,
        "base/kustomization.yaml",
        "resources:\n- cm.yaml\n- nested\n",
    );
    write(r, "base/cm.yaml", &cm("settings"));
    write(
        r,
        "base/nested/kustomization.yaml",
        "resources: [svc.yaml]\n",
    );
    write(
        r,
        "base/nested/svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports: [{port: 80}]\n",
    );
    write(
        r,
        "components/team/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\ncommonAnnotations:\n  team: blue\n",
    );
    write(
        r,
        "prod/kustomization.yaml",
        "resources:\n- ../base\ncomponents:\n- ../components/team\npatches:\n- path: patches/data.yaml\n- patch: |-\n    - op: add\n      path: /data/inline\n      value: https://example.com/not-fetched\n  target: {kind: ConfigMap, name: settings}\npatchesStrategicMerge:\n- patches/sm.yaml\nconfigMapGenerator:\n- name: files\n  files:\n  - conf/app.properties\n  - renamed.txt=conf/other.txt\n  envs:\n  - conf/vars.env\ntransformers:\n- |\n  apiVersion: builtin\n  kind: PrefixSuffixTransformer\n  metadata:\n    name: suffix\n  suffix: -prod\n  fieldSpecs:\n  - path: metadata/name\n- plugins/labels.yaml\ngenerators:\n- generators\n",
    );
    write(
        r,
        "prod/patches/data.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  fromfile: \"yes\"\n",
    );
    write(
        r,
        "prod/patches/sm.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  type: ClusterIP\n",
    );
    write(r, "prod/conf/app.properties", "a=1\n");
    write(r, "prod/conf/other.txt", "other\n");
    write(r, "prod/conf/vars.env", "LEVEL=debug\n");
    write(
        r,
        "prod/plugins/labels.yaml",
        "apiVersion: builtin\nkind: LabelTransformer\nmetadata:\n  name: env\nlabels:\n  env: prod\nfieldSpecs:\n- path: metadata/labels\n  create: true\n",
    );
    write(
        r,
        "prod/generators/kustomization.yaml",
        "resources: [gen.yaml]\n",
    );
    write(
        r,
        "prod/generators/gen.yaml",
        "apiVersion: builtin\nkind: ConfigMapGenerator\nmetadata:\n  name: generated\nliterals:\n- k=v\n",
    );
    let ms = render_path(r, Path::new("prod"), &RenderOptions::default()).unwrap();
    let mut names: Vec<_> = ms
        .iter()
        .map(|m| format!("{}/{}", m.kind(), m.name()))
        .collect();
    names.sort();
    assert_eq!(names.len(), 4, "{names:?}");
    assert_eq!(names[3], "Service/web-prod");
    let settings = ms.iter().find(|m| m.name() == "settings-prod").unwrap();
    assert_eq!(settings.object["data"]["fromfile"], json!("yes"));
    assert_eq!(
        settings.object["data"]["inline"],
        json!("https://example.com/not-fetched")
    );
    assert_eq!(settings.label("env"), Some("prod"));
    let files = ms.iter().find(|m| m.name().starts_with("files-")).unwrap();
    assert_eq!(files.object["data"]["app.properties"], json!("a=1\n"));
    assert_eq!(files.object["data"]["renamed.txt"], json!("other\n"));
    assert_eq!(files.object["data"]["LEVEL"], json!("debug"));
    assert!(
        ms.iter().any(|m| m.name().starts_with("generated-")),
        "{names:?}"
    );
    let svc = ms.iter().find(|m| m.kind() == "Service").unwrap();
    assert_eq!(svc.object["spec"]["type"], json!("ClusterIP"));
    assert_eq!(svc.object["metadata"]["annotations"]["team"], json!("blue"));
}
