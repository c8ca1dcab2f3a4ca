//! Hostile Git content and verification bypasses (SECURITY.md): each test reproduces an attack
//! and checks that it is refused with an error naming the path or commit, and that nothing
//! happened meanwhile.

use std::path::Path;
use std::process::Command;

use plumb_source::export::{self, ExportLimits};
use plumb_source::verify::{self, FailureReason};
use plumb_source::{
    AllowedSigners, Error, Fetcher, GitRef, Keyring, PathPolicy, SourceRequest, VerifyMode,
    VerifyPolicy,
};
use plumb_testsupport::git::{GpgSigner, KeyType, Repo, Signing, SshSigner, WorkTree};

type TestResult = anyhow::Result<()>;

fn ssh_policy(mode: VerifyMode, keys: &[&SshSigner]) -> anyhow::Result<VerifyPolicy> {
    let lines: Vec<String> = keys.iter().map(|k| k.allowed_signers_line()).collect();
    Ok(VerifyPolicy {
        mode,
        allowed_signers: AllowedSigners::parse(&lines.join("\n"))?,
        ..VerifyPolicy::default()
    })
}

fn rejection(err: &Error) -> &FailureReason {
    match err {
        Error::Verify(verify::Error::Rejected { reason, .. }) => reason,
        other => panic!("expected a rejection, got {other}"),
    }
}

