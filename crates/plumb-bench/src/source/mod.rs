//! `plumb-bench source`: fetch and verification of plumb-source against plain git (run it with
//! `scripts/bench source`; needs git, ssh-keygen; https needs nginx, fcgiwrap, sshd).
//!
//! Builds a bare repository of 10,000 files and 2,000 commits (`git fast-import`), the last
//! 1,000 of them SSH-signed in-process, then measures in one run, once each:
//!
//! * plumb's cold fetch (fetch into an empty cache + export of the tree) against
//!   `git clone --depth 1` and `git clone --bare`;
//! * plumb's fetch after one new commit against `git fetch` in those clones;
//! * `verify::check` over a 1,000-commit range against `git log --format=%G?` (git runs
//!   `ssh-keygen -Y verify` once per commit);
//!
//! over `file://` and, when the test servers start (nginx, fcgiwrap, sshd; root), over https.
//! Prints a Markdown table. Not a test: nothing here asserts a timing.

mod git;
mod history;
mod report;

use std::time::Instant;

use anyhow::{Context as _, ensure};
use plumb_source::verify::{self, VerifyMode, VerifyPolicy};
use plumb_source::{AllowedSigners, Fetcher};
use plumb_testsupport::git::{GitServers, KeyType, SshSigner};

use self::git::{GitEnv, Transport};
use self::history::{
    COMMITS, FILES, PRINCIPAL, SIGNED, commit_header, fast_import, history_stream, modify, push,
    sign_commits,
};
use self::report::{Row, table, timed, timed_async};

