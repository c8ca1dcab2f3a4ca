//! End-to-end tests of the agent management commands (`install`, `create`, `get`, `reconcile`,
//! `suspend`, `resume`, `history`, `tree`, `events`) against the real control plane. No agent
//! runs here: where a command waits for the agent, the test plays the agent's part by writing
//! the status the agent would write.

use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Event};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use plumb_agent::api::{DriftMode, GitSource, RECONCILE_REQUEST_ANNOTATION, Sync, VerifyMode};
use plumb_testsupport::kube::{TestNamespace, client};
use serde_json::{Value, json};

/// Runs the plumb binary.
fn plumb(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("plumb runs")
}

fn text(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs plumb and insists on success.
fn ok(args: &[&str]) -> String {
    let out = plumb(args);
    assert!(
        out.status.success(),
        "plumb {args:?} failed:\n{}",
        text(&out)
    );
    stdout(&out)
}

/// The YAML documents of a multi-document text, empty ones left out.
fn documents(text: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).expect("valid YAML");
    docs.into_iter().filter(Value::is_object).collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} among {} documents", docs.len()))
}

/// Installs the CRDs (idempotent; every cluster test may call it, also concurrently).
fn ensure_crds() {
    ok(&["install", "--crds-only"]);
}

#[test]
fn install_export_prints_crds_and_agent() {
    let docs = documents(&ok(&["install", "--export"]));
    find(&docs, "CustomResourceDefinition", "gitsources.plumb.dev");
    find(&docs, "CustomResourceDefinition", "syncs.plumb.dev");
    find(&docs, "Namespace", "plumb-system");
    find(&docs, "ServiceAccount", "plumb-agent");
    let deployment = find(&docs, "Deployment", "plumb-agent");
    assert_eq!(deployment["metadata"]["namespace"], "plumb-system");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        format!("ghcr.io/plumb-dev/plumb:{}", env!("CARGO_PKG_VERSION"))
    );
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "agent",
            "--leader-elect",
            "--webhook-addr",
            ":9292",
            "--metrics-addr",
            ":8080",
            "--cache-dir",
            "/var/cache/plumb"
        ]
    );
    // The image runs this binary: its `agent` command must accept those flags (clap checks
    // every flag before --help and fails on unknown ones).
    let mut check = args.clone();
    check.push("--help");
    ok(&check);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    find(&docs, "Service", "plumb-webhook");
    // The CRDs come first: they must be established before anything uses them.
    assert_eq!(docs[0]["kind"], "CustomResourceDefinition");
    assert_eq!(docs[1]["kind"], "CustomResourceDefinition");

    let moved = documents(&ok(&["install", "--export", "--namespace", "gitops"]));
    find(&moved, "Namespace", "gitops");
    let binding = find(&moved, "ClusterRoleBinding", "plumb-agent");
    assert_eq!(binding["subjects"][0]["namespace"], "gitops");
    assert_eq!(
        find(&moved, "Deployment", "plumb-agent")["metadata"]["namespace"],
        "gitops"
    );

    let crds = documents(&ok(&["install", "--export", "--crds-only"]));
    assert_eq!(crds.len(), 2, "{crds:#?}");
    assert!(crds.iter().all(|d| d["kind"] == "CustomResourceDefinition"));
}

