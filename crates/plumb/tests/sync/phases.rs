//! Phases and waves (Argo CD and Helm hook annotations): `examples/hooks` syncs as it is, its
//! hooks and waves run in order (seen by watches: the resourceVersion each object was created
//! at, etcd's one counter for every kind), and a failing hook stops the revision: later waves
//! are not applied, the SyncFail hook runs, nothing is pruned.
//!
//! Jobs complete on the kwok nodes (kwok's default stages complete a Pod owned by a Job); the
//! failing hook is a real Job failure: no node matches its Pod, so the Job controller fails it
//! when its `activeDeadlineSeconds` pass.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::core::GroupVersionKind;
use kube::runtime::watcher;

use super::*;

/// The resourceVersion each object was first seen at, by `Kind/name`.
type Seen = Arc<Mutex<BTreeMap<String, u64>>>;

/// Watches ConfigMaps, Deployments and Jobs of a namespace from before anything is created.
struct Creations {
    seen: Seen,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Creations {
    /// Returns once every watch has listed (so every later creation is an ADDED event).
    async fn start(client: &Client, ns: &str) -> Self {
        let seen: Seen = Arc::default();
        let mut tasks = Vec::new();
        let mut ready = Vec::new();
        for (group, kind, plural) in [
            ("", "ConfigMap", "configmaps"),
            ("apps", "Deployment", "deployments"),
            ("batch", "Job", "jobs"),
        ] {
            let ar = ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(group, "v1", kind),
                plural,
            );
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
            let (tx, rx) = tokio::sync::oneshot::channel();
            ready.push(rx);
            let seen = seen.clone();
            tasks.push(tokio::spawn(async move {
                let mut tx = Some(tx);
                let mut events = watcher(api, watcher::Config::default()).boxed();
                while let Some(event) = events.next().await {
                    match event {
                        Ok(watcher::Event::InitDone) => {
                            if let Some(tx) = tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => {
                            let rv = obj
                                .resource_version()
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(u64::MAX);
                            seen.lock()
                                .unwrap()
                                .entry(format!("{kind}/{}", obj.name_any()))
                                .or_insert(rv);
                        }
                        _ => {}
                    }
                }
            }));
        }
        for rx in ready {
            rx.await.expect("the watch listed");
        }
        Self { seen, tasks }
    }

    /// Waits until every object of `names` was seen (a name ending in `-` is a generateName
    /// prefix); returns them ordered by when they were created.
    async fn order(&self, names: &[&str]) -> Vec<String> {
        let find = |seen: &BTreeMap<String, u64>, name: &str| {
            seen.iter()
                .find(|(k, _)| {
                    if name.ends_with('-') {
                        k.starts_with(name) && k.len() > name.len()
                    } else {
                        k.as_str() == name
                    }
                })
                .map(|(_, rv)| *rv)
        };
        let wait = async {
            loop {
                {
                    let seen = self.seen.lock().unwrap();
                    let found: Option<Vec<(u64, String)>> = names
                        .iter()
                        .map(|n| find(&seen, n).map(|rv| (rv, (*n).to_owned())))
                        .collect();
                    if let Some(mut found) = found {
                        found.sort();
                        return found.into_iter().map(|(_, n)| n).collect::<Vec<_>>();
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| {
                panic!("not all of {names:?} seen: {:?}", self.seen.lock().unwrap())
            })
    }
}

impl Drop for Creations {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hooks")
}

async fn sync_async(dir: &Path, ns: &str, extra: &[&str]) -> (Output, Value) {
    let (dir, ns) = (dir.to_owned(), ns.to_owned());
    let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        sync_json(&dir, "hooks", &ns, &extra)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn an_argo_cd_style_repository_runs_its_hooks_and_waves_in_order() {
    let (client, ns, _dir) = setup("phases").await;
    let creations = Creations::start(&client, ns.name()).await;
    let (out, report) = sync_async(&example(), ns.name(), &["--prune"]).await;
    assert!(out.status.success(), "{}", text(&out));

    let order = creations
        .order(&[
            "Job/migrate-",
            "ConfigMap/settings",
            "Deployment/web",
            "ConfigMap/frontend",
            "Job/smoke",
        ])
        .await;
    assert_eq!(
        order,
        [
            "Job/migrate-",
            "ConfigMap/settings",
            "Deployment/web",
            "ConfigMap/frontend",
            "Job/smoke"
        ],
        "{}",
        text(&out)
    );

    // The PreSync Job got a server-made name and stays (BeforeHookCreation); the PostSync Job
    // was deleted once it succeeded (HookSucceeded); the SyncFail Job never ran.
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns.name());
    let listed = jobs.list(&Default::default()).await.unwrap();
    let names: Vec<String> = listed.items.iter().map(|j| j.name_any()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].starts_with("migrate-") && names[0].len() > "migrate-".len());
    let migrate = change_of(&report, &format!("Job/{}", names[0]));
    assert_eq!(migrate["action"], "created");
    assert_eq!(migrate["message"], "pre hook (wave 0): completed");
    let smoke = change_of(&report, "Job/smoke");
    assert_eq!(
        smoke["message"],
        "post hook (wave 0): completed; deleted (hook-succeeded)"
    );
    assert!(jobs.get_opt("smoke").await.unwrap().is_none());
    assert!(jobs.get_opt("notify-failure").await.unwrap().is_none());
    assert_eq!(action_of(&report, "Deployment/web"), "created");

    // Hooks are in no inventory: a second sync runs them again and prunes none of them. A
    // generateName hook gets a new name each time, so its earlier run stays (as in Argo CD:
    // before-hook-creation replaces a hook of the same name).
    let (out, report) = sync_async(&example(), ns.name(), &["--prune"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let listed = jobs.list(&Default::default()).await.unwrap();
    let again: Vec<String> = listed.items.iter().map(|j| j.name_any()).collect();
    assert_eq!(again.len(), 2, "{again:?}");
    assert!(again.contains(&names[0]), "the first run stays: {again:?}");
    assert_eq!(report["summary"]["pruned"], 0, "{report:#}");
    assert_eq!(action_of(&report, "ConfigMap/frontend"), "unchanged");
}

#[tokio::test]
async fn a_failing_hook_stops_the_revision_runs_the_sync_fail_hook_and_prunes_nothing() {
    let (client, ns, dir) = setup("phases-fail").await;
    write(dir.path(), "stale.yaml", &configmap("stale", "1"));
    write(dir.path(), "first.yaml", &configmap("first", "1"));
    let (out, _) = sync_json(dir.path(), "hooks", ns.name(), &["--prune"]);
    assert!(out.status.success(), "{}", text(&out));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    let stale_uid = cms.get("stale").await.unwrap().uid();

    std::fs::remove_file(dir.path().join("stale.yaml")).unwrap();
    write(
        dir.path(),
        "check.yaml",
        "apiVersion: batch/v1
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
",
    );
    write(
        dir.path(),
        "later.yaml",
        "apiVersion: v1
kind: ConfigMap
metadata:
  name: later
  annotations:
    argocd.argoproj.io/sync-wave: \"1\"
",
    );
    std::fs::copy(
        example().join("notify.yaml"),
        dir.path().join("notify.yaml"),
    )
    .unwrap();
    let (out, report) = sync_async(dir.path(), ns.name(), &["--prune"]).await;
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("hook Job.batch/") && stderr.contains("/check failed: DeadlineExceeded"),
        "{}",
        text(&out)
    );
    let check = change_of(&report, "Job/check");
    assert_eq!(check["action"], "failed");
    assert_eq!(check["failure"], "hook");
    assert_eq!(action_of(&report, "ConfigMap/later"), "skipped");
    assert_eq!(action_of(&report, "ConfigMap/stale"), "skipped");
    assert_eq!(
        change_of(&report, "Job/notify-failure")["message"],
        "fail hook (wave 0): completed"
    );
    // plumb has exited: what it did not write stays unwritten.
    assert!(cms.get_opt("later").await.unwrap().is_none());
    assert_eq!(
        cms.get("stale").await.unwrap().uid(),
        stale_uid,
        "not pruned"
    );
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns.name());
    let notify = jobs.get("notify-failure").await.unwrap();
    assert!(
        notify
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            // The Job controller sets SuccessCriteriaMet as the Job succeeds and Complete once
            // its Pods are gone; plumb counts either (so may have exited between the two).
            .any(
                |c| (c.type_ == "Complete" || c.type_ == "SuccessCriteriaMet")
                    && c.status == "True"
            ),
        "the SyncFail Job ran to completion"
    );
}

#[tokio::test]
async fn generate_name_outside_a_hook_and_a_bad_wave_are_refused_naming_the_file() {
    let (client, ns, dir) = setup("phases-bad").await;
    write(
        dir.path(),
        "job.yaml",
        "apiVersion: batch/v1
kind: Job
metadata:
  generateName: migrate-
spec: {}
",
    );
    let out = plumb(&[
        "sync",
        dir.path().to_str().unwrap(),
        "--name",
        "bad",
        "-n",
        ns.name(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("job.yaml:1") && stderr.contains("only hook objects"),
        "{}",
        text(&out)
    );

    std::fs::remove_file(dir.path().join("job.yaml")).unwrap();
    write(dir.path(), "ok.yaml", &configmap("ok", "1"));
    write(
        dir.path(),
        "wave.yaml",
        "apiVersion: v1
kind: ConfigMap
metadata:
  name: waved
  annotations:
    argocd.argoproj.io/sync-wave: soon
",
    );
    let out = plumb(&[
        "sync",
        dir.path().to_str().unwrap(),
        "--name",
        "bad",
        "-n",
        ns.name(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "wave.yaml:1 (document 0): ConfigMap/{}/waved: annotation \
             argocd.argoproj.io/sync-wave: \"soon\" is not an integer",
            ns.name()
        )),
        "{}",
        text(&out)
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    assert!(
        cms.get_opt("ok").await.unwrap().is_none(),
        "nothing applied"
    );
}

/// Helm's hook annotations, as `helm template` leaves them: install hooks on the first sync,
/// upgrade hooks on the next, weights as waves, test hooks never.
#[tokio::test]
async fn helm_hooks_run_as_install_hooks_first_and_upgrade_hooks_after() {
    let (client, ns, dir) = setup("phases-helm").await;
    let job = |name: &str, hook: &str, weight: i32, policy: &str| {
        format!(
            "apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
  annotations:
    helm.sh/hook: {hook}
    helm.sh/hook-weight: \"{weight}\"
    helm.sh/hook-delete-policy: {policy}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers: [{{name: c, image: busybox:1.36}}]
"
        )
    };
    write(dir.path(), "app.yaml", &configmap("app", "1"));
    write(
        dir.path(),
        "migrate.yaml",
        &job(
            "migrate",
            "pre-install,pre-upgrade",
            5,
            "before-hook-creation",
        ),
    );
    write(
        dir.path(),
        "schema.yaml",
        &job("schema", "pre-install", -5, "hook-succeeded"),
    );
    write(
        dir.path(),
        "seed.yaml",
        &job("seed", "post-install", 0, "before-hook-creation"),
    );
    write(
        dir.path(),
        "test.yaml",
        &job("test", "test", 0, "before-hook-creation"),
    );
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns.name());

    let creations = Creations::start(&client, ns.name()).await;
    let (out, report) = sync_async(dir.path(), ns.name(), &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        creations
            .order(&["Job/schema", "Job/migrate", "ConfigMap/app", "Job/seed"])
            .await,
        ["Job/schema", "Job/migrate", "ConfigMap/app", "Job/seed"]
    );
    assert!(
        jobs.get_opt("schema").await.unwrap().is_none(),
        "hook-succeeded"
    );
    assert!(jobs.get_opt("test").await.unwrap().is_none());
    assert!(
        change_of(&report, "Job/test")["message"]
            .as_str()
            .unwrap()
            .contains("helm test"),
        "{report:#}"
    );
    let first_migrate = jobs.get("migrate").await.unwrap().uid();
    drop(creations);

    // The upgrade: only the upgrade hook runs (replacing its earlier run).
    write(dir.path(), "app.yaml", &configmap("app", "2"));
    let (out, report) = sync_async(dir.path(), ns.name(), &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let ran: Vec<&str> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["object"]["kind"] == "Job" && c["action"] == "created")
        .map(|c| c["object"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(ran, ["migrate"], "{report:#}");
    assert_ne!(jobs.get("migrate").await.unwrap().uid(), first_migrate);
    assert_eq!(action_of(&report, "Job/seed"), "skipped");
    assert_eq!(action_of(&report, "ConfigMap/app"), "configured");
}
