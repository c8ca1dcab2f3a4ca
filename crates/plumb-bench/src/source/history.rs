//! The benchmark's repository: a `git fast-import` stream, and SSH signatures made in-process
//! (1,000 `git commit -S` would take minutes of `ssh-keygen`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;

use anyhow::{Context as _, ensure};

use super::git::GitEnv;

pub const FILES: usize = 10_000;
pub const COMMITS: usize = 2_000;
pub const SIGNED: usize = 1_000;
const FILES_PER_COMMIT: usize = 3;
pub const PRINCIPAL: &str = "bench@example.com";

/// A fast-import stream: one commit adding every file, then commits changing a few each.
pub fn history_stream() -> String {
    let mut out = String::with_capacity(4 << 20);
    out.push_str("commit refs/heads/main\n");
    out.push_str(&commit_header(1));
    for file in 0..FILES {
        push_file(&mut out, file, 1);
    }
    for n in 2..=COMMITS {
        out.push_str("commit refs/heads/main\n");
        out.push_str(&commit_header(n));
        out.push_str(&modify(n * 7919, n));
    }
    out
}

pub fn commit_header(n: usize) -> String {
    let time = 1_700_000_000 + n * 60;
    let message = format!("change {n}\n");
    format!(
        "author Bench <{PRINCIPAL}> {time} +0000\ncommitter Bench <{PRINCIPAL}> {time} +0000\ndata {}\n{message}",
        message.len()
    )
}

/// File changes of commit `n`: `FILES_PER_COMMIT` files picked from `seed`.
pub fn modify(seed: usize, n: usize) -> String {
    let mut out = String::new();
    for k in 0..FILES_PER_COMMIT {
        push_file(&mut out, (seed + k * 3331) % FILES, n);
    }
    out
}

fn push_file(out: &mut String, file: usize, revision: usize) {
    let content = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{file:05}\ndata:\n  revision: \"{revision}\"\n  payload: \"{}\"\n",
        "x".repeat(64 + file % 64)
    );
    let _ = write!(
        out,
        "M 100644 inline apps/app-{:03}/cm-{file:05}.yaml\ndata {}\n{content}\n",
        file / 100,
        content.len()
    );
}

pub fn fast_import(env: &GitEnv, repo: &Path, stream: &str) -> anyhow::Result<()> {
    let mut child = env
        .git(Some(repo))
        .args(["fast-import", "--quiet"])
        .cmd
        .stdin(Stdio::piped())
        .spawn()
        .context("cannot start git fast-import")?;
    child
        .stdin
        .take()
        .context("fast-import stdin")?
        .write_all(stream.as_bytes())?;
    let status = child.wait()?;
    ensure!(status.success(), "git fast-import failed: {status}");
    Ok(())
}

/// A commit object to write as is.
struct RawCommit(Vec<u8>);

impl gix::objs::WriteTo for RawCommit {
    fn write_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(&self.0)
    }

    fn kind(&self) -> gix::objs::Kind {
        gix::objs::Kind::Commit
    }

    fn size(&self) -> u64 {
        self.0.len() as u64
    }
}

/// Rewrites `ids` (oldest first, a chain) with an SSH signature each, pointing parents at the
/// rewritten commits, as `git commit -S` would have made them. Returns the last new id.
pub fn sign_commits(
    repo: &Path,
    ids: &[&str],
    key: &ssh_key::PrivateKey,
) -> anyhow::Result<String> {
    let repo = gix::open_opts(repo, gix::open::Options::isolated())?;
    let mut rewritten: HashMap<String, String> = HashMap::new();
    let mut last = String::new();
    for id in ids {
        let object = repo.find_object(gix::ObjectId::from_hex(id.as_bytes())?)?;
        let text = std::str::from_utf8(&object.data).context("commit is not UTF-8")?;
        let (headers, message) = text.split_once("\n\n").context("commit without message")?;
        let headers: Vec<String> = headers
            .lines()
            .map(|line| match line.strip_prefix("parent ") {
                Some(parent) => format!(
                    "parent {}",
                    rewritten.get(parent).map_or(parent, String::as_str)
                ),
                None => line.to_owned(),
            })
            .collect();
        let headers = headers.join("\n");
        let payload = format!("{headers}\n\n{message}");
        let pem = key
            .sign("git", ssh_key::HashAlg::Sha512, payload.as_bytes())?
            .to_pem(ssh_key::LineEnding::LF)?;
        let pem: Vec<&str> = pem.trim_end().lines().collect();
        let signed = format!("{headers}\ngpgsig {}\n\n{message}", pem.join("\n "));
        let new_id = repo
            .write_object(RawCommit(signed.into_bytes()))?
            .to_string();
        rewritten.insert((*id).to_owned(), new_id.clone());
        last = new_id;
    }
    Ok(last)
}

pub fn push(env: &GitEnv, from: &Path, to: &Path) -> anyhow::Result<()> {
    env.git(Some(from))
        .args(["push", "--quiet", "--force"])
        .arg(to)
        .arg("refs/heads/main:refs/heads/main")
        .run()
}
