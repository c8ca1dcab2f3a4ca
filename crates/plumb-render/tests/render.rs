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

/// A tiny HTTP server on 127.0.0.1 that serves `body` to every request and counts the
/// connections it accepts: the proxy variables Plumb sets do not cover loopback, so only the
/// pre-build check keeps Kustomize from fetching from it.
struct LoopbackServer {
    port: u16,
    accepts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl LoopbackServer {
    fn start(body: &'static str) -> LoopbackServer {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (count, done) = (accepts.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            loop {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        count.fetch_add(1, Ordering::SeqCst);
                        conn.set_nonblocking(false).unwrap();
                        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        let mut req = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => req.extend_from_slice(&buf[..n]),
                            }
                        }
                        let _ = write!(
                            conn,
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    // Pending connections are drained before the stop flag is looked at.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if done.load(Ordering::SeqCst) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
        });
        LoopbackServer {
            port,
            accepts,
            stop,
            thread,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// Stops the server; returns how many connections it accepted.
    fn finish(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap();
        self.accepts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Renders `app/` of a fresh root holding `app/kustomization.yaml` (made from the loopback
/// URL by `kustomization`) plus `files`; asserts the render is refused as remote at `field`
/// of `app/kustomization.yaml`, naming the URL, and that nothing was fetched.
#[track_caller]
fn assert_url_refused(kustomization: impl Fn(&str) -> String, files: &[(&str, &str)], field: &str) {
    let server = LoopbackServer::start(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  stolen: \"yes\"\n",
    );
    let url = server.url("x");
    let t = tempfile::tempdir().unwrap();
    write(t.path(), "app/kustomization.yaml", &kustomization(&url));
    write(t.path(), "app/cm.yaml", &cm("settings"));
    for (rel, text) in files {
        write(t.path(), rel, text);
    }
    let result = render_path(t.path(), Path::new("app"), &RenderOptions::default());
    let accepts = server.finish();
    let e = match result {
        Ok(ms) => panic!(
            "{field}: rendered {} objects from a URL ({accepts} fetches)",
            ms.len()
        ),
        Err(e) => e,
    };
    let text = e.to_string();
    assert!(
        matches!(&e, RenderError::RemoteResource { path, field: f, .. }
            if path == Path::new("app/kustomization.yaml") && f == field),
        "{field}: {text}"
    );
    assert!(text.contains(&url), "{text}");
    assert!(text.contains("vendor it into the repository"), "{text}");
    assert_eq!(
        accepts, 0,
        "{field}: Kustomize connected to the loopback server"
    );
}

#[test]
fn kustomize_loopback_patch_url_is_never_fetched() {
    let server = LoopbackServer::start(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  stolen: \"yes\"\n",
    );
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "app/kustomization.yaml",
        &format!(
            "resources:\n- cm.yaml\npatches:\n- path: {}\n",
            server.url("patch.yaml")
        ),
    );
    write(t.path(), "app/cm.yaml", &cm("settings"));
    let result = render_path(t.path(), Path::new("app"), &RenderOptions::default());
    let accepts = server.finish();
    let e = match result {
        Ok(ms) => panic!("rendered {ms:?} after {accepts} fetches from loopback"),
        Err(e) => e,
    };
    assert_eq!(
        e.to_string(),
        format!(
            "app/kustomization.yaml:4: `patches[0].path` names the remote location \"http://127.0.0.1:{}/patch.yaml\"; Plumb lets Kustomize read only files in the repository, so vendor it into the repository and name it by a relative path",
            server_port(&e)
        )
    );
    assert_eq!(accepts, 0, "Kustomize connected to the loopback server");
}

/// The port in a refused loopback URL.
fn server_port(e: &RenderError) -> u16 {
    match e {
        RenderError::RemoteResource { entry, .. } => entry
            .trim_start_matches("http://127.0.0.1:")
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap(),
        other => panic!("{other}"),
    }
}

#[test]
fn kustomize_url_in_patches_strategic_merge_refused() {
    assert_url_refused(
        |url| format!("resources: [cm.yaml]\npatchesStrategicMerge:\n- {url}\n"),
        &[],
        "patchesStrategicMerge[0]",
    );
}

#[test]
fn kustomize_url_in_patches_json6902_refused() {
    assert_url_refused(
        |url| {
            format!(
                "resources: [cm.yaml]\npatchesJson6902:\n- target: {{version: v1, kind: ConfigMap, name: settings}}\n  path: {url}\n"
            )
        },
        &[],
        "patchesJson6902[0].path",
    );
}

#[test]
fn kustomize_url_in_openapi_path_refused() {
    assert_url_refused(
        |url| format!("resources: [cm.yaml]\nopenapi:\n  path: {url}\n"),
        &[],
        "openapi.path",
    );
}

#[test]
fn kustomize_url_in_configurations_refused() {
    assert_url_refused(
        |url| format!("resources: [cm.yaml]\nconfigurations:\n- {url}\n"),
        &[],
        "configurations[0]",
    );
}

#[test]
fn kustomize_url_in_crds_refused() {
    assert_url_refused(
        |url| format!("resources: [cm.yaml]\ncrds:\n- {url}\n"),
        &[],
        "crds[0]",
    );
}

#[test]
fn kustomize_url_in_replacements_path_refused() {
    assert_url_refused(
        |url| format!("resources: [cm.yaml]\nreplacements:\n- path: {url}\n"),
        &[],
        "replacements[0].path",
    );
}

#[test]
fn kustomize_url_in_generator_sources_refused() {
    assert_url_refused(
        |url| format!("configMapGenerator:\n- name: c\n  files:\n  - {url}\n"),
        &[],
        "configMapGenerator[0].files[0]",
    );
    assert_url_refused(
        |url| format!("configMapGenerator:\n- name: c\n  files:\n  - ok.txt\n  - stolen={url}\n"),
        &[("app/ok.txt", "fine\n")],
        "configMapGenerator[0].files[1]",
    );
    assert_url_refused(
        |url| format!("configMapGenerator:\n- name: c\n  envs:\n  - {url}\n"),
        &[],
        "configMapGenerator[0].envs[0]",
    );
    assert_url_refused(
        |url| format!("secretGenerator:\n- name: s\n  env: {url}\n"),
        &[],
        "secretGenerator[0].env",
    );
}

#[test]
fn kustomize_url_in_plugin_lists_refused() {
    for field in ["generators", "transformers", "validators"] {
        assert_url_refused(
            |url| format!("resources: [cm.yaml]\n{field}:\n- {url}\n"),
            &[],
            &format!("{field}[0]"),
        );
    }
}

#[test]
fn kustomize_url_in_inline_builtin_transformer_refused() {
    assert_url_refused(
        |url| {
            format!(
                "resources: [cm.yaml]\ntransformers:\n- |\n  apiVersion: builtin\n  kind: PatchTransformer\n  metadata:\n    name: steal\n  path: {url}\n"
            )
        },
        &[],
        "transformers[0] (inline) (PatchTransformer).path",
    );
}

#[test]
fn kustomize_url_in_transformer_config_file_refused() {
    let server = LoopbackServer::start("[]");
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "app/kustomization.yaml",
        "resources: [cm.yaml]\ntransformers:\n- plugins/patch.yaml\n",
    );
    write(t.path(), "app/cm.yaml", &cm("settings"));
    write(
        t.path(),
        "app/plugins/patch.yaml",
        &format!(
            "apiVersion: builtin\nkind: PatchJson6902Transformer\nmetadata:\n  name: steal\ntarget: {{version: v1, kind: ConfigMap, name: settings}}\npath: {}\n",
            server.url("ops.yaml")
        ),
    );
    let result = render_path(t.path(), Path::new("app"), &RenderOptions::default());
    let accepts = server.finish();
    let e = result.unwrap_err();
    assert!(
        matches!(&e, RenderError::RemoteResource { path, field, line: 6, .. }
            if path == Path::new("app/plugins/patch.yaml") && field == "document 0 (PatchJson6902Transformer).path"),
        "{e}"
    );
    assert_eq!(accepts, 0);
}

#[test]
fn kustomize_plugin_lists_leaving_the_root_refused() {
    // `generators`/`transformers`/`validators` directories are loaded like bases, which the
    // root-only restrictor does not confine; outside the root there is a kustomization that
    // would generate a ConfigMap from a file out there.
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "outside/kustomization.yaml",
        "resources: [gen.yaml]\n",
    );
    write(
        t.path(),
        "outside/gen.yaml",
        "apiVersion: builtin\nkind: ConfigMapGenerator\nmetadata:\n  name: stolen\nliterals:\n- secret=outside-the-root\n",
    );
    let root = t.path().join("repo");
    for (dir, text, field, entry) in [
        (
            "app",
            "generators:\n- ../../outside\n",
            "generators[0]",
            "../../outside",
        ),
        (
            "",
            "transformers:\n- ../outside\n",
            "transformers[0]",
            "../outside",
        ),
        (
            "app",
            "resources: [cm.yaml]\nvalidators:\n- ../../outside/gen.yaml\n",
            "validators[0]",
            "../../outside/gen.yaml",
        ),
    ] {
        let _ = fs::remove_dir_all(&root);
        let file = Path::new(dir).join("kustomization.yaml");
        write(&root, file.to_str().unwrap(), text);
        write(&root, "app/cm.yaml", &cm("settings"));
        let e = render_path(&root, Path::new(dir), &RenderOptions::default()).unwrap_err();
        assert!(
            matches!(&e, RenderError::ReferenceOutsideRoot { path, field: f, entry: en, .. }
                if *path == file && f == field && en == entry),
            "{field}: {e}"
        );
        assert!(e.to_string().contains("leaves the source root"), "{e}");
        assert_eq!(e.metric_label(), "render_outside_root");
    }
}

