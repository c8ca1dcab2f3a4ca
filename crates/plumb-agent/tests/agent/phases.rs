//! Phases and waves through the agent: the Argo CD example-style repository `examples/hooks`
//! (PreSync Job with generateName, waves -1/0/1, a PostSync Job deleted once it succeeded)
//! syncs as it is, and the Sync's history records the hooks it ran; a failing hook fails the
//! revision, and the SyncFail hook runs.

use k8s_openapi::api::batch::v1::Job;

use super::*;

/// Hooks and waves wait for kwok to run Jobs and make Deployments ready: on a shared, loaded
/// control plane that takes longer than a plain apply (a bound, not a measurement).
const PHASED: Duration = Duration::from_secs(240);

/// A PreSync hook Job no node takes: it runs until the Sync's timeout.
const STUCK_PRESYNC_JOB: &str = "apiVersion: batch/v1
kind: Job
metadata:
  name: stuck
  annotations:
    argocd.argoproj.io/hook: PreSync
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      nodeSelector: {plumb.dev/no-such-node: \"true\"}
      containers: [{name: c, image: busybox:1.36}]
";

fn example(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/hooks")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn the_agent_syncs_an_argo_cd_style_repository_with_hooks_and_waves() -> Result<()> {
    let w = World::new("phases").await?;
    let files: Vec<(String, String)> = [
        "migrate.yaml",
        "config.yaml",
        "web.yaml",
        "frontend.yaml",
        "smoke.yaml",
        "notify.yaml",
    ]
    .iter()
    .map(|f| (format!("app/{f}"), example(f)))
    .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let first = w.commit(&refs, w.signing())?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    let sync = w.inner.wait_applied::<Sync>("app", &first, PHASED).await?;
    let st = sync.status.expect("a status");
    let hooks = &st.history[0].hooks;
    assert_eq!(hooks.len(), 2, "{hooks:?}");
    let pre = format!("pre wave 0 Job.batch/{}/migrate-", w.ns());
    assert!(
        hooks[0].starts_with(&pre) && hooks[0].ends_with(": succeeded"),
        "{hooks:?}"
    );
    assert_eq!(
        hooks[1],
        format!(
            "post wave 0 Job.batch/{}/smoke: succeeded: deleted (hook-succeeded)",
            w.ns()
        )
    );
    // Hooks are not owned: the inventory holds the resources only.
    let mut ids: Vec<&str> = st.inventory.iter().map(|i| i.id.as_str()).collect();
    ids.sort_unstable();
    let ns = w.ns();
    assert_eq!(
        ids,
        [
            format!("ConfigMap/{ns}/frontend"),
            format!("ConfigMap/{ns}/settings"),
            format!("Deployment.apps/{ns}/web"),
            format!("Service/{ns}/web"),
        ]
    );
    let jobs: Api<Job> = Api::namespaced(w.client().clone(), w.ns());
    assert!(jobs.get_opt("smoke").await?.is_none());
    assert!(jobs.get_opt("notify-failure").await?.is_none());

    // A revision whose Sync hook fails: the revision fails, its later wave is not applied, the
    // SyncFail hook runs.
    let failing = "apiVersion: batch/v1
kind: Job
metadata:
  name: check
  annotations:
    argocd.argoproj.io/hook: Sync
spec:
  backoffLimit: 0
  activeDeadlineSeconds: 1
  template:
    spec:
      restartPolicy: Never
      nodeSelector: {plumb.dev/no-such-node: \"true\"}
      containers: [{name: check, image: busybox:1.36}]
";
    let later = "apiVersion: v1
kind: ConfigMap
metadata:
  name: later
  annotations:
    argocd.argoproj.io/sync-wave: \"5\"
";
    w.commit(
        &[("app/check.yaml", failing), ("app/later.yaml", later)],
        w.signing(),
    )?;
    w.poke_source().await?;
    let ready = w
        .wait_condition("Sync", "app", "Ready", "False", PHASED)
        .await?;
    let message = ready["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("/check failed: DeadlineExceeded"),
        "{ready:#}"
    );
    let notify = eventually("the SyncFail Job", PHASED, || {
        let jobs = jobs.clone();
        async move { Ok(jobs.get_opt("notify-failure").await?) }
    })
    .await?;
    assert!(notify.metadata.annotations.is_some());
    assert!(w.configmaps().get_opt("later").await?.is_none());
    let sync: Sync = w.syncs().get("app").await?;
    let history = &sync.status.expect("a status").history;
    assert_eq!(history[0].result, "failure");
    assert!(
        history[0]
            .hooks
            .iter()
            .any(|h| h.starts_with("main wave 0 Job.batch/") && h.contains("/check: failed")),
        "{history:?}"
    );
    assert!(
        history[0]
            .hooks
            .iter()
            .any(|h| h.starts_with("fail wave 0") && h.contains("notify-failure: succeeded")),
        "{history:?}"
    );
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn deleting_a_sync_with_prune_runs_its_delete_hooks_around_the_prune() -> Result<()> {
    let w = World::new("delhooks").await?;
    let hook = |name: &str, annotation: &str| {
        format!(
            "apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
  annotations:
    {annotation}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers: [{{name: c, image: busybox:1.36}}]
"
        )
    };
    let first = w.commit(
        &[
            ("app/cm.yaml", &configmap("settings", "1")),
            (
                "app/backup.yaml",
                &hook("backup", "helm.sh/hook: pre-delete"),
            ),
            (
                "app/cleanup.yaml",
                &hook("cleanup", "argocd.argoproj.io/hook: PostDelete"),
            ),
        ],
        w.signing(),
    )?;
    w.create_source("range").await?;
    w.create_sync_spec(
        "app",
        json!({ "sourceRef": { "name": "repo" }, "path": "app", "interval": "1h", "prune": true }),
    )
    .await?;
    w.inner.wait_applied::<Sync>("app", &first, PHASED).await?;
    let jobs: Api<Job> = Api::namespaced(w.client().clone(), w.ns());
    assert!(jobs.get_opt("backup").await?.is_none(), "not run by a sync");
    assert!(
        jobs.get_opt("cleanup").await?.is_none(),
        "not run by a sync"
    );

    w.syncs().delete("app", &Default::default()).await?;
    w.wait_sync_gone("app", PHASED).await?;
    assert!(w.configmaps().get_opt("settings").await?.is_none());
    for name in ["backup", "cleanup"] {
        let job = jobs.get(name).await?;
        let complete = job
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            // SuccessCriteriaMet comes first, Complete once the Pods are gone; the agent
            // counts either, so may have finished between the two.
            .any(|c| {
                (c.type_ == "Complete" || c.type_ == "SuccessCriteriaMet") && c.status == "True"
            });
        assert!(complete, "{name} ran to completion");
    }
    // The deletion says what it did: the two hooks created, the ConfigMap pruned (the order,
    // pre-delete hooks, prune, post-delete hooks, is the engine's unit test).
    let notes = w.events("app", "ObjectsDeleted").await?;
    assert!(
        notes
            .iter()
            .any(|n| n.contains("2 created") && n.contains("1 pruned")),
        "{notes:?}"
    );
    w.stop().await;
    Ok(())
}

/// The Sync `app` of the repository's `app` directory, with a timeout of ten minutes.
async fn create_sync_with_ten_minutes(w: &World) -> Result<()> {
    w.create_sync_spec(
        "app",
        json!({ "sourceRef": { "name": "repo" }, "path": "app", "interval": "1h",
                "timeout": "10m" }),
    )
    .await
}

/// Waits until the Job of [`STUCK_PRESYNC_JOB`] exists; returns the Jobs of the namespace.
async fn stuck_hook_created(w: &World) -> Result<Api<Job>> {
    let jobs: Api<Job> = Api::namespaced(w.client().clone(), w.ns());
    eventually("the stuck hook to be created", PHASED, || {
        let jobs = jobs.clone();
        async move { Ok(jobs.get_opt("stuck").await?) }
    })
    .await?;
    Ok(jobs)
}

#[tokio::test]
async fn a_new_revision_cancels_a_running_hook_wait() -> Result<()> {
    let w = World::new("hookcancel").await?;
    // A PreSync Job no node takes: it runs until the Sync's ten-minute timeout.
    w.commit(
        &[
            ("app/stuck.yaml", STUCK_PRESYNC_JOB),
            ("app/cm.yaml", &configmap("settings", "1")),
        ],
        w.signing(),
    )?;
    w.create_source("range").await?;
    create_sync_with_ten_minutes(&w).await?;
    stuck_hook_created(&w).await?;

    // The fix, pushed while the hook runs: applied long before the ten minutes.
    w.wt().remove("app/stuck.yaml")?;
    let fixed = w.commit(&[("app/cm.yaml", &configmap("settings", "2"))], w.signing())?;
    w.poke_source().await?;
    let sync = w.inner.wait_applied::<Sync>("app", &fixed, PHASED).await?;
    w.wait_value("settings", "2").await?;
    let history = sync.status.expect("a status").history;
    assert!(
        history.iter().any(
            |h| h.result == "cancelled" && h.hooks.iter().any(|l| l.contains("/stuck: failed"))
        ),
        "{history:#?}"
    );
    w.stop().await;
    Ok(())
}

/// While a revision's writes wait inside the apply (a PreSync hook that never completes), a
/// hand edit of an object the revision leaves as it is (its manifest unchanged) is healed at
/// once, not when the writes end.
#[tokio::test]
async fn during_a_long_apply_an_object_it_leaves_alone_is_healed_at_once() -> Result<()> {
    let w = World::new("exempt").await?;
    let first = w.commit(
        &[("app/cm.yaml", &configmap("settings", "v1"))],
        w.signing(),
    )?;
    w.create_source("range").await?;
    create_sync_with_ten_minutes(&w).await?;
    w.wait_applied("app", &first).await?;

    // The next revision adds a PreSync Job no node takes: its writes wait for it.
    w.commit(&[("app/stuck.yaml", STUCK_PRESYNC_JOB)], w.signing())?;
    w.poke_source().await?;
    let jobs = stuck_hook_created(&w).await?;

    w.edit_by_hand("settings", "edited by hand").await?;
    w.wait_value("settings", "v1").await?;
    // Still inside that apply: the revision is not applied, the hook still waits.
    let sync = w.syncs().get("app").await?;
    let st = sync.status.expect("a status");
    assert!(
        st.last_applied_revision
            .as_deref()
            .is_some_and(|r| r.ends_with(&first)),
        "{st:#?}"
    );
    assert!(jobs.get_opt("stuck").await?.is_some());
    w.stop().await;
    Ok(())
}
