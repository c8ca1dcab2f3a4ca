//! Render tests on temporary directory fixtures.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plumb_render::{RenderError, RenderOptions, render, render_path};
use serde_json::json;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

fn cm(name: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n")
}

fn err(dir: &Path) -> RenderError {
    render(dir, &RenderOptions::default()).unwrap_err()
}

#[test]
fn multi_document_sorted_recursive_with_sources() {
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "b.yaml",
        &format!("---\n{}---\n# only a comment\n---\n{}", cm("b1"), cm("b2")),
    );
    write(t.path(), "a/z.yml", &cm("az"));
    write(
        t.path(),
        "c.json",
        r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cj"}}"#,
    );
    write(t.path(), ".git/config.yaml", &cm("hidden"));
    write(t.path(), ".hidden/x.yaml", &cm("hidden"));
    write(t.path(), "README.md", "not: [yaml");
    write(t.path(), "empty.yaml", "");
    let ms = render(t.path(), &RenderOptions::default()).unwrap();
    let names: Vec<_> = ms.iter().map(|m| m.name()).collect();
    assert_eq!(names, ["az", "b1", "b2", "cj"]);
    let src = ms[2].source.as_ref().unwrap();
    assert_eq!(src.file, PathBuf::from("b.yaml"));
    assert_eq!(src.line, 9);
    assert_eq!(src.document, 2);
    assert_eq!(
        ms[0].source.as_ref().unwrap().file,
        PathBuf::from("a/z.yml")
    );
}

#[test]
fn lists_are_flattened() {
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "list.yaml",
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: one}\n- apiVersion: v1\n  kind: Secret\n  metadata: {name: two}\n",
    );
    let ms = render(t.path(), &RenderOptions::default()).unwrap();
    assert_eq!(ms.len(), 2);
    assert_eq!(ms[1].kind(), "Secret");
}

#[test]
fn typed_lists_and_tab_indented_json() {
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "cms.json",
        "{\n\t\"apiVersion\": \"v1\",\n\t\"kind\": \"ConfigMapList\",\n\t\"items\": [\n\t\t{\"apiVersion\": \"v1\", \"kind\": \"ConfigMap\", \"metadata\": {\"name\": \"x\"}}\n\t]\n}\n",
    );
    let ms = render(t.path(), &RenderOptions::default()).unwrap();
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0].name(), "x");
    write(
        t.path(),
        "dup.json",
        r#"{"apiVersion": "v1", "apiVersion": "v2"}"#,
    );
    let e = err(t.path());
    assert!(e.to_string().starts_with("dup.json:1:"), "{e}");
}

#[test]
fn octal_and_boolean_rules_match_kubernetes() {
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\nmode: 0644\nflag: yes\noff: off\nreal: true\nquoted: \"0644\"\n",
    );
    let ms = render(t.path(), &RenderOptions::default()).unwrap();
    let o = &ms[0].object;
    assert_eq!(o["mode"], json!(420));
    assert_eq!(o["flag"], json!("yes"));
    assert_eq!(o["off"], json!("off"));
    assert_eq!(o["real"], json!(true));
    assert_eq!(o["quoted"], json!("0644"));
}

#[test]
fn duplicate_key_is_an_error_with_line() {
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "dir/dup.yaml",
        &format!("{}data:\n  a: 1\n  a: 2\n", cm("d")),
    );
    let e = err(t.path());
    let text = e.to_string();
    assert!(matches!(e, RenderError::Parse { line: 7, .. }), "{text}");
    assert!(text.starts_with("dir/dup.yaml:7:"), "{text}");
    assert!(text.to_lowercase().contains("duplicate"), "{text}");
}

#[test]
fn bad_yaml_names_file_and_line() {
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "bad.yaml",
        &format!("{}---\napiVersion: v1\nkind: [unclosed\n", cm("ok")),
    );
    let e = err(t.path());
    let text = e.to_string();
    match &e {
        RenderError::Parse { path, line, .. } => {
            assert_eq!(path, Path::new("bad.yaml"));
            assert!((6..=7).contains(line), "{text}");
        }
        other => panic!("{other}"),
    }
    assert!(text.starts_with("bad.yaml:"), "{text}");
}

