//! Proves the test Git servers behave like real ones: https with basic auth and TLS, ssh with
//! public keys and strict host key checking, and signatures git itself verifies; and that they
//! can be stopped mid-transfer and restarted alike, for fault drills.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use plumb_testsupport::git::{
    GitServers, GpgSigner, KeyType, Repo, ServerOptions, Signing, SshSigner,
};

type TestResult = anyhow::Result<()>;

/// Runs `cmd` and returns its output whatever the exit status.
fn output(cmd: &mut Command) -> Output {
    cmd.output().expect("git is installed")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout: {}",
        stderr(out),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A server repository with one pushed commit adding `deploy/app.yaml`.
fn repo_with_commit(servers: &GitServers, name: &str) -> anyhow::Result<(Repo, String)> {
    let repo = servers.create_repo(name)?;
    let tree = repo.work_tree()?;
    tree.write("deploy/app.yaml", "kind: ConfigMap\n")?;
    let commit = tree.commit("Add app", &Signing::None)?;
    tree.push()?;
    Ok((repo, commit))
}

fn clone(servers: &GitServers, url: &str, into: &Path) -> Output {
    output(servers.git().args(["clone", "--quiet", url]).arg(into))
}

fn head_of(dir: &Path) -> String {
    let out = output(
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["rev-parse", "HEAD"]),
    );
    assert_success(&out, "rev-parse");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn https_clone_with_the_right_password_gets_the_pushed_commit() -> TestResult {
    let servers = GitServers::start()?;
    eprintln!("servers started in {:?}", servers.startup_time());
    let (_repo, commit) = repo_with_commit(&servers, "app")?;
    let dir = tempfile::tempdir()?;
    let url = servers.https_url_with_credentials("app", servers.username(), servers.password());

    let out = clone(&servers, &url, &dir.path().join("clone"));

    assert_success(&out, "https clone");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("clone/deploy/app.yaml"))?,
        "kind: ConfigMap\n"
    );
    assert_eq!(head_of(&dir.path().join("clone")), commit);
    Ok(())
}

#[test]
fn https_clone_with_a_wrong_password_or_none_fails_authentication() -> TestResult {
    let servers = GitServers::start()?;
    repo_with_commit(&servers, "app")?;
    let dir = tempfile::tempdir()?;

    let wrong = servers.https_url_with_credentials("app", servers.username(), "not-the-password");
    let out = clone(&servers, &wrong, &dir.path().join("wrong"));
    assert!(!out.status.success(), "clone with a wrong password worked");
    assert!(
        stderr(&out).contains("Authentication failed"),
        "unexpected error: {}",
        stderr(&out)
    );

    let out = clone(
        &servers,
        &servers.https_url("app"),
        &dir.path().join("anonymous"),
    );
    assert!(!out.status.success(), "clone without credentials worked");
    assert!(
        stderr(&out).contains("terminal prompts disabled"),
        "unexpected error: {}",
        stderr(&out)
    );
    Ok(())
}

#[test]
fn https_rejects_a_client_that_does_not_trust_the_ca() -> TestResult {
    let servers = GitServers::start()?;
    repo_with_commit(&servers, "app")?;
    let dir = tempfile::tempdir()?;
    let url = servers.https_url_with_credentials("app", servers.username(), servers.password());
    // Another CA than the one that signed the server's certificate.
    let other_ca = GitServers::start()?;
    std::fs::copy(other_ca.ca_cert_path(), dir.path().join("other-ca.pem"))?;

    let out = output(
        servers
            .git()
            .env("GIT_SSL_CAINFO", dir.path().join("other-ca.pem"))
            .args(["clone", "--quiet", &url])
            .arg(dir.path().join("clone")),
    );

    assert!(!out.status.success(), "clone without the CA worked");
    assert!(
        stderr(&out).contains("server certificate verification failed"),
        "unexpected error: {}",
        stderr(&out)
    );
    Ok(())
}

#[test]
fn https_push_updates_the_server_repository() -> TestResult {
    let servers = GitServers::start()?;
    let (repo, first) = repo_with_commit(&servers, "app")?;
    let dir = tempfile::tempdir()?;
    let clone_dir = dir.path().join("clone");
    let url = servers.https_url_with_credentials("app", servers.username(), servers.password());
    assert_success(&clone(&servers, &url, &clone_dir), "https clone");
    std::fs::write(clone_dir.join("new.yaml"), "kind: Secret\n")?;
    let git = |args: &[&str]| {
        let mut cmd = servers.git();
        cmd.current_dir(&clone_dir)
            .args([
                "-c",
                "user.name=Pusher",
                "-c",
                "user.email=pusher@plumb.test",
            ])
            .args(args);
        output(&mut cmd)
    };
    assert_success(&git(&["add", "new.yaml"]), "add");
    assert_success(&git(&["commit", "--quiet", "-m", "Add secret"]), "commit");

    assert_success(&git(&["push", "--quiet", "origin", "main"]), "https push");

    let pushed = head_of(&clone_dir);
    assert_ne!(pushed, first);
    assert_eq!(repo.rev_parse("refs/heads/main")?, pushed);
    Ok(())
}

