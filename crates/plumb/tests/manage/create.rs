//! `create`, `get`, `suspend` and `resume`.

use super::*;

#[test]
fn create_export_prints_the_objects() {
    let source = documents(&ok(&[
        "create",
        "source",
        "web",
        "--url",
        "https://git.example.com/web.git",
        "--semver",
        ">=1.0.0 <2.0.0",
        "--interval",
        "2m",
        "--secret-ref",
        "git-creds",
        "--verify-mode",
        "head",
        "--verify-allowed-signers-ref",
        "ConfigMap/signers/allowed_signers",
        "--verify-policy-ref",
        "Secret/policy/rules.yaml",
        "--ignore",
        "docs/",
        "--receiver",
        "github",
        "-n",
        "team-a",
        "--export",
    ]));
    assert_eq!(source.len(), 1);
    let expected = json!({
        "apiVersion": "plumb.dev/v1alpha1",
        "kind": "GitSource",
        "metadata": {
            "name": "web",
            "namespace": "team-a",
            "annotations": { "plumb.dev/receiver": "github" },
        },
        "spec": {
            "url": "https://git.example.com/web.git",
            "ref": { "semver": ">=1.0.0 <2.0.0" },
            "interval": "2m",
            "secretRef": { "name": "git-creds" },
            "verify": {
                "mode": "head",
                "allowedSignersRef": { "kind": "ConfigMap", "name": "signers", "key": "allowed_signers" },
                "policyRef": { "kind": "Secret", "name": "policy", "key": "rules.yaml" },
            },
            "ignore": "docs/",
        }
    });
    assert_eq!(source[0], expected);

    let sync = documents(&ok(&[
        "create",
        "sync",
        "web",
        "--source",
        "infra/web",
        "--path",
        "apps/web",
        "--prune",
        "--interval",
        "5m",
        "--drift",
        "detect",
        "--depends-on",
        "infra/crds",
        "--depends-on",
        "db",
        "--target-namespace",
        "web",
        "--service-account",
        "deployer",
        "--wait",
        "--timeout",
        "3m",
        "-n",
        "team-a",
        "--export",
    ]));
    let expected = json!({
        "apiVersion": "plumb.dev/v1alpha1",
        "kind": "Sync",
        "metadata": { "name": "web", "namespace": "team-a" },
        "spec": {
            "sourceRef": { "kind": "GitSource", "name": "web", "namespace": "infra" },
            "path": "apps/web",
            "prune": true,
            "interval": "5m",
            "drift": "detect",
            "dependsOn": [ { "name": "crds", "namespace": "infra" }, { "name": "db" } ],
            "targetNamespace": "web",
            "serviceAccountName": "deployer",
            "wait": true,
            "timeout": "3m",
        }
    });
    assert_eq!(sync, [expected]);
}

#[test]
fn create_sync_helm_flags_fill_spec_helm() {
    let sync = documents(&ok(&[
        "create",
        "sync",
        "shop",
        "--source",
        "fleet",
        "--path",
        "charts/shop",
        "--release-name",
        "shop-prod",
        "--values",
        "env/prod/shop.yaml",
        "--values",
        "env/prod/extra.yaml",
        "--values-from",
        "ConfigMap/shop-values",
        "--values-from",
        "secret/shop-db/password@db.password",
        "--values-from",
        "ConfigMap/extra/more.yaml?",
        "--set-json",
        r#"image={"repository":"shop","tag":"v1"}"#,
        "--set-json",
        r#"image.tag="v2""#,
        "--set-json",
        "replicaCount=3",
        "--include-crds",
        "--lookup",
        "-n",
        "team-a",
        "--export",
    ]));
    let expected = json!({
        "apiVersion": "plumb.dev/v1alpha1",
        "kind": "Sync",
        "metadata": { "name": "shop", "namespace": "team-a" },
        "spec": {
            "sourceRef": { "kind": "GitSource", "name": "fleet" },
            "path": "charts/shop",
            "drift": "correct",
            "helm": {
                "releaseName": "shop-prod",
                "valuesFiles": ["env/prod/shop.yaml", "env/prod/extra.yaml"],
                "valuesFrom": [
                    { "kind": "ConfigMap", "name": "shop-values" },
                    { "kind": "Secret", "name": "shop-db", "valuesKey": "password", "targetPath": "db.password" },
                    { "kind": "ConfigMap", "name": "extra", "valuesKey": "more.yaml", "optional": true },
                ],
                "values": { "image": { "repository": "shop", "tag": "v2" }, "replicaCount": 3 },
                "includeCRDs": true,
                "lookup": true,
            },
        }
    });
    assert_eq!(sync, [expected]);

    // Only --lookup: the block holds only it; no Helm flag: no block at all.
    let sync = documents(&ok(&[
        "create", "sync", "shop", "--source", "fleet", "--lookup", "--export",
    ]));
    assert_eq!(sync[0]["spec"]["helm"], json!({ "lookup": true }));
    let sync = documents(&ok(&[
        "create", "sync", "shop", "--source", "fleet", "--export",
    ]));
    assert!(sync[0]["spec"].get("helm").is_none(), "{}", sync[0]);

    for (flag, value, expected) in [
        ("--values-from", "Pod/x", "must be ConfigMap or Secret"),
        ("--values-from", "ConfigMap/x@a.b", "name the key"),
        ("--values-from", "shop-values", "KIND/NAME"),
        ("--set-json", "image.tag=v2", "not JSON"),
        ("--set-json", "a..b=1", "dotted path"),
    ] {
        let out = plumb(&[
            "create", "sync", "shop", "--source", "fleet", flag, value, "--export",
        ]);
        assert!(!out.status.success(), "{flag} {value}: {}", text(&out));
        assert!(
            text(&out).contains(expected),
            "{flag} {value}: {}",
            text(&out)
        );
        assert!(stdout(&out).is_empty(), "nothing printed: {}", text(&out));
    }
}

