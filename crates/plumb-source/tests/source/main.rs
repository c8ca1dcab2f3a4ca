//! Fetch, refs, verification and export against real git servers and repositories.

use std::path::Path;
use std::process::Command;

use plumb_source::verify::FailureReason;
use plumb_source::{
    AllowedSigners, Artifact, Error, Fetcher, SourceRequest, VerifyMode, VerifyPolicy,
};
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

mod charts;
mod export;
mod signatures;
mod transport;
