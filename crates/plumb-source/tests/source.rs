//! Fetch, refs, verification and export against real git servers and repositories.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use plumb_source::verify::FailureReason;
use plumb_source::{
    AllowedSigners, Artifact, Credentials, Error, Fetcher, GitRef, Keyring, PathPolicy,
    SignatureKind, SourceRequest, VerifyMode, VerifyPolicy,
};
use plumb_testsupport::git::{GitServers, GpgSigner, Identity, KeyType, Repo, Signing, SshSigner};
use secrecy::SecretString;
use tempfile::TempDir;

type TestResult = anyhow::Result<()>;

struct Env {
    dir: TempDir,
    fetcher: Fetcher,
    n: std::cell::Cell<usize>,
}

impl Env {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let fetcher = Fetcher::new(dir.path().join("cache"));
        Ok(Self {
            dir,
            fetcher,
            n: std::cell::Cell::new(0),
        })
    }

    async fn fetch(&self, request: &SourceRequest) -> Result<Artifact, Error> {
        self.n.set(self.n.get() + 1);
        let dest = self.dir.path().join(format!("out{}", self.n.get()));
        self.fetcher.fetch(request, &dest).await
    }
}

fn ssh_policy(mode: VerifyMode, lines: &[String]) -> anyhow::Result<VerifyPolicy> {
    Ok(VerifyPolicy {
        mode,
        allowed_signers: AllowedSigners::parse(&lines.join("\n"))?,
        ..VerifyPolicy::default()
    })
}

fn rejected(err: &Error) -> &FailureReason {
    match err {
        Error::Verify(plumb_source::verify::Error::Rejected { reason, .. }) => reason,
        other => panic!("expected a rejection, got {other}"),
    }
}

fn git_in(repo: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", "/nonexistent")
        .arg("--git-dir")
        .arg(repo)
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// Every process command line on the machine that mentions `needle`.
fn cmdlines_containing(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
            let line = String::from_utf8_lossy(&raw).replace('\0', " ");
            if line.contains(needle) {
                found.push(line);
            }
        }
    }
    found
}

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