#[test]
fn kustomize_nested_kustomizations_are_checked() {
    // Through `resources:` (a base) and through `components:`.
    let server = LoopbackServer::start("[]");
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "app/kustomization.yaml",
        "resources:\n- ../base\n",
    );
    write(
        t.path(),
        "base/kustomization.yaml",
        &format!(
            "resources: [cm.yaml]\npatches:\n- path: {}\n",
            server.url("p.yaml")
        ),
    );
    write(t.path(), "base/cm.yaml", &cm("settings"));
    let e = render_path(t.path(), Path::new("app"), &RenderOptions::default()).unwrap_err();
    assert!(
        matches!(&e, RenderError::RemoteResource { path, field, .. }
            if path == Path::new("base/kustomization.yaml") && field == "patches[0].path"),
        "{e}"
    );

    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("repo");
    write(
        &root,
        "app/kustomization.yaml",
        "resources: [cm.yaml]\ncomponents:\n- ../components/extra\n",
    );
    write(&root, "app/cm.yaml", &cm("settings"));
    write(
        &root,
        "components/extra/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\ntransformers:\n- ../../../x\n",
    );
    let e = render_path(&root, Path::new("app"), &RenderOptions::default()).unwrap_err();
    assert!(
        matches!(&e, RenderError::ReferenceOutsideRoot { path, field, .. }
            if path == Path::new("components/extra/kustomization.yaml") && field == "transformers[0]"),
        "{e}"
    );
    assert_eq!(server.finish(), 0);
}

