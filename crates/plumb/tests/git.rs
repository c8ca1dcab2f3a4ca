//! End-to-end tests of the Git-facing CLI: `plumb sync --git` (fetch, verify, apply) against the
//! real https and ssh test servers, `plumb verify`, and `plumb revert`.

use std::path::Path;
use std::process::{Command, Output};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use plumb_testsupport::git::{GitServers, KeyType, Repo, Signing, SshSigner};
use plumb_testsupport::kube::{TestNamespace, client};
use serde_json::Value;

const PASSWORD_VAR: &str = "PLUMB_TEST_GIT_PASSWORD";

fn plumb(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_plumb"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("plumb runs")
}

fn text(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn configmap(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: \"{value}\"\n"
    )
}

fn write_file(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn sync_from_git_over_https_verifies_every_new_commit() {
    let client = client().await.unwrap();
    let ns = TestNamespace::create(&client, "git").await.unwrap();
    let servers = GitServers::start().unwrap();
    let repo = servers.create_repo("app").unwrap();
    let wt = repo.work_tree().unwrap();
    let alice = SshSigner::generate(KeyType::Ed25519, "alice@example.com").unwrap();
    let signed = Signing::Ssh(alice.clone());
    wt.write("deploy/cm.yaml", configmap("settings", "v1"))
        .unwrap();
    wt.write("README.md", "not a manifest, outside --path\n")
        .unwrap();
    let first = wt.commit("first", &signed).unwrap();
    wt.push().unwrap();

    let files = tempfile::tempdir().unwrap();
    let signers = write_file(
        files.path(),
        "allowed_signers",
        &format!("{}\n", alice.allowed_signers_line()),
    );
    let cache = files.path().join("cache");
    let url = servers.https_url("app");
    let ca = servers.ca_cert_path().to_str().unwrap().to_owned();
    let base = [
        "sync",
        "--git",
        url.as_str(),
        "--branch",
        "main",
        "--path",
        "deploy",
        "--username",
        servers.username(),
        "--password-env",
        PASSWORD_VAR,
        "--ca-file",
        ca.as_str(),
        "--allowed-signers",
        signers.as_str(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--name",
        "app",
        "-n",
        ns.name(),
    ];
    let env = [(PASSWORD_VAR, servers.password())];
    let run = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        plumb(&args, &env)
    };

    // The CLI's fetch has the agent's export limits: too small a one refuses the revision,
    // says which flag raises it, and applies nothing.
    let out = run(&["--max-artifact-file-size", "16"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exceeds the limit of 16") && err.contains("--max-artifact-file-size"),
        "{err}"
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    assert!(cms.get_opt("settings").await.unwrap().is_none());

    let out = run(&["-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["source"]["commit"], first.as_str());
    let verified = &report["source"]["verification"]["commits"][0];
    assert_eq!(verified["commit"], first.as_str());
    assert!(
        verified["signer"]
            .as_str()
            .unwrap()
            .contains("alice@example.com"),
        "{report:#}"
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    assert_eq!(
        cms.get("settings").await.unwrap().data.unwrap()["value"],
        "v1"
    );
    assert!(
        !text(&out).contains(servers.password()),
        "the password leaked: {}",
        text(&out)
    );

    // An unsigned commit in the middle of the new range is refused, naming it; nothing changes.
    wt.write("deploy/cm.yaml", configmap("settings", "v2-unsigned"))
        .unwrap();
    let unsigned = wt.commit("sneaky unsigned change", &Signing::None).unwrap();
    wt.write("deploy/cm.yaml", configmap("settings", "v3"))
        .unwrap();
    wt.commit("signed on top", &signed).unwrap();
    wt.push().unwrap();
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&unsigned) && err.contains("unsigned"), "{err}");
    assert_eq!(
        cms.get("settings").await.unwrap().data.unwrap()["value"],
        "v1"
    );
    assert!(!text(&out).contains(servers.password()));

    // Checking only the tip accepts it.
    let out = run(&["--verify-mode", "head"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        cms.get("settings").await.unwrap().data.unwrap()["value"],
        "v3"
    );

    // A wrong password fails without echoing it.
    let out = plumb(&base, &[(PASSWORD_VAR, "wrong-password-123")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!text(&out).contains("wrong-password-123"), "{}", text(&out));
}

#[tokio::test]
async fn sync_from_git_over_ssh_refuses_an_unknown_host() {
    let client = client().await.unwrap();
    let ns = TestNamespace::create(&client, "gitssh").await.unwrap();
    let servers = GitServers::start().unwrap();
    let repo = servers.create_repo("app").unwrap();
    let wt = repo.work_tree().unwrap();
    wt.write("cm.yaml", configmap("over-ssh", "1")).unwrap();
    wt.commit("first", &Signing::None).unwrap();
    wt.push().unwrap();
    let files = tempfile::tempdir().unwrap();
    let url = servers.ssh_url("app");
    let key = servers.ssh_client_key_path().to_str().unwrap().to_owned();
    let args = |known_hosts: &str| {
        vec![
            "sync".to_owned(),
            "--git".into(),
            url.clone(),
            "--ssh-key".into(),
            key.clone(),
            "--known-hosts".into(),
            known_hosts.to_owned(),
            "--cache-dir".into(),
            files.path().join("cache").to_str().unwrap().to_owned(),
            "--name".into(),
            "s".into(),
            "-n".into(),
            ns.name().to_owned(),
        ]
    };
    let empty = write_file(files.path(), "empty_known_hosts", "");
    let out = plumb(
        &args(&empty).iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("host key"),
        "{}",
        text(&out)
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    assert!(cms.get_opt("over-ssh").await.unwrap().is_none());

    let known = servers.known_hosts_path().to_str().unwrap().to_owned();
    let out = plumb(
        &args(&known).iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(cms.get_opt("over-ssh").await.unwrap().is_some());
}

#[test]
fn verify_lists_each_commit_and_fails_on_an_unsigned_one() {
    let repo = Repo::local("verify").unwrap();
    let wt = repo.work_tree().unwrap();
    let alice = SshSigner::generate(KeyType::Ed25519, "alice@example.com").unwrap();
    let signed = Signing::Ssh(alice.clone());
    wt.write("a", "1").unwrap();
    let base = wt.commit("base", &signed).unwrap();
    wt.write("a", "2").unwrap();
    let good = wt.commit("good", &signed).unwrap();
    wt.write("a", "3").unwrap();
    let bad = wt.commit("unsigned", &Signing::None).unwrap();
    let files = tempfile::tempdir().unwrap();
    let signers = write_file(
        files.path(),
        "allowed_signers",
        &format!("{}\n", alice.allowed_signers_line()),
    );
    let path = wt.path().to_str().unwrap();

    let out = plumb(
        &[
            "verify",
            path,
            "--ref",
            &good,
            "--since",
            &base,
            "--allowed-signers",
            &signers,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("alice@example.com"),
        "{}",
        text(&out)
    );

    let out = plumb(
        &[
            "verify",
            path,
            "--since",
            &base,
            "--allowed-signers",
            &signers,
            "-o",
            "json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["passed"], false);
    let commits = report["report"]["commits"].as_array().unwrap();
    assert_eq!(commits.len(), 2, "{report:#}");
    assert_eq!(commits[0]["commit"], bad.as_str());
    assert_eq!(commits[1]["commit"], good.as_str());
}

#[tokio::test]
async fn revert_rolls_the_cluster_back_through_git() {
    let client = client().await.unwrap();
    let ns = TestNamespace::create(&client, "revert").await.unwrap();
    let repo = Repo::local("revert").unwrap();
    let wt = repo.work_tree().unwrap();
    wt.write("base.yaml", configmap("base", "1")).unwrap();
    wt.commit("base", &Signing::None).unwrap();
    wt.write("extra.yaml", configmap("extra", "1")).unwrap();
    let bad = wt.commit("add extra", &Signing::None).unwrap();
    wt.push().unwrap();
    let files = tempfile::tempdir().unwrap();
    let cache = files.path().join("cache");
    let url = repo.file_url();
    let sync = || {
        plumb(
            &[
                "sync",
                "--git",
                &url,
                "--cache-dir",
                cache.to_str().unwrap(),
                "--prune",
                "--name",
                "r",
                "-n",
                ns.name(),
            ],
            &[],
        )
    };
    let out = sync();
    assert!(out.status.success(), "{}", text(&out));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    assert!(cms.get_opt("extra").await.unwrap().is_some());

    let home = files.path().to_str().unwrap();
    let identity = [
        ("HOME", home),
        ("GIT_CONFIG_NOSYSTEM", "1"),
        ("GIT_AUTHOR_NAME", "Rollback Bot"),
        ("GIT_AUTHOR_EMAIL", "bot@example.com"),
        ("GIT_COMMITTER_NAME", "Rollback Bot"),
        ("GIT_COMMITTER_EMAIL", "bot@example.com"),
    ];
    let out = plumb(&["revert", wt.path().to_str().unwrap(), &bad], &identity);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pushed"),
        "{}",
        text(&out)
    );

    let out = sync();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        cms.get_opt("extra").await.unwrap().is_none(),
        "the reverted object must be pruned"
    );
    assert!(cms.get_opt("base").await.unwrap().is_some());
}

#[test]
fn verify_refuses_a_rollback_to_an_unsigned_ancestor() {
    let repo = Repo::local("rollback").unwrap();
    let wt = repo.work_tree().unwrap();
    let alice = SshSigner::generate(KeyType::Ed25519, "alice@example.com").unwrap();
    wt.write("a", "1").unwrap();
    let unsigned = wt.commit("unsigned", &Signing::None).unwrap();
    wt.write("a", "2").unwrap();
    let signed = wt.commit("signed", &Signing::Ssh(alice.clone())).unwrap();
    let files = tempfile::tempdir().unwrap();
    let signers = write_file(
        files.path(),
        "allowed_signers",
        &format!("{}\n", alice.allowed_signers_line()),
    );
    let out = plumb(
        &[
            "verify",
            wt.path().to_str().unwrap(),
            "--ref",
            &unsigned,
            "--since",
            &signed,
            "--verify-mode",
            "range",
            "--allowed-signers",
            &signers,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not contain the last verified commit") && stderr.contains(&signed),
        "{}",
        text(&out)
    );
}
