//! Fetch and verification benchmark for plumb-source (run it with `scripts/bench-source`).
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

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use plumb_source::verify::{self, VerifyMode, VerifyPolicy};
use plumb_source::{AllowedSigners, Credentials, Fetcher, GitRef, SourceRequest};
use plumb_testsupport::git::{GitServers, KeyType, SshSigner};

const FILES: usize = 10_000;
const COMMITS: usize = 2_000;
const SIGNED: usize = 1_000;
const FILES_PER_COMMIT: usize = 3;
const PRINCIPAL: &str = "bench@example.com";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
    Ok(())
}

/// A fast-import stream: one commit adding every file, then commits changing a few each.
fn history_stream() -> String {
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

fn commit_header(n: usize) -> String {
    let time = 1_700_000_000 + n * 60;
    let message = format!("change {n}\n");
    format!(
        "author Bench <{PRINCIPAL}> {time} +0000\ncommitter Bench <{PRINCIPAL}> {time} +0000\ndata {}\n{message}",
        message.len()
    )
}

/// File changes of commit `n`: `FILES_PER_COMMIT` files picked from `seed`.
fn modify(seed: usize, n: usize) -> String {
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

fn fast_import(env: &GitEnv, repo: &Path, stream: &str) -> anyhow::Result<()> {
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
fn sign_commits(repo: &Path, ids: &[&str], key: &ssh_key::PrivateKey) -> anyhow::Result<String> {
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

fn push(env: &GitEnv, from: &Path, to: &Path) -> anyhow::Result<()> {
    env.git(Some(from))
        .args(["push", "--quiet", "--force"])
        .arg(to)
        .arg("refs/heads/main:refs/heads/main")
        .run()
}

/// Where a fetch goes: the URL plumb gets (with options) and the one the git baseline uses.
struct Transport<'a> {
    name: &'static str,
    plumb_url: String,
    git_url: String,
    servers: Option<&'a GitServers>,
}

impl<'a> Transport<'a> {
    fn file(origin: &Path) -> Self {
        let url = format!("file://{}", origin.display());
        Self {
            name: "file",
            plumb_url: url.clone(),
            git_url: url,
            servers: None,
        }
    }

    fn https(servers: &'a GitServers) -> Self {
        Self {
            name: "https",
            plumb_url: servers.https_url("bench"),
            git_url: servers.https_url_with_credentials(
                "bench",
                servers.username(),
                servers.password(),
            ),
            servers: Some(servers),
        }
    }

    fn request(&self) -> SourceRequest {
        let mut request = SourceRequest::new(&self.plumb_url, GitRef::Branch("main".into()));
        if let Some(servers) = self.servers {
            request.options.credentials = Credentials::Basic {
                username: servers.username().to_owned(),
                password: servers.password().to_owned().into(),
            };
            request.options.ca_file = Some(servers.ca_cert_path().to_owned());
        }
        request
    }

    fn git(&self, env: &GitEnv) -> Git {
        match self.servers {
            Some(servers) => Git { cmd: servers.git() },
            None => env.git(None),
        }
    }
}

/// git with an empty environment apart from `PATH` and a throwaway `HOME`, like plumb's.
struct GitEnv {
    vars: Vec<(OsString, OsString)>,
}

impl GitEnv {
    fn new(root: &Path) -> anyhow::Result<Self> {
        let home = root.join("home");
        std::fs::create_dir_all(&home)?;
        let mut vars = vec![
            ("HOME".into(), home.into_os_string()),
            ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
            ("GIT_TERMINAL_PROMPT".into(), "0".into()),
        ];
        if let Some(path) = std::env::var_os("PATH") {
            vars.push(("PATH".into(), path));
        }
        Ok(Self { vars })
    }

    fn git(&self, git_dir: Option<&Path>) -> Git {
        let mut cmd = Command::new("git");
        cmd.env_clear().envs(self.vars.iter().cloned());
        if let Some(dir) = git_dir {
            cmd.arg("--git-dir").arg(dir);
        }
        cmd.args(["-c", "user.name=Bench", "-c"])
            .arg(format!("user.email={PRINCIPAL}"));
        Git { cmd }
    }
}

struct Git {
    cmd: Command,
}

impl Git {
    fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.arg(arg);
        self
    }

    fn args<const N: usize>(mut self, args: [&str; N]) -> Self {
        self.cmd.args(args);
        self
    }

    fn run(self) -> anyhow::Result<()> {
        self.output_text().map(drop)
    }

    fn output_text(mut self) -> anyhow::Result<String> {
        let output = self
            .cmd
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {:?}", self.cmd))?;
        if !output.status.success() {
            bail!(
                "{:?} failed ({}): {}",
                self.cmd.get_args().collect::<Vec<_>>(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }
}

fn timed<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(Duration, T)> {
    let t = Instant::now();
    let out = f()?;
    Ok((t.elapsed(), out))
}

async fn timed_async<T, E>(f: impl Future<Output = Result<T, E>>) -> Result<(Duration, T), E> {
    let t = Instant::now();
    let out = f.await?;
    Ok((t.elapsed(), out))
}

struct Row {
    what: &'static str,
    transport: &'static str,
    plumb: Duration,
    git: Duration,
}

impl Row {
    fn new(what: &'static str, transport: &'static str, plumb: Duration, git: Duration) -> Self {
        Self {
            what,
            transport,
            plumb,
            git,
        }
    }
}

fn table(rows: &[Row], setup: &[(&str, Duration)]) -> String {
    let mut out = format!(
        "Repository: {FILES} files, {COMMITS} commits (+1 for the incremental fetch), last \
         {SIGNED} SSH-signed (ed25519). plumb's fetch includes exporting the tree ({FILES} \
         files) and no verification; one run each.\n\n"
    );
    out.push_str("| Measurement | Transport | plumb | git | plumb / git |\n");
    out.push_str("|---|---|---:|---:|---:|\n");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.2}x |",
            row.what,
            row.transport,
            secs(row.plumb),
            secs(row.git),
            row.plumb.as_secs_f64() / row.git.as_secs_f64()
        );
    }
    out.push_str("\nSetup: ");
    let parts: Vec<String> = setup
        .iter()
        .map(|(what, d)| format!("{what} {}", secs(*d)))
        .collect();
    out.push_str(&parts.join(", "));
    out.push('\n');
    out
}

fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}