#[test]
fn install_multi_tenant_locks_the_agent_down() {
    let agent_args = |docs: &[Value]| -> Vec<String> {
        find(docs, "Deployment", "plumb-agent")["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    };
    let plain = agent_args(&documents(&ok(&["install", "--export"])));
    let locked = agent_args(&documents(&ok(&["install", "--export", "--multi-tenant"])));
    for args in [&plain, &locked] {
        assert!(
            !args.iter().any(|a| a == "--allow-local-sources"),
            "{args:?}"
        );
    }
    assert!(!plain.iter().any(|a| a == "--no-cross-namespace-refs"));
    assert!(!plain.iter().any(|a| a == "--default-service-account"));
    let at = locked
        .iter()
        .position(|a| a == "--default-service-account")
        .unwrap_or_else(|| panic!("{locked:?}"));
    assert_eq!(locked[at + 1], "default");
    assert!(locked.iter().any(|a| a == "--no-cross-namespace-refs"));
    // The image runs this binary: its `agent` command must accept those flags.
    let mut check: Vec<&str> = locked.iter().map(String::as_str).collect();
    check.push("--help");
    ok(&check);
}

#[test]
fn agent_rbac_grants_what_the_agent_needs() {
    let docs = documents(&ok(&["install", "--export"]));
    let role = find(&docs, "ClusterRole", "plumb-agent");
    let grants = |group: &str, resource: &str, verb: &str| {
        role["rules"].as_array().unwrap().iter().any(|r| {
            r["apiGroups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g == group)
                && r["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x == resource)
                && r["verbs"].as_array().unwrap().iter().any(|v| v == verb)
        })
    };
    for verb in ["get", "list", "watch", "patch", "update"] {
        assert!(grants("plumb.dev", "syncs", verb), "syncs {verb}");
        assert!(grants("plumb.dev", "gitsources", verb), "gitsources {verb}");
    }
    assert!(grants("plumb.dev", "syncs/status", "patch"));
    // Secrets and ConfigMaps of tenants: read by name only, never listed or watched.
    assert!(grants("", "secrets", "get"));
    assert!(grants("", "configmaps", "get"));
    for verb in ["list", "watch"] {
        assert!(!grants("", "secrets", verb), "cluster-wide secrets {verb}");
        assert!(
            !grants("", "configmaps", verb),
            "cluster-wide configmaps {verb}"
        );
    }
    assert!(grants("", "events", "create"));
    assert!(grants("events.k8s.io", "events", "create"));
    assert!(grants("", "serviceaccounts", "impersonate"));
    assert!(
        !grants("", "secrets", "create"),
        "the agent never writes Secrets"
    );
    let leases = find(&docs, "Role", "plumb-agent-leader-election");
    assert_eq!(leases["metadata"]["namespace"], "plumb-system");
    // The ledger of verified commits lives in the agent's namespace, out of tenants' reach.
    assert!(
        leases["rules"].as_array().unwrap().iter().any(|r| r
            == &json!({ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "patch"] })),
        "{leases:#}"
    );
    // The webhook receivers' Secrets: watched in the agent's namespace only.
    let receivers = find(&docs, "Role", "plumb-agent-receivers");
    assert_eq!(receivers["metadata"]["namespace"], "plumb-system");
    assert_eq!(
        receivers["rules"],
        json!([{ "apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"] }])
    );
    let binding = find(&docs, "RoleBinding", "plumb-agent-receivers");
    assert_eq!(binding["roleRef"]["name"], "plumb-agent-receivers");
    assert_eq!(binding["subjects"][0]["name"], "plumb-agent");
    let moved = documents(&ok(&["install", "--export", "--namespace", "gitops"]));
    let binding = find(&moved, "RoleBinding", "plumb-agent-receivers");
    assert_eq!(binding["metadata"]["namespace"], "gitops");
    assert_eq!(binding["subjects"][0]["namespace"], "gitops");
    assert_eq!(
        find(&docs, "ClusterRoleBinding", "plumb-agent-cluster-admin")["roleRef"]["name"],
        "cluster-admin"
    );
}

#[tokio::test]
async fn install_crds_only_establishes_them_and_is_idempotent() -> anyhow::Result<()> {
    let client = client().await?;
    for _ in 0..2 {
        let out = ok(&["install", "--crds-only"]);
        assert!(
            out.contains("syncs.plumb.dev established"),
            "unexpected output:\n{out}"
        );
    }
    let crds = Api::<CustomResourceDefinition>::all(client);
    for name in ["gitsources.plumb.dev", "syncs.plumb.dev"] {
        let crd = crds.get(name).await?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "{name} is not Established");
        assert!(
            crd.metadata
                .managed_fields
                .unwrap_or_default()
                .iter()
                .any(|m| m.manager.as_deref() == Some("plumb")
                    && m.operation.as_deref() == Some("Apply")),
            "{name} was not server-side applied by plumb"
        );
    }
    Ok(())
}

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

/// Creates GitSource `web` and Sync `web` in `ns` with the CLI.
fn create_pair(ns: &str) {
    ok(&[
        "create",
        "source",
        "web",
        "--url",
        "https://git.example.com/web.git",
        "--branch",
        "main",
        "--verify-keyring-ref",
        "Secret/keys/pubring.asc",
        "-n",
        ns,
    ]);
    ok(&[
        "create", "sync", "web", "--source", "web", "--path", "apps/web", "--prune", "-n", ns,
    ]);
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

fn ready_condition(status: &str, reason: &str, message: &str) -> Value {
    json!({
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": 1,
        "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    })
}

#[tokio::test]
async fn history_and_tree_show_the_status() -> anyhow::Result<()> {
    ensure_crds();
    let client = client().await?;
    let ns = TestNamespace::create(&client, "tree").await?;
    create_pair(ns.name());
    let syncs = Api::<Sync>::namespaced(client.clone(), ns.name());

    // One live object; the Deployment of the inventory does not exist.
    let cm: ConfigMap = serde_json::from_value(json!({ "metadata": { "name": "web-config" } }))?;
    Api::<ConfigMap>::namespaced(client.clone(), ns.name())
        .create(&PostParams::default(), &cm)
        .await?;
    let ns_id = |kind_group: &str, name: &str| format!("{kind_group}/{}/{name}", ns.name());
    syncs
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": {
                "lastAppliedRevision": "main@sha1:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                "conditions": [ready_condition("True", "ReconciliationSucceeded", "ok")],
                "inventory": [
                    { "id": format!("Namespace/{}", ns.name()), "v": "v1" },
                    { "id": ns_id("ConfigMap", "web-config"), "v": "v1" },
                    { "id": ns_id("Deployment.apps", "web"), "v": "apps/v1" },
                ],
                "history": [
                    {
                        "revision": "main@sha1:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                        "author": "Ada <ada@example.com>",
                        "signer": "ada@example.com SHA256:abc",
                        "time": "2025-01-02T03:04:05Z",
                        "result": "success",
                        "changes": "1 created, 2 unchanged",
                        "durationMs": 1500,
                    },
                    {
                        "revision": "main@sha1:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
                        "time": "2025-01-01T00:00:00Z",
                        "result": "failure",
                        "changes": "",
                        "durationMs": 20,
                        "message": "dry-run failed: Deployment/web: spec.replicas: invalid",
                    },
                ],
            }})),
        )
        .await?;

    let history = ok(&["history", "web", "-n", ns.name()]);
    let lines: Vec<&str> = history.lines().collect();
    assert!(
        lines[0].contains("REVISION") && lines[0].contains("SIGNER"),
        "{history}"
    );
    assert!(
        lines[1].contains("main@sha1:aaaaaaaaaaaa"),
        "newest first:\n{history}"
    );
    for cell in [
        "Ada <ada@example.com>",
        "ada@example.com SHA256:abc",
        "success",
        "1 created, 2 unchanged",
        "1.5s",
    ] {
        assert!(lines[1].contains(cell), "{cell:?} not in {:?}", lines[1]);
    }
    assert!(
        lines[2].contains("failure") && lines[2].contains("dry-run failed"),
        "{history}"
    );
    let json: Value =
        serde_json::from_str(&ok(&["history", "web", "-n", ns.name(), "-o", "json"]))?;
    assert_eq!(json[1]["result"], "failure");

    let tree = ok(&["tree", "web", "-n", ns.name()]);
    assert!(
        tree.starts_with(&format!("Sync/{}/web (Ready=True", ns.name())),
        "{tree}"
    );
    let line = |needle: &str| {
        tree.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} not in\n{tree}"))
            .to_owned()
    };
    assert!(line(&format!("Namespace/{}", ns.name())).contains("Healthy"));
    assert!(line("ConfigMap/web-config").contains("Healthy"));
    assert!(line("Deployment.apps/web").contains("Missing"));
    // Grouped: the cluster-scoped branch, then the namespace's.
    let cluster = tree.find("(cluster-scoped)").expect("cluster branch");
    let namespaced = tree
        .find(&format!("Namespace {}", ns.name()))
        .expect("namespace branch");
    assert!(cluster < namespaced && namespaced < tree.find("ConfigMap/web-config").unwrap());
    Ok(())
}

