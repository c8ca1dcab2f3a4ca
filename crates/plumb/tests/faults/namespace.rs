//! Drill 5: the target namespace deleted under a Sync.

use super::*;

/// Deletes namespace `name`; returns its uid.
async fn delete_namespace(client: &Client, name: &str) -> Result<String> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let uid = namespaces.get(name).await?.uid().unwrap_or_default();
    namespaces.delete(name, &Default::default()).await?;
    Ok(uid)
}

/// Waits until namespace `name` is gone (the namespace controller emptied it).
async fn wait_namespace_gone(client: &Client, name: &str) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    eventually(&format!("namespace {name} to be gone"), WAIT, || {
        let namespaces = namespaces.clone();
        async move { Ok(namespaces.get_opt(name).await?.is_none().then_some(())) }
    })
    .await
}

#[tokio::test]
async fn a_deleted_namespace_in_the_manifests_is_recreated_with_its_objects() -> Result<()> {
    let w = World::shared("nsback", Remote::Local).await?;
    let target = format!("{}-app", w.ns());
    let agent = w.spawn("nsback-agent").await?;
    let app = objects("cm", 20, "1");
    // The Namespace is part of the revision.
    let ns_yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {target}\n");
    let first = w.commit(
        &app,
        Some(&target),
        &[("app/namespace.yaml", ns_yaml.as_bytes())],
    )?;
    w.create_source().await?;
    w.create_sync(json!({})).await?;
    w.wait_applied(&first).await?;
    let cleanup = TargetNamespace(target.clone());

    let old_uid = delete_namespace(w.client(), &target).await?;
    let namespaces: Api<Namespace> = Api::all(w.client().clone());
    let new_uid = eventually("the namespace to come back", WAIT, || {
        let namespaces = namespaces.clone();
        let old_uid = old_uid.clone();
        let target = target.clone();
        async move {
            Ok(namespaces
                .get_opt(&target)
                .await?
                .and_then(|n| n.uid())
                .filter(|uid| *uid != old_uid))
        }
    })
    .await?;
    eventually("every object to come back", WAIT, || async {
        Ok((w.managed(&target).await? == app).then_some(()))
    })
    .await?;
    eprintln!("namespace {target} re-created ({old_uid} -> {new_uid}) with its 20 objects");
    // The namespace controller deleted the objects; the agent deleted nothing.
    assert_eq!(agent.requests("delete", "configmaps").await?, 0.0);
    assert_eq!(agent.requests("delete", "namespaces").await?, 0.0);
    let st = w.syncs().get("app").await?.status.unwrap_or_default();
    assert!(plumb_agent::status::is_true(&st.conditions, "Ready"));
    assert_eq!(
        st.inventory.len(),
        app.len() + 1,
        "inventory: {:?}",
        st.inventory
    );
    agent.finish();
    drop(cleanup);
    Ok(())
}

/// How the Sync learns that its target namespace is gone, in
/// [`deleted_target_namespace_outside_the_manifests`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Notice {
    /// By itself: the drift watch sees every object deleted.
    Watch,
    /// From a reconcile request (`plumb reconcile sync`) once the namespace is gone.
    Request,
}

/// A Sync with `targetNamespace` (a namespace it does not own: not in its manifests) loses
/// the namespace. It must not create it; it must say which namespace is missing, keep its
/// inventory, delete nothing, and restore its objects once the namespace is back.
async fn deleted_target_namespace_outside_the_manifests(notice: Notice) -> Result<()> {
    let prefix = match notice {
        Notice::Watch => "nsgone",
        Notice::Request => "nsgonereq",
    };
    let w = World::shared(prefix, Remote::Local).await?;
    let target = format!("{}-app", w.ns());
    let namespace: Namespace = serde_json::from_value(json!({ "metadata": { "name": target } }))?;
    let namespaces: Api<Namespace> = Api::all(w.client().clone());
    namespaces
        .create(&PostParams::default(), &namespace)
        .await?;
    let cleanup = TargetNamespace(target.clone());
    let agent = w.spawn(&format!("{prefix}-agent")).await?;
    let app = objects("cm", 20, "1");
    let first = w.commit(&app, None, &[])?;
    w.create_source().await?;
    w.create_sync(json!({ "targetNamespace": target })).await?;
    w.wait_applied(&first).await?;
    let conditions = ConditionLog::start(w.syncs());

    delete_namespace(w.client(), &target).await?;
    wait_namespace_gone(w.client(), &target).await?;
    if notice == Notice::Request {
        let patch = json!({ "metadata": { "annotations": {
            RECONCILE_REQUEST_ANNOTATION: plumb_agent::status::now_rfc3339()
        } } });
        w.syncs()
            .patch("app", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    // The Sync does not create a namespace it does not own: it says which one is missing.
    let line = conditions.wait_for(0, &["Ready=False", &target]).await?;
    eprintln!("the Sync reported: {line}");
    assert!(
        namespaces.get_opt(&target).await?.is_none(),
        "the Sync created a namespace it does not own"
    );
    let st = w.syncs().get("app").await?.status.unwrap_or_default();
    assert_eq!(st.inventory.len(), app.len(), "the inventory is kept");
    assert_eq!(agent.requests("delete", "configmaps").await?, 0.0);

    // The namespace is back (its owner re-created it): the Sync restores its objects.
    let since = conditions.lines().len();
    namespaces
        .create(&PostParams::default(), &namespace)
        .await?;
    eventually("every object to come back", WAIT, || async {
        Ok((w.managed(&target).await? == app).then_some(()))
    })
    .await?;
    conditions.wait_for(since, &["Ready=True", &first]).await?;
    eprintln!("the Sync's states:\n  {}", conditions.lines().join("\n  "));
    assert_eq!(agent.requests("delete", "configmaps").await?, 0.0);
    agent.finish();
    drop(cleanup);
    Ok(())
}

#[tokio::test]
async fn a_deleted_target_namespace_outside_the_manifests_is_reported_on_request() -> Result<()> {
    deleted_target_namespace_outside_the_manifests(Notice::Request).await
}

/// The drift watch sees every object of the Sync deleted and its checks fail with "namespaces
/// ... not found"; after its retries (~1 minute) the Sync is reconciled at once and reports
/// the missing namespace, instead of saying Ready until its interval (found by this drill).
#[tokio::test]
async fn a_deleted_target_namespace_outside_the_manifests_is_reported() -> Result<()> {
    deleted_target_namespace_outside_the_manifests(Notice::Watch).await
}

/// Deletes a namespace (on the shared control plane) that a drill made beside its
/// TestNamespace, also when the drill fails.
struct TargetNamespace(String);

impl Drop for TargetNamespace {
    fn drop(&mut self) {
        let name = self.0.clone();
        // Drop cannot be async and the test's runtime is blocked here: delete from a thread
        // with a runtime and a client of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let client = client().await?;
                let _ = Api::<Namespace>::all(client)
                    .delete(&name, &Default::default())
                    .await;
                anyhow::Ok(())
            })
        })
        .join();
    }
}
