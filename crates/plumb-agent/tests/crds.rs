//! The committed CRD YAML must be what the Rust types generate.

#[test]
fn committed_crds_are_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/crds.yaml");
    let generated = plumb_agent::api::crds_yaml();
    if std::env::var_os("PLUMB_BLESS").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "deploy/crds.yaml is stale: regenerate it with `PLUMB_BLESS=1 cargo test -p plumb-agent --test crds`"
    );
}

mod validation {
    //! The API server refuses invalid GitSources and Syncs with the CRD's own rules
    //! (server-side dry-runs against the real control plane: nothing is written).

    use std::path::Path;

    use anyhow::Result;
    use kube::Api;
    use kube::api::{DynamicObject, PostParams};
    use kube::core::{ApiResource, GroupVersionKind};
    use plumb_testsupport::kube::{TestNamespace, apply_crds, client};
    use serde_json::{Value, json};

    /// Dry-run creates `spec` as a `kind`; `Ok(())` when accepted, else the server's message.
    async fn dry_run(api: &Api<DynamicObject>, kind: &str, spec: Value) -> Result<(), String> {
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "plumb.dev/v1alpha1", "kind": kind,
            "metadata": { "name": "probe" },
            "spec": spec,
        }))
        .expect("a valid object");
        let params = PostParams {
            dry_run: true,
            ..Default::default()
        };
        match api.create(&params, &object).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 422 => Err(e.message),
            Err(e) => panic!("dry-run create of a {kind}: {e}"),
        }
    }

    fn api(client: &kube::Client, ns: &str, kind: &str) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("plumb.dev", "v1alpha1", kind);
        Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk(&gvk))
    }

    #[tokio::test]
    async fn invalid_sources_and_syncs_are_refused_by_the_api_server() -> Result<()> {
        let client = client().await?;
        apply_crds(
            &client,
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds.yaml"),
        )
        .await?;
        let ns = TestNamespace::create(&client, "crdval").await?;
        let sources = api(&client, ns.name(), "GitSource");
        let syncs = api(&client, ns.name(), "Sync");
        let url = "https://git.example.com/app.git";
        let commit = "0123456789abcdef0123456789abcdef01234567";

        for spec in [
            json!({ "url": url }),
            json!({ "url": "git@git.example.com:org/app.git", "ref": { "branch": "main" }, "interval": "1h30m" }),
            json!({ "url": url, "ref": { "commit": commit }, "interval": "90" }),
            json!({ "url": url, "ref": { "commit": format!("{commit}{}", "0".repeat(24)) } }),
            json!({ "url": url, "ref": { "semver": ">=1.0.0 <2.0.0" }, "secretRef": { "name": "creds" },
                    "verify": { "mode": "head", "allowedSignersRef": { "kind": "Secret", "name": "s", "key": "allowed_signers" } } }),
        ] {
            assert_eq!(
                dry_run(&sources, "GitSource", spec.clone()).await,
                Ok(()),
                "{spec}"
            );
        }
        for (spec, expected) in [
            (
                json!({ "url": url, "ref": { "branch": "main", "tag": "v1" } }),
                "at most one of branch, tag, semver and commit",
            ),
            (
                json!({ "url": url, "ref": { "commit": "0123abc" } }),
                "spec.ref.commit",
            ),
            (
                json!({ "url": url, "ref": { "commit": commit.to_uppercase() } }),
                "spec.ref.commit",
            ),
            (
                json!({ "url": url, "interval": "5 minutes" }),
                "spec.interval",
            ),
            (json!({ "url": url, "interval": "1d" }), "spec.interval"),
            (json!({ "url": "-uhttps://x/a.git" }), "spec.url"),
            (json!({ "url": "https://x/a b.git" }), "spec.url"),
            (json!({ "url": "" }), "spec.url"),
            (
                json!({ "url": url, "verify": { "mode": "sometimes", "keyringRef": { "name": "k", "key": "k" } } }),
                "spec.verify.mode",
            ),
            (
                json!({ "url": url, "verify": { "keyringRef": { "kind": "Pod", "name": "k", "key": "k" } } }),
                "spec.verify.keyringRef.kind",
            ),
            (
                json!({ "url": url, "secretRef": { "name": "Not_A_Name" } }),
                "spec.secretRef.name",
            ),
        ] {
            let message = dry_run(&sources, "GitSource", spec.clone())
                .await
                .expect_err(&format!("accepted {spec}"));
            assert!(message.contains(expected), "{spec}: {message}");
        }

        let source_ref = json!({ "name": "app" });
        for spec in [
            json!({ "sourceRef": source_ref }),
            json!({ "sourceRef": { "kind": "GitSource", "name": "app", "namespace": "team-a" },
                    "interval": "10m", "timeout": "5m", "drift": "detect", "serviceAccountName": "deployer",
                    "targetNamespace": "apps", "dependsOn": [{ "name": "infra", "namespace": "team-a" }] }),
        ] {
            assert_eq!(
                dry_run(&syncs, "Sync", spec.clone()).await,
                Ok(()),
                "{spec}"
            );
        }
        for (spec, expected) in [
            (
                json!({ "sourceRef": { "kind": "OCIRepository", "name": "app" } }),
                "spec.sourceRef.kind",
            ),
            (
                json!({ "sourceRef": source_ref, "drift": "ignore" }),
                "spec.drift",
            ),
            (
                json!({ "sourceRef": source_ref, "timeout": "soon" }),
                "spec.timeout",
            ),
            (
                json!({ "sourceRef": source_ref, "interval": "-1m" }),
                "spec.interval",
            ),
            (
                json!({ "sourceRef": { "name": "app", "namespace": "Team A" } }),
                "spec.sourceRef.namespace",
            ),
            (
                json!({ "sourceRef": source_ref, "dependsOn": [{ "name": "a/b" }] }),
                "spec.dependsOn[0].name",
            ),
            (
                json!({ "sourceRef": source_ref, "serviceAccountName": "" }),
                "spec.serviceAccountName",
            ),
        ] {
            let message = dry_run(&syncs, "Sync", spec.clone())
                .await
                .expect_err(&format!("accepted {spec}"));
            assert!(message.contains(expected), "{spec}: {message}");
        }
        // The status is validated too (a tenant may be able to write it).
        sources
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "plumb.dev/v1alpha1", "kind": "GitSource",
                    "metadata": { "name": "status" }, "spec": { "url": url },
                }))?,
            )
            .await?;
        let status = |commit: &str| {
            kube::api::Patch::Merge(json!({ "status": { "artifact": {
                "revision": format!("main@sha1:{commit}"), "commit": commit,
            } } }))
        };
        let params = kube::api::PatchParams::default();
        sources
            .patch_status("status", &params, &status(commit))
            .await?;
        let refused = sources
            .patch_status("status", &params, &status("not-a-commit"))
            .await
            .expect_err("a status with a bad commit id was accepted");
        assert!(
            refused.to_string().contains("status.artifact.commit"),
            "{refused}"
        );
        Ok(())
    }
}