#[test]
fn ssh_clone_and_push_with_the_client_key_and_known_host() -> TestResult {
    let servers = GitServers::start()?;
    let (repo, commit) = repo_with_commit(&servers, "app")?;
    let dir = tempfile::tempdir()?;
    let clone_dir = dir.path().join("clone");

    let out = clone(&servers, &servers.ssh_url("app"), &clone_dir);

    assert_success(&out, "ssh clone");
    assert_eq!(head_of(&clone_dir), commit);
    assert!(clone_dir.join("deploy/app.yaml").is_file());

    let git = |args: &[&str]| {
        let mut cmd = servers.git();
        cmd.current_dir(&clone_dir)
            .args([
                "-c",
                "user.name=Pusher",
                "-c",
                "user.email=pusher@plumb.test",
            ])
            .args(args);
        output(&mut cmd)
    };
    assert_success(
        &git(&["commit", "--quiet", "--allow-empty", "-m", "Over ssh"]),
        "commit",
    );
    assert_success(&git(&["push", "--quiet", "origin", "main"]), "ssh push");
    assert_eq!(repo.rev_parse("main")?, head_of(&clone_dir));
    Ok(())
}

#[test]
fn ssh_clone_fails_when_the_host_key_is_unknown_or_different() -> TestResult {
    let servers = GitServers::start()?;
    repo_with_commit(&servers, "app")?;
    let dir = tempfile::tempdir()?;

    let empty = dir.path().join("empty_known_hosts");
    std::fs::write(&empty, "")?;
    let out = output(
        servers
            .git()
            .env("GIT_SSH_COMMAND", servers.ssh_command(&empty))
            .args(["clone", "--quiet", &servers.ssh_url("app")])
            .arg(dir.path().join("clone-empty")),
    );
    assert!(!out.status.success(), "clone with empty known_hosts worked");
    assert!(
        stderr(&out).contains("Host key verification failed"),
        "unexpected error: {}",
        stderr(&out)
    );

    let other_key = SshSigner::generate(KeyType::Ed25519, "impostor")?;
    let mut fields = other_key.public_key().split_whitespace();
    let (algorithm, blob) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
    let different = dir.path().join("different_known_hosts");
    std::fs::write(
        &different,
        format!("[127.0.0.1]:{} {algorithm} {blob}\n", servers.ssh_port()),
    )?;
    let out = output(
        servers
            .git()
            .env("GIT_SSH_COMMAND", servers.ssh_command(&different))
            .args(["clone", "--quiet", &servers.ssh_url("app")])
            .arg(dir.path().join("clone-different")),
    );
    assert!(!out.status.success(), "clone with a wrong host key worked");
    assert!(
        stderr(&out).contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            && stderr(&out).contains("Host key verification failed"),
        "unexpected error: {}",
        stderr(&out)
    );
    Ok(())
}

#[test]
fn ssh_clone_fails_with_a_key_the_server_does_not_authorize() -> TestResult {
    let servers = GitServers::start()?;
    repo_with_commit(&servers, "app")?;
    let dir = tempfile::tempdir()?;
    let stranger = SshSigner::generate(KeyType::Ed25519, "stranger")?;
    let command = servers.ssh_command(servers.known_hosts_path()).replace(
        &servers.ssh_client_key_path().display().to_string(),
        &stranger.private_key_path().display().to_string(),
    );

    let out = output(
        servers
            .git()
            .env("GIT_SSH_COMMAND", command)
            .args(["clone", "--quiet", &servers.ssh_url("app")])
            .arg(dir.path().join("clone")),
    );

    assert!(!out.status.success(), "clone with an unknown key worked");
    assert!(
        stderr(&out).contains("Permission denied (publickey)"),
        "unexpected error: {}",
        stderr(&out)
    );
    Ok(())
}

/// Verifies `what` (`verify-commit`/`verify-tag`) trusting exactly `trusted`.
fn verify_ssh(repo: &Repo, verb: &str, what: &str, trusted: &SshSigner) -> anyhow::Result<Output> {
    let tree = repo.work_tree()?;
    let dir = tempfile::tempdir()?;
    let allowed = dir.path().join("allowed_signers");
    std::fs::write(&allowed, format!("{}\n", trusted.allowed_signers_line()))?;
    Ok(output(
        tree.git()
            .arg("-c")
            .arg(format!("gpg.ssh.allowedSignersFile={}", allowed.display()))
            .args([verb, what]),
    ))
}

