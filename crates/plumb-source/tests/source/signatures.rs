//! Signature verification of fetched commits and tags: SSH and OpenPGP, modes, expiry,
//! tampering, path rules.

use std::process::Command;

use plumb_source::verify::FailureReason;
use plumb_source::{GitRef, Keyring, PathPolicy, SignatureKind, SourceRequest, VerifyMode};
use plumb_testsupport::git::{GpgSigner, Identity, KeyType, Repo, Signing, SshSigner};

use crate::{Env, TestResult, git_in, rejected, ssh_policy};

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
