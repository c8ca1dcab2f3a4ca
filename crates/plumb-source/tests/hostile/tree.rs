//! Trees that try to write outside the export, names a filesystem reads as `.git`, content
//! over the limits, artifacts changed on disk.

use std::path::Path;
use std::process::Command;

use plumb_source::export::{self, ExportLimits};
use plumb_source::{Fetcher, GitRef, SourceRequest};
use plumb_testsupport::git::{Repo, Signing, WorkTree};

use crate::TestResult;

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
