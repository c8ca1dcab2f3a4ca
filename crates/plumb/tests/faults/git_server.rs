//! Drill 3: the Git server stopped mid-fetch.

use super::*;

#[tokio::test]
async fn git_server_stopped_mid_fetch_keeps_the_cluster_and_recovers() -> Result<()> {
    /// 4 MiB of pack at 1 MiB/s: the transfer takes about 4 s.
    const BLOB: usize = 1 << 20;
    let mut servers = GitServers::start_with(ServerOptions {
        rate_limit: Some(1 << 20),
    })?;
    let w = World::shared("gitstop", Remote::Http(&servers)).await?;
    let ns = w.ns().to_owned();
    let agent = w.spawn("gitstop-agent").await?;

    let keep1 = objects("keep", 20, "1");
    let gone = objects("gone", 10, "1");
    let first = w.commit(&union(&[keep1.clone(), gone.clone()]), None, &[])?;
    w.create_bystanders(&ns).await?;
    w.create_source().await?;
    w.create_sync(json!({})).await?;
    w.wait_applied(&first).await?;
    let before = w.uids(&ns).await?;
    let events = ConfigMapEvents::start(w.configmaps(&ns));
    let deletes_before = agent.requests("delete", "configmaps").await?;

    // The new revision carries large files outside the Sync's path.
    let blobs: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("blobs/blob-{i}.bin"), incompressible(BLOB, i + 1)))
        .collect();
    let extra: Vec<(&str, &[u8])> = blobs
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect();
    let keep2 = objects("keep", 20, "2");
    let second = w.commit(&keep2, None, &extra)?;
    w.poke_source().await?;

    // Stop the servers once a quarter of the pack is out.
    eventually("the Git server to be sending the pack", WAIT, || {
        let sent = servers.serving().unwrap_or(0);
        async move { Ok((sent >= BLOB as u64).then_some(sent)) }
    })
    .await?;
    servers.stop();
    let stopped_at = Instant::now();

    // The GitSource says so; the cluster keeps the last revision, nothing pruned.
    let sources = w.sources();
    let message = eventually("the GitSource to report the failed fetch", WAIT, || {
        let sources = sources.clone();
        async move {
            let st = sources.get("repo").await?.status.unwrap_or_default();
            Ok(st
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "FetchFailed")
                .map(|c| c.message.clone()))
        }
    })
    .await?;
    eprintln!("the GitSource reported: {message}");
    assert!(message.contains(w.url()), "{message}");
    let st = sources.get("repo").await?.status.unwrap_or_default();
    assert_eq!(
        st.artifact.map(|a| a.commit).as_deref(),
        Some(first.as_str()),
        "the artifact is still the last good fetch"
    );
    let sync_st = w.syncs().get("app").await?.status.unwrap_or_default();
    assert!(
        sync_st
            .last_applied_revision
            .as_deref()
            .is_some_and(|r| r.ends_with(&first))
            && plumb_agent::status::is_true(&sync_st.conditions, "Ready"),
        "the Sync keeps its revision: {:?}",
        sync_st.conditions
    );
    assert_eq!(
        w.managed(&ns).await?,
        union(&[keep1.clone(), gone.clone()]),
        "nothing changed or pruned on a failed fetch"
    );

    // The server comes back on the same ports: the source retries by itself.
    servers.restart()?;
    w.wait_applied(&second).await?;
    eprintln!(
        "fetched and applied {:.1?} after the server stopped",
        stopped_at.elapsed()
    );
    assert_eq!(w.managed(&ns).await?, keep2, "the managed ConfigMaps");
    let after = w.uids(&ns).await?;
    let mut kept = names(&keep1);
    kept.extend(["bystander".to_owned(), "impostor".to_owned()]);
    assert_same_uids(&before, &after, &kept)?;
    let deleted = events.deleted_names();
    assert_eq!(deleted, names(&gone), "deleted objects");
    let deletes = agent.requests("delete", "configmaps").await? - deletes_before;
    assert_eq!(deletes, gone.len() as f64, "DELETE requests the agent sent");
    let st = sources.get("repo").await?.status.unwrap_or_default();
    assert_eq!(
        st.artifact.map(|a| a.commit).as_deref(),
        Some(second.as_str())
    );

    agent.finish();
    Ok(())
}
