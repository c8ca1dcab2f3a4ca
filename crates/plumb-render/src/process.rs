//! Running a renderer (Kustomize, Helm) as a child process with an output cap and a deadline.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Largest stderr kept for error messages.
pub(crate) const MAX_STDERR: u64 = 16 * 1024;

/// How a bounded run ended.
pub(crate) enum Ran {
    /// The child exited by itself within the limits.
    Exited {
        status: ExitStatus,
        stdout: Vec<u8>,
        /// At most [`MAX_STDERR`] bytes.
        stderr: Vec<u8>,
    },
    /// Standard output passed `max_bytes`; the child was killed.
    Overflow,
    /// The deadline passed; the child was killed.
    TimedOut,
}

/// Runs `cmd` (stdin closed, stdout and stderr captured), killing it when its standard output
/// passes `max_bytes` or when `timeout` passes.
pub(crate) fn run_bounded(
    cmd: &mut Command,
    max_bytes: u64,
    timeout: Duration,
) -> std::io::Result<Ran> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let overflow = Arc::new(AtomicBool::new(false));
    let stdout = child.stdout.take().expect("stdout was piped");
    let stderr = child.stderr.take().expect("stderr was piped");
    let flag = Arc::clone(&overflow);
    let out_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let res = stdout.take(max_bytes + 1).read_to_end(&mut buf);
        if buf.len() as u64 > max_bytes {
            flag.store(true, Ordering::SeqCst);
        }
        res.map(|_| buf)
    });
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        // Keep the first part for the message; drain the rest so the child never blocks on a
        // full stderr pipe.
        let mut stderr = stderr;
        let _ = (&mut stderr).take(MAX_STDERR).read_to_end(&mut buf);
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        buf
    });

    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if overflow.load(Ordering::SeqCst) {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Ran::Overflow);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Ran::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = out_thread.join().unwrap_or_else(|_| Ok(Vec::new()))?;
    let stderr = err_thread.join().unwrap_or_default();
    // Checked before the exit status: we close the pipe at the limit, so the child may have
    // died of SIGPIPE.
    if overflow.load(Ordering::SeqCst) {
        return Ok(Ran::Overflow);
    }
    Ok(Ran::Exited {
        status,
        stdout,
        stderr,
    })
}

/// Looks up an executable file `name` on PATH.
/// Runs a renderer (`helm`, `kustomize`) through [`run_bounded`] with a render's limits: its
/// exit status, stdout and stderr, or the error for `path` (the chart or kustomization as the
/// user names it): the total size limit when the output overflows, `timed_out` when it ran out
/// of time.
pub(crate) fn run_renderer(
    cmd: &mut Command,
    max_bytes: u64,
    opts: &crate::RenderOptions,
    path: &std::path::Path,
    timed_out: impl FnOnce(std::path::PathBuf, Duration) -> crate::RenderError,
) -> crate::Result<(ExitStatus, Vec<u8>, Vec<u8>)> {
    match run_bounded(cmd, max_bytes, opts.timeout).map_err(|source| crate::RenderError::Io {
        path: path.to_owned(),
        source,
    })? {
        Ran::Exited {
            status,
            stdout,
            stderr,
        } => Ok((status, stdout, stderr)),
        Ran::Overflow => Err(crate::RenderError::TotalTooLarge {
            path: path.to_owned(),
            limit: opts.max_total_size,
        }),
        Ran::TimedOut => Err(timed_out(path.to_owned(), opts.timeout)),
    }
}

pub(crate) fn find_on_path(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