#[tokio::test]
async fn reconcile_times_out_clearly_without_an_agent() -> anyhow::Result<()> {
    ensure_crds();
    let client = client().await?;
    let ns = TestNamespace::create(&client, "timeout").await?;
    create_pair(ns.name());
    let started = std::time::Instant::now();
    let out = plumb(&[
        "reconcile",
        "sync",
        "web",
        "-n",
        ns.name(),
        "--timeout",
        "2s",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("timed out after 2s"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "no agent has handled the reconcile request ({RECONCILE_REQUEST_ANNOTATION}="
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("its status did not change while waiting"),
        "{stderr}"
    );
    assert!(stderr.contains("Is the agent running?"), "{stderr}");
    // What it waited for, and what the status said meanwhile.
    assert!(
        stdout(&out).contains("until its status.lastHandledReconcileAt is"),
        "{}",
        text(&out)
    );
    assert!(
        stderr.contains(&format!("  Sync {}/web: no status yet", ns.name())),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // The request stays on the object for the agent to pick up later.
    let sync = Api::<Sync>::namespaced(client, ns.name())
        .get("web")
        .await?;
    assert!(
        sync.annotations()
            .contains_key(RECONCILE_REQUEST_ANNOTATION)
    );
    Ok(())
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": 1,
        "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    })
}

/// Waits for a line containing `needle` among the lines `lines` receives.
async fn line_with(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    needle: &str,
) -> anyhow::Result<String> {
    let wait = async {
        while let Some(line) = lines.recv().await {
            if line.contains(needle) {
                return Some(line);
            }
        }
        None
    };
    match tokio::time::timeout(Duration::from_secs(30), wait).await {
        Ok(Some(line)) => Ok(line),
        Ok(None) => anyhow::bail!("the output ended without a line containing {needle:?}"),
        Err(_) => anyhow::bail!("no line containing {needle:?} within 30s"),
    }
}

#[tokio::test]
async fn reconcile_shows_a_busy_agents_progress_and_says_so_when_it_gives_up() -> anyhow::Result<()>
{
    ensure_crds();
    let client = client().await?;
    let ns = TestNamespace::create(&client, "busy").await?;
    create_pair(ns.name());
    let syncs = Api::<Sync>::namespaced(client.clone(), ns.name());
    let reconciling = |message: &str| {
        json!({ "status": {
            "conditions": [
                ready_condition("True", "ReconciliationSucceeded", "applied revision main@sha1:aaaa"),
                condition("Reconciling", "True", "Progressing", message),
            ],
            "lastAttemptedRevision": "main@sha1:bbbb",
        }})
    };
    // The agent is applying a revision (with a long health wait) when the request comes.
    syncs
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(reconciling("applying revision main@sha1:bbbb")),
        )
        .await?;
    let mut child = spawn_plumb(&[
        "reconcile",
        "sync",
        "web",
        "-n",
        ns.name(),
        "--timeout",
        "8s",
    ]);
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut all = Vec::new();
        let mut stderr = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = stderr.next_line().await {
            let _ = tx.send(line.clone());
            all.push(line);
        }
        all.join("\n")
    });

    // Not on a terminal, each new state is a line of its own.
    let first = line_with(&mut lines, "applying revision main@sha1:bbbb").await?;
    assert_eq!(
        first,
        format!(
            "  Sync {}/web: Reconciling (Progressing): applying revision main@sha1:bbbb",
            ns.name()
        )
    );
    syncs
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(reconciling(
                "applying revision main@sha1:bbbb: waiting for Deployment.apps/demo/web",
            )),
        )
        .await?;
    line_with(&mut lines, "waiting for Deployment.apps/demo/web").await?;

    let out = child.wait_with_output().await?;
    let stderr = reader.await?;
    assert_eq!(out.status.code(), Some(1), "{}\n{stderr}", text(&out));
    assert!(
        stderr.contains(&format!(
            "timed out after 8s: the agent is still working on Sync {}/web (Reconciling for ",
            ns.name()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "Progressing: applying revision main@sha1:bbbb: waiting for Deployment.apps/demo/web)"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("has not handled the reconcile request"),
        "{stderr}"
    );
    assert!(!stderr.contains("Is the agent running?"), "{stderr}");
    // Each state was printed once, not once per look at it.
    assert_eq!(
        stderr
            .matches("Reconciling (Progressing): applying revision")
            .count(),
        2,
        "{stderr}"
    );
    Ok(())
}

/// Plays the agent once: waits for a reconcile request on `name` that differs from the last
/// handled one, then records it as handled with the given Ready condition.
async fn answer<K>(api: &Api<K>, name: &str, ready: Value, extra: Value) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let obj = api.get(name).await?;
        if let Some(token) = obj.annotations().get(RECONCILE_REQUEST_ANNOTATION).cloned() {
            let value = serde_json::to_value(&obj)?;
            if value["status"]["lastHandledReconcileAt"] != token.as_str() {
                let mut status = json!({ "lastHandledReconcileAt": token, "conditions": [ready] });
                if let (Some(s), Some(e)) = (status.as_object_mut(), extra.as_object()) {
                    s.extend(e.clone());
                }
                api.patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "status": status })),
                )
                .await?;
                return Ok(());
            }
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no reconcile request on {name}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn spawn_plumb(args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("plumb starts")
}

