//! The pre-build check against a loopback server: no URL in any file-naming field is ever
//! fetched, plugin lists and nested kustomizations are checked too.

use std::fs;
use std::path::Path;
use std::time::Duration;

use plumb_render::{RenderError, RenderOptions, render_path};

use crate::{cm, write};

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
