//! `install` (export, multi-tenant, CRDs only, RBAC, server-side dry run) and `bootstrap`.

use super::*;

#[test]
fn install_export_prints_crds_and_agent() {
    let docs = documents(&ok(&["install", "--export"]));
    find(&docs, "CustomResourceDefinition", "gitsources.plumb.dev");
    find(&docs, "CustomResourceDefinition", "chartsources.plumb.dev");
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
    assert_eq!(docs[2]["kind"], "CustomResourceDefinition");

    let moved = documents(&ok(&["install", "--export", "--namespace", "gitops"]));
    find(&moved, "Namespace", "gitops");
    let binding = find(&moved, "ClusterRoleBinding", "plumb-agent");
    assert_eq!(binding["subjects"][0]["namespace"], "gitops");
    assert_eq!(
        find(&moved, "Deployment", "plumb-agent")["metadata"]["namespace"],
        "gitops"
    );

    let crds = documents(&ok(&["install", "--export", "--crds-only"]));
    assert_eq!(crds.len(), 3, "{crds:#?}");
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
    // (Exactly what the agent uses: crates/plumb/tests/in_cluster/privilege.rs.)
    for verb in ["get", "list", "watch", "patch"] {
        assert!(grants("plumb.dev", "syncs", verb), "syncs {verb}");
        assert!(grants("plumb.dev", "gitsources", verb), "gitsources {verb}");
        assert!(
            grants("plumb.dev", "chartsources", verb),
            "chartsources {verb}"
        );
    }
    assert!(grants("plumb.dev", "chartsources/status", "patch"));
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
    assert!(grants("events.k8s.io", "events", "create"));
    assert!(grants("", "namespaces", "get"));
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
            == &json!({ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "patch"] })),
        "{leases:#}"
    );
    // The webhook receivers' Secrets: watched in the agent's namespace only.
    let receivers = find(&docs, "Role", "plumb-agent-receivers");
    assert_eq!(receivers["metadata"]["namespace"], "plumb-system");
    assert_eq!(
        receivers["rules"],
        json!([{ "apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"] }])
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
    // The same CRDs applied by another field manager first (as the test world does): plumb
    // still takes their fields over, though their content is already as desired.
    plumb_testsupport::kube::apply_crds(&client, &plumb_testsupport::world::crds_path()).await?;
    for _ in 0..2 {
        let out = ok(&["install", "--crds-only"]);
        assert!(
            out.contains("syncs.plumb.dev established"),
            "unexpected output:\n{out}"
        );
    }
    let crds = Api::<CustomResourceDefinition>::all(client);
    for name in [
        "gitsources.plumb.dev",
        "chartsources.plumb.dev",
        "syncs.plumb.dev",
    ] {
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
