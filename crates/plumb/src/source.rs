//! Git-facing commands and flags: `plumb verify`, `plumb revert`, and `--git` for sync/diff.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use comfy_table::{Table, presets::NOTHING};
use plumb_source::{
    AllowedSigners, Artifact, Credentials, Fetcher, GitRef, Keyring, PathPolicy, SourceRequest,
    VerifyMode, VerifyPolicy,
};
use serde_json::json;

use crate::cli::Output;

/// Where to fetch desired state from instead of a local directory.
#[derive(Debug, Args)]
pub struct GitArgs {
    /// Fetch the manifests from this Git repository (https://, ssh://, file:// or a path)
    /// instead of reading DIR.
    #[arg(long, value_name = "URL")]
    pub git: Option<String>,
    /// The ref to check out: a branch name, `refs/heads/B`, `refs/tags/T`, or a full commit id
    /// (default: branch main).
    #[arg(long = "ref", value_name = "REF", requires = "git", conflicts_with_all = ["branch", "tag", "semver", "commit"])]
    pub git_ref: Option<String>,
    /// Check out this branch.
    #[arg(long, requires = "git")]
    pub branch: Option<String>,
    /// Check out this tag.
    #[arg(long, requires = "git")]
    pub tag: Option<String>,
    /// Check out the highest tag matching this semver range, e.g. ">=1.2.0 <2.0.0".
    #[arg(long, requires = "git")]
    pub semver: Option<String>,
    /// Check out this commit.
    #[arg(long, requires = "git")]
    pub commit: Option<String>,
    /// Directory inside the repository to render (default: its root).
    #[arg(long, value_name = "DIR", requires = "git")]
    pub path: Option<PathBuf>,
    #[command(flatten)]
    pub credentials: CredentialArgs,
    #[command(flatten)]
    pub verify: VerifyFlags,
    /// Cache of fetched repositories (default: ~/.cache/plumb/git).
    #[arg(long, value_name = "DIR", requires = "git")]
    pub cache_dir: Option<PathBuf>,
    /// Allow a plain `http://` URL: no transport security, so anyone on the path can change
    /// what is fetched (verify signatures). Never together with credentials.
    #[arg(long, requires = "git")]
    pub insecure_http: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// How much one exported revision may hold (the agent's and the CLI's fetches alike).
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Largest file an artifact may hold (bytes, or with Ki/Mi/Gi); larger ones fail the
    /// fetch before they are read, unless `.plumbignore` leaves them out.
    #[arg(long, value_name = "SIZE", default_value = "10Mi", value_parser = parse_size)]
    pub max_artifact_file_size: u64,
    /// Largest total size of one artifact's files.
    #[arg(long, value_name = "SIZE", default_value = "256Mi", value_parser = parse_size)]
    pub max_artifact_size: u64,
    /// Most files (and symlinks) one artifact may hold.
    #[arg(long, value_name = "N", default_value_t = 50_000)]
    pub max_artifact_files: usize,
}

impl LimitArgs {
    /// The export limits these flags set.
    pub fn export_limits(&self) -> plumb_source::export::ExportLimits {
        plumb_source::export::ExportLimits {
            max_file_size: self.max_artifact_file_size,
            max_total_size: self.max_artifact_size,
            max_files: self.max_artifact_files,
            ..plumb_source::export::ExportLimits::default()
        }
    }
}

/// `1048576`, `512Ki`, `10Mi`, `1Gi`.
fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let factor: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return Err(format!("invalid size {text:?}: use bytes or Ki, Mi, Gi")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("invalid size {text:?}: use bytes or Ki, Mi, Gi"))
}

/// Credentials, always by file or environment variable, never on the command line.
#[derive(Debug, Args)]
pub struct CredentialArgs {
    /// https user name (with --password-file or --password-env).
    #[arg(long)]
    pub username: Option<String>,
    /// File holding the https password or token.
    #[arg(long, value_name = "FILE", conflicts_with = "password_env")]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the https password or token.
    #[arg(long, value_name = "VAR")]
    pub password_env: Option<String>,
    /// Environment variable holding a bearer token for https.
    #[arg(long, value_name = "VAR")]
    pub token_env: Option<String>,
    /// CA certificate file for https.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// SSH private key file.
    #[arg(long, value_name = "FILE", requires = "known_hosts")]
    pub ssh_key: Option<PathBuf>,
    /// known_hosts file for ssh; unknown or changed host keys are refused.
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
}

