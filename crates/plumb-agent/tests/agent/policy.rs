//! What the agent refuses: tampered source status, local sources, cross-namespace refs,
//! credentials for other hosts, plain http; range verification across restarts.

use super::*;

/// Whoever may patch `gitsources/status` (a tenant, say) cannot make a Sync apply a commit the
/// agent did not verify, nor read another directory through the commit field.
#[tokio::test]
async fn a_tampered_source_status_is_never_applied() -> Result<()> {
    let w = World::new("tamper").await?;
    let signed = w.commit(
        &[("app/cm.yaml", &configmap("settings", "signed"))],
        w.signing(),
    )?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    w.wait_applied("app", &signed).await?;

    // The agent will not fetch again; an unsigned commit appears in the repository.
    w.sources()
        .patch(
            "repo",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "suspend": true } })),
        )
        .await?;
    let unsigned = w.commit(
        &[("app/cm.yaml", &configmap("settings", "unsigned"))],
        &Signing::None,
    )?;
    for (commit, expected) in [
        (unsigned.as_str(), "this agent fetched"),
        ("../../other-namespace/repo", "not a commit id"),
    ] {
        let patch = json!({ "status": { "artifact": {
            "revision": format!("main@sha1:{commit}"), "commit": commit
        } } });
        let patched = w
            .sources()
            .patch_status("repo", &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        if let Err(kube::Error::Api(e)) = &patched {
            // The CRD's validation refused the value outright: as good.
            assert_eq!(e.code, 422, "{e}");
            continue;
        }
        patched?;
        let syncs = w.syncs();
        eventually(&format!("the Sync to refuse {commit}"), WAIT, || {
            let syncs = syncs.clone();
            async move {
                let st = syncs.get("app").await?.status.unwrap_or_default();
                Ok(plumb_agent::status::ready(&st.conditions)
                    .is_some_and(|c| c.status == "False" && c.message.contains(expected))
                    .then_some(()))
            }
        })
        .await?;
        let st = syncs.get("app").await?.status.unwrap_or_default();
        assert!(
            st.last_applied_revision
                .as_deref()
                .is_some_and(|r| r.ends_with(&signed)),
            "{:?}",
            st.last_applied_revision
        );
        let cm = w.configmaps().get("settings").await?;
        assert_eq!(cm.data.unwrap_or_default()["value"], "signed");
    }

    // Resumed, the agent fetches and verifies the tip itself, and refuses it.
    w.sources()
        .patch(
            "repo",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "suspend": false } })),
        )
        .await?;
    let sources = w.sources();
    eventually("the GitSource to reject the unsigned tip", WAIT, || {
        let sources = sources.clone();
        let unsigned = unsigned.clone();
        async move {
            let st = sources.get("repo").await?.status.unwrap_or_default();
            Ok(plumb_agent::status::ready(&st.conditions)
                .is_some_and(|c| c.status == "False" && c.message.contains(&unsigned))
                .then_some(()))
        }
    })
    .await?;
    let cm = w.configmaps().get("settings").await?;
    assert_eq!(cm.data.unwrap_or_default()["value"], "signed");
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn local_sources_are_refused_unless_allowed() -> Result<()> {
    let w = World::without_agent("local").await?;
    let first = w.commit(&[("app/cm.yaml", &configmap("local", "1"))], w.signing())?;
    let agent = w
        .start_agent("strict", |c| c.allow_local_sources = false)
        .await?;
    w.create_source("range").await?;
    let sources = w.sources();
    let (reason, message) = wait_source_refused(&sources, "repo").await?;
    assert_eq!(reason, "InvalidSpec", "{message}");
    assert!(
        message.contains("--allow-local-sources") && message.contains(w.url()),
        "{message}"
    );
    let stalled = source_condition(&sources, "repo", "Stalled").await?;
    assert_eq!(stalled.map(|(s, _, _)| s).as_deref(), Some("True"));
    // Refused before any fetch: nothing of the repository reached the agent's cache.
    let cache = w.cache_dir("strict");
    let fetcher = plumb_source::Fetcher::new(cache.join("git"));
    assert!(!fetcher.repo_path(w.url()).exists());
    let files = files_under(&cache);
    assert!(
        !files
            .iter()
            .any(|f| f.ends_with("HEAD") || f.ends_with("cm.yaml")),
        "the refused source was fetched: {files:?}"
    );
    let _ = agent.stop().await;

    // The same source with the flag: fetched.
    let agent = w
        .start_agent("allowed", |c| c.allow_local_sources = true)
        .await?;
    w.poke_source().await?;
    eventually("the local source to be fetched", WAIT, || {
        let sources = sources.clone();
        let first = first.clone();
        async move {
            let gs = sources.get("repo").await?;
            Ok(gs
                .status
                .and_then(|s| s.artifact)
                .filter(|a| a.commit == first)
                .map(|_| ()))
        }
    })
    .await?;
    let _ = agent.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_default_service_account_without_rights_applies_nothing() -> Result<()> {
    let w = World::without_agent("defsa").await?;
    w.commit(&[("app/cm.yaml", &configmap("guarded", "1"))], w.signing())?;
    // No RoleBinding names this account: it may do nothing.
    let agent = w
        .start_agent("defsa", |c| {
            c.default_service_account = Some("tenant".to_owned());
        })
        .await?;
    w.create_source("range").await?;
    // No serviceAccountName: applied as the default account, not as the agent.
    w.create_sync("app", "correct").await?;
    let syncs = w.syncs();
    let message = eventually("the Sync to fail on permissions", WAIT, || {
        let syncs = syncs.clone();
        async move {
            Ok(ready_condition(&syncs, "app")
                .await?
                .filter(|(s, _, _)| s == "False")
                .filter(|(_, r, _)| r != "DependencyNotReady")
                .map(|(_, _, m)| m))
        }
    })
    .await?;
    assert!(message.contains("forbidden"), "{message}");
    assert!(
        message.contains(&format!("system:serviceaccount:{}:tenant", w.ns())),
        "{message}"
    );
    assert!(w.configmaps().get_opt("guarded").await?.is_none());
    let _ = agent.stop().await;
    Ok(())
}

#[tokio::test]
async fn cross_namespace_refs_are_refused_when_disabled() -> Result<()> {
    let w = World::without_agent("xns").await?;
    let first = w.commit(&[("app/cm.yaml", &configmap("xns", "1"))], w.signing())?;
    let agent = w
        .start_agent("xns", |c| c.cross_namespace_refs = false)
        .await?;
    w.create_source("range").await?;
    w.create_sync_spec(
        "other-source",
        json!({ "sourceRef": { "name": "repo", "namespace": "kube-system" }, "path": "app", "interval": "1h" }),
    )
    .await?;
    w.create_sync_spec(
        "other-dependency",
        json!({ "sourceRef": { "name": "repo" }, "path": "app", "interval": "1h",
                "dependsOn": [{ "name": "base", "namespace": "kube-system" }] }),
    )
    .await?;
    // Its own namespace, spelled out: allowed.
    w.create_sync_spec(
        "same",
        json!({ "sourceRef": { "name": "repo", "namespace": w.ns() }, "path": "app", "interval": "1h" }),
    )
    .await?;
    let syncs = w.syncs();
    for (name, what) in [
        ("other-source", "GitSource kube-system/repo"),
        ("other-dependency", "Sync kube-system/base"),
    ] {
        let (reason, message) = eventually(&format!("Sync {name} to be refused"), WAIT, || {
            let syncs = syncs.clone();
            async move {
                Ok(ready_condition(&syncs, name)
                    .await?
                    .filter(|(s, _, _)| s == "False")
                    .map(|(_, r, m)| (r, m)))
            }
        })
        .await?;
        assert_eq!(reason, "InvalidSpec", "{name}: {message}");
        assert!(
            message.contains(what) && message.contains("--no-cross-namespace-refs"),
            "{name}: {message}"
        );
    }
    w.wait_applied("same", &first).await?;
    let _ = agent.stop().await;
    Ok(())
}

#[tokio::test]
async fn credentials_go_only_to_the_hosts_their_secret_names() -> Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    use plumb_testsupport::git::GitServers;

    let servers = GitServers::start()?;
    let repo = servers.create_repo("creds")?;
    let wt = repo.work_tree()?;
    wt.write("app/cm.yaml", configmap("creds", "1"))?;
    let first = wt.commit("first", &Signing::None)?;
    wt.push()?;
    let url = servers.https_url("creds");
    let access_log = servers.dir().join("logs/nginx-access.log");
    let requests = || {
        std::fs::read_to_string(&access_log)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let before = requests();

    let w = World::without_agent("creds").await?;
    // A strict agent: https sources are remote, so they are allowed.
    let agent = w
        .start_agent("creds", |c| c.allow_local_sources = false)
        .await?;
    let password = servers.password().to_owned();
    let ca = std::fs::read_to_string(servers.ca_cert_path())?;
    let secrets: Api<Secret> = Api::namespaced(w.client().clone(), w.ns());
    for (name, hosts) in [
        ("unbound", None),
        ("elsewhere", Some("git.example.com, 127.0.0.1:1")),
    ] {
        let annotations = hosts
            .map(|h| json!({ plumb_agent::policy::CREDENTIAL_HOSTS_ANNOTATION: h }))
            .unwrap_or_else(|| json!({}));
        let secret: Secret = serde_json::from_value(json!({
            "metadata": { "name": name, "annotations": annotations },
            "stringData": { "username": servers.username(), "password": password, "caFile": ca },
        }))?;
        secrets.create(&PostParams::default(), &secret).await?;
        let gs: GitSource = serde_json::from_value(json!({
            "apiVersion": "plumb.dev/v1alpha1", "kind": "GitSource",
            "metadata": { "name": name },
            "spec": { "url": url, "interval": "1h", "secretRef": { "name": name } }
        }))?;
        w.sources().create(&PostParams::default(), &gs).await?;
    }
    let sources = w.sources();
    for name in ["unbound", "elsewhere"] {
        let (reason, message) = wait_source_refused(&sources, name).await?;
        assert_eq!(reason, "InvalidSpec", "{message}");
        assert!(
            message.contains(&format!("Secret {}/{name}", w.ns()))
                && message.contains("127.0.0.1")
                && message.contains("plumb.dev/credential-hosts"),
            "{name}: {message}"
        );
        assert!(!message.contains(&password), "{message}");
    }
    assert_eq!(requests(), before, "the Git server saw a request");

    // Bound to the server's host: fetched with the credentials.
    secrets
        .patch(
            "unbound",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": {
                plumb_agent::policy::CREDENTIAL_HOSTS_ANNOTATION: format!("127.0.0.1:{}", servers.https_port())
            } } })),
        )
        .await?;
    sources
        .patch(
            "unbound",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": {
                RECONCILE_REQUEST_ANNOTATION: plumb_agent::status::now_rfc3339()
            } } })),
        )
        .await?;
    eventually("the bound source to be fetched", WAIT, || {
        let sources = sources.clone();
        let first = first.clone();
        async move {
            let gs = sources.get("unbound").await?;
            Ok(gs
                .status
                .and_then(|s| s.artifact)
                .filter(|a| a.commit == first)
                .map(|_| ()))
        }
    })
    .await?;
    assert!(requests() > before, "the access log counts requests");
    let _ = agent.stop().await;
    Ok(())
}