/// A local repository with one commit per entry of `signings`, each adding a file.
fn repo_with(signings: &[(&str, Signing)]) -> anyhow::Result<(Repo, Vec<String>)> {
    let repo = Repo::local("signed")?;
    let tree = repo.work_tree()?;
    let mut ids = Vec::new();
    for (i, (path, signing)) in signings.iter().enumerate() {
        tree.write(path, format!("n: {i}\n"))?;
        ids.push(tree.commit(&format!("commit {i}"), signing)?);
    }
    tree.push()?;
    Ok((repo, ids))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_and_openpgp_signed_commits_are_accepted() -> TestResult {
    let ed = SshSigner::generate(KeyType::Ed25519, "ed@plumb.test")?;
    let rsa = SshSigner::generate(KeyType::Rsa, "rsa@plumb.test")?;
    let gpg = GpgSigner::generate("Plumb Gpg", "gpg@plumb.test")?;
    let (repo, ids) = repo_with(&[
        ("a.yaml", Signing::Ssh(ed.clone())),
        ("b.yaml", Signing::Ssh(rsa.clone())),
        ("c.yaml", Signing::Gpg(gpg.clone())),
    ])?;
    let mut policy = ssh_policy(
        VerifyMode::Range,
        &[ed.allowed_signers_line(), rsa.allowed_signers_line()],
    )?;
    policy.keyring = Keyring::from_armored(gpg.public_key_armored())?;
    let env = Env::new()?;
    let mut request = SourceRequest::new(repo.file_url(), GitRef::Branch("main".into()));
    request.verify = Some(policy);
    request.last_verified = Some(ids[0].clone());
    let verification = env.fetch(&request).await?.verification.expect("verified");
    let seen: Vec<(&str, SignatureKind, &str)> = verification
        .commits
        .iter()
        .map(|c| (c.commit.as_str(), c.kind, c.signer.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (
                ids[2].as_str(),
                SignatureKind::Pgp,
                "Plumb Gpg <gpg@plumb.test>"
            ),
            (ids[1].as_str(), SignatureKind::Ssh, "rsa@plumb.test"),
        ]
    );
    assert_eq!(
        verification.commits[0].fingerprint,
        gpg.fingerprint().to_uppercase()
    );
    assert!(verification.commits[1].fingerprint.starts_with("SHA256:"));
    assert!(verification.commits[1].author.contains("Plumb Author"));
    let json = serde_json::to_value(&verification)?;
    assert_eq!(json["commits"][0]["kind"], "pgp");

    // The ed25519-signed first commit, pinned, in head mode.
    request.git_ref = GitRef::Commit(ids[0].clone());
    request.last_verified = None;
    let v = env.fetch(&request).await?.verification.expect("verified");
    assert_eq!(v.commits.len(), 1);
    assert_eq!(v.commits[0].signer, "ed@plumb.test");

    // Without the signer's key: unknown key.
    let mut only_rsa = request.clone();
    only_rsa.verify = Some(ssh_policy(VerifyMode::Head, &[rsa.allowed_signers_line()])?);
    let err = env.fetch(&only_rsa).await.expect_err("unknown key");
    assert!(
        matches!(rejected(&err), FailureReason::UnknownKey { .. }),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_commits_are_refused_where_the_mode_checks_them() -> TestResult {
    let key = SshSigner::generate(KeyType::Ed25519, "dev@plumb.test")?;
    let signed = Signing::Ssh(key.clone());
    let (repo, ids) = repo_with(&[
        ("a", signed.clone()),
        ("b", Signing::None),
        ("c", signed.clone()),
    ])?;
    let env = Env::new()?;
    let mut request = SourceRequest::new(repo.file_url(), GitRef::Branch("main".into()));
    request.last_verified = Some(ids[0].clone());

    request.verify = Some(ssh_policy(VerifyMode::Head, &[key.allowed_signers_line()])?);
    let head = env.fetch(&request).await?;
    assert_eq!(head.verification.expect("verified").commits.len(), 1);

    request.verify = Some(ssh_policy(
        VerifyMode::Range,
        &[key.allowed_signers_line()],
    )?);
    let dest = env.dir.path().join("range");
    let err = env
        .fetcher
        .fetch(&request, &dest)
        .await
        .expect_err("unsigned in range");
    assert_eq!(rejected(&err), &FailureReason::Unsigned);
    let msg = err.to_string();
    assert!(
        msg.contains(&ids[1]) && msg.contains("Plumb Author") && msg.contains("unsigned"),
        "{msg}"
    );
    assert!(
        !dest.exists(),
        "something was exported despite the failed verification"
    );

    // An unsigned tip.
    let tree = repo.work_tree()?;
    tree.write("d", "d\n")?;
    let tip = tree.commit("unsigned tip", &Signing::None)?;
    tree.push()?;
    request.verify = Some(ssh_policy(VerifyMode::Head, &[key.allowed_signers_line()])?);
    let err = env.fetch(&request).await.expect_err("unsigned tip");
    assert!(err.to_string().contains(&tip), "{err}");
    assert_eq!(err.metric_label(), "verify_unsigned");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_signers_and_tampered_commits_are_refused() -> TestResult {
    let key = SshSigner::generate(KeyType::Ed25519, "dev@plumb.test")?;
    let (repo, ids) = repo_with(&[("a", Signing::Ssh(key.clone()))])?;
    let env = Env::new()?;
    let mut request = SourceRequest::new(repo.file_url(), GitRef::Branch("main".into()));
    let expired = key.allowed_signers_line().replacen(
        " namespaces=",
        " valid-before=\"20000101\",namespaces=",
        1,
    );
    request.verify = Some(ssh_policy(VerifyMode::Head, &[expired])?);
    let err = env.fetch(&request).await.expect_err("expired signer");
    assert!(
        matches!(rejected(&err), FailureReason::SignerNotValid { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("valid-before"), "{err}");
    let future = key.allowed_signers_line().replacen(
        " namespaces=",
        " valid-after=\"21000101\",namespaces=",
        1,
    );
    request.verify = Some(ssh_policy(VerifyMode::Head, &[future])?);
    assert!(
        env.fetch(&request).await.is_err(),
        "not-yet-valid signer accepted"
    );

    // Copy the signature onto changed content.
    let raw = git_in(repo.path(), &["cat-file", "commit", &ids[0]])?;
    assert!(raw.contains("gpgsig"), "{raw}");
    let forged = format!("{}\n", raw.replace("commit 0", "commit 0, tampered"));
    let mut child = Command::new("git")
        .arg("--git-dir")
        .arg(repo.path())
        .args(["hash-object", "-t", "commit", "-w", "--stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(forged.as_bytes())?;
    let out = child.wait_with_output()?;
    let forged_id = String::from_utf8(out.stdout)?.trim().to_owned();
    git_in(repo.path(), &["update-ref", "refs/heads/main", &forged_id])?;
    request.verify = Some(ssh_policy(VerifyMode::Head, &[key.allowed_signers_line()])?);
    let err = env.fetch(&request).await.expect_err("tampered commit");
    assert!(
        matches!(rejected(&err), FailureReason::BadSignature { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&forged_id));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_rules_restrict_who_signs_what() -> TestResult {
    let alice = SshSigner::generate(KeyType::Ed25519, "alice@plumb.test")?;
    let bob = SshSigner::generate(KeyType::Ed25519, "bob@plumb.test")?;
    let gpg = GpgSigner::generate("Carol", "carol@plumb.test")?;
    let repo = Repo::local("paths")?;
    let mut tree = repo.work_tree()?;
    tree.write("prod/app.yaml", "v: 1\n")?;
    let base = tree.commit("prod by alice", &Signing::Ssh(alice.clone()))?;
    tree.write("dev/app.yaml", "v: 1\n")?;
    tree.commit("dev by bob", &Signing::Ssh(bob.clone()))?;
    tree.write("prod/app.yaml", "v: 2\n")?;
    tree.commit("prod by carol", &Signing::Gpg(gpg.clone()))?;
    tree.push()?;
    let mut policy = ssh_policy(
        VerifyMode::Range,
        &[alice.allowed_signers_line(), bob.allowed_signers_line()],
    )?;
    policy.keyring = Keyring::from_armored(gpg.public_key_armored())?;
    policy.paths = PathPolicy::parse_yaml(
        "rules:\n  - path: prod/\n    signers: [alice@plumb.test, carol@plumb.test]\n",
    )?;
    let env = Env::new()?;
    let mut request = SourceRequest::new(repo.file_url(), GitRef::Branch("main".into()));
    request.verify = Some(policy.clone());
    request.last_verified = Some(base.clone());
    let ok = env.fetch(&request).await?;
    assert_eq!(ok.verification.expect("verified").commits.len(), 2);

    tree.set_author(Identity::new("Bob", "bob@plumb.test"));
    tree.write("prod/app.yaml", "v: 3\n")?;
    let bad = tree.commit("prod by bob", &Signing::Ssh(bob.clone()))?;
    tree.push()?;
    let err = env
        .fetch(&request)
        .await
        .expect_err("bob may not sign prod/");
    match rejected(&err) {
        FailureReason::NotAllowedForPath { path, signer, .. } => {
            assert_eq!(path, "prod/app.yaml");
            assert_eq!(signer, "bob@plumb.test");
        }
        other => panic!("unexpected reason {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&bad) && msg.contains("Bob <bob@plumb.test>"),
        "{msg}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotated_tag_signatures_are_verified() -> TestResult {
    let key = SshSigner::generate(KeyType::Ed25519, "rel@plumb.test")?;
    let repo = Repo::local("tags")?;
    let tree = repo.work_tree()?;
    tree.write("a", "a\n")?;
    let commit = tree.commit("release", &Signing::Ssh(key.clone()))?;
    tree.tag("v1.0.0", &Signing::Ssh(key.clone()))?;
    tree.tag("v1.0.1", &Signing::None)?;
    tree.push()?;
    let env = Env::new()?;
    let mut request = SourceRequest::new(repo.file_url(), GitRef::Semver("~1.0.0".into()));
    request.verify = Some(ssh_policy(VerifyMode::Head, &[key.allowed_signers_line()])?);
    let err = env.fetch(&request).await.expect_err("unsigned tag v1.0.1");
    assert_eq!(rejected(&err), &FailureReason::Unsigned);
    assert!(err.to_string().contains("tag v1.0.1"), "{err}");

    request.git_ref = GitRef::Tag("v1.0.0".into());
    let artifact = env.fetch(&request).await?;
    assert_eq!(artifact.commit, commit);
    let tag = artifact
        .verification
        .expect("verified")
        .tag
        .expect("tag checked");
    assert_eq!(tag.signer, "rel@plumb.test");
    assert_eq!(tag.tag, "v1.0.0");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_honours_plumbignore_and_refuses_escaping_symlinks() -> TestResult {
    let repo = Repo::local("export")?;
    let tree = repo.work_tree()?;
    tree.write(".plumbignore", "secrets/\n*.tmp\n!keep.tmp\n")?;
    tree.write("app/deploy.yaml", "kind: Deployment\n")?;
    tree.write("app/scratch.tmp", "x\n")?;
    tree.write("app/keep.tmp", "k\n")?;
    tree.write("secrets/key.yaml", "secret\n")?;
    tree.symlink("app/link.yaml", "deploy.yaml")?;
    let clean = tree.commit("clean", &Signing::None)?;
    tree.push()?;
    let env = Env::new()?;
    let mut request = SourceRequest::new(repo.file_url(), GitRef::Branch("main".into()));
    request.ignore = vec!["extra.yaml".into()];
    let start = Instant::now();
    let artifact = env.fetch(&request).await?;
    eprintln!("local fetch+export took {:?}", start.elapsed());
    assert_eq!(artifact.commit, clean);
    let dir = &artifact.dir;
    assert!(dir.join("app/deploy.yaml").is_file());
    assert!(dir.join("app/keep.tmp").is_file());
    assert!(!dir.join("app/scratch.tmp").exists());
    assert!(!dir.join("secrets").exists());
    assert_eq!(
        std::fs::read_link(dir.join("app/link.yaml"))?,
        Path::new("deploy.yaml")
    );
    let again = env.fetch(&request).await?;
    assert_eq!(again.tree_digest, artifact.tree_digest, "digest is stable");
    assert!(artifact.tree_digest.starts_with("sha256:"));

    tree.write("extra.yaml", "x\n")?;
    tree.commit("ignored by options", &Signing::None)?;
    tree.push()?;
    let ignored = env.fetch(&request).await?;
    assert_eq!(
        ignored.tree_digest, artifact.tree_digest,
        "only an ignored file changed"
    );

    tree.symlink("app/escape.yaml", "../../etc/passwd")?;
    let bad = tree.commit("escape", &Signing::None)?;
    tree.push()?;
    let err = env.fetch(&request).await.expect_err("escaping symlink");
    let msg = err.to_string();
    assert!(
        msg.contains("app/escape.yaml") && msg.contains(&bad),
        "{msg}"
    );
    assert_eq!(err.metric_label(), "export_symlink_escapes");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_entries_named_dotdot_are_refused() -> TestResult {
    let repo = Repo::local("dotdot")?;
    let git_stdin = |args: &[&str], input: &str| -> anyhow::Result<String> {
        let mut child = Command::new("git")
            .arg("--git-dir")
            .arg(repo.path())
            .args(args)
            .env("GIT_AUTHOR_NAME", "Mallory")
            .env("GIT_AUTHOR_EMAIL", "m@plumb.test")
            .env("GIT_COMMITTER_NAME", "Mallory")
            .env("GIT_COMMITTER_EMAIL", "m@plumb.test")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())?;
        let out = child.wait_with_output()?;
        anyhow::ensure!(out.status.success(), "git {args:?} failed");
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    };
    let blob = git_stdin(&["hash-object", "-w", "--stdin"], "evil\n")?;
    let inner = git_stdin(&["mktree"], &format!("100644 blob {blob}\tpasswd\n"))?;
    let root = git_stdin(&["mktree"], &format!("040000 tree {inner}\t..\n"))?;
    let commit = git_stdin(&["commit-tree", &root, "-m", "escape"], "")?;
    git_in(repo.path(), &["update-ref", "refs/heads/main", &commit])?;

    // git's object checks refuse it at the fetch already...
    let env = Env::new()?;
    let request = SourceRequest::new(repo.file_url(), GitRef::Branch("main".into()));
    let err = env.fetch(&request).await.expect_err("'..' refused");
    assert_eq!(err.metric_label(), "fetch_bad_objects", "{err}");
    // ...and the export refuses it on its own, wherever the objects come from.
    let dest = env.dir.path().join("direct");
    let err = plumb_source::export::export_tree(repo.path(), &commit, &dest, &[])
        .expect_err("'..' refused");
    let msg = err.to_string();
    assert!(msg.contains("\"..\"") && msg.contains(&commit), "{msg}");
    assert_eq!(err.metric_label(), "export_unsafe_path");
    Ok(())
}
