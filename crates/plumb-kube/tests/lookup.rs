//! Helm's `lookup` through [`LookupProxy`], against the real control plane with the real
//! `helm` (on PATH): a chart reads what its identity may read and nothing else, the proxy
//! forwards reads only (a real `helm install` through it and hand-made requests with the
//! proxy's own token: writes, watches, exec, proxy subresources, impersonation headers), and
//! its limits hold.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::PostParams;
use kube::{Api, Client};
use plumb_kube::{ExtraKind, LookupLimits, LookupProxy};
use plumb_render::{ChartOptions, LookupAccess, RenderOptions, render_path};
use plumb_testsupport::http;
use plumb_testsupport::kube::{TestNamespace, client};
use serde_json::json;

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

/// A chart `look` in `dir` whose ConfigMap `copy` holds what `lookup` found of the
/// ConfigMap `namespace/name` (`none` when nothing).
fn lookup_chart(dir: &Path, namespace: &str, name: &str) {
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        dir.join("Chart.yaml"),
        "apiVersion: v2\nname: look\nversion: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("templates/copy.yaml"),
        format!(
            "{{{{- $src := lookup \"v1\" \"ConfigMap\" \"{namespace}\" \"{name}\" }}}}\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: copy\ndata:\n  \
             found: {{{{ if $src }}}}{{{{ $src.data.greeting | quote }}}}{{{{ else }}}}\"none\"{{{{ end }}}}\n"
        ),
    )
    .unwrap();
}

fn render(
    dir: &Path,
    namespace: &str,
    proxy: Option<&LookupProxy>,
) -> plumb_render::Result<String> {
    let opts = RenderOptions {
        helm: Some(helm()),
        chart: ChartOptions {
            namespace: Some(namespace.to_owned()),
            lookup: proxy.map(|p| LookupAccess {
                server: p.url(),
                token: p.token().to_owned(),
            }),
            ..ChartOptions::default()
        },
        ..RenderOptions::default()
    };
    let ms = render_path(dir, Path::new(""), &opts)?;
    Ok(ms[0].object["data"]["found"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// Renders on a blocking thread while the proxy serves from the runtime.
async fn render_async(
    dir: &Path,
    namespace: &str,
    proxy: Option<&LookupProxy>,
) -> plumb_render::Result<String> {
    tokio::task::block_in_place(|| render(dir, namespace, proxy))
}

async fn config_map(client: &Client, ns: &str, name: &str, greeting: &str) -> Result<()> {
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": name},
        "data": {"greeting": greeting},
    }))?;
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &cm)
        .await
        .with_context(|| format!("creating ConfigMap {ns}/{name}"))?;
    Ok(())
}

/// A ServiceAccount `reader` in `ns` that may get and list ConfigMaps of `ns` only, and a
/// client that impersonates it (as the agent does for a Sync's `serviceAccountName`).
async fn reader(admin: &Client, ns: &str) -> Result<Client> {
    let pp = PostParams::default();
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "reader"}}))?,
        )
        .await?;
    Api::<Role>::namespaced(admin.clone(), ns)
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": "reader"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
            }))?,
        )
        .await?;
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": "reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}],
            }))?,
        )
        .await?;
    let mut config = kube::Config::infer().await?;
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{ns}:reader"));
    Ok(Client::try_from(config)?)
}

