//! Charts from repositories through the CLI: a chart directory's dependencies that
//! `charts/` lacks, fetched by Plumb from the real nginx Helm repository (basic auth, TLS)
//! and the real registry (htpasswd, TLS), and charts named by `--chart-url`, for `render`
//! and `sync`.

use std::collections::BTreeMap;

use plumb_testsupport::charts::{ChartServers, RawEntry, raw_archive};

use super::*;

fn configmap(name_suffix: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{{{ .Release.Name }}}}-{name_suffix}\ndata:\n  from: {value}\n"
    )
}

/// Every file below `dir` with its content.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.insert(format!("{}/", path.display()), Vec::new());
                stack.push(path);
            } else {
                out.insert(path.display().to_string(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// The names of the ConfigMaps in `out`'s YAML stream.
fn configmap_names(out: &Output) -> Vec<String> {
    let text = String::from_utf8_lossy(&out.stdout);
    let mut names: Vec<String> = text
        .split("---\n")
        .filter_map(|doc| serde_saphyr::from_str::<Value>(doc).ok())
        .filter(|v| v["kind"] == "ConfigMap")
        .map(|v| {
            v["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    names.sort();
    names
}

/// `base` 0.3.1 in the repository `stable` (basic auth) and `extras` 2.0.0 in the registry
/// at `charts/extras`; a chart `app` in `d/app` that lists both, neither vendored.
fn chart_with_remote_dependencies(servers: &ChartServers, d: &Path) {
    let base = servers
        .package(
            "base",
            "0.3.1",
            &[("templates/b.yaml", &configmap("base", "base"))],
        )
        .unwrap();
    servers.publish("stable", &base).unwrap();
    let extras = servers
        .package(
            "extras",
            "2.0.0",
            &[("templates/e.yaml", &configmap("extras", "extras"))],
        )
        .unwrap();
    servers.push("charts", &extras).unwrap();
    write(
        d,
        "app/Chart.yaml",
        &format!(
            "apiVersion: v2\nname: app\nversion: 1.0.0\ndependencies:\n- name: base\n  version: \"~0.3\"\n  repository: {}\n- name: extras\n  version: 2.x\n  repository: {}\n",
            servers.repo_url("stable"),
            servers.oci_url("charts"),
        ),
    );
    write(d, "app/templates/own.yaml", &configmap("own", "app"));
}

/// `--chart-credentials` and `--chart-ca` for the repository and the registry, with the
/// credentials file `creds`.
fn access_flags(servers: &ChartServers, creds: &Path) -> Vec<String> {
    let ca = servers.ca_cert_path().display().to_string();
    let creds = creds.display().to_string();
    let (repo, registry) = (servers.repo_url("stable"), servers.oci_url("charts"));
    vec![
        "--chart-credentials".into(),
        format!("{repo}={creds}"),
        "--chart-credentials".into(),
        format!("{registry}={creds}"),
        "--chart-ca".into(),
        format!("{repo}={ca}"),
        "--chart-ca".into(),
        format!("{registry}={ca}"),
    ]
}

fn run(args: &[String]) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    plumb(&args)
}

#[test]
fn render_fetches_dependencies_from_the_repository_and_the_registry() {
    let servers = ChartServers::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    chart_with_remote_dependencies(&servers, d);
    let creds = d.join("login.yaml");
    std::fs::write(
        &creds,
        format!(
            "username: {}\npassword: {}\n",
            servers.username(),
            servers.password()
        ),
    )
    .unwrap();
    let before = snapshot(d);
    let chart = d.join("app").display().to_string();

    let mut args = vec!["render".to_owned(), chart.clone()];
    args.extend(access_flags(&servers, &creds));
    let out = run(&args);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        configmap_names(&out),
        ["app-base", "app-extras", "app-own"],
        "{}",
        text(&out)
    );
    // The login went to both servers, each only to its own origin.
    assert_eq!(
        servers.requests("/stable/index.yaml"),
        ["GET /stable/index.yaml 200 user=plumb"]
    );
    assert_eq!(
        servers.requests("/stable/base-0.3.1.tgz"),
        ["GET /stable/base-0.3.1.tgz 200 user=plumb"]
    );
    // Nothing was written into the user's directory.
    assert_eq!(snapshot(d), before);

    // A wrong password: refused, naming the repository, never showing a password.
    let wrong = d.join("wrong.yaml");
    std::fs::write(&wrong, "username: plumb\npassword: not-the-password-4711\n").unwrap();
    let before = snapshot(d);
    let mut args = vec!["render".to_owned(), chart.clone()];
    args.extend(access_flags(&servers, &wrong));
    let out = run(&args);
    assert!(!out.status.success(), "{}", text(&out));
    let all = text(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&servers.repo_url("stable")) && stderr.contains("authentication failed"),
        "{all}"
    );
    assert!(stderr.contains("dependency \"base\""), "{all}");
    assert!(!all.contains("not-the-password-4711"), "{all}");
    assert!(!all.contains(servers.password()), "{all}");
    assert!(out.stdout.is_empty(), "{all}");
    assert_eq!(snapshot(d), before);

    // Without credentials the private repository answers 401: the error says so; Helm is
    // never let fetch.
    let out = plumb(&[
        "render",
        &chart,
        "--chart-ca",
        &format!(
            "{}={}",
            servers.repo_url("stable"),
            servers.ca_cert_path().display()
        ),
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("authentication failed"),
        "{}",
        text(&out)
    );
}

#[test]
fn render_a_chart_from_the_repository_and_the_registry_by_range() {
    let servers = ChartServers::start().unwrap();
    let version_cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-version\ndata:\n  version: {{ .Chart.Version | quote }}\n  colour: {{ .Values.colour | quote }}\n";
    for v in ["1.0.0", "1.2.0", "2.0.0"] {
        let tgz = servers
            .package(
                "app",
                v,
                &[
                    ("templates/v.yaml", version_cm),
                    ("values.yaml", "colour: red\n"),
                ],
            )
            .unwrap();
        servers.publish("stable", &tgz).unwrap();
        if v != "2.0.0" {
            servers.push("charts", &tgz).unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("login.yaml");
    std::fs::write(
        &creds,
        format!(
            "username: {}\npassword: {}\n",
            servers.username(),
            servers.password()
        ),
    )
    .unwrap();
    let values = dir.path().join("prod.yaml");
    std::fs::write(&values, "colour: blue\n").unwrap();
    let ca = servers.ca_cert_path().display().to_string();
    let version_of = |out: &Output| -> (String, String) {
        let text = String::from_utf8_lossy(&out.stdout);
        let cm = text
            .split("---\n")
            .filter_map(|doc| serde_saphyr::from_str::<Value>(doc).ok())
            .find(|v| v["kind"] == "ConfigMap")
            .unwrap_or_else(|| panic!("no ConfigMap: {}", self::text(out)));
        (
            cm["data"]["version"].as_str().unwrap().to_owned(),
            cm["data"]["colour"].as_str().unwrap().to_owned(),
        )
    };

    // A Helm repository: the newest 1.x, with a values file from the command line.
    let repo = servers.repo_url("stable");
    let out = plumb(&[
        "render",
        "--chart-url",
        &repo,
        "--chart",
        "app",
        "--chart-version",
        "^1",
        "--values",
        values.to_str().unwrap(),
        "--chart-credentials",
        &format!("{repo}={}", creds.display()),
        "--chart-ca",
        &format!("{repo}={ca}"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        version_of(&out),
        ("1.2.0".to_owned(), "blue".to_owned()),
        "{}",
        text(&out)
    );
    assert_eq!(
        servers.requests("/stable/app-1.2.0.tgz"),
        ["GET /stable/app-1.2.0.tgz 200 user=plumb"]
    );

    // An OCI registry: the chart is the URL's last part.
    let registry = servers.oci_url("charts");
    let out = plumb(&[
        "render",
        "--chart-url",
        &servers.oci_url("charts/app"),
        "--chart-version",
        "1.x",
        "--chart-credentials",
        &format!("{registry}={}", creds.display()),
        "--chart-ca",
        &format!("{registry}={ca}"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        version_of(&out),
        ("1.2.0".to_owned(), "red".to_owned()),
        "{}",
        text(&out)
    );

    // A chart from the repository whose dependency lives in the registry (another origin):
    // the registry's own --chart-credentials go there, the repository's stay home.
    servers
        .push(
            "charts",
            &servers
                .package(
                    "lib",
                    "1.0.0",
                    &[("templates/l.yaml", &configmap("lib", "lib"))],
                )
                .unwrap(),
        )
        .unwrap();
    let chart_yaml = format!(
        "apiVersion: v2\nname: withdep\nversion: 1.0.0\ndependencies:\n- name: lib\n  version: 1.x\n  repository: {registry}\n"
    );
    let archive = raw_archive(&[
        RawEntry::File("withdep/Chart.yaml", chart_yaml.as_bytes()),
        RawEntry::File(
            "withdep/templates/own.yaml",
            configmap("own", "withdep").as_bytes(),
        ),
    ])
    .unwrap();
    servers
        .publish_raw("deps", "withdep", "1.0.0", &archive)
        .unwrap();
    let deps = servers.repo_url("deps");
    let with_registry = [
        "--chart-credentials".to_owned(),
        format!("{registry}={}", creds.display()),
        "--chart-ca".to_owned(),
        format!("{registry}={ca}"),
    ];
    let mut args: Vec<String> = [
        "render",
        "--chart-url",
        &deps,
        "--chart",
        "withdep",
        "--chart-credentials",
        &format!("{deps}={}", creds.display()),
        "--chart-ca",
        &format!("{deps}={ca}"),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let out = run(&args);
    assert!(
        !out.status.success(),
        "no login for the registry: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("dependency \"lib\""),
        "{}",
        text(&out)
    );
    args.extend(with_registry);
    let out = run(&args);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        configmap_names(&out),
        ["withdep-lib", "withdep-own"],
        "{}",
        text(&out)
    );

    // A repository needs the chart's name; a wrong login names the repository.
    let out = plumb(&["render", "--chart-url", &repo]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--chart NAME"),
        "{}",
        text(&out)
    );
    let wrong = dir.path().join("wrong.yaml");
    std::fs::write(&wrong, "username: plumb\npassword: wrong-secret-815\n").unwrap();
    let out = plumb(&[
        "render",
        "--chart-url",
        &repo,
        "--chart",
        "app",
        "--chart-credentials",
        &format!("{repo}={}", wrong.display()),
        "--chart-ca",
        &format!("{repo}={ca}"),
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains(&format!("{repo}/index.yaml: authentication failed")),
        "{all}"
    );
    assert!(!all.contains("wrong-secret-815"), "{all}");
}

#[tokio::test]
async fn sync_and_diff_a_chart_from_the_registry() {
    let servers = ChartServers::start().unwrap();
    let (client, ns, dir) = setup("chart-url").await;
    for (v, colour) in [("1.0.0", "red"), ("1.1.0", "green")] {
        let tgz = servers
            .package(
                "app",
                v,
                &[(
                    "templates/cm.yaml",
                    &format!(
                        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{{{ .Release.Name }}}}-settings\ndata:\n  colour: {colour}\n  version: {{{{ .Chart.Version | quote }}}}\n"
                    ),
                )],
            )
            .unwrap();
        servers.push("charts", &tgz).unwrap();
    }
    let creds = dir.path().join("login.yaml");
    std::fs::write(
        &creds,
        format!(
            "username: {}\npassword: {}\n",
            servers.username(),
            servers.password()
        ),
    )
    .unwrap();
    let registry = servers.oci_url("charts");
    let access = [
        "--chart-credentials".to_owned(),
        format!("{registry}={}", creds.display()),
        "--chart-ca".to_owned(),
        format!("{registry}={}", servers.ca_cert_path().display()),
    ];
    let url = servers.oci_url("charts/app");
    let mut args: Vec<String> = [
        "sync",
        "--chart-url",
        &url,
        "--chart-version",
        "~1.0",
        "--name",
        "web",
        "-n",
        ns.name(),
        "-o",
        "json",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(access.iter().cloned());
    let out = run(&args);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("source: chart app 1.0.0 (sha256:"),
        "{}",
        text(&out)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(action_of(&report, "ConfigMap/web-settings"), "created");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    let cm = cms.get("web-settings").await.unwrap();
    assert_eq!(cm.data.unwrap()["colour"], "red");

    // The newest 1.x differs: diff shows it (exit 1), sync applies it.
    let mut diff: Vec<String> = [
        "diff",
        "--chart-url",
        &url,
        "--chart-version",
        "1.x",
        "--name",
        "web",
        "-n",
        ns.name(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    diff.extend(access.iter().cloned());
    let out = run(&diff);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("green"),
        "{}",
        text(&out)
    );
    let pos = args.iter().position(|a| a == "~1.0").unwrap();
    args[pos] = "1.x".into();
    let out = run(&args);
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(action_of(&report, "ConfigMap/web-settings"), "configured");
    let cm = cms.get("web-settings").await.unwrap();
    assert_eq!(cm.data.unwrap()["colour"], "green");
    let out = run(&diff);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // A chart from the registry that brings a CRD in crds/ and renders an object of it:
    // with --lookup its kind is known to Helm before the cluster serves it.
    let group = format!("{}.charturl.example.com", ns.name());
    let gizmos = servers
        .package(
            "gizmos",
            "0.1.0",
            &[
                ("crds/widgets.yaml", &super::helm::crd(&group)),
                (
                    "templates/w.yaml",
                    &format!("apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: w\n"),
                ),
            ],
        )
        .unwrap();
    servers.push("charts", &gizmos).unwrap();
    let mut render: Vec<String> = [
        "render",
        "--chart-url",
        &servers.oci_url("charts/gizmos"),
        "--lookup",
        "-n",
        ns.name(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    render.extend(access.iter().cloned());
    let out = run(&render);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("kind: Widget"),
        "{}",
        text(&out)
    );
}
