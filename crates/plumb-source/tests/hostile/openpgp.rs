//! OpenPGP keys that are expired or revoked cannot sign.

use std::path::Path;
use std::process::Command;

use plumb_source::verify::{self, FailureReason};
use plumb_source::{Keyring, VerifyPolicy};
use plumb_testsupport::git::{GpgSigner, Repo};

use crate::TestResult;

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