#[tokio::test]
async fn create_sync_with_helm_flags_is_accepted_by_the_api_server() -> anyhow::Result<()> {
    ensure_crds();
    let client = client().await?;
    let ns = TestNamespace::create(&client, "create-helm").await?;
    ok(&[
        "create",
        "sync",
        "shop",
        "--source",
        "fleet",
        "--path",
        "charts/shop",
        "--release-name",
        "shop",
        "--values-from",
        "Secret/shop-db/password@db.password",
        "--set-json",
        "replicaCount=2",
        "--lookup",
        "-n",
        ns.name(),
    ]);
    let sync = Api::<Sync>::namespaced(client.clone(), ns.name())
        .get("shop")
        .await?;
    let helm = sync.spec.helm.expect("spec.helm is set");
    assert!(helm.lookup);
    assert_eq!(helm.release_name.as_deref(), Some("shop"));
    assert_eq!(
        helm.values_from[0].target_path.as_deref(),
        Some("db.password")
    );
    assert_eq!(helm.values, Some(json!({ "replicaCount": 2 })));
    Ok(())
}

#[test]
fn create_rejects_bad_flags_with_a_clear_message() {
    let out = plumb(&[
        "create", "source", "web", "--url", "u", "--branch", "a", "--tag", "b", "--export",
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("cannot be used with"), "{}", text(&out));

    let out = plumb(&[
        "create",
        "source",
        "web",
        "--url",
        "u",
        "--verify-mode",
        "head",
        "--export",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("--verify-allowed-signers-ref"),
        "{}",
        text(&out)
    );

    let out = plumb(&["create", "sync", "web", "--source", "a/b/c", "--export"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("NAMESPACE/NAME"), "{}", text(&out));

    let out = plumb(&[
        "create",
        "sync",
        "web",
        "--source",
        "s",
        "--interval",
        "soon",
        "--export",
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("invalid duration"), "{}", text(&out));
}

#[tokio::test]
async fn create_applies_and_get_lists() -> anyhow::Result<()> {
    ensure_crds();
    let client = client().await?;
    let ns = TestNamespace::create(&client, "create").await?;
    create_pair(ns.name());

    let source = Api::<GitSource>::namespaced(client.clone(), ns.name())
        .get("web")
        .await?;
    assert_eq!(source.spec.url, "https://git.example.com/web.git");
    assert_eq!(
        source
            .spec
            .git_ref
            .as_ref()
            .and_then(|r| r.branch.as_deref()),
        Some("main")
    );
    let verify = source.spec.verify.clone().expect("verify is set");
    assert_eq!(verify.mode, VerifyMode::Range);
    assert_eq!(verify.keyring_ref.unwrap().name, "keys");
    let syncs = Api::<Sync>::namespaced(client.clone(), ns.name());
    let sync = syncs.get("web").await?;
    assert_eq!(sync.spec.source_ref.name, "web");
    assert_eq!(sync.spec.path.as_deref(), Some("apps/web"));
    assert!(sync.spec.prune);
    assert_eq!(sync.spec.drift, DriftMode::Correct);

    // Applying again with other flags updates the object; flags left out are removed.
    let out = ok(&[
        "create",
        "sync",
        "web",
        "--source",
        "web",
        "--drift",
        "detect",
        "-n",
        ns.name(),
    ]);
    assert!(out.contains("configured"), "{out}");
    let sync = syncs.get("web").await?;
    assert_eq!(sync.spec.drift, DriftMode::Detect);
    assert!(!sync.spec.prune, "--prune was dropped, so prune is off");
    assert_eq!(sync.spec.path, None);

    // The agent would write this; `get` shows it.
    let revision = "main@sha1:0123456789abcdef0123456789abcdef01234567";
    syncs
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": {
                "lastAppliedRevision": revision,
                "conditions": [ready_condition("True", "ReconciliationSucceeded", "applied 3 objects")],
            }})),
        )
        .await?;
    let table = ok(&["get", "syncs", "-n", ns.name()]);
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some("web"))
        .unwrap_or_else(|| panic!("no row for web:\n{table}"));
    for cell in [
        "True",
        "main@sha1:0123456789ab",
        "false",
        "applied 3 objects",
    ] {
        assert!(row.contains(cell), "{cell:?} not in {row:?}");
    }
    assert!(!row.contains(revision), "the revision is shortened: {row}");
    assert!(table.contains("NAME") && !table.contains("NAMESPACE"));

    let all = ok(&["get", "syncs", "-A"]);
    assert!(
        all.lines()
            .any(|l| l.contains(ns.name()) && l.contains("web")),
        "-A lists the namespace:\n{all}"
    );
    let sources = ok(&["get", "sources", "-n", ns.name()]);
    assert!(
        sources.contains("web") && sources.contains("Unknown"),
        "{sources}"
    );

    let json: Value = serde_json::from_str(&ok(&["get", "syncs", "-n", ns.name(), "-o", "json"]))?;
    assert_eq!(json["items"][0]["metadata"]["name"], "web");
    assert_eq!(json["items"][0]["status"]["lastAppliedRevision"], revision);
    let yaml = documents(&ok(&["get", "sources", "-n", ns.name(), "-o", "yaml"]));
    assert_eq!(yaml[0]["spec"]["url"], "https://git.example.com/web.git");
    Ok(())
}