/// Commit signature verification.
#[derive(Debug, Args)]
pub struct VerifyFlags {
    /// SSH allowed signers file (git's allowed_signers format).
    #[arg(long, value_name = "FILE")]
    pub allowed_signers: Option<PathBuf>,
    /// Armored OpenPGP public keys.
    #[arg(long, value_name = "FILE")]
    pub keyring: Option<PathBuf>,
    /// Per-path signer rules (YAML: `rules: [{path: prod/, signers: [alice@example.com]}]`).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// `head`: the checked-out commit must be signed; `range`: every new commit must be
    /// (default: range when a previous revision is known).
    #[arg(long, value_enum)]
    pub verify_mode: Option<Mode>,
}

/// Verification modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Only the tip commit.
    Head,
    /// Every commit since the last verified one.
    Range,
}

impl VerifyFlags {
    /// The policy, or `None` when no trusted keys were given.
    pub fn policy(&self) -> Result<Option<VerifyPolicy>> {
        if self.allowed_signers.is_none() && self.keyring.is_none() {
            if self.policy.is_some() || self.verify_mode.is_some() {
                bail!("--policy and --verify-mode need --allowed-signers or --keyring");
            }
            return Ok(None);
        }
        let mut policy = VerifyPolicy {
            mode: match self.verify_mode {
                Some(Mode::Head) => VerifyMode::Head,
                _ => VerifyMode::Range,
            },
            ..VerifyPolicy::default()
        };
        if let Some(f) = &self.allowed_signers {
            policy.allowed_signers = AllowedSigners::from_file(f)
                .with_context(|| format!("reading allowed signers {}", f.display()))?;
        }
        if let Some(f) = &self.keyring {
            policy.keyring = Keyring::from_file(f)
                .with_context(|| format!("reading keyring {}", f.display()))?;
        }
        if let Some(f) = &self.policy {
            policy.paths = PathPolicy::from_file(f)
                .with_context(|| format!("reading path policy {}", f.display()))?;
        }
        Ok(Some(policy))
    }
}

impl CredentialArgs {
    fn credentials(&self) -> Result<Credentials> {
        let secret_from =
            |file: &Option<PathBuf>, var: &Option<String>| -> Result<Option<String>> {
                if let Some(f) = file {
                    let text = std::fs::read_to_string(f)
                        .with_context(|| format!("reading the secret file {}", f.display()))?;
                    return Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()));
                }
                if let Some(v) = var {
                    let value = std::env::var(v)
                        .with_context(|| format!("environment variable {v} is not set"))?;
                    return Ok(Some(value));
                }
                Ok(None)
            };
        if let (Some(key), Some(known_hosts)) = (&self.ssh_key, &self.known_hosts) {
            return Ok(Credentials::Ssh {
                private_key: key.clone(),
                known_hosts: known_hosts.clone(),
            });
        }
        if let Some(token) = secret_from(&None, &self.token_env)? {
            return Ok(Credentials::Bearer {
                token: token.into(),
            });
        }
        match (
            secret_from(&self.password_file, &self.password_env)?,
            &self.username,
        ) {
            (Some(password), username) => Ok(Credentials::Basic {
                username: username.clone().unwrap_or_else(|| "git".to_owned()),
                password: password.into(),
            }),
            (None, Some(_)) => bail!("--username needs --password-file or --password-env"),
            (None, None) => Ok(Credentials::None),
        }
    }
}

/// Parses `--ref`: a 40-hex commit, `refs/tags/T`, `refs/heads/B`, or a branch name.
pub fn parse_ref(text: &str) -> GitRef {
    if text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        GitRef::Commit(text.to_owned())
    } else if let Some(tag) = text.strip_prefix("refs/tags/") {
        GitRef::Tag(tag.to_owned())
    } else {
        GitRef::Branch(text.strip_prefix("refs/heads/").unwrap_or(text).to_owned())
    }
}