#[tokio::test]
async fn reconcile_waits_for_the_agent_and_reports_its_result() -> anyhow::Result<()> {
    ensure_crds();
    let client = client().await?;
    let ns = TestNamespace::create(&client, "reconcile").await?;
    create_pair(ns.name());
    let syncs = Api::<Sync>::namespaced(client.clone(), ns.name());
    let sources = Api::<GitSource>::namespaced(client.clone(), ns.name());
    let revision = "main@sha1:cccccccccccccccccccccccccccccccccccccccc";

    // Ready=True: exit 0, with the revision.
    let child = spawn_plumb(&[
        "reconcile",
        "sync",
        "web",
        "-n",
        ns.name(),
        "--timeout",
        "30s",
    ]);
    answer(
        &syncs,
        "web",
        ready_condition("True", "ReconciliationSucceeded", "applied revision"),
        json!({ "lastAppliedRevision": revision }),
    )
    .await?;
    let out = child.wait_with_output().await?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains(revision), "{}", text(&out));

    // Ready=False: exit 1, with the reason and message.
    let child = spawn_plumb(&[
        "reconcile",
        "sync",
        "web",
        "-n",
        ns.name(),
        "--timeout",
        "30s",
    ]);
    answer(
        &syncs,
        "web",
        ready_condition("False", "VerificationFailed", "commit cccc is not signed"),
        json!({}),
    )
    .await?;
    let out = child.wait_with_output().await?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout(&out).contains("VerificationFailed") && stdout(&out).contains("is not signed"),
        "{}",
        text(&out)
    );

    // --with-source: the GitSource is asked first, then the Sync.
    let child = spawn_plumb(&[
        "reconcile",
        "sync",
        "web",
        "--with-source",
        "-n",
        ns.name(),
        "--timeout",
        "30s",
    ]);
    answer(
        &sources,
        "web",
        ready_condition("True", "Succeeded", "fetched"),
        json!({ "artifact": { "revision": revision, "commit": "cccccccccccccccccccccccccccccccccccccccc" } }),
    )
    .await?;
    answer(
        &syncs,
        "web",
        ready_condition("True", "ReconciliationSucceeded", "applied"),
        json!({}),
    )
    .await?;
    let out = child.wait_with_output().await?;
    assert!(out.status.success(), "{}", text(&out));
    let printed = stdout(&out);
    let source_at = printed.find("GitSource").expect("source reported");
    let sync_at = printed.rfind("Sync ").expect("sync reported");
    assert!(source_at < sync_at, "{printed}");

    // reconcile source on its own.
    let child = spawn_plumb(&[
        "reconcile",
        "source",
        "web",
        "-n",
        ns.name(),
        "--timeout",
        "30s",
    ]);
    answer(
        &sources,
        "web",
        ready_condition("True", "Succeeded", "fetched"),
        json!({}),
    )
    .await?;
    let out = child.wait_with_output().await?;
    assert!(out.status.success(), "{}", text(&out));
    Ok(())
}

