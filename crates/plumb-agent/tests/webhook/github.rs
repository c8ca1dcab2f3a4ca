//! GitHub pushes: signatures, matching sources, bodies too large, and refused requests that
//! cost no API requests.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `POST` written on a bare TCP stream, reading while writing: the server answers (413)
/// before it has read the whole body and may close the connection under a client that is
/// still writing, which an HTTP client reports as an error instead of the answer. About the
/// raw exchange, so no HTTP client here.
async fn post_raw(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let (mut reader, mut writer) = stream.into_split();
    // Write and read at once: the server may answer (413) before it has read the whole body.
    let write = async move {
        let _ = writer.write_all(head.as_bytes()).await;
        let _ = writer.write_all(body).await;
        writer
    };
    let read = async move {
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
        raw
    };
    let (_writer, raw) = tokio::join!(write, read);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    Reply {
        status,
        headers: Vec::new(),
        body: body.to_owned(),
    }
}

#[tokio::test]
async fn github_push_triggers_only_the_matching_sources() -> Result<()> {
    let fx = Fixture::new("gh", "github", TOKEN).await?;
    // Same repository, spelled the ssh way: must match the https URL of the payload.
    fx.source("app", "ssh://git@GitHub.com/acme/app.git", true)
        .await?;
    fx.source("other", "https://github.com/acme/other.git", true)
        .await?;
    fx.source("unannotated", "https://github.com/acme/app.git", false)
        .await?;
    let body = github_push("app");
    let signature = sign(TOKEN, &body);

    // Bad signature (signed with another token, or over another body): 401, nothing triggered.
    let wrong = sign("not the token", &body);
    for headers in [
        vec![
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", wrong.as_str()),
        ],
        vec![
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", "sha256=00"),
        ],
        vec![("X-GitHub-Event", "push")],
    ] {
        let reply = post(fx.addr, &fx.path(), &headers, &body).await;
        assert_eq!(reply.status, 401, "{headers:?}: {}", reply.body);
    }
    let tampered = post(
        fx.addr,
        &fx.path(),
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &signature),
        ],
        &github_push("other"),
    )
    .await;
    assert_eq!(tampered.status, 401, "a signature over another body");
    for name in ["app", "other", "unannotated"] {
        assert_eq!(
            fx.requested(name).await?,
            None,
            "{name} was triggered by a refused request"
        );
    }

    // A ping is accepted and triggers nothing.
    let ping_body = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
    let ping = post(
        fx.addr,
        &fx.path(),
        &[
            ("X-GitHub-Event", "ping"),
            ("X-Hub-Signature-256", &sign(TOKEN, ping_body)),
        ],
        ping_body,
    )
    .await;
    assert_eq!(ping.status, 200, "{}", ping.body);
    assert_eq!(ping.json()["triggered"], json!([]));
    assert_eq!(fx.requested("app").await?, None);

    // A valid push triggers the matching source only.
    let before = jiff::Timestamp::now();
    let reply = post(
        fx.addr,
        &fx.path(),
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &signature),
        ],
        &body,
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.json()["triggered"], json!([fx.key("app")]));
    let requested = fx
        .requested("app")
        .await?
        .context("app was not triggered")?;
    let at: jiff::Timestamp = requested
        .parse()
        .context("the annotation is an RFC 3339 time")?;
    assert!(
        at >= before - jiff::SignedDuration::from_secs(1),
        "{at} is older than the push"
    );
    assert_eq!(fx.requested("other").await?, None);
    assert_eq!(fx.requested("unannotated").await?, None);

    // A refused request afterwards leaves the annotation as it was.
    let reply = post(
        fx.addr,
        &fx.path(),
        &[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &wrong)],
        &body,
    )
    .await;
    assert_eq!(reply.status, 401);
    assert_eq!(fx.requested("app").await?, Some(requested));

    // An unknown receiver is refused like a bad signature.
    let reply = post(
        fx.addr,
        "/hook/nobody-here",
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &signature),
        ],
        &body,
    )
    .await;
    assert_eq!(reply.status, 401);

    // Every request was counted, the token never shows.
    let text = metrics::encode(&fx.registry);
    assert!(
        text.contains(&format!(
            r#"plumb_webhook_requests_total{{receiver="{}",result="accepted"}} 2"#,
            fx.receiver
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            r#"plumb_webhook_requests_total{{receiver="{}",result="unauthorized"}} 5"#,
            fx.receiver
        )),
        "{text}"
    );
    assert!(!text.contains(TOKEN));
    Ok(())
}

#[tokio::test]
async fn a_push_without_repository_urls_triggers_every_annotated_source() -> Result<()> {
    let fx = Fixture::new("ghall", "github", TOKEN).await?;
    fx.source("one", "https://github.com/acme/one.git", true)
        .await?;
    fx.source("two", "https://example.com/acme/two.git", true)
        .await?;
    let body = br#"{"ref":"refs/heads/main"}"#;
    let reply = post(
        fx.addr,
        &fx.path(),
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &sign(TOKEN, body)),
        ],
        body,
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let mut triggered: Vec<String> = serde_json::from_value(reply.json()["triggered"].clone())?;
    triggered.sort();
    assert_eq!(triggered, vec![fx.key("one"), fx.key("two")]);
    Ok(())
}

#[tokio::test]
async fn oversize_bodies_are_refused() -> Result<()> {
    let fx = Fixture::new("big", "github", TOKEN).await?;
    fx.source("app", "https://github.com/acme/app.git", true)
        .await?;
    // Correctly signed, but one byte over the 1 MiB limit.
    let body = vec![b' '; webhook::DEFAULT_BODY_LIMIT + 1];
    let reply = post_raw(
        fx.addr,
        &fx.path(),
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &sign(TOKEN, &body)),
        ],
        &body,
    )
    .await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert_eq!(fx.requested("app").await?, None);
    Ok(())
}

#[tokio::test]
async fn refused_requests_cost_no_api_requests() -> Result<()> {
    let fx = Fixture::new("quiet", "github", TOKEN).await?;
    fx.source("app", "https://github.com/acme/app.git", true)
        .await?;
    fx.wait_watching().await?;
    let before = fx.api_requests("");
    let body = github_push("app");
    let wrong = sign("not the token", &body);
    for _ in 0..20 {
        // Unknown receivers (plausible names), invalid names, bad and missing signatures.
        for (path, headers) in [
            (
                "/hook/no-such-receiver".to_owned(),
                vec![
                    ("X-GitHub-Event", "push"),
                    ("X-Hub-Signature-256", wrong.as_str()),
                ],
            ),
            ("/hook/UPPER".to_owned(), vec![("X-GitHub-Event", "push")]),
            (
                fx.path(),
                vec![
                    ("X-GitHub-Event", "push"),
                    ("X-Hub-Signature-256", wrong.as_str()),
                ],
            ),
            (fx.path(), vec![("X-GitHub-Event", "push")]),
        ] {
            let reply = post(fx.addr, &path, &headers, &body).await;
            assert_eq!(reply.status, 401, "{path} {headers:?}: {}", reply.body);
        }
    }
    assert_eq!(
        fx.api_requests(""),
        before,
        "refused webhook requests reached the API server"
    );
    assert_eq!(fx.requested("app").await?, None);

    // An authenticated push does the work (lists and patches GitSources).
    let reply = post(
        fx.addr,
        &fx.path(),
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &sign(TOKEN, &body)),
        ],
        &body,
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert!(fx.api_requests("") > before);
    Ok(())
}