#[tokio::test]
async fn plain_http_sources_need_insecure_and_say_so() -> Result<()> {
    use plumb_testsupport::git::GitServers;

    let servers = GitServers::start()?;
    let repo = servers.create_repo("plain")?;
    let wt = repo.work_tree()?;
    wt.write("app/cm.yaml", configmap("plain", "1"))?;
    let first = wt.commit("first", &Signing::None)?;
    wt.push()?;
    let url = servers.http_url("plain");
    let w = World::new("plain").await?;
    for (name, spec) in [
        ("refused", json!({ "url": url, "interval": "1h" })),
        (
            "with-creds",
            json!({ "url": url, "interval": "1h", "insecure": true, "secretRef": { "name": "x" } }),
        ),
        (
            "allowed",
            json!({ "url": url, "interval": "1h", "insecure": true }),
        ),
    ] {
        let gs: GitSource = serde_json::from_value(json!({
            "apiVersion": "plumb.dev/v1alpha1", "kind": "GitSource",
            "metadata": { "name": name }, "spec": spec
        }))?;
        w.sources().create(&PostParams::default(), &gs).await?;
    }
    let sources = w.sources();
    let (_, message) = wait_source_refused(&sources, "refused").await?;
    assert!(message.contains("plain http is not allowed"), "{message}");
    let (_, message) = wait_source_refused(&sources, "with-creds").await?;
    assert!(message.contains("clear text"), "{message}");
    eventually("the insecure source to be Ready", WAIT, || {
        let sources = sources.clone();
        let first = first.clone();
        async move {
            let st = sources.get("allowed").await?.status.unwrap_or_default();
            Ok(plumb_agent::status::ready(&st.conditions)
                .is_some_and(|c| {
                    c.status == "True"
                        && c.message.contains(&first)
                        && c.message.contains("insecure")
                })
                .then_some(()))
        }
    })
    .await?;
    w.stop().await;
    Ok(())
}