fn gets_only(forwarded: &BTreeMap<String, u64>) -> bool {
    forwarded.keys().all(|m| m == "GET")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chart_looks_up_what_its_identity_may_read_and_nothing_else() -> Result<()> {
    let admin = client().await?;
    let ns = TestNamespace::create(&admin, "lookup").await?;
    let other = TestNamespace::create(&admin, "lookup-other").await?;
    config_map(&admin, ns.name(), "source", "hello").await?;
    config_map(&admin, other.name(), "source", "not yours").await?;
    let reader = reader(&admin, ns.name()).await?;
    let t = tempfile::tempdir()?;
    let own = t.path().join("own");
    let foreign = t.path().join("foreign");
    lookup_chart(&own, ns.name(), "source");
    lookup_chart(&foreign, other.name(), "source");

    // Off (the default): lookup finds nothing, as in `helm template`.
    assert_eq!(render_async(&own, ns.name(), None).await?, "none");

    // On: the chart reads the ConfigMap its identity may read, through reads only.
    let proxy = LookupProxy::start(reader.clone(), LookupLimits::default()).await?;
    assert_eq!(render_async(&own, ns.name(), Some(&proxy)).await?, "hello");
    let stats = proxy.stats();
    eprintln!("one render with lookup through the proxy: {stats:?}");
    assert!(gets_only(&stats.forwarded), "{stats:?}");
    assert!(stats.forwarded_total() > 0, "{stats:?}");
    assert_eq!(
        stats.refused, 0,
        "Helm asked for nothing but reads: {stats:?}"
    );

    // A ConfigMap of another namespace: forbidden, as Helm says with no access; the error
    // names the template, the identity and what it may not do, and never the token.
    let e = render_async(&foreign, ns.name(), Some(&proxy))
        .await
        .expect_err("the identity may not read the other namespace");
    let text = e.to_string();
    assert!(text.contains("templates/copy.yaml"), "{text}");
    assert!(text.contains("forbidden"), "{text}");
    assert!(
        text.contains(&format!("system:serviceaccount:{}:reader", ns.name())),
        "{text}"
    );
    assert!(!text.contains("not yours"), "{text}");
    assert!(
        !text.contains(proxy.token()),
        "the token never shows: {text}"
    );
    assert!(gets_only(&proxy.stats().forwarded));
    Ok(())
}

/// A request to the proxy with its own token.
async fn send(
    proxy: &LookupProxy,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<http::Reply> {
    let addr: SocketAddr = proxy
        .url()
        .trim_start_matches("http://")
        .parse()
        .context("the proxy's address")?;
    http::request(
        addr,
        method,
        &format!("/{}{path}", proxy.token()),
        headers,
        body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_forwards_reads_only_even_for_an_all_powerful_identity() -> Result<()> {
    let admin = client().await?;
    let ns = TestNamespace::create(&admin, "lookup-attack").await?;
    let n = ns.name();
    config_map(&admin, n, "kept", "hello").await?;
    let cms = Api::<ConfigMap>::namespaced(admin.clone(), n);
    let before = cms.get("kept").await?.metadata.resource_version;
    // The agent's own identity (here the admin's): the worst case.
    let proxy = LookupProxy::start(admin.clone(), LookupLimits::default()).await?;
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "written"}})
        .to_string();
    let json = [("content-type", "application/json")];
    let merge = [("content-type", "application/merge-patch+json")];
    let refused = [
        (
            "POST",
            format!("/api/v1/namespaces/{n}/configmaps"),
            &json[..],
            cm.as_bytes(),
        ),
        (
            "PUT",
            format!("/api/v1/namespaces/{n}/configmaps/kept"),
            &json[..],
            cm.as_bytes(),
        ),
        (
            "PATCH",
            format!("/api/v1/namespaces/{n}/configmaps/kept"),
            &merge[..],
            br#"{"data":{"greeting":"changed"}}"#,
        ),
        (
            "DELETE",
            format!("/api/v1/namespaces/{n}/configmaps/kept"),
            &[][..],
            &b""[..],
        ),
        (
            "DELETE",
            format!("/api/v1/namespaces/{n}/configmaps"),
            &[][..],
            &b""[..],
        ),
        (
            "HEAD",
            format!("/api/v1/namespaces/{n}/configmaps/kept"),
            &[][..],
            &b""[..],
        ),
        (
            "GET",
            format!("/api/v1/namespaces/{n}/configmaps?watch=true"),
            &[][..],
            &b""[..],
        ),
        (
            "GET",
            format!("/api/v1/watch/namespaces/{n}/configmaps"),
            &[][..],
            &b""[..],
        ),
        (
            "GET",
            format!("/api/v1/namespaces/{n}/pods/p/exec?command=sh"),
            &[][..],
            &b""[..],
        ),
        (
            "GET",
            format!("/api/v1/namespaces/{n}/pods/p/log"),
            &[][..],
            &b""[..],
        ),
        (
            "GET",
            format!("/api/v1/namespaces/{n}/services/s:80/proxy/"),
            &[][..],
            &b""[..],
        ),
        (
            "GET",
            "/api/v1/nodes/localhost/proxy/metrics".to_owned(),
            &[][..],
            &b""[..],
        ),
        (
            "GET",
            format!("/api/v1/namespaces/{n}/configmaps/kept"),
            &[("connection", "Upgrade"), ("upgrade", "websocket")][..],
            &b""[..],
        ),
        (
            "GET",
            format!("/api/v1/namespaces/{n}/configmaps?dryRun=All"),
            &[][..],
            &b""[..],
        ),
        ("GET", "/metrics".to_owned(), &[][..], &b""[..]),
    ];
    for (method, path, headers, body) in &refused {
        let reply = send(&proxy, method, path, headers, body).await?;
        assert!(
            matches!(reply.status, 401 | 403 | 405),
            "{method} {path}: {} {}",
            reply.status,
            reply.body
        );
        if *method != "HEAD" {
            assert_eq!(
                reply.json()["kind"],
                "Status",
                "{method} {path}: {}",
                reply.body
            );
            assert!(
                reply.json()["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("plumb's lookup proxy refused")),
                "{method} {path}: {}",
                reply.body
            );
        }
    }
    // Without the token (or with another), nothing is forwarded either.
    let addr: SocketAddr = proxy.url().trim_start_matches("http://").parse()?;
    for path in [
        format!("/api/v1/namespaces/{n}/configmaps/kept"),
        format!("/{}x/api/v1/namespaces/{n}/configmaps/kept", proxy.token()),
    ] {
        let reply = http::request(
            addr,
            "GET",
            &path,
            &[("authorization", &format!("Bearer {}", proxy.token()))],
            b"",
        )
        .await?;
        assert_eq!(reply.status, 401, "{path}: {}", reply.body);
    }
    let stats = proxy.stats();
    assert_eq!(
        stats.forwarded_total(),
        0,
        "nothing was forwarded: {stats:?}"
    );
    assert_eq!(stats.refused, refused.len() as u64 + 2, "{stats:?}");

    // A read is forwarded (the control case), and headers that would change the identity
    // are not: an impersonation header asking for a user who may read nothing is dropped.
    let reply = send(
        &proxy,
        "GET",
        &format!("/api/v1/namespaces/{n}/configmaps/kept"),
        &[
            ("impersonate-user", "nobody-at-all"),
            ("authorization", "Bearer nothing"),
        ],
        b"",
    )
    .await?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["data"]["greeting"], "hello");
    let stats = proxy.stats();
    assert_eq!(
        stats.forwarded,
        BTreeMap::from([("GET".to_owned(), 1)]),
        "{stats:?}"
    );

    // Nothing changed in the cluster.
    assert_eq!(cms.get("kept").await?.metadata.resource_version, before);
    assert!(cms.get_opt("written").await?.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_through_the_proxy_writes_nothing() -> Result<()> {
    let admin = client().await?;
    let ns = TestNamespace::create(&admin, "lookup-install").await?;
    let t = tempfile::tempdir()?;
    let chart = t.path().join("chart");
    lookup_chart(&chart, ns.name(), "source");
    let proxy = LookupProxy::start(admin.clone(), LookupLimits::default()).await?;
    // Helm with the kubeconfig the render gets, but told to install: it must write (the
    // release Secret, the ConfigMap), and every write is refused.
    let kubeconfig = t.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "p", "cluster": {"server": format!("{}/{}", proxy.url(), proxy.token())}}],
            "users": [{"name": "p", "user": {}}],
            "contexts": [{"name": "p", "context": {"cluster": "p", "user": "p", "namespace": ns.name()}}],
            "current-context": "p",
        })
        .to_string(),
    )?;
    let home = t.path().join("home");
    std::fs::create_dir(&home)?;
    let out = tokio::process::Command::new(helm())
        .args(["install", "look"])
        .arg(&chart)
        .arg(format!("--namespace={}", ns.name()))
        // Past the OpenAPI download (refused too) to the writes.
        .arg("--disable-openapi-validation")
        .env_clear()
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", &home)
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "helm install must fail: {stderr}");
    assert!(stderr.contains("plumb's lookup proxy refused"), "{stderr}");
    let stats = proxy.stats();
    assert!(gets_only(&stats.forwarded), "{stats:?}");
    assert!(stats.refused > 0, "{stats:?}");
    assert!(
        stats.refusals.iter().any(|r| r.starts_with("POST ")),
        "{stats:?}"
    );
    assert!(
        Api::<ConfigMap>::namespaced(admin.clone(), ns.name())
            .get_opt("copy")
            .await?
            .is_none()
    );
    let secrets = Api::<Secret>::namespaced(admin.clone(), ns.name())
        .list(&Default::default())
        .await?;
    assert!(
        secrets.items.iter().all(|s| !s
            .metadata
            .name
            .as_deref()
            .unwrap_or("")
            .starts_with("sh.helm.release")),
        "no release was stored"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_counts_and_limits_requests_and_response_sizes() -> Result<()> {
    let admin = client().await?;
    let ns = TestNamespace::create(&admin, "lookup-limits").await?;
    config_map(&admin, ns.name(), "big", &"x".repeat(4096)).await?;
    let path = format!("/api/v1/namespaces/{}/configmaps/big", ns.name());
    let proxy = LookupProxy::start(
        admin.clone(),
        LookupLimits {
            max_requests: 2,
            ..LookupLimits::default()
        },
    )
    .await?;
    for _ in 0..2 {
        assert_eq!(send(&proxy, "GET", &path, &[], b"").await?.status, 200);
    }
    let reply = send(&proxy, "GET", &path, &[], b"").await?;
    assert_eq!(reply.status, 429, "{}", reply.body);
    assert!(reply.body.contains("used its 2 requests"), "{}", reply.body);
    assert_eq!(proxy.stats().forwarded_total(), 2);

    let small = LookupProxy::start(
        admin.clone(),
        LookupLimits {
            max_response_bytes: 1024,
            ..LookupLimits::default()
        },
    )
    .await?;
    let reply = send(&small, "GET", &path, &[], b"").await?;
    assert_eq!(reply.status, 507, "{}", reply.body);
    assert!(!reply.body.contains("xxxx"), "{}", reply.body);
    assert!(
        reply.body.contains("larger than 1024 bytes"),
        "{}",
        reply.body
    );
    assert_eq!(small.stats().bytes, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lookup_a_kind_the_cluster_does_not_serve_yet_is_a_clear_error() -> Result<()> {
    let admin = client().await?;
    let ns = TestNamespace::create(&admin, "lookup-kinds").await?;
    let t = tempfile::tempdir()?;
    let dir = t.path();
    std::fs::create_dir_all(dir.join("templates"))?;
    std::fs::write(
        dir.join("Chart.yaml"),
        "apiVersion: v2\nname: kinds\nversion: 0.1.0\n",
    )?;
    std::fs::write(
        dir.join("templates/gadget.yaml"),
        "apiVersion: nowhere.plumb.dev/v1\nkind: Gadget\nmetadata:\n  name: g\n",
    )?;
    let proxy = LookupProxy::start(admin.clone(), LookupLimits::default()).await?;
    let opts = RenderOptions {
        helm: Some(helm()),
        chart: ChartOptions {
            namespace: Some(ns.name().to_owned()),
            lookup: Some(LookupAccess {
                server: proxy.url(),
                token: proxy.token().to_owned(),
            }),
            ..ChartOptions::default()
        },
        ..RenderOptions::default()
    };
    let e = tokio::task::block_in_place(|| render_path(dir, Path::new(""), &opts))
        .expect_err("the kind is unknown to the cluster");
    let text = e.to_string();
    assert!(text.contains("Gadget"), "{text}");
    assert!(text.contains("apply the CRDs first"), "{text}");
    // Without lookup the same chart renders (nothing asks the cluster).
    let offline = RenderOptions {
        chart: ChartOptions {
            lookup: None,
            ..opts.chart.clone()
        },
        ..opts.clone()
    };
    assert_eq!(render_path(dir, Path::new(""), &offline)?.len(), 1);

    // The chart brings the CRD in crds/: the proxy's discovery lists its kind (the cluster
    // still does not serve it), so the first install renders with lookup.
    std::fs::create_dir_all(dir.join("crds"))?;
    std::fs::write(
        dir.join("crds/gadgets.yaml"),
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: gadgets.nowhere.plumb.dev\nspec:\n  group: nowhere.plumb.dev\n  names: {kind: Gadget, plural: gadgets, singular: gadget, listKind: GadgetList}\n  scope: Namespaced\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}\n",
    )?;
    let kinds: Vec<ExtraKind> = plumb_render::chart_crd_kinds(dir);
    assert_eq!(kinds.len(), 1, "{kinds:?}");
    let proxy =
        LookupProxy::start_with_kinds(admin.clone(), LookupLimits::default(), kinds).await?;
    let with_kinds = RenderOptions {
        chart: ChartOptions {
            include_crds: true,
            lookup: Some(LookupAccess {
                server: proxy.url(),
                token: proxy.token().to_owned(),
            }),
            ..opts.chart.clone()
        },
        ..opts.clone()
    };
    let rendered = tokio::task::block_in_place(|| render_path(dir, Path::new(""), &with_kinds))?;
    let mut kinds: Vec<String> = rendered.iter().map(|m| m.key().kind.clone()).collect();
    kinds.sort();
    assert_eq!(kinds, ["CustomResourceDefinition", "Gadget"]);
    assert_eq!(proxy.stats().refused, 0, "{:?}", proxy.stats().refusals);
    Ok(())
}
