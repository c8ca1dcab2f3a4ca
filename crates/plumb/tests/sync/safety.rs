//! What `plumb sync` and `plumb diff` refuse or keep safe: manual edits shown and restored,
//! foreign objects never pruned, invalid manifests, empty directories, conflicts, objects
//! another Sync owns.

use super::*;

#[tokio::test]
async fn manual_edit_shows_in_diff_and_sync_restores_it() {
    let (client, ns, dir) = setup("drift").await;
    let d = dir.path();
    write(d, "cm.yaml", &configmap("conf", "from-git"));
    write(
        d,
        "secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  password: hunter2-from-git\n",
    );
    let out = plumb(&[
        "sync",
        d.to_str().unwrap(),
        "--name",
        "drift",
        "-n",
        ns.name(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let diff = plumb(&[
        "diff",
        d.to_str().unwrap(),
        "--name",
        "drift",
        "-n",
        ns.name(),
    ]);
    assert_eq!(diff.status.code(), Some(0), "no drift yet: {}", text(&diff));

    // Someone edits a managed field by hand.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    cms.patch(
        "conf",
        &PatchParams::default(),
        &Patch::Merge(json!({ "data": { "value": "edited-by-hand" } })),
    )
    .await
    .unwrap();
    let diff = plumb(&[
        "diff",
        d.to_str().unwrap(),
        "--name",
        "drift",
        "-n",
        ns.name(),
    ]);
    assert_eq!(diff.status.code(), Some(1), "{}", text(&diff));
    let shown = String::from_utf8_lossy(&diff.stdout);
    assert!(shown.contains("-  value: edited-by-hand"), "{shown}");
    assert!(shown.contains("+  value: from-git"), "{shown}");
    assert!(
        !shown.contains("hunter2"),
        "Secret values must never be shown: {shown}"
    );

    let (out, report) = sync_json(d, "drift", ns.name(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(action_of(&report, "ConfigMap/conf"), "configured");
    assert_eq!(
        cms.get("conf").await.unwrap().data.unwrap()["value"],
        "from-git"
    );
}

#[tokio::test]
async fn a_foreign_object_of_the_same_name_is_never_pruned() {
    let (client, ns, dir) = setup("foreign").await;
    let d = dir.path();
    write(
        d,
        "cm.yaml",
        &format!(
            "{}---\n{}",
            configmap("mine", "1"),
            configmap("shared", "1")
        ),
    );
    let out = plumb(&[
        "sync",
        d.to_str().unwrap(),
        "--name",
        "owner",
        "-n",
        ns.name(),
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // Someone else replaces "shared" with an object of their own (no plumb labels).
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    cms.delete("shared", &Default::default()).await.unwrap();
    let foreign: ConfigMap = serde_json::from_value(
        json!({ "metadata": { "name": "shared" }, "data": { "v": "theirs" } }),
    )
    .unwrap();
    cms.create(&PostParams::default(), &foreign).await.unwrap();

    write(d, "cm.yaml", &configmap("mine", "1"));
    let (out, report) = sync_json(d, "owner", ns.name(), &["--prune"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        action_of(&report, "ConfigMap/shared"),
        "skipped",
        "{report:#}"
    );
    assert_eq!(
        cms.get("shared").await.unwrap().data.unwrap()["v"],
        "theirs"
    );
}

#[tokio::test]
async fn invalid_manifests_fail_naming_the_culprit_and_change_nothing() {
    let (client, ns, dir) = setup("invalid").await;
    let d = dir.path();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());

    // Bad YAML: the file and line are named, nothing is applied.
    write(d, "good.yaml", &configmap("good", "1"));
    write(
        d,
        "bad.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [unclosed\n",
    );
    let out = plumb(&[
        "sync",
        d.to_str().unwrap(),
        "--name",
        "inv",
        "-n",
        ns.name(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(
        cms.get_opt("good").await.unwrap().is_none(),
        "nothing may be applied"
    );

    // Unknown kind: the object and file are named.
    write(
        d,
        "bad.yaml",
        "apiVersion: nope.example.com/v1\nkind: Gizmo\nmetadata:\n  name: g\n",
    );
    let out = plumb(&[
        "sync",
        d.to_str().unwrap(),
        "--name",
        "inv",
        "-n",
        ns.name(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Gizmo") && err.contains("bad.yaml"), "{err}");
    assert!(
        cms.get_opt("good").await.unwrap().is_none(),
        "nothing may be applied"
    );

    // Schema error: the server-side dry-run refuses it, naming the object; nothing is written.
    write(
        d,
        "bad.yaml",
        &deployment("broken", 1, "").replace("replicas: 1", "replicas: many"),
    );
    let out = plumb(&[
        "sync",
        d.to_str().unwrap(),
        "--name",
        "inv",
        "-n",
        ns.name(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("dry-run") && err.contains("Deployment") && err.contains("broken"),
        "{err}"
    );
    assert!(
        cms.get_opt("good").await.unwrap().is_none(),
        "nothing may be applied"
    );
}

#[tokio::test]
async fn an_empty_directory_prunes_nothing_without_allow_empty() {
    let (client, ns, dir) = setup("empty").await;
    let d = dir.path();
    write(d, "cm.yaml", &configmap("keep", "1"));
    let out = plumb(&["sync", d.to_str().unwrap(), "--name", "e", "-n", ns.name()]);
    assert!(out.status.success(), "{}", text(&out));

    std::fs::remove_file(d.join("cm.yaml")).unwrap();
    let out = plumb(&[
        "sync",
        d.to_str().unwrap(),
        "--name",
        "e",
        "-n",
        ns.name(),
        "--prune",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("allowEmpty")
            || String::from_utf8_lossy(&out.stderr).contains("allow-empty"),
        "{}",
        text(&out)
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    assert!(cms.get_opt("keep").await.unwrap().is_some());

    let out = plumb(&[
        "sync",
        d.to_str().unwrap(),
        "--name",
        "e",
        "-n",
        ns.name(),
        "--prune",
        "--allow-empty",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(cms.get_opt("keep").await.unwrap().is_none());
}

#[tokio::test]
async fn conflicts_fail_unless_forced_and_dry_run_writes_nothing() {
    let (client, ns, dir) = setup("conflict").await;
    let d = dir.path();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    // Another manager owns the field first.
    cms.patch(
        "owned",
        &PatchParams::apply("someone-else"),
        &Patch::Apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "owned" }, "data": { "value": "theirs" }
        })),
    )
    .await
    .unwrap();
    write(d, "cm.yaml", &configmap("owned", "ours"));

    let out = plumb(&[
        "sync",
        d.to_str().unwrap(),
        "--name",
        "c",
        "-n",
        ns.name(),
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("conflict")
            && err.contains("someone-else")
            && err.contains("--force-conflicts"),
        "{err}"
    );

    let out = plumb(&["sync", d.to_str().unwrap(), "--name", "c", "-n", ns.name()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        cms.get("owned").await.unwrap().data.unwrap()["value"],
        "theirs"
    );

    let (out, report) = sync_json(d, "c", ns.name(), &["--force-conflicts", "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(action_of(&report, "ConfigMap/owned"), "configured");
    assert_eq!(
        cms.get("owned").await.unwrap().data.unwrap()["value"],
        "theirs",
        "dry run wrote"
    );

    let out = plumb(&[
        "sync",
        d.to_str().unwrap(),
        "--name",
        "c",
        "-n",
        ns.name(),
        "--force-conflicts",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        cms.get("owned").await.unwrap().data.unwrap()["value"],
        "ours"
    );
}

#[tokio::test]
async fn objects_another_sync_owns_are_refused_unless_adopted() {
    let (client, ns, dir) = setup("owned").await;
    let d = dir.path();
    write(
        d,
        "cm.yaml",
        &format!("{}---\n{}", configmap("a", "1"), configmap("b", "1")),
    );
    let (out, _) = sync_json(d, "first", ns.name(), &[]);
    assert!(out.status.success(), "{}", text(&out));

    // A second sync unit with the same manifests: refused, naming the owner; nothing written.
    write(
        d,
        "cm.yaml",
        &format!("{}---\n{}", configmap("a", "2"), configmap("b", "2")),
    );
    let out = plumb(&[
        "sync",
        d.to_str().unwrap(),
        "--name",
        "second",
        "-n",
        ns.name(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "ConfigMap/{}/a (owned by sync {}/first)",
            ns.name(),
            ns.name()
        )) && stderr.contains("--adopt"),
        "{}",
        text(&out)
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    let a = cms.get("a").await.unwrap();
    assert_eq!(a.data.as_ref().unwrap()["value"], "1");
    assert_eq!(a.labels()["plumb.dev/sync-name"], "first");

    // Adopted explicitly: the second unit takes them over.
    let (out, _) = sync_json(d, "second", ns.name(), &["--adopt"]);
    assert!(out.status.success(), "{}", text(&out));
    let a = cms.get("a").await.unwrap();
    assert_eq!(a.data.as_ref().unwrap()["value"], "2");
    assert_eq!(a.labels()["plumb.dev/sync-name"], "second");
}