/// Builds the repository, runs every measurement once and prints the table.
pub async fn run() -> anyhow::Result<()> {
    let run_start = Instant::now();
    let root = tempfile::Builder::new().prefix("plumb-bench-").tempdir()?;
    let root = root.path();
    let env = GitEnv::new(root)?;

    // Setup.
    let origin = root.join("origin.git");
    let t = Instant::now();
    env.git(None)
        .args(["init", "--quiet", "--bare", "--initial-branch=main"])
        .arg(&origin)
        .run()?;
    fast_import(&env, &origin, &history_stream())?;
    let import_time = t.elapsed();

    let t = Instant::now();
    let signer = SshSigner::generate(KeyType::Ed25519, PRINCIPAL)?;
    let key = ssh_key::PrivateKey::read_openssh_file(signer.private_key_path())?;
    let all = env
        .git(Some(&origin))
        .args(["rev-list", "--reverse", "main"])
        .output_text()?;
    let all: Vec<&str> = all.lines().collect();
    ensure!(
        all.len() == COMMITS,
        "expected {COMMITS} commits, got {}",
        all.len()
    );
    let tip = sign_commits(&origin, &all[COMMITS - SIGNED..], &key)?;
    env.git(Some(&origin))
        .args(["update-ref", "refs/heads/main", &tip])
        .run()?;
    let sign_time = t.elapsed();

    let t = Instant::now();
    env.git(Some(&origin))
        .args(["repack", "-a", "-d", "-q"])
        .run()?;
    env.git(Some(&origin))
        .args(["prune", "--expire=now"])
        .run()?;
    let repack_time = t.elapsed();

    // Git itself must accept the signatures, or the verification numbers mean nothing.
    let allowed_file = root.join("allowed_signers");
    std::fs::write(&allowed_file, signer.allowed_signers_line() + "\n")?;
    env.git(Some(&origin))
        .arg("-c")
        .arg(format!(
            "gpg.ssh.allowedSignersFile={}",
            allowed_file.display()
        ))
        .args(["verify-commit", &tip])
        .run()
        .context("git does not accept the generated signatures")?;

    let mut transports = vec![Transport::file(&origin)];
    let servers = match GitServers::start() {
        Ok(servers) => Some(servers),
        Err(e) => {
            eprintln!("https skipped: the test servers did not start: {e:#}");
            None
        }
    };
    let t = Instant::now();
    if let Some(servers) = &servers {
        let repo = servers.create_repo("bench")?;
        push(&env, &origin, repo.path())?;
        transports.push(Transport::https(servers));
    }
    let server_time = t.elapsed();
    let setup = [
        ("fast-import of 2,000 commits", import_time),
        ("signing of 1,000 commits (in-process)", sign_time),
        ("repack", repack_time),
        ("https server start + push", server_time),
    ];

    // Cold.
    let mut rows = Vec::new();
    let mut state = Vec::new();
    for (i, tr) in transports.iter().enumerate() {
        let dir = root.join(format!("run-{i}"));
        std::fs::create_dir_all(&dir)?;
        let fetcher = Fetcher::new(dir.join("plumb-cache"));
        let (plumb_cold, artifact) = timed_async(fetcher.fetch(&tr.request(), &dir.join("out-1")))
            .await
            .with_context(|| format!("plumb cold fetch over {}", tr.name))?;
        ensure!(artifact.files == FILES, "exported {} files", artifact.files);
        ensure!(artifact.commit == tip, "plumb fetched {}", artifact.commit);
        let shallow = dir.join("shallow");
        let (git_shallow, ()) = timed(|| {
            tr.git(&env)
                .args(["clone", "--quiet", "--depth", "1", "--branch", "main"])
                .arg(&tr.git_url)
                .arg(&shallow)
                .run()
        })?;
        let bare = dir.join("bare.git");
        let (git_bare, ()) = timed(|| {
            tr.git(&env)
                .args(["clone", "--quiet", "--bare"])
                .arg(&tr.git_url)
                .arg(&bare)
                .run()
        })?;
        rows.push(Row::new(
            "cold fetch vs `git clone --depth 1`",
            tr.name,
            plumb_cold,
            git_shallow,
        ));
        rows.push(Row::new(
            "cold fetch vs `git clone --bare` (full history)",
            tr.name,
            plumb_cold,
            git_bare,
        ));
        state.push((fetcher, dir, shallow, bare));
    }

    // One new signed commit, on every server.
    let stream = format!(
        "commit refs/heads/main\n{}from {tip}\n{}",
        commit_header(COMMITS + 1),
        modify(0, COMMITS + 1)
    );
    fast_import(&env, &origin, &stream)?;
    let unsigned = env
        .git(Some(&origin))
        .args(["rev-parse", "main"])
        .output_text()?;
    let new_tip = sign_commits(&origin, &[unsigned.trim()], &key)?;
    env.git(Some(&origin))
        .args(["update-ref", "refs/heads/main", &new_tip])
        .run()?;
    if let Some(servers) = &servers {
        push(&env, &origin, &servers.repo_path("bench"))?;
    }

    // Incremental.
    for (tr, (fetcher, dir, shallow, bare)) in transports.iter().zip(&state) {
        let (plumb_incr, artifact) = timed_async(fetcher.fetch(&tr.request(), &dir.join("out-2")))
            .await
            .with_context(|| format!("plumb incremental fetch over {}", tr.name))?;
        ensure!(
            artifact.commit == new_tip,
            "plumb fetched {}",
            artifact.commit
        );
        let (git_fetch, ()) = timed(|| {
            tr.git(&env)
                .arg("--git-dir")
                .arg(bare)
                .args(["fetch", "--quiet", "origin", "+refs/heads/*:refs/heads/*"])
                .run()
        })?;
        let (git_fetch_shallow, ()) = timed(|| {
            tr.git(&env)
                .arg("-C")
                .arg(shallow)
                .args(["fetch", "--quiet", "--depth", "1", "origin", "main"])
                .run()
        })?;
        rows.push(Row::new(
            "fetch after 1 new commit vs `git fetch` (full clone)",
            tr.name,
            plumb_incr,
            git_fetch,
        ));
        rows.push(Row::new(
            "fetch after 1 new commit vs `git fetch --depth 1` (shallow clone)",
            tr.name,
            plumb_incr,
            git_fetch_shallow,
        ));
    }

    // Verification of the last 1,000 commits, in plumb's cache of the file:// fetch.
    let (fetcher, ..) = &state[0];
    let cache_repo = fetcher.repo_path(&transports[0].plumb_url);
    let since = env
        .git(Some(&origin))
        .args(["rev-parse", &format!("{new_tip}~{SIGNED}")])
        .output_text()?;
    let since = since.trim();
    // How much of a fetch is writing the files: the export alone, against `git checkout` of
    // the same tree into an empty work tree.
    let (plumb_export, _) = timed(|| {
        Ok(plumb_source::export::export_tree(
            &cache_repo,
            &new_tip,
            &root.join("export-only"),
            &[],
        )?)
    })?;
    let checkout = root.join("checkout-only");
    std::fs::create_dir_all(&checkout)?;
    let (git_checkout, ()) = timed(|| {
        env.git(Some(&origin))
            .arg("--work-tree")
            .arg(&checkout)
            .args(["checkout", "--quiet", "--force", "main", "--", "."])
            .run()
    })?;
    rows.push(Row::new(
        "of which: export of the tree vs `git checkout` into an empty work tree",
        "local",
        plumb_export,
        git_checkout,
    ));

    let policy = VerifyPolicy {
        mode: VerifyMode::Range,
        allowed_signers: AllowedSigners::parse(&signer.allowed_signers_line())?,
        ..VerifyPolicy::default()
    };
    let (plumb_verify, report) = timed(|| {
        Ok(verify::check(
            &cache_repo,
            &new_tip,
            Some(since),
            None,
            &policy,
        )?)
    })?;
    ensure!(
        report.commits.len() == SIGNED && report.passed(),
        "verification: {} commits, passed: {}",
        report.commits.len(),
        report.passed()
    );
    let (git_verify, verdicts) = timed(|| {
        env.git(Some(&origin))
            .arg("-c")
            .arg(format!(
                "gpg.ssh.allowedSignersFile={}",
                allowed_file.display()
            ))
            .args(["log", "--format=%G?", &format!("{since}..{new_tip}")])
            .output_text()
    })?;
    let good = verdicts.lines().filter(|l| *l == "G").count();
    ensure!(good == SIGNED, "git verified {good} of {SIGNED} commits");
    rows.push(Row::new(
        "verify 1,000-commit range (SSH) vs `git log --format=%G?`",
        "local",
        plumb_verify,
        git_verify,
    ));

    print!("{}", table(&rows, &setup));
    eprintln!("\n(bench run: {}s)", run_start.elapsed().as_secs());
    Ok(())
}