#[tokio::test]
async fn events_lists_the_sync_and_source_events_in_order() -> anyhow::Result<()> {
    ensure_crds();
    let client = client().await?;
    let ns = TestNamespace::create(&client, "events").await?;
    create_pair(ns.name());
    let sync_uid = Api::<Sync>::namespaced(client.clone(), ns.name())
        .get("web")
        .await?
        .uid();
    record_event(
        &client,
        ns.name(),
        "Sync",
        "web",
        sync_uid.as_deref(),
        "Applied",
        "2025-01-01T00:00:02Z",
    )
    .await?;
    record_event(
        &client,
        ns.name(),
        "GitSource",
        "web",
        None,
        "Fetched",
        "2025-01-01T00:00:01Z",
    )
    .await?;
    record_event(
        &client,
        ns.name(),
        "Sync",
        "other",
        None,
        "Unrelated",
        "2025-01-01T00:00:03Z",
    )
    .await?;

    let out = ok(&["events", "web", "-n", ns.name()]);
    let fetched = out.find("Fetched").unwrap_or_else(|| panic!("{out}"));
    let applied = out.find("Applied").unwrap_or_else(|| panic!("{out}"));
    assert!(fetched < applied, "oldest first:\n{out}");
    assert!(!out.contains("Unrelated"), "{out}");
    assert!(
        out.contains("GitSource/web") && out.contains("Sync/web"),
        "{out}"
    );
    Ok(())
}