/// Every path below `dir`, relative, sorted (symlinks not followed).
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            out.push(
                path.strip_prefix(dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string(),
            );
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The tree of the attack in SECURITY.md (finding 1): `s -> .` beside trees named `s`, a link
/// `s/s/s/s/up -> ../../../..` that looks in-root, and a file written through it.
fn crafted_escape(tree: &WorkTree) -> anyhow::Result<String> {
    let dot = tree.write_blob(".")?;
    let up = tree.write_blob("../../../..")?;
    let evil = tree.write_blob("pwned\n")?;
    let t5 = tree.make_tree(&[("100644", &evil, "evil")])?;
    let t4 = tree.make_tree(&[("120000", &up, "up"), ("040000", &t5, "up")])?;
    let t3 = tree.make_tree(&[("040000", &t4, "s")])?;
    let t2 = tree.make_tree(&[("040000", &t3, "s")])?;
    let t1 = tree.make_tree(&[("040000", &t2, "s")])?;
    let root = tree.make_tree(&[("120000", &dot, "s"), ("040000", &t1, "s")])?;
    tree.commit_tree(&root, "escape", &Signing::None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crafted_tree_cannot_write_outside_the_export() -> TestResult {
    let repo = Repo::local("escape")?;
    let tree = repo.work_tree()?;
    let commit = crafted_escape(&tree)?;
    tree.push()?;

    // Exported straight from the repository (what the agent's cache holds after a fetch
    // from a server that stored the objects).
    let tmp = tempfile::tempdir()?;
    let dest = tmp.path().join("a/b/c/d/dest");
    let err = export::export_tree(repo.path(), &commit, &dest, &[]).expect_err("refused");
    let msg = err.to_string();
    assert!(
        matches!(err, export::Error::DuplicateEntry { ref path, .. } if path == "s"),
        "{msg}"
    );
    assert!(msg.contains(&commit) && msg.contains("\"s\""), "{msg}");
    assert!(
        listing(tmp.path()).is_empty(),
        "the refused export wrote {:?}",
        listing(tmp.path())
    );

    // Fetched: git's object checks refuse the pack before anything is stored or exported.
    let cache = tempfile::tempdir()?;
    let fetcher = Fetcher::new(cache.path());
    let dest = tmp.path().join("fetched");
    let request = SourceRequest::new(repo.file_url(), GitRef::Branch("main".into()));
    let err = fetcher.fetch(&request, &dest).await.expect_err("refused");
    assert_eq!(err.metric_label(), "fetch_bad_objects", "{err}");
    assert!(!err.is_retryable());
    assert!(!dest.exists());
    assert!(
        !listing(cache.path()).iter().any(|p| p.ends_with("evil")),
        "{:?}",
        listing(cache.path())
    );
    Ok(())
}

#[test]
fn names_a_filesystem_reads_as_git_or_as_one_name_are_refused() -> TestResult {
    let repo = Repo::local("names")?;
    let tree = repo.work_tree()?;
    let blob = tree.write_blob("[core]\n\tfsmonitor = touch /tmp/pwned\n")?;
    let tmp = tempfile::tempdir()?;
    for (i, entries) in [
        vec![("100644", blob.as_str(), ".GIT")],
        vec![("100644", blob.as_str(), "git~1")],
        vec![("100644", blob.as_str(), ".git.")],
        vec![("100644", blob.as_str(), "Prod"), ("100644", &blob, "prod")],
    ]
    .into_iter()
    .enumerate()
    {
        let root = tree.make_tree(&entries)?;
        let commit = tree.commit_tree(&root, "names", &Signing::None)?;
        let dest = tmp.path().join(format!("out{i}"));
        let err = export::export_tree(tree.path(), &commit, &dest, &[]).expect_err("refused");
        assert!(err.to_string().contains(&commit), "{err}");
        assert!(listing(&dest).is_empty(), "{:?}", listing(&dest));
    }
    Ok(())
}

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

/// Peak resident memory of this process, from /proc.
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

#[test]
fn limits_refuse_large_content_before_reading_it() -> TestResult {
    let repo = Repo::local("large")?;
    let tree = repo.work_tree()?;
    // 600 MB of zeros packs into well under a megabyte.
    let big = {
        let out = Command::new("sh")
            .arg("-c")
            .arg("head -c 600000000 /dev/zero | git hash-object -w --stdin")
            .current_dir(tree.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()?;
        anyhow::ensure!(out.status.success());
        String::from_utf8(out.stdout)?.trim().to_owned()
    };
    let small = tree.write_blob("kind: ConfigMap\n")?;
    let root = tree.make_tree(&[
        ("100644", &small, "app.yaml"),
        ("100644", &big, "zeros.bin"),
    ])?;
    let commit = tree.commit_tree(&root, "a big file", &Signing::None)?;
    let tmp = tempfile::tempdir()?;
    let before = peak_rss_bytes();
    let err = export::export_tree(tree.path(), &commit, &tmp.path().join("out"), &[])
        .expect_err("too large");
    let after = peak_rss_bytes();
    let msg = err.to_string();
    assert_eq!(err.metric_label(), "export_too_large");
    assert!(
        msg.contains("zeros.bin") && msg.contains(&commit) && msg.contains("file size"),
        "{msg}"
    );
    assert!(
        after < before + 64 * 1024 * 1024,
        "the refused blob was read: peak RSS {before} -> {after}"
    );
    assert!(listing(&tmp.path().join("out")).is_empty());
    // Ignored, it is never read at all, and the rest exports.
    let exported = export::export_tree(
        tree.path(),
        &commit,
        &tmp.path().join("ignored"),
        &["*.bin".to_owned()],
    )?;
    assert_eq!(exported.files, 1);

    // Count, total and depth limits.
    let mut entries = Vec::new();
    let names: Vec<String> = (0..20).map(|i| format!("f{i}.yaml")).collect();
    for name in &names {
        entries.push(("100644", small.as_str(), name.as_str()));
    }
    let wide = tree.make_tree(&entries)?;
    let commit = tree.commit_tree(&wide, "many files", &Signing::None)?;
    let limits = ExportLimits {
        max_files: 10,
        ..ExportLimits::default()
    };
    let err = export::export_tree_with(tree.path(), &commit, &tmp.path().join("n"), &[], &limits)
        .expect_err("too many files");
    assert!(err.to_string().contains("file count"), "{err}");
    let limits = ExportLimits {
        max_total_size: 100,
        ..ExportLimits::default()
    };
    let err = export::export_tree_with(tree.path(), &commit, &tmp.path().join("t"), &[], &limits)
        .expect_err("too large in total");
    assert!(err.to_string().contains("total size"), "{err}");
    let mut deep = tree.make_tree(&[("100644", &small, "leaf.yaml")])?;
    for _ in 0..10 {
        deep = tree.make_tree(&[("040000", &deep, "d")])?;
    }
    let commit = tree.commit_tree(&deep, "deep", &Signing::None)?;
    let limits = ExportLimits {
        max_depth: 5,
        ..ExportLimits::default()
    };
    let err = export::export_tree_with(tree.path(), &commit, &tmp.path().join("d"), &[], &limits)
        .expect_err("too deep");
    assert!(err.to_string().contains("directory depth"), "{err}");
    Ok(())
}

#[test]
fn an_artifact_changed_on_disk_no_longer_matches_its_digest() -> TestResult {
    let repo = Repo::local("digest")?;
    let tree = repo.work_tree()?;
    tree.write("app/cm.yaml", "kind: ConfigMap\n")?;
    tree.write("run.sh", "#!/bin/sh\n")?;
    tree.symlink("link", "app")?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(
            tree.path().join("run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )?;
    }
    let commit = tree.commit("files", &Signing::None)?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("out");
    let exported = export::export_tree(tree.path(), &commit, &dir, &[])?;
    export::verify_dir(&dir, &exported.tree_digest)?;
    std::fs::write(dir.join("app/cm.yaml"), "kind: Secret\n")?;
    let err = export::verify_dir(&dir, &exported.tree_digest).expect_err("changed");
    assert_eq!(err.metric_label(), "export_digest_mismatch");
    Ok(())
}

/// A gpg wrapper that signs as if at `time` (gpg refuses to sign with an expired key).
fn gpg_at(dir: &Path, time: &str) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("gpg-at");
    std::fs::write(
        &path,
        format!("#!/bin/sh\nexec gpg --faked-system-time '{time}!' \"$@\"\n"),
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

fn gpg(home: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("gpg")
        .env("GNUPGHOME", home)
        .args([
            "--batch",
            "--no-tty",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ])
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "gpg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Commits one file in a fresh repository, signed by gpg in `home` as `key` through the
/// program `program`; returns (repository, commit).
fn pgp_signed_commit(home: &Path, key: &str, program: &Path) -> anyhow::Result<(Repo, String)> {
    let repo = Repo::local("pgp")?;
    let tree = repo.work_tree()?;
    tree.write("a", "1\n")?;
    let status = tree.git().args(["add", "a"]).status()?;
    anyhow::ensure!(status.success());
    let out = tree
        .git()
        .env("GNUPGHOME", home)
        .args(["-c", "gpg.format=openpgp"])
        .arg("-c")
        .arg(format!("gpg.program={}", program.display()))
        .args(["-c", &format!("user.signingKey={key}")])
        .args(["commit", "--quiet", "--gpg-sign", "-m", "signed"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "commit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let commit = tree.head()?;
    tree.push()?;
    Ok((repo, commit))
}

fn pgp_verdict(repo: &Repo, commit: &str, armored: &str) -> anyhow::Result<FailureReason> {
    let policy = VerifyPolicy {
        keyring: Keyring::from_armored(armored)?,
        ..VerifyPolicy::default()
    };
    let report = verify::check(repo.path(), commit, None, None, &policy)?;
    match report.into_verification() {
        Ok(_) => anyhow::bail!("commit {commit} passed"),
        Err(verify::Error::Rejected { reason, .. }) => Ok(*reason),
        Err(e) => Err(e.into()),
    }
}

#[test]
fn expired_and_revoked_openpgp_keys_cannot_sign() -> TestResult {
    // Expired: a key made in 2020 that lived one day, signing within that day.
    let home = tempfile::Builder::new().prefix("plumb-gpg-").tempdir()?;
    gpg(
        home.path(),
        &[
            "--faked-system-time",
            "20200101T000000!",
            "--quick-gen-key",
            "Old Key <old@plumb.test>",
            "ed25519",
            "sign",
            "1d",
        ],
    )?;
    let armored = gpg(home.path(), &["--armor", "--export", "old@plumb.test"])?;
    let wrapper = gpg_at(home.path(), "20200101T120000")?;
    let (repo, commit) = pgp_signed_commit(home.path(), "old@plumb.test", &wrapper)?;
    match pgp_verdict(&repo, &commit, &armored)? {
        FailureReason::SignerNotValid { detail, .. } => {
            assert!(detail.contains("expired at 2020-01-02"), "{detail}")
        }
        other => panic!("unexpected {other:?}"),
    }
    let _ = Command::new("gpgconf")
        .args(["--kill", "all"])
        .env("GNUPGHOME", home.path())
        .output();

    // Revoked: a good signature, then the key's revocation certificate is published.
    let signer = GpgSigner::generate("Revoked Key", "revoked@plumb.test")?;
    let gpg_program = which_gpg();
    let (repo, commit) =
        pgp_signed_commit(signer.gnupg_home(), signer.fingerprint(), &gpg_program)?;
    let rev = std::fs::read_to_string(
        signer
            .gnupg_home()
            .join("openpgp-revocs.d")
            .join(format!("{}.rev", signer.fingerprint())),
    )?;
    // gpg guards its pre-made certificate with a leading ':' so it is not imported by mistake.
    let rev = rev.replace(
        ":-----BEGIN PGP PUBLIC KEY BLOCK-----",
        "-----BEGIN PGP PUBLIC KEY BLOCK-----",
    );
    let rev_file = signer.gnupg_home().join("revoke.asc");
    std::fs::write(&rev_file, rev)?;
    gpg(
        signer.gnupg_home(),
        &["--import", &rev_file.display().to_string()],
    )?;
    let revoked = gpg(
        signer.gnupg_home(),
        &["--armor", "--export", signer.fingerprint()],
    )?;
    match pgp_verdict(&repo, &commit, &revoked)? {
        FailureReason::SignerNotValid { detail, .. } => {
            assert!(detail.contains("revoked"), "{detail}")
        }
        other => panic!("unexpected {other:?}"),
    }
    // Before the revocation the same signature passes.
    let policy = VerifyPolicy {
        keyring: Keyring::from_armored(signer.public_key_armored())?,
        ..VerifyPolicy::default()
    };
    assert!(verify::check(repo.path(), &commit, None, None, &policy)?.passed());
    Ok(())
}

fn which_gpg() -> std::path::PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("gpg"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| "/usr/bin/gpg".into())
}

/// Counts connections to a port that nothing should reach.
struct Tripwire {
    port: u16,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tripwire {
    fn start() -> anyhow::Result<Self> {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (hits, stop) = (hits.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok(_) => {
                            hits.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                    }
                }
            })
        };
        Ok(Self {
            port,
            hits,
            stop,
            thread: Some(thread),
        })
    }

    /// Connections seen, after one last look at the listener.
    fn hits(mut self) -> usize {
        std::thread::sleep(std::time::Duration::from_millis(20));
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_follow_a_redirect_to_another_host() -> TestResult {
    let servers = plumb_testsupport::git::GitServers::start()?;
    let repo = servers.create_repo("moved")?;
    let tree = repo.work_tree()?;
    tree.write("a", "1\n")?;
    tree.commit("one", &Signing::None)?;
    tree.push()?;
    let cache = tempfile::tempdir()?;
    let fetcher = Fetcher::new(cache.path());
    let credentials = [
        plumb_source::Credentials::Basic {
            username: servers.username().to_owned(),
            password: servers.password().to_owned().into(),
        },
        plumb_source::Credentials::Bearer {
            token: "t0ken-for-the-real-host".to_owned().into(),
        },
    ];
    for (i, credentials) in credentials.into_iter().enumerate() {
        let trap = Tripwire::start()?;
        let mut request = SourceRequest::new(
            servers.https_redirect_url("moved", trap.port),
            GitRef::Branch("main".into()),
        );
        request.options.ca_file = Some(servers.ca_cert_path().to_owned());
        request.options.credentials = credentials;
        let err = fetcher
            .fetch(&request, &cache.path().join(format!("out{i}")))
            .await
            .expect_err("redirect refused");
        assert!(!err.to_string().contains(servers.password()), "{err}");
        assert_eq!(trap.hits(), 0, "git followed the redirect to another host");
    }
    // Without credentials there is nothing to hand over, and the redirect is followed.
    let trap = Tripwire::start()?;
    let mut request = SourceRequest::new(
        servers.https_redirect_url("moved", trap.port),
        GitRef::Branch("main".into()),
    );
    request.options.ca_file = Some(servers.ca_cert_path().to_owned());
    let _ = fetcher.fetch(&request, &cache.path().join("anon")).await;
    assert!(trap.hits() > 0, "the redirect test does not redirect");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_needs_an_opt_in_and_never_carries_credentials() -> TestResult {
    let servers = plumb_testsupport::git::GitServers::start()?;
    let repo = servers.create_repo("internal")?;
    let tree = repo.work_tree()?;
    tree.write("a", "1\n")?;
    let commit = tree.commit("one", &Signing::None)?;
    tree.push()?;
    let cache = tempfile::tempdir()?;
    let fetcher = Fetcher::new(cache.path());
    let mut request =
        SourceRequest::new(servers.http_url("internal"), GitRef::Branch("main".into()));
    let err = fetcher
        .fetch(&request, &cache.path().join("refused"))
        .await
        .expect_err("plain http refused by default");
    assert_eq!(err.metric_label(), "fetch_invalid_url", "{err}");
    assert!(err.to_string().contains("plain http"), "{err}");

    request.options.allow_insecure_http = true;
    let artifact = fetcher.fetch(&request, &cache.path().join("ok")).await?;
    assert_eq!(artifact.commit, commit);

    request.options.credentials = plumb_source::Credentials::Basic {
        username: "u".into(),
        password: "p4ss".to_owned().into(),
    };
    let err = fetcher
        .fetch(&request, &cache.path().join("creds"))
        .await
        .expect_err("credentials over http refused");
    assert_eq!(
        err.metric_label(),
        "fetch_insecure_with_credentials",
        "{err}"
    );
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