impl GitArgs {
    fn git_ref(&self) -> GitRef {
        if let Some(r) = &self.git_ref {
            parse_ref(r)
        } else if let Some(b) = &self.branch {
            GitRef::Branch(b.clone())
        } else if let Some(t) = &self.tag {
            GitRef::Tag(t.clone())
        } else if let Some(s) = &self.semver {
            GitRef::Semver(s.clone())
        } else if let Some(c) = &self.commit {
            GitRef::Commit(c.clone())
        } else {
            GitRef::Branch("main".to_owned())
        }
    }
}

/// A fetched revision, exported into a temporary directory that lives as long as this value.
pub struct Fetched {
    pub artifact: Artifact,
    _dir: tempfile::TempDir,
}

impl Fetched {
    /// One line for humans: `branch main@sha1:abc123 by Alice <a@x> (signed by alice, SHA256:...)`.
    pub fn describe(&self) -> String {
        let a = &self.artifact;
        let mut text = format!("{}@sha1:{}", a.git_ref, a.commit);
        if let Some(v) = &a.verification
            && let Some(c) = v.commits.iter().find(|c| c.commit == a.commit)
        {
            text.push_str(&format!(
                " by {} (signed by {}, {})",
                c.author, c.signer, c.fingerprint
            ));
        }
        text
    }
}

/// Fetches (and verifies) the repository named by `--git`. `last_verified` starts the range.
pub async fn fetch(args: &GitArgs, url: &str, last_verified: Option<String>) -> Result<Fetched> {
    let cache = match &args.cache_dir {
        Some(d) => d.clone(),
        None => default_cache_dir(),
    };
    let mut request = SourceRequest::new(url, args.git_ref());
    request.options.credentials = args.credentials.credentials()?;
    request.options.ca_file = args.credentials.ca_file.clone();
    request.options.allow_insecure_http = args.insecure_http;
    request.limits = args.limits.export_limits();
    request.verify = args.verify.policy()?;
    request.last_verified = last_verified;
    let dir = tempfile::tempdir().context("creating a temporary directory for the checkout")?;
    let artifact = Fetcher::new(cache)
        .fetch(&request, &dir.path().join("tree"))
        .await
        .with_context(|| format!("fetching {url}"))?;
    Ok(Fetched {
        artifact,
        _dir: dir,
    })
}

fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("plumb").join("git")
}

/// Arguments of `plumb verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A local Git repository (work tree or bare).
    pub repo: PathBuf,
    /// The commit to check up to: a branch, tag or commit (default: HEAD). A tag's own
    /// signature is checked too.
    #[arg(long = "ref", value_name = "REF", default_value = "HEAD")]
    pub git_ref: String,
    /// Check every commit after this one (range mode); without it, only REF.
    #[arg(long, value_name = "REV")]
    pub since: Option<String>,
    #[command(flatten)]
    pub flags: VerifyFlags,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// `plumb verify`: lists each checked commit with its signer and verdict; exit 0 only if all
