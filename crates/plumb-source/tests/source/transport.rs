//! Fetching over https and ssh: credentials, host keys, refs, incremental and concurrent fetches.

use std::path::Path;
use std::time::Duration;

use plumb_source::{Credentials, Fetcher, GitRef, SourceRequest};
use plumb_testsupport::git::{GitServers, Repo, Signing};
use secrecy::SecretString;

use crate::{Env, TestResult, cmdlines_containing, git_in};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_basic_auth_works_and_the_password_never_leaks() -> TestResult {
    let servers = GitServers::start()?;
    let repo = servers.create_repo("app")?;
    let tree = repo.work_tree()?;
    tree.write("deploy/app.yaml", "kind: ConfigMap\n")?;
    let commit = tree.commit("Add app", &Signing::None)?;
    tree.push()?;
    let env = Env::new()?;
    let password = servers.password().to_owned();
    let mut request = SourceRequest::new(servers.https_url("app"), GitRef::Branch("main".into()));
    request.options.ca_file = Some(servers.ca_cert_path().to_owned());
    request.options.credentials = Credentials::Basic {
        username: servers.username().to_owned(),
        password: SecretString::from(password.clone()),
    };

    // Watch every command line on the machine while git runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        let password = password.clone();
        std::thread::spawn(move || {
            let (mut leaks, mut git_seen) = (Vec::new(), 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                leaks.extend(cmdlines_containing(&password));
                git_seen += cmdlines_containing("127.0.0.1").len();
                std::thread::sleep(Duration::from_millis(1));
            }
            (leaks, git_seen)
        })
    };
    let artifact = env.fetch(&request).await?;
    let mut wrong = request.clone();
    wrong.options.credentials = Credentials::Basic {
        username: servers.username().to_owned(),
        password: SecretString::from(format!("{password}-wrong")),
    };
    let err = env.fetch(&wrong).await.expect_err("wrong password refused");
    let mut no_ca = request.clone();
    no_ca.options.ca_file = None;
    let tls_err = env.fetch(&no_ca).await.expect_err("untrusted CA refused");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (leaks, git_seen) = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("watcher panicked"))?;

    assert_eq!(artifact.commit, commit);
    assert_eq!(
        std::fs::read_to_string(artifact.dir.join("deploy/app.yaml"))?,
        "kind: ConfigMap\n"
    );
    assert_eq!(err.metric_label(), "fetch_auth", "{err}");
    assert!(!err.is_retryable());
    assert_eq!(tls_err.metric_label(), "fetch_tls", "{tls_err}");
    for e in [&err, &tls_err] {
        let text = format!("{e} {e:?}");
        assert!(!text.contains(&password), "secret in error: {text}");
    }
    assert!(git_seen > 0, "the watcher never saw a git process");
    assert!(leaks.is_empty(), "secret visible in argv: {leaks:?}");
    // A password in the URL is refused without echoing it.
    let mut in_url = request.clone();
    in_url.url = servers.https_url_with_credentials("app", servers.username(), &password);
    let err = env
        .fetch(&in_url)
        .await
        .expect_err("credentials in URL refused");
    assert!(!err.to_string().contains(&password), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_needs_the_key_and_a_known_host() -> TestResult {
    let servers = GitServers::start()?;
    let repo = servers.create_repo("app")?;
    let tree = repo.work_tree()?;
    tree.write("a.yaml", "a: 1\n")?;
    let commit = tree.commit("First", &Signing::None)?;
    tree.push()?;
    let env = Env::new()?;
    let mut request = SourceRequest::new(servers.ssh_url("app"), GitRef::Branch("main".into()));
    request.options.credentials = Credentials::Ssh {
        private_key: servers.ssh_client_key_path().to_owned(),
        known_hosts: servers.known_hosts_path().to_owned(),
    };
    let artifact = env.fetch(&request).await?;
    assert_eq!(artifact.commit, commit);
    assert!(artifact.dir.join("a.yaml").is_file());

    let empty = env.dir.path().join("empty_known_hosts");
    std::fs::write(&empty, "")?;
    let mut unknown = request.clone();
    unknown.options.credentials = Credentials::Ssh {
        private_key: servers.ssh_client_key_path().to_owned(),
        known_hosts: empty,
    };
    let fresh = Env::new()?;
    let err = fresh
        .fetch(&unknown)
        .await
        .expect_err("unknown host key refused");
    assert_eq!(err.metric_label(), "fetch_host_key", "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refs_resolve_and_refetch_is_incremental() -> TestResult {
    let servers = GitServers::start()?;
    let repo = servers.create_repo("refs")?;
    let mut tree = repo.work_tree()?;
    tree.write("v.txt", "1.0.0\n")?;
    let c1 = tree.commit("one", &Signing::None)?;
    tree.tag("v1.0.0", &Signing::None)?;
    tree.write("v.txt", "1.2.0\n")?;
    let c2 = tree.commit("two", &Signing::None)?;
    tree.tag("1.2.0", &Signing::None)?;
    tree.write("v.txt", "2.0.0\n")?;
    let c3 = tree.commit("three", &Signing::None)?;
    tree.tag("v2.0.0", &Signing::None)?;
    tree.push()?;
    let env = Env::new()?;
    let url = servers.https_url("refs");
    let req = |git_ref: GitRef| {
        let mut r = SourceRequest::new(url.clone(), git_ref);
        r.options.ca_file = Some(servers.ca_cert_path().to_owned());
        r.options.credentials = Credentials::Basic {
            username: servers.username().to_owned(),
            password: SecretString::from(servers.password().to_owned()),
        };
        r
    };

    let branch = env.fetch(&req(GitRef::Branch("main".into()))).await?;
    assert_eq!(branch.commit, c3);
    assert_eq!(branch.resolved_ref.as_deref(), Some("refs/heads/main"));
    // Loose plus packed objects in the cached repository.
    let objects = |p: &Path| -> anyhow::Result<u64> {
        let out = git_in(p, &["count-objects", "-v"])?;
        Ok(out
            .lines()
            .filter_map(|l| {
                l.strip_prefix("count: ")
                    .or_else(|| l.strip_prefix("in-pack: "))
            })
            .map(|n| n.trim().parse::<u64>().unwrap_or(0))
            .sum())
    };
    let cache = env.fetcher.repo_path(&url);
    let before = objects(&cache)?;
    assert!(before >= 9, "3 commits, 3 trees, 3 blobs: {before}");

    let tag = env.fetch(&req(GitRef::Tag("v1.0.0".into()))).await?;
    assert_eq!(tag.commit, c1);
    assert_eq!(std::fs::read_to_string(tag.dir.join("v.txt"))?, "1.0.0\n");
    let semver = env
        .fetch(&req(GitRef::Semver(">=1.0.0 <2.0.0".into())))
        .await?;
    assert_eq!(semver.commit, c2, "highest tag below 2.0.0 is 1.2.0");
    assert_eq!(semver.resolved_ref.as_deref(), Some("refs/tags/1.2.0"));
    let pinned = env.fetch(&req(GitRef::Commit(c1.clone()))).await?;
    assert_eq!(pinned.commit, c1);
    assert_eq!(
        pinned.tree_digest, tag.tree_digest,
        "same tree, same digest"
    );
    assert_ne!(pinned.tree_digest, branch.tree_digest);
    // Unchanged remote: the same cached repository, no new pack downloaded.
    assert_eq!(
        objects(&cache)?,
        before,
        "re-fetch of an unchanged remote downloaded objects"
    );

    let err = env
        .fetch(&req(GitRef::Branch("nope".into())))
        .await
        .expect_err("missing branch");
    assert_eq!(err.metric_label(), "fetch_ref_not_found");
    let err = env
        .fetch(&req(GitRef::Semver("^9".into())))
        .await
        .expect_err("no tag matches");
    assert_eq!(err.metric_label(), "fetch_no_matching_tag");

    // Force-push a rewritten history: the branch follows it.
    tree.switch_branch("main")?;
    let out = tree
        .git()
        .args(["reset", "--quiet", "--hard", &c1])
        .output()?;
    anyhow::ensure!(out.status.success());
    tree.write("v.txt", "rewritten\n")?;
    let rewritten = tree.commit("rewritten", &Signing::None)?;
    tree.push_force()?;
    let after = env.fetch(&req(GitRef::Branch("main".into()))).await?;
    assert_eq!(after.commit, rewritten);
    assert_eq!(
        std::fs::read_to_string(after.dir.join("v.txt"))?,
        "rewritten\n"
    );
    assert_eq!(
        objects(&cache)?,
        before + 3,
        "only the new commit, its tree and blob are transferred"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetches_of_one_url_share_the_cache_safely() -> TestResult {
    let repo = Repo::local("conc")?;
    let tree = repo.work_tree()?;
    tree.write("a", "a\n")?;
    let commit = tree.commit("a", &Signing::None)?;
    tree.push()?;
    let env = Env::new()?;
    let request = SourceRequest::new(repo.file_url(), GitRef::Branch("main".into()));
    let (d1, d2) = (env.dir.path().join("c1"), env.dir.path().join("c2"));
    let other = Fetcher::new(env.fetcher.cache_dir());
    let (a, b) = tokio::join!(env.fetcher.fetch(&request, &d1), other.fetch(&request, &d2));
    assert_eq!(a?.commit, commit);
    assert_eq!(b?.commit, commit);
    Ok(())
}
