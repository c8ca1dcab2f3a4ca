//! `reconcile`: waiting for the agent, its progress, its result, and timeouts.

use super::*;

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
