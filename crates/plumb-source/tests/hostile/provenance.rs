//! Bypasses of signature and path rules: duplicate trees, `.plumbignore` changes, rollbacks,
//! reused tags, repository config run while reading.

use std::process::Command;

use plumb_source::verify::{self, FailureReason};
use plumb_source::{Fetcher, GitRef, PathPolicy, SourceRequest, VerifyMode, VerifyPolicy};
use plumb_testsupport::git::{GpgSigner, KeyType, Repo, Signing, SshSigner};

use crate::{TestResult, rejection, ssh_policy};

/// A repository whose `prod/` only `admin` may change, plus a `dev` key.
fn prod_and_dev() -> anyhow::Result<(Repo, SshSigner, SshSigner, VerifyPolicy)> {
    let admin = SshSigner::generate(KeyType::Ed25519, "admin@plumb.test")?;
    let dev = SshSigner::generate(KeyType::Ed25519, "dev@plumb.test")?;
    let repo = Repo::local("rules")?;
    let tree = repo.work_tree()?;
    tree.write("prod/app.yaml", "replicas: 3\n")?;
    tree.write("dev/app.yaml", "replicas: 1\n")?;
    tree.commit("base", &Signing::Ssh(admin.clone()))?;
    tree.push()?;
    let mut policy = ssh_policy(VerifyMode::Head, &[&admin, &dev])?;
    policy.paths =
        PathPolicy::parse_yaml("rules:\n  - path: prod/\n    signers: [admin@plumb.test]\n")?;
    Ok((repo, admin, dev, policy))
}

