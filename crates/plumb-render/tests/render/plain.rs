//! Plain manifests: order, sources, Lists, YAML rules, errors with file and line, symlinks, limits.

use std::path::{Path, PathBuf};

use plumb_render::{RenderError, RenderOptions, render, render_path};
use serde_json::json;

use crate::{cm, err, write};

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
