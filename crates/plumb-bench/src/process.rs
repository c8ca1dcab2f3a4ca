//! Child processes: the tools measured (plumb, kubectl) and the helpers (scripts/testenv).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::Command;

/// GNU time, for a child's peak RSS (`-v` prints "Maximum resident set size").
pub const GNU_TIME: &str = "/usr/bin/time";

/// The program `name` on `PATH`, if any.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// Whether `path` is a file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Fails unless kubectl (the baseline) and GNU time (peak RSS) are installed.
pub fn ensure_tools() -> anyhow::Result<()> {
    if which("kubectl").is_none() {
        bail!("kubectl is not installed (scripts/testenv build makes one, or install it)");
    }
    if !is_executable(Path::new(GNU_TIME)) {
        bail!("{GNU_TIME} is missing: install GNU time (scripts/install-deps does)");
    }
    Ok(())
}

/// `plumb`, built next to this binary by `scripts/bench` (`cargo build --release -p plumb -p
/// plumb-bench`).
pub fn plumb_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find the path of plumb-bench")?;
    let plumb = me.with_file_name("plumb");
    if !is_executable(&plumb) {
        bail!(
            "{} not found: build it with plumb-bench (scripts/bench does: cargo build --release \
             -p plumb -p plumb-bench)",
            plumb.display()
        );
    }
    Ok(plumb)
}

/// A short rendering of `cmd` for messages.
pub fn describe(cmd: &Command) -> String {
    let std = cmd.as_std();
    let mut out = std.get_program().to_string_lossy().into_owned();
    for arg in std.get_args() {
        out.push(' ');
        out.push_str(&arg.to_string_lossy());
    }
    out
}

/// The last `n` bytes of `bytes` as text (on a character boundary).
fn tail(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut start = text.len().saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

/// Runs `cmd` with its output captured; fails with the end of its output unless it exits 0.
pub async fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let output = cmd
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run `{}`", describe(cmd)))?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}):\n{}{}",
            describe(cmd),
            output.status,
            tail(&output.stdout, 3000),
            tail(&output.stderr, 3000)
        );
    }
    Ok(output)
}

/// A finished timed run.
pub struct Timed {
    /// Wall-clock time of the command.
    pub elapsed: Duration,
    /// Its output.
    pub output: Output,
    /// Its peak RSS in KiB, when measured.
    pub peak_rss_kib: Option<u64>,
}

/// Runs `cmd` (program and arguments), under GNU time writing to `rss_file` when given; fails
/// unless it exits 0.
pub async fn timed(
    program: &Path,
    args: &[std::ffi::OsString],
    envs: &[(String, String)],
    rss_file: Option<&Path>,
) -> anyhow::Result<Timed> {
    let mut cmd = match rss_file {
        Some(file) => {
            let mut cmd = Command::new(GNU_TIME);
            cmd.arg("-v").arg("-o").arg(file).arg(program);
            cmd
        }
        None => Command::new(program),
    };
    cmd.args(args).envs(envs.iter().map(|(k, v)| (k, v)));
    let start = Instant::now();
    let output = run(&mut cmd).await?;
    let elapsed = start.elapsed();
    let peak_rss_kib = match rss_file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            max_rss_kib(&text)
        }
        None => None,
    };
    Ok(Timed {
        elapsed,
        output,
        peak_rss_kib,
    })
}

/// "Maximum resident set size (kbytes): N" from the report of `time -v`.
pub fn max_rss_kib(report: &str) -> Option<u64> {
    report.lines().find_map(|line| {
        line.trim()
            .strip_prefix("Maximum resident set size (kbytes):")?
            .trim()
            .parse()
            .ok()
    })
}

/// Current and peak RSS of process `pid` in MiB, from `/proc/<pid>/status`.
pub fn rss_mib(pid: u32) -> anyhow::Result<(f64, f64)> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        proc_status_kib(&status, name)
            .map(|kib| kib as f64 / 1024.0)
            .with_context(|| format!("no {name} in {path}"))
    };
    Ok((field("VmRSS")?, field("VmHWM")?))
}

/// CPU seconds process `pid` used so far, its waited-for children included (user + system,
/// from `/proc/<pid>/stat`), with `ticks` clock ticks per second (`getconf CLK_TCK`).
pub fn cpu_seconds(pid: u32, ticks: f64) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    cpu_ticks(&stat)
        .map(|t| t as f64 / ticks)
        .with_context(|| format!("cannot parse {path}"))
}

/// utime + stime + cutime + cstime (fields 14 to 17) of a `/proc/<pid>/stat` line. The command
/// name (field 2) may hold spaces and parentheses: fields are counted after its last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // rest starts with field 3 (state): utime is the 12th token.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields
        .get(11..15)?
        .iter()
        .map(|f| f.parse::<u64>().ok())
        .sum()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when it cannot be asked).
pub async fn clock_ticks() -> f64 {
    match Command::new("getconf").arg("CLK_TCK").output().await {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(100.0),
        _ => 100.0,
    }
}

/// The value in kB of field `name` of a `/proc/<pid>/status` text.
fn proc_status_kib(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(':')?.trim();
        value.strip_suffix("kB")?.trim().parse().ok()
    })
}

/// Asks process `pid` to stop (SIGTERM), with `kill(1)`: the workspace forbids `unsafe` and
/// tokio's `Child` only sends SIGKILL.
pub async fn terminate(pid: u32) -> anyhow::Result<()> {
    run(Command::new("kill").args(["-TERM", &pid.to_string()])).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_from_time_and_proc() {
        let report = "\tCommand being timed: \"plumb sync\"\n\tMaximum resident set size (kbytes): 43520\n\tAverage resident set size (kbytes): 0\n";
        assert_eq!(max_rss_kib(report), Some(43520));
        assert_eq!(max_rss_kib("nothing"), None);
        let status = "Name:\tplumb\nVmHWM:\t   93184 kB\nVmRSS:\t   89088 kB\n";
        assert_eq!(proc_status_kib(status, "VmRSS"), Some(89088));
        assert_eq!(proc_status_kib(status, "VmHWM"), Some(93184));
        assert_eq!(proc_status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "4242 (source (ctl) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 12 0 99 1000 200";
        assert_eq!(cpu_ticks(stat), Some(250 + 50 + 7 + 3));
        assert_eq!(cpu_ticks("4242 (x) S 1"), None);
    }
}