#[test]
fn duplicate_trees_cannot_bypass_path_rules() -> TestResult {
    let (repo, _admin, dev, policy) = prod_and_dev()?;
    let tree = repo.work_tree()?;
    let base = tree.tree_of("HEAD")?;
    let entries = tree.tree_entries(&base)?;
    let find = |name: &str| {
        entries
            .iter()
            .find(|e| e.2 == name)
            .map(|e| e.1.clone())
            .unwrap_or_default()
    };
    let (dev_tree, prod_tree) = (find("dev"), find("prod"));
    let evil = tree.write_blob("replicas: 0\n")?;
    let evil_prod = tree.make_tree(&[("100644", &evil, "app.yaml")])?;
    // The first `prod` is the old one (what a first-match diff compares), the second is
    // what an export would write last.
    let root = tree.make_tree(&[
        ("040000", &dev_tree, "dev"),
        ("040000", &prod_tree, "prod"),
        ("040000", &evil_prod, "prod"),
    ])?;
    let commit = tree.commit_tree(&root, "sneak into prod", &Signing::Ssh(dev))?;

    let report = verify::check(tree.path(), &commit, None, None, &policy)?;
    let err = report.into_verification().expect_err("rejected");
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            verify::Error::Rejected { ref reason, .. }
                if matches!(**reason, FailureReason::MalformedTree { ref path } if path == "prod")
        ),
        "{msg}"
    );
    assert!(msg.contains(&commit), "{msg}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plumbignore_change_must_satisfy_every_path_rule() -> TestResult {
    let (repo, admin, dev, policy) = prod_and_dev()?;
    let tree = repo.work_tree()?;
    // Hides every prod/ file: a Sync with prune would delete what they declare.
    tree.write(".plumbignore", "prod/\n")?;
    tree.commit("ignore prod", &Signing::Ssh(dev.clone()))?;
    tree.push()?;
    let cache = tempfile::tempdir()?;
    let fetcher = Fetcher::new(cache.path());
    let mut request = SourceRequest::new(repo.file_url(), GitRef::Branch("main".into()));
    request.verify = Some(policy);
    let err = fetcher
        .fetch(&request, &cache.path().join("out"))
        .await
        .expect_err("rejected");
    match rejection(&err) {
        FailureReason::NotAllowedForPath { path, rule, .. } => {
            assert!(path.contains(".plumbignore"), "{path}");
            assert_eq!(rule, "prod/");
        }
        other => panic!("unexpected {other:?}"),
    }

    // The same change by the signer the rule names passes.
    tree.write(".plumbignore", "prod/\ndocs/\n")?;
    tree.commit("ignore prod, by admin", &Signing::Ssh(admin))?;
    tree.push()?;
    fetcher.fetch(&request, &cache.path().join("ok")).await?;
    // And dev may still change dev/.
    tree.write("dev/app.yaml", "replicas: 2\n")?;
    tree.commit("scale dev", &Signing::Ssh(dev))?;
    tree.push()?;
    fetcher.fetch(&request, &cache.path().join("ok2")).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_mode_refuses_a_rollback_and_always_checks_the_tip() -> TestResult {
    let key = SshSigner::generate(KeyType::Ed25519, "dev@plumb.test")?;
    let signed = Signing::Ssh(key.clone());
    let repo = Repo::local("rollback")?;
    let mut tree = repo.work_tree()?;
    tree.write("a", "0\n")?;
    let unsigned = tree.commit("unsigned start", &Signing::None)?;
    tree.write("a", "1\n")?;
    let s1 = tree.commit("signed 1", &signed)?;
    tree.write("a", "2\n")?;
    let s2 = tree.commit("signed 2", &signed)?;
    tree.push()?;
    let policy = ssh_policy(VerifyMode::Range, &[&key])?;

    // Nothing new since s2: the tip itself is still checked (and passes).
    let report = verify::check(repo.path(), &s2, Some(&s2), None, &policy)?;
    assert_eq!(report.commits.len(), 1);
    assert!(report.passed());
    // The tip is an unsigned ancestor of the last verified commit: a rollback.
    let err = verify::check(repo.path(), &unsigned, Some(&s2), None, &policy)
        .expect_err("rollback refused");
    assert!(matches!(err, verify::Error::NotDescendant { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&unsigned) && msg.contains(&s2) && msg.contains("re-create"),
        "{msg}"
    );
    // Nothing new, and the tip is unsigned: rejected (a range of nothing proves nothing).
    let report = verify::check(repo.path(), &unsigned, Some(&unsigned), None, &policy)?;
    assert!(!report.passed());

    // Through a fetch: a force push back to the unsigned commit, and a diverged history.
    let cache = tempfile::tempdir()?;
    let fetcher = Fetcher::new(cache.path());
    let mut request = SourceRequest::new(repo.file_url(), GitRef::Branch("main".into()));
    request.verify = Some(policy);
    request.last_verified = Some(s2.clone());
    fetcher.fetch(&request, &cache.path().join("ok")).await?;
    tree.switch_branch("rewrite")?;
    let status = tree
        .git()
        .args(["reset", "--quiet", "--hard", &s1])
        .status()?;
    anyhow::ensure!(status.success());
    tree.write("a", "other\n")?;
    let diverged = tree.commit("diverged, signed", &signed)?;
    tree.switch_branch("main")?;
    let status = tree
        .git()
        .args(["reset", "--quiet", "--hard", &diverged])
        .status()?;
    anyhow::ensure!(status.success());
    tree.push_force()?;
    let err = fetcher
        .fetch(&request, &cache.path().join("diverged"))
        .await
        .expect_err("diverged history refused");
    assert_eq!(err.metric_label(), "verify_not_descendant", "{err}");
    assert!(!cache.path().join("diverged").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_tag_cannot_be_reused_under_another_name() -> TestResult {
    let key = SshSigner::generate(KeyType::Ed25519, "rel@plumb.test")?;
    let signed = Signing::Ssh(key.clone());
    let repo = Repo::local("tags")?;
    let tree = repo.work_tree()?;
    tree.write("a", "old\n")?;
    tree.commit("old release", &signed)?;
    let old_tag = tree.tag("v1.0.0", &signed)?;
    tree.push()?;
    // Someone who can push (but not sign) moves the old, signed release under a new name.
    let status = Command::new("git")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .arg("--git-dir")
        .arg(repo.path())
        .args(["update-ref", "refs/tags/v2.0.0", &old_tag])
        .status()?;
    anyhow::ensure!(status.success());

    let cache = tempfile::tempdir()?;
    let fetcher = Fetcher::new(cache.path());
    for git_ref in [
        GitRef::Tag("v2.0.0".into()),
        GitRef::Semver(">=2.0.0".into()),
    ] {
        let mut request = SourceRequest::new(repo.file_url(), git_ref);
        request.verify = Some(ssh_policy(VerifyMode::Head, &[&key])?);
        let err = fetcher
            .fetch(&request, &cache.path().join("out"))
            .await
            .expect_err("moved tag refused");
        assert_eq!(
            rejection(&err),
            &FailureReason::TagNameMismatch {
                signed_name: "v1.0.0".into(),
                ref_name: "v2.0.0".into()
            }
        );
    }
    let mut request = SourceRequest::new(repo.file_url(), GitRef::Tag("v1.0.0".into()));
    request.verify = Some(ssh_policy(VerifyMode::Head, &[&key])?);
    fetcher.fetch(&request, &cache.path().join("v1")).await?;
    Ok(())
}

#[test]
fn reading_the_author_runs_nothing_the_repository_config_names() -> TestResult {
    use std::os::unix::fs::PermissionsExt as _;
    let key = GpgSigner::generate("Dev", "dev@plumb.test")?;
    let repo = Repo::local("author")?;
    let tree = repo.work_tree()?;
    tree.write("a", "1\n")?;
    let commit = tree.commit("signed", &Signing::Gpg(key))?;
    tree.push()?;
    // What a write into the cache repository's config would add: `git log` then runs the
    // named program to show signatures.
    let tmp = tempfile::tempdir()?;
    let marker = tmp.path().join("ran");
    let program = tmp.path().join("evil.sh");
    std::fs::write(
        &program,
        format!("#!/bin/sh\ntouch '{}'\n", marker.display()),
    )?;
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755))?;
    let config = repo.path().join("config");
    let mut text = std::fs::read_to_string(&config)?;
    text.push_str(&format!(
        "[log]\n\tshowSignature = true\n[gpg]\n\tprogram = {}\n",
        program.display()
    ));
    std::fs::write(&config, text)?;

    let author = verify::commit_author(repo.path(), &commit)?;
    assert_eq!(author, "Plumb Author <author@plumb.test>");
    assert!(
        !marker.exists(),
        "reading the author ran the configured program"
    );

    // The attack is real: plain `git log` (what the agent ran before) runs it.
    let _ = Command::new("git")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", tmp.path())
        .arg("--git-dir")
        .arg(repo.path())
        .args(["log", "-1", "--format=%an <%ae>", &commit, "--"])
        .output()?;
    assert!(marker.exists(), "the control case did not run the program");
    Ok(())
}