fn ssh_signed_commit_and_tag_verify(key_type: KeyType) -> TestResult {
    let repo = Repo::local("signed")?;
    let tree = repo.work_tree()?;
    let signer = SshSigner::generate(key_type, "signer@plumb.test")?;
    let stranger = SshSigner::generate(key_type, "stranger@plumb.test")?;
    tree.write("a.yaml", "a: 1\n")?;
    let signed = tree.commit("Signed", &Signing::Ssh(signer.clone()))?;
    tree.tag("v1.0.0", &Signing::Ssh(signer.clone()))?;
    let unsigned = tree.commit("Unsigned", &Signing::None)?;
    tree.push()?;

    let out = verify_ssh(&repo, "verify-commit", &signed, &signer)?;
    assert_success(&out, "verify-commit of the signed commit");
    assert!(
        stderr(&out).contains("Good \"git\" signature for signer@plumb.test"),
        "unexpected verify output: {}",
        stderr(&out)
    );
    let out = verify_ssh(&repo, "verify-tag", "v1.0.0", &signer)?;
    assert_success(&out, "verify-tag of the signed tag");

    let out = verify_ssh(&repo, "verify-commit", &signed, &stranger)?;
    assert!(
        !out.status.success(),
        "a signature by an untrusted key verified"
    );
    let out = verify_ssh(&repo, "verify-commit", &unsigned, &signer)?;
    assert!(!out.status.success(), "an unsigned commit verified");
    Ok(())
}

#[test]
fn ssh_ed25519_signed_commits_and_tags_pass_git_verify() -> TestResult {
    ssh_signed_commit_and_tag_verify(KeyType::Ed25519)
}

#[test]
fn ssh_rsa_signed_commits_and_tags_pass_git_verify() -> TestResult {
    ssh_signed_commit_and_tag_verify(KeyType::Rsa)
}

/// A keyring holding only imported public keys; stops its agent on drop.
struct Keyring(tempfile::TempDir);

impl Keyring {
    fn with(public_key: &str) -> anyhow::Result<Self> {
        let keyring = Keyring(tempfile::Builder::new().prefix("plumb-kr-").tempdir()?);
        let key_file = keyring.0.path().join("key.asc");
        std::fs::write(&key_file, public_key)?;
        let out = output(
            Command::new("gpg")
                .env("GNUPGHOME", keyring.0.path())
                .args(["--batch", "--import"])
                .arg(&key_file),
        );
        assert_success(&out, "gpg --import");
        Ok(keyring)
    }
}

impl Drop for Keyring {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .args(["--kill", "all"])
            .env("GNUPGHOME", self.0.path())
            .output();
    }
}

#[test]
fn gpg_signed_commits_and_tags_pass_git_verify() -> TestResult {
    let repo = Repo::local("signed")?;
    let tree = repo.work_tree()?;
    let signer = GpgSigner::generate("Plumb Signer", "signer@plumb.test")?;
    assert_eq!(signer.fingerprint().len(), 40);
    assert!(
        signer
            .public_key_armored()
            .starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    );
    tree.write("a.yaml", "a: 1\n")?;
    let signed = tree.commit("Signed", &Signing::Gpg(signer.clone()))?;
    tree.tag("v1.0.0", &Signing::Gpg(signer.clone()))?;
    let unsigned = tree.commit("Unsigned", &Signing::None)?;

    let keyring = Keyring::with(signer.public_key_armored())?;
    let verify = |verb: &str, what: &str| {
        output(
            tree.git()
                .env("GNUPGHOME", keyring.0.path())
                .args([verb, what]),
        )
    };
    let out = verify("verify-commit", &signed);
    assert_success(&out, "verify-commit of the gpg-signed commit");
    assert!(
        stderr(&out).contains("Good signature from \"Plumb Signer <signer@plumb.test>\""),
        "unexpected verify output: {}",
        stderr(&out)
    );
    assert_success(
        &verify("verify-tag", "v1.0.0"),
        "verify-tag of the signed tag",
    );
    assert!(
        !verify("verify-commit", &unsigned).status.success(),
        "an unsigned commit verified"
    );

    let other = GpgSigner::generate("Other", "other@plumb.test")?;
    let other_keyring = Keyring::with(other.public_key_armored())?;
    let out = output(
        tree.git()
            .env("GNUPGHOME", other_keyring.0.path())
            .args(["verify-commit", &signed]),
    );
    assert!(!out.status.success(), "verified without the signer's key");
    Ok(())
}