/// After a restart, range verification resumes from the agent's own ledger, not from the
/// GitSource's status: an unsigned commit pushed while no agent ran is found even when the
/// status is made to point past it.
#[tokio::test]
async fn a_restarted_agent_resumes_range_verification_from_its_ledger() -> Result<()> {
    let w = World::without_agent("ledger").await?;
    let ns = w.ns().to_owned();
    let signed = w.commit(
        &[("app/cm.yaml", &configmap("settings", "one"))],
        w.signing(),
    )?;
    w.create_source("range").await?;
    w.create_sync("app", "correct").await?;
    let with_ledger = |c: &mut AgentConfig| c.agent_namespace = Some(ns.clone());
    let agent = w.start_agent("first", with_ledger).await?;
    w.wait_applied("app", &signed).await?;
    let cms = w.configmaps();
    let key = format!("{ns}.repo");
    eventually("the ledger to record the verified commit", WAIT, || {
        let (cms, key, signed) = (cms.clone(), key.clone(), signed.clone());
        async move {
            Ok(cms
                .get_opt(plumb_agent::gitsource::VERIFIED_LEDGER)
                .await?
                .and_then(|c| c.data)
                .is_some_and(|d| d.get(&key) == Some(&signed))
                .then_some(()))
        }
    })
    .await?;
    let _ = agent.stop().await;

    // While no agent runs: an unsigned commit, a signed one on top, and a status that names
    // the unsigned one as if it had been verified.
    let unsigned = w.commit(
        &[("app/cm.yaml", &configmap("settings", "two"))],
        &Signing::None,
    )?;
    w.commit(
        &[("app/cm.yaml", &configmap("settings", "three"))],
        w.signing(),
    )?;
    let patch = json!({ "status": { "artifact": {
        "revision": format!("main@sha1:{unsigned}"), "commit": unsigned
    } } });
    w.sources()
        .patch_status("repo", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;

    let agent = w.start_agent("second", with_ledger).await?;
    let sources = w.sources();
    eventually(
        "the restarted agent to reject the unsigned commit",
        WAIT,
        || {
            let sources = sources.clone();
            let unsigned = unsigned.clone();
            async move {
                let st = sources.get("repo").await?.status.unwrap_or_default();
                Ok(plumb_agent::status::ready(&st.conditions)
                    .is_some_and(|c| c.status == "False" && c.message.contains(&unsigned))
                    .then_some(()))
            }
        },
    )
    .await?;
    let cm = w.configmaps().get("settings").await?;
    assert_eq!(cm.data.unwrap_or_default()["value"], "one");
    let _ = agent.stop().await;
    Ok(())
}
