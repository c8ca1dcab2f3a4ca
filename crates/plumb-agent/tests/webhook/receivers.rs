//! GitLab tokens, generic HMAC, receivers created or rotated after the start, and the port
//! serving nothing but hooks.

use super::*;

#[tokio::test]
async fn gitlab_token() -> Result<()> {
    let fx = Fixture::new("gl", "gitlab", TOKEN).await?;
    fx.source("app", "https://gitlab.example.com/acme/app.git", true)
        .await?;
    fx.source("other", "https://gitlab.example.com/acme/other.git", true)
        .await?;
    let body = serde_json::to_vec(&json!({
        "object_kind": "push",
        "project": {
            "git_http_url": "https://gitlab.example.com/acme/app.git",
            "git_ssh_url": "git@gitlab.example.com:acme/app.git",
            "web_url": "https://gitlab.example.com/acme/app",
        },
    }))?;

    for headers in [
        vec![("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "wrong")],
        vec![
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Token", "It's a Secret to Everybod"),
        ],
        vec![("X-Gitlab-Event", "Push Hook")],
    ] {
        let reply = post(fx.addr, &fx.path(), &headers, &body).await;
        assert_eq!(reply.status, 401, "{headers:?}: {}", reply.body);
    }
    assert_eq!(fx.requested("app").await?, None);

    // Other events are accepted and trigger nothing.
    let reply = post(
        fx.addr,
        &fx.path(),
        &[("X-Gitlab-Event", "Issue Hook"), ("X-Gitlab-Token", TOKEN)],
        b"{}",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(fx.requested("app").await?, None);

    let reply = post(
        fx.addr,
        &fx.path(),
        &[
            ("X-Gitlab-Event", "Tag Push Hook"),
            ("X-Gitlab-Token", TOKEN),
        ],
        &body,
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.json()["triggered"], json!([fx.key("app")]));
    assert!(fx.requested("app").await?.is_some());
    assert_eq!(fx.requested("other").await?, None);
    Ok(())
}

#[tokio::test]
async fn generic_hmac() -> Result<()> {
    let fx = Fixture::new("gen", "generic", TOKEN).await?;
    fx.source("app", "https://git.example.com/acme/app.git", true)
        .await?;
    fx.source("other", "https://git.example.com/acme/other.git", true)
        .await?;
    let body = br#"{"url":"https://git.example.com/acme/app"}"#;

    let reply = post(
        fx.addr,
        &fx.path(),
        &[("X-Signature", &sign("wrong", body))],
        body,
    )
    .await;
    assert_eq!(reply.status, 401);
    // A GitHub header does not stand in for the generic one.
    let reply = post(
        fx.addr,
        &fx.path(),
        &[("X-Hub-Signature-256", &sign(TOKEN, body))],
        body,
    )
    .await;
    assert_eq!(reply.status, 401);
    assert_eq!(fx.requested("app").await?, None);

    let reply = post(
        fx.addr,
        &fx.path(),
        &[("X-Signature", &sign(TOKEN, body))],
        body,
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.json()["triggered"], json!([fx.key("app")]));
    assert!(fx.requested("app").await?.is_some());
    assert_eq!(fx.requested("other").await?, None);
    Ok(())
}

#[tokio::test]
async fn receivers_created_or_rotated_after_start_take_effect() -> Result<()> {
    let fx = Fixture::new("late", "generic", TOKEN).await?;
    fx.source("app", "https://git.example.com/acme/app.git", true)
        .await?;
    fx.wait_watching().await?;
    let body = br#"{"url":"https://git.example.com/acme/app"}"#;

    // A receiver that did not exist when the receiver started.
    let late = format!("{}-2", fx.receiver);
    let path = format!("/hook/{late}");
    let reply = post(
        fx.addr,
        &path,
        &[("X-Signature", &sign("first", body))],
        body,
    )
    .await;
    assert_eq!(reply.status, 401, "unknown yet: {}", reply.body);
    fx.create_receiver_secret(&late, "generic", "first").await?;
    eventually("the new receiver to be served", WAIT, || async {
        let reply = post(
            fx.addr,
            &path,
            &[("X-Signature", &sign("first", body))],
            body,
        )
        .await;
        Ok((reply.status != 401).then_some(reply.status))
    })
    .await
    .and_then(|status| {
        anyhow::ensure!(status == 200 || status == 202, "answered {status}");
        Ok(())
    })?;

    // Rotating its token: the new one works, the old one stops working.
    let secrets = Api::<Secret>::namespaced(fx.w.client().clone(), fx.w.ns());
    secrets
        .patch(
            &format!("plumb-receiver-{late}"),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({ "stringData": { "token": "second" } })),
        )
        .await?;
    eventually("the rotated token to be in force", WAIT, || async {
        let old = post(
            fx.addr,
            &path,
            &[("X-Signature", &sign("first", body))],
            body,
        )
        .await;
        Ok((old.status == 401).then_some(()))
    })
    .await?;
    let reply = post(
        fx.addr,
        &path,
        &[("X-Signature", &sign("second", body))],
        body,
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);

    // Deleting it: refused again.
    secrets
        .delete(&format!("plumb-receiver-{late}"), &Default::default())
        .await?;
    eventually("the deleted receiver to be refused", WAIT, || async {
        let reply = post(
            fx.addr,
            &path,
            &[("X-Signature", &sign("second", body))],
            body,
        )
        .await;
        Ok((reply.status == 401).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_webhook_port_serves_nothing_but_hooks() -> Result<()> {
    let fx = Fixture::new("only", "github", TOKEN).await?;
    for path in ["/metrics", "/healthz", "/readyz", "/"] {
        let reply = get(fx.addr, path).await;
        assert_eq!(reply.status, 404, "GET {path}: {}", reply.body);
    }
    let reply = get(fx.addr, &fx.path()).await;
    assert_eq!(reply.status, 405, "GET on a hook");
    Ok(())
}