#[tokio::test]
async fn get_charts_lists_chart_sources_with_their_version_and_digest() -> anyhow::Result<()> {
    ensure_crds();
    let client = client().await?;
    let ns = TestNamespace::create(&client, "getcharts").await?;
    let charts = Api::<ChartSource>::namespaced(client.clone(), ns.name());
    let source: ChartSource = serde_json::from_value(json!({
        "apiVersion": "plumb.dev/v1alpha1", "kind": "ChartSource",
        "metadata": { "name": "podinfo" },
        "spec": { "url": "oci://ghcr.io/stefanprodan/charts", "chart": "podinfo", "version": "6.x" }
    }))?;
    charts.create(&PostParams::default(), &source).await?;
    let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    // The agent would write this; `get charts` shows it.
    charts
        .patch_status(
            "podinfo",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": {
                "artifact": {
                    "revision": format!("6.7.1@{digest}"), "chart": "podinfo",
                    "version": "6.7.1", "digest": digest,
                    "url": "oci://ghcr.io/stefanprodan/charts/podinfo:6.7.1"
                },
                "conditions": [ready_condition("True", "Succeeded", "stored chart podinfo version 6.7.1")],
            }})),
        )
        .await?;
    let table = ok(&["get", "charts", "-n", ns.name()]);
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some("podinfo"))
        .unwrap_or_else(|| panic!("no row for podinfo:\n{table}"));
    for cell in ["True", "6.7.1@sha256:0123456789ab", "stored chart podinfo"] {
        assert!(row.contains(cell), "{cell:?} not in {row:?}");
    }
    let yaml = documents(&ok(&["get", "chartsources", "-n", ns.name(), "-o", "yaml"]));
    assert_eq!(yaml[0]["status"]["artifact"]["digest"], digest);

    // Suspended and resumed like the other kinds.
    ok(&["suspend", "chart", "podinfo", "-n", ns.name()]);
    assert!(charts.get("podinfo").await?.spec.suspend);
    let out = plumb(&["reconcile", "chart", "podinfo", "-n", ns.name()]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("plumb resume chart podinfo"),
        "{}",
        text(&out)
    );
    ok(&["resume", "chart", "podinfo", "-n", ns.name(), "--no-wait"]);
    assert!(!charts.get("podinfo").await?.spec.suspend);
    Ok(())
}

#[tokio::test]
async fn suspend_and_resume_flip_spec_suspend() -> anyhow::Result<()> {
    ensure_crds();
    let client = client().await?;
    let ns = TestNamespace::create(&client, "suspend").await?;
    create_pair(ns.name());
    let syncs = Api::<Sync>::namespaced(client.clone(), ns.name());
    let sources = Api::<GitSource>::namespaced(client.clone(), ns.name());

    ok(&["suspend", "sync", "web", "-n", ns.name()]);
    assert!(syncs.get("web").await?.spec.suspend);
    assert!(ok(&["get", "syncs", "-n", ns.name()]).contains("true"));
    ok(&["suspend", "source", "web", "-n", ns.name()]);
    assert!(sources.get("web").await?.spec.suspend);

    // Reconciling a suspended Sync would wait forever: refused with the way out.
    let out = plumb(&[
        "reconcile",
        "sync",
        "web",
        "-n",
        ns.name(),
        "--timeout",
        "2s",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("plumb resume sync web"),
        "{}",
        text(&out)
    );

    ok(&["resume", "sync", "web", "-n", ns.name(), "--no-wait"]);
    let sync = syncs.get("web").await?;
    assert!(!sync.spec.suspend);
    assert!(
        sync.annotations()
            .contains_key(RECONCILE_REQUEST_ANNOTATION),
        "resume asks for a reconcile"
    );
    ok(&["resume", "source", "web", "-n", ns.name(), "--no-wait"]);
    assert!(!sources.get("web").await?.spec.suspend);

    let out = plumb(&["suspend", "sync", "nothing", "-n", ns.name()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not found"), "{}", text(&out));
    Ok(())
}