#[test]
fn kustomize_plugin_directory_is_checked_as_plugin_configs() {
    let server = LoopbackServer::start("[]");
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "app/kustomization.yaml",
        "resources: [cm.yaml]\ntransformers:\n- plugins\n",
    );
    write(t.path(), "app/cm.yaml", &cm("settings"));
    write(
        t.path(),
        "app/plugins/kustomization.yaml",
        "resources: [patch.yaml]\n",
    );
    write(
        t.path(),
        "app/plugins/patch.yaml",
        &format!(
            "apiVersion: builtin\nkind: PatchTransformer\nmetadata:\n  name: steal\npath: {}\n",
            server.url("p.yaml")
        ),
    );
    let e = render_path(t.path(), Path::new("app"), &RenderOptions::default()).unwrap_err();
    assert!(
        matches!(&e, RenderError::RemoteResource { path, .. } if path == Path::new("app/plugins/patch.yaml")),
        "{e}"
    );
    // Nor may that kustomization rewrite the configs it gathers after the check.
    write(
        t.path(),
        "app/plugins/kustomization.yaml",
        "resources: [labels.yaml]\npatches:\n- path: set-path.yaml\n",
    );
    write(
        t.path(),
        "app/plugins/labels.yaml",
        "apiVersion: builtin\nkind: LabelTransformer\nmetadata:\n  name: l\nlabels: {a: b}\nfieldSpecs: [{path: metadata/labels, create: true}]\n",
    );
    let e = render_path(t.path(), Path::new("app"), &RenderOptions::default()).unwrap_err();
    assert!(
        matches!(&e, RenderError::KustomizeRefused { path, field, reason: plumb_render::Refusal::RewritesPluginConfig, .. }
            if path == Path::new("app/plugins/kustomization.yaml") && field == "patches"),
        "{e}"
    );
    assert_eq!(server.finish(), 0);
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