#[test]
fn missing_kind_names_file_line_and_document() {
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "x/m.yaml",
        &format!(
            "{}---\napiVersion: v1\nmetadata:\n  name: nokind\n",
            cm("ok")
        ),
    );
    let text = err(t.path()).to_string();
    assert_eq!(
        text,
        "x/m.yaml:6 (document 1): field `kind` is missing or not a non-empty string (in object named nokind)"
    );
}

#[cfg(unix)]
#[test]
fn symlinks_are_refused_even_inside() {
    let t = tempfile::tempdir().unwrap();
    write(t.path(), "real/a.yaml", &cm("a"));
    std::os::unix::fs::symlink(t.path().join("real/a.yaml"), t.path().join("real/b.yaml")).unwrap();
    let e = err(t.path());
    assert!(
        matches!(&e, RenderError::Symlink { path } if path == Path::new("real/b.yaml")),
        "{e}"
    );
    // A symlinked directory too, and a symlinked render path.
    let t = tempfile::tempdir().unwrap();
    write(t.path(), "real/a.yaml", &cm("a"));
    std::os::unix::fs::symlink(t.path().join("real"), t.path().join("link")).unwrap();
    assert!(matches!(err(t.path()), RenderError::Symlink { .. }));
    let e = render_path(t.path(), Path::new("link"), &RenderOptions::default()).unwrap_err();
    assert!(matches!(e, RenderError::Symlink { .. }), "{e}");
}

#[test]
fn render_path_stays_inside_root() {
    let t = tempfile::tempdir().unwrap();
    write(t.path(), "apps/a.yaml", &cm("a"));
    let ms = render_path(t.path(), Path::new("apps"), &RenderOptions::default()).unwrap();
    assert_eq!(
        ms[0].source.as_ref().unwrap().file,
        PathBuf::from("apps/a.yaml")
    );
    for bad in ["../x", "/etc", "apps/../../x"] {
        let e = render_path(t.path(), Path::new(bad), &RenderOptions::default()).unwrap_err();
        assert!(matches!(e, RenderError::OutsideRoot { .. }), "{bad}: {e}");
    }
}

#[test]
fn size_limits() {
    let t = tempfile::tempdir().unwrap();
    write(t.path(), "a.yaml", &cm("a"));
    write(
        t.path(),
        "big.yaml",
        &format!("{}data:\n  x: {}\n", cm("big"), "x".repeat(2000)),
    );
    let opts = RenderOptions {
        max_file_size: 1000,
        ..RenderOptions::default()
    };
    let e = render(t.path(), &opts).unwrap_err();
    assert!(
        matches!(&e, RenderError::FileTooLarge { path, limit: 1000, .. } if path == Path::new("big.yaml")),
        "{e}"
    );
    let opts = RenderOptions {
        max_total_size: 1500,
        ..RenderOptions::default()
    };
    let e = render(t.path(), &opts).unwrap_err();
    assert!(matches!(e, RenderError::TotalTooLarge { .. }), "{e}");
}

#[test]
fn document_limit() {
    let t = tempfile::tempdir().unwrap();
    write(t.path(), "a.yaml", &format!("{}---\n{}", cm("a"), cm("b")));
    write(t.path(), "b.yaml", &cm("c"));
    let opts = RenderOptions {
        max_documents: 2,
        ..RenderOptions::default()
    };
    let e = render(t.path(), &opts).unwrap_err();
    assert!(
        matches!(&e, RenderError::TooManyDocuments { path, limit: 2 } if path == Path::new("b.yaml")),
        "{e}"
    );
    let opts = RenderOptions {
        max_documents: 3,
        ..RenderOptions::default()
    };
    assert_eq!(render(t.path(), &opts).unwrap().len(), 3);
}

#[test]
fn alias_bomb_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let mut text = cm("bomb");
    text.push_str("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    let mut prev = 'a';
    for c in 'b'..='j' {
        text.push_str(&format!(
            "{c}: &{c} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
        ));
        prev = c;
    }
    write(t.path(), "bomb.yaml", &text);
    let e = err(t.path());
    assert!(matches!(e, RenderError::Parse { .. }), "{e}");
    assert!(e.to_string().starts_with("bomb.yaml:"), "{e}");
}

fn has_kustomize() -> bool {
    ["kustomize", "kubectl"].iter().any(|b| {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(b).is_file()))
            .unwrap_or(false)
    })
}

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