#[test]
fn local_repo_work_tree_round_trip_over_file_url() -> TestResult {
    let repo = Repo::local("local")?;
    assert!(repo.https_url().is_none());
    let mut tree = repo.work_tree()?;
    assert_eq!(tree.branch(), "main");
    tree.write("dir/keep.yaml", "keep\n")?;
    tree.write("dir/drop.yaml", "drop\n")?;
    tree.symlink("link", "/etc/passwd")?;
    tree.commit("First", &Signing::None)?;
    tree.remove("dir/drop.yaml")?;
    let second = tree.commit("Second", &Signing::None)?;
    tree.push()?;
    assert!(tree.write("../escape", "x").is_err());

    let dir = tempfile::tempdir()?;
    let clone_dir = dir.path().join("clone");
    let out = output(
        Command::new("git")
            .args(["clone", "--quiet", &repo.file_url()])
            .arg(&clone_dir),
    );
    assert_success(&out, "file:// clone");
    assert_eq!(head_of(&clone_dir), second);
    assert!(clone_dir.join("dir/keep.yaml").is_file());
    assert!(!clone_dir.join("dir/drop.yaml").exists());
    assert_eq!(
        std::fs::read_link(clone_dir.join("link"))?,
        Path::new("/etc/passwd")
    );

    // A rewritten history needs a forced push.
    tree.switch_branch("main")?;
    let out = output(tree.git().args(["reset", "--quiet", "--hard", "HEAD~1"]));
    assert_success(&out, "reset");
    let rewritten = tree.commit("Rewritten", &Signing::None)?;
    assert!(tree.push().is_err(), "a non-fast-forward push was accepted");
    tree.push_force()?;
    assert_eq!(repo.rev_parse("main")?, rewritten);
    Ok(())
}

#[test]
fn dropping_the_servers_stops_them_and_removes_their_files() -> TestResult {
    let servers = GitServers::start()?;
    let pids = servers.pids();
    assert_eq!(pids.len(), 3, "fcgiwrap, nginx, sshd");
    let dir = servers.dir().to_owned();
    drop(servers);

    // Each server is one process (nginx without a master, sshd in the foreground): with it
    // gone its listening socket is closed. (Whether the ports still accept connections says
    // nothing here: the other tests of this binary start servers on free ports meanwhile,
    // and one may have just taken a port these servers freed.)
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "server process {pid} still exists"
        );
    }
    assert!(!dir.exists());
    Ok(())
}

/// Bytes that do not compress, so that a pack holding them is as large as they are.
fn incompressible(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn a_stop_breaks_a_slowed_clone_mid_pack_and_a_restart_serves_it_again() -> TestResult {
    const SIZE: usize = 2 << 20;
    // 2 MiB at 1 MiB/s: about 2 s of transfer.
    let mut servers = GitServers::start_with(ServerOptions {
        rate_limit: Some(1 << 20),
    })?;
    let repo = servers.create_repo("big")?;
    let tree = repo.work_tree()?;
    tree.write("blob.bin", incompressible(SIZE))?;
    let commit = tree.commit("big", &Signing::None)?;
    tree.push()?;
    let ports = [servers.https_port(), servers.ssh_port()];
    let dir = tempfile::tempdir()?;

    let mut cloning = servers
        .git()
        .args(["clone", "--quiet", &servers.http_url("big")])
        .arg(dir.path().join("first"))
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // A quarter of the pack is out: the transfer is under way, far from done.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while servers.serving().unwrap_or(0) < (SIZE / 4) as u64 {
        assert!(
            cloning.try_wait()?.is_none(),
            "the clone ended before a quarter of the pack was sent"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the pack never went out"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    servers.stop();
    assert!(!servers.is_running());
    let out = cloning.wait_with_output()?;
    assert!(!out.status.success(), "the clone survived the stop");
    for port in ports {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
            "port {port} still accepts connections after stop()"
        );
    }

    servers.restart()?;
    assert!(servers.is_running());
    assert_eq!([servers.https_port(), servers.ssh_port()], ports);
    assert_eq!(servers.serving(), None, "nothing is being served");
    let again = dir.path().join("again");
    assert_success(
        &clone(&servers, &servers.http_url("big"), &again),
        "clone after restart",
    );
    assert_eq!(head_of(&again), commit);
    assert_eq!(std::fs::read(again.join("blob.bin"))?.len(), SIZE);
    // The same credentials and host key still work.
    let https = servers.https_url_with_credentials("big", servers.username(), servers.password());
    for url in [https, servers.ssh_url("big")] {
        let out = output(servers.git().args(["ls-remote", &url, "main"]));
        assert_success(&out, "ls-remote after restart");
        assert!(String::from_utf8_lossy(&out.stdout).starts_with(&commit));
    }
    Ok(())
}