/// pass.
pub fn verify(args: &VerifyArgs) -> Result<ExitCode> {
    let Some(mut policy) = args.flags.policy()? else {
        bail!("give the trusted keys: --allowed-signers FILE and/or --keyring FILE");
    };
    if args.flags.verify_mode.is_none() {
        policy.mode = if args.since.is_some() {
            VerifyMode::Range
        } else {
            VerifyMode::Head
        };
    }
    let tip = rev_parse(&args.repo, &format!("{}^{{commit}}", args.git_ref))?;
    let since = match &args.since {
        Some(s) => Some(rev_parse(&args.repo, &format!("{s}^{{commit}}"))?),
        None => None,
    };
    let tag = rev_parse(&args.repo, &format!("refs/tags/{}", args.git_ref))
        .ok()
        .map(|_| args.git_ref.clone());
    let report =
        plumb_source::verify::check(&args.repo, &tip, since.as_deref(), tag.as_deref(), &policy)
            .with_context(|| format!("verifying {}", args.repo.display()))?;
    let passed = report.passed();
    let mut out = std::io::stdout().lock();
    match args.output {
        Output::Json | Output::Yaml => {
            use std::io::Write;
            let doc = json!({ "passed": passed, "report": report });
            out.write_all(args.output.render(&doc)?.as_bytes())?;
        }
        Output::Table => {
            use std::io::Write;
            let mut table = Table::new();
            table.load_style(NOTHING);
            table.set_header(["COMMIT", "AUTHOR", "SIGNER", "VERDICT", "SUMMARY"]);
            for c in &report.commits {
                let (signer, verdict) = verdict_columns(&c.verdict);
                table.add_row([
                    c.commit[..12].to_owned(),
                    c.author.clone(),
                    signer,
                    verdict,
                    c.summary.clone(),
                ]);
            }
            if let Some(t) = &report.tag {
                let (signer, verdict) = verdict_columns(&t.verdict);
                table.add_row([
                    format!("tag {}", t.tag),
                    t.tagger.clone(),
                    signer,
                    verdict,
                    String::new(),
                ]);
            }
            writeln!(out, "{table}")?;
            let checked = report.commits.len();
            if passed {
                writeln!(out, "{checked} commit(s) verified")?;
            } else {
                writeln!(out, "verification FAILED")?;
            }
        }
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The SIGNER and VERDICT columns of `plumb verify`'s table.
fn verdict_columns(verdict: &plumb_source::verify::Verdict) -> (String, String) {
    match verdict {
        plumb_source::verify::Verdict::Passed(s) => (
            format!("{} ({})", s.principal, s.fingerprint),
            "ok".to_owned(),
        ),
        plumb_source::verify::Verdict::Rejected(reason) => {
            (String::new(), format!("REJECTED: {reason}"))
        }
    }
}

/// Resolves a revision in a local repository with `git rev-parse`.
fn rev_parse(repo: &Path, rev: &str) -> Result<String> {
    if rev.starts_with('-') {
        bail!("invalid revision {rev:?}");
    }
    let out = git(repo)
        .args(["rev-parse", "--verify", "--quiet", "--end-of-options", rev])
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!("{rev} is not a revision of {}", repo.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `git -C repo` with prompts off.
fn git(repo: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new("git");
    cmd.arg("-C").arg(repo).env("GIT_TERMINAL_PROMPT", "0");
    cmd
}

/// Arguments of `plumb revert`.
#[derive(Debug, Args)]
pub struct RevertArgs {
    /// A local clone of the repository the cluster is synced from.
    pub repo: PathBuf,
    /// The commit to undo.
    pub commit: String,
    /// Sign the revert commit (with your git signing configuration: user.signingkey,
    /// gpg.format).
    #[arg(long)]
    pub sign: bool,
    /// Make the commit but do not push it.
    #[arg(long)]
    pub no_push: bool,
}

/// `plumb revert`: the GitOps rollback. A revert commit on the local clone, pushed, so that Git
/// stays the source of truth and the agent (or the next `plumb sync --git`) rolls back.
pub fn revert(args: &RevertArgs) -> Result<ExitCode> {
    let commit = rev_parse(&args.repo, &format!("{}^{{commit}}", args.commit))?;
    let status = git(&args.repo)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .context("running git status")?;
    if !status.stdout.is_empty() {
        bail!(
            "{} has uncommitted changes; commit or stash them first",
            args.repo.display()
        );
    }
    let mut cmd = git(&args.repo);
    cmd.args(["revert", "--no-edit"]);
    if args.sign {
        cmd.arg("-S");
    }
    cmd.arg(&commit);
    let out = cmd.output().context("running git revert")?;
    if !out.status.success() {
        bail!(
            "git revert {commit} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let new = rev_parse(&args.repo, "HEAD")?;
    println!("reverted {} in new commit {new}", &commit[..12]);
    if args.no_push {
        return Ok(ExitCode::SUCCESS);
    }
    let out = git(&args.repo)
        .arg("push")
        .output()
        .context("running git push")?;
    if !out.status.success() {
        bail!(
            "the revert commit {new} was made but git push failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    println!("pushed {new}");
    Ok(ExitCode::SUCCESS)
}