async fn record_event(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    uid: Option<&str>,
    reason: &str,
    time: &str,
) -> anyhow::Result<()> {
    let event: Event = serde_json::from_value(json!({
        "metadata": { "generateName": format!("{name}-") },
        "involvedObject": {
            "apiVersion": "plumb.dev/v1alpha1",
            "kind": kind,
            "name": name,
            "namespace": ns,
            "uid": uid,
        },
        "reason": reason,
        "message": format!("{reason} message"),
        "type": "Normal",
        "firstTimestamp": time,
        "lastTimestamp": time,
        "count": 1,
        "source": { "component": "plumb" },
        "reportingComponent": "plumb",
    }))?;
    Api::<Event>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &event)
        .await?;
    Ok(())
}

/// history, tree and events name the Sync they could not find.
#[tokio::test]
async fn commands_name_the_missing_sync() -> anyhow::Result<()> {
    ensure_crds();
    let client = client().await?;
    let ns = TestNamespace::create(&client, "missing").await?;
    for cmd in ["history", "tree", "events"] {
        let out = plumb(&[cmd, "nothing", "-n", ns.name()]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("Sync {}/nothing not found", ns.name())),
            "{}",
            text(&out)
        );
    }
    Ok(())
}

#[test]
fn bootstrap_export_adds_the_source_and_sync_of_the_repository() {
    let docs = documents(&ok(&[
        "bootstrap",
        "--git",
        "ssh://git@git.example.com/fleet.git",
        "--path",
        "clusters/prod",
        "--branch",
        "prod",
        "--secret-ref",
        "fleet-ssh",
        "--verify-allowed-signers-ref",
        "ConfigMap/signers/allowed_signers",
        "--export",
    ]));
    find(&docs, "CustomResourceDefinition", "syncs.plumb.dev");
    assert_eq!(
        find(&docs, "Deployment", "plumb-agent")["spec"]["replicas"],
        2
    );
    let source = find(&docs, "GitSource", "plumb-system");
    assert_eq!(source["metadata"]["namespace"], "plumb-system");
    assert_eq!(source["spec"]["url"], "ssh://git@git.example.com/fleet.git");
    assert_eq!(source["spec"]["ref"]["branch"], "prod");
    assert_eq!(source["spec"]["secretRef"]["name"], "fleet-ssh");
    assert_eq!(source["spec"]["verify"]["mode"], "range");
    let sync = find(&docs, "Sync", "plumb-system");
    assert_eq!(sync["spec"]["path"], "clusters/prod");
    assert_eq!(sync["spec"]["prune"], true);
    assert_eq!(sync["spec"]["sourceRef"]["name"], "plumb-system");
    // The custom resources come after their CRDs.
    let position = |kind: &str| docs.iter().position(|d| d["kind"] == kind).unwrap();
    assert!(position("CustomResourceDefinition") < position("GitSource"));
}

/// The agent manifests are valid for a real API server (server-side dry-run: nothing is written,
/// so no cluster-wide RBAC of a real install is touched).
#[tokio::test]
async fn install_agent_manifests_pass_a_server_side_dry_run() -> anyhow::Result<()> {
    ensure_crds();
    let client = client().await?;
    let ns = TestNamespace::create(&client, "install").await?;
    let out = ok(&["install", "--namespace", ns.name(), "--dry-run"]);
    assert!(
        out.contains(&format!(
            "Deployment.apps/{}/plumb-agent applied (dry run)",
            ns.name()
        )),
        "{out}"
    );
    assert!(out.contains("nothing was written"), "{out}");
    let deployments = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client, ns.name());
    assert!(
        deployments.get_opt("plumb-agent").await?.is_none(),
        "dry run wrote the Deployment"
    );
    Ok(())
}
