//! `history`, `tree` and `events`: what the status and the Events say.

use super::*;

#[tokio::test]
async fn history_and_tree_show_the_status() -> anyhow::Result<()> {
    ensure_crds();
    let client = client().await?;
    let ns = TestNamespace::create(&client, "tree").await?;
    create_pair(ns.name());
    let syncs = Api::<Sync>::namespaced(client.clone(), ns.name());

    // One live object; the Deployment of the inventory does not exist.
    let cm: ConfigMap = serde_json::from_value(json!({ "metadata": { "name": "web-config",
        "annotations": { "argocd.argoproj.io/sync-wave": "-1" } } }))?;
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
                        "hooks": [
                            "pre wave 0 Job.batch/apps/migrate-x7k2p: succeeded",
                            "post wave 1 Job.batch/apps/smoke: succeeded: deleted (hook-succeeded)",
                        ],
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
    // The hooks of an apply, one per line of its HOOKS cell.
    assert!(lines[0].contains("HOOKS"), "{history}");
    assert!(
        lines[1].contains("pre wave 0 Job.batch/apps/migrate-x7k2p: succeeded"),
        "{history}"
    );
    assert!(
        history.contains("post wave 1 Job.batch/apps/smoke: succeeded: deleted (hook-succeeded)"),
        "{history}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("failure") && l.contains("dry-run failed")),
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
    assert!(line("ConfigMap/web-config [wave -1]").contains("Healthy"));
    assert!(!line("Deployment.apps/web").contains("wave"), "{tree}");
    // The hooks of the last apply (hook objects are in no inventory).
    let hooks = tree
        .find("Hooks of the last apply")
        .unwrap_or_else(|| panic!("no hooks in\n{tree}"));
    assert!(tree[hooks..].contains("  pre wave 0 Job.batch/apps/migrate-x7k2p: succeeded"));
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
