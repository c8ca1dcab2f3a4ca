//! Running helper programs with errors that say what failed and why.

use std::ffi::OsString;
use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{Context as _, bail};

/// Runs `cmd` to completion and fails, with its stderr and stdout, unless it exits with 0.
pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let output = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?} (is the program installed?)"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed with {}\nstderr:\n{}\nstdout:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end(),
            String::from_utf8_lossy(&output.stdout).trim_end(),
        );
    }
    Ok(output)
}

/// Runs `cmd` like [`run`] and returns its stdout without the trailing newline.
pub(crate) fn run_stdout(cmd: &mut Command) -> anyhow::Result<String> {
    let output = run(cmd)?;
    let stdout = String::from_utf8(output.stdout)
        .with_context(|| format!("{cmd:?} printed something that is not UTF-8"))?;
    Ok(stdout.trim_end().to_owned())
}

/// A `git` command that reads no configuration of the machine or the user running the tests:
/// inherited `GIT_*` variables are removed, `HOME` and `XDG_CONFIG_HOME` point into `home`,
/// the system config is skipped and git never prompts.
pub(crate) fn isolated_git(home: &Path) -> Command {
    let mut cmd = Command::new("git");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("GIT_") {
            cmd.env_remove(name);
        }
    }
    cmd.envs(isolated_env(home));
    cmd
}

/// Runs `cmd` like [`run_stdout`] with `input` on its stdin (for secrets that must not show
/// up in `ps`).
pub(crate) fn run_with_stdin(cmd: &mut Command, input: &str) -> anyhow::Result<String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?} (is the program installed?)"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .with_context(|| format!("cannot write to the stdin of {cmd:?}"))?;
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("cannot wait for {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed with {}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end(),
        );
    }
    let stdout = String::from_utf8(output.stdout)
        .with_context(|| format!("{cmd:?} printed something that is not UTF-8"))?;
    Ok(stdout.trim_end().to_owned())
}

/// The variables [`isolated_git`] sets.
pub(crate) fn isolated_env(home: &Path) -> Vec<(OsString, OsString)> {
    vec![
        ("HOME".into(), home.into()),
        ("XDG_CONFIG_HOME".into(), home.join(".config").into()),
        ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
        ("GIT_TERMINAL_PROMPT".into(), "0".into()),
    ]
}

/// The last `lines` lines of the file at `path`, or a note saying why it cannot be read.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

/// Quotes `s` for a POSIX shell (`GIT_SSH_COMMAND` is run through one).
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for URL user info.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Writes `contents` to `path`, naming the file in the error.
pub(crate) fn write_file(path: &Path, contents: impl AsRef<[u8]>) -> anyhow::Result<()> {
    fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

/// Creates `path` and its parents, naming the directory in the error.
pub(crate) fn create_dir(path: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))
}
