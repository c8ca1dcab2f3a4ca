//! Exporting fetched trees: `.plumbignore`, escaping symlinks, names that leave the tree.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use plumb_source::{GitRef, SourceRequest};
use plumb_testsupport::git::{Repo, Signing};

use crate::{Env, TestResult, git_in};

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
