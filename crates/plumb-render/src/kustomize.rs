//! Kustomize builds, run as a locked-down subprocess.
//!
//! Before running, every kustomization reachable through `resources`/`components`/`bases` is
//! checked: no remote URLs, no paths out of the source root, no symlinks in the trees Kustomize
//! may read. Then `kustomize build` (or `kubectl kustomize`) runs with
//! `--load-restrictor LoadRestrictionsRootOnly`, no plugin or exec flags, a proxy that goes
//! nowhere, git limited to local files, a timeout and an output cap.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use plumb_core::Manifest;
use serde_json::Value;

use crate::error::{RenderError, Result};
use crate::parse::parse_manifests;
use crate::{RenderOptions, display_path};

/// File names that make a directory a Kustomize root.
pub const KUSTOMIZATION_FILES: [&str; 3] =
    ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Fields of a kustomization that name other kustomizations or resources.
const REFERENCE_FIELDS: [&str; 3] = ["resources", "components", "bases"];
/// Fields that may name remote targets but are not followed here.
const OTHER_URL_FIELDS: [&str; 4] = ["generators", "transformers", "validators", "crds"];

/// Largest stderr kept for error messages.
const MAX_STDERR: u64 = 16 * 1024;

pub(crate) fn find_kustomization(dir: &Path) -> Option<&'static str> {
    KUSTOMIZATION_FILES
        .into_iter()
        .find(|name| fs::symlink_metadata(dir.join(name)).is_ok())
}

fn is_remote(entry: &str) -> bool {
    let e = entry.trim();
    e.contains("://")
        || e.starts_with("github.com/")
        || e.starts_with("gitlab.com/")
        || e.starts_with("bitbucket.org/")
        || e.starts_with("git::")
        || e.starts_with("git@")
        || e.contains("?ref=")
        || e.contains(".git//")
}

/// Resolves `entry` (relative to `base`, both relative to the root) lexically; `None` if it
/// would leave the root.
fn resolve(base: &Path, entry: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in base.join(entry).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

struct Checker<'a> {
    root: &'a Path,
    opts: &'a RenderOptions,
    visited: BTreeSet<PathBuf>,
}

impl Checker<'_> {
    fn io(rel: &Path) -> impl FnOnce(std::io::Error) -> RenderError + '_ {
        move |source| RenderError::Io {
            path: display_path(rel),
            source,
        }
    }

    /// Checks the kustomization in `rel_dir` and everything it references, recursively.
    fn kustomization(&mut self, rel_dir: &Path) -> Result<()> {
        if !self.visited.insert(rel_dir.to_owned()) {
            return Ok(());
        }
        self.no_symlinks(rel_dir)?;
        let Some(name) = find_kustomization(&self.root.join(rel_dir)) else {
            return Ok(());
        };
        let file = rel_dir.join(name);
        let mut bytes = Vec::new();
        fs::File::open(self.root.join(&file))
            .and_then(|f| f.take(self.opts.max_file_size + 1).read_to_end(&mut bytes))
            .map_err(Self::io(&file))?;
        if bytes.len() as u64 > self.opts.max_file_size {
            return Err(RenderError::FileTooLarge {
                path: file,
                size: bytes.len() as u64,
                limit: self.opts.max_file_size,
            });
        }
        let text = String::from_utf8(bytes).map_err(|e| RenderError::NotUtf8 {
            path: file.clone(),
            valid_up_to: e.utf8_error().valid_up_to(),
        })?;
        let doc: Value = crate::parse::parse_value(&text, &file)?;
        let entries = |field: &str| -> Vec<String> {
            doc.get(field)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| {
                            v.as_str()
                                .map(str::to_owned)
                                .or_else(|| v.get("path")?.as_str().map(str::to_owned))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        for field in OTHER_URL_FIELDS {
            if let Some(entry) = entries(field).into_iter().find(|e| is_remote(e)) {
                return Err(RenderError::RemoteResource { path: file, entry });
            }
        }
        for field in REFERENCE_FIELDS {
            for entry in entries(field) {
                if is_remote(&entry) {
                    return Err(RenderError::RemoteResource { path: file, entry });
                }
                let Some(target) = resolve(rel_dir, &entry) else {
                    return Err(RenderError::OutsideRoot {
                        path: file.join(entry),
                    });
                };
                let full = self.root.join(&target);
                match fs::symlink_metadata(&full) {
                    Ok(meta) if meta.file_type().is_symlink() => {
                        return Err(RenderError::Symlink { path: target });
                    }
                    Ok(meta) if meta.is_dir() => self.kustomization(&target)?,
                    // Files are inside an already-checked tree; missing targets are reported
                    // by Kustomize itself.
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Refuses any symlink in the tree below `rel_dir` (except inside `.git`).
    fn no_symlinks(&self, rel_dir: &Path) -> Result<()> {
        let mut stack = vec![rel_dir.to_owned()];
        while let Some(dir) = stack.pop() {
            let entries = fs::read_dir(self.root.join(&dir)).map_err(Self::io(&dir))?;
            for entry in entries {
                let entry = entry.map_err(Self::io(&dir))?;
                let name = entry.file_name();
                if name == OsStr::new(".git") {
                    continue;
                }
                let rel = dir.join(&name);
                let ty = entry.file_type().map_err(Self::io(&rel))?;
                if ty.is_symlink() {
                    return Err(RenderError::Symlink { path: rel });
                }
                if ty.is_dir() {
                    stack.push(rel);
                }
            }
        }
        Ok(())
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Builds the kustomization in `rel_dir`; returns the manifests and the bytes of output read.
pub(crate) fn build(
    root: &Path,
    rel_dir: &Path,
    opts: &RenderOptions,
    max_bytes: u64,
    max_documents: usize,
) -> Result<(Vec<Manifest>, u64)> {
    let shown = display_path(rel_dir);
    let mut checker = Checker {
        root,
        opts,
        visited: BTreeSet::new(),
    };
    checker.kustomization(rel_dir)?;

    let mut cmd = if let Some(bin) = opts.kustomize.clone().or_else(|| find_on_path("kustomize")) {
        let mut c = Command::new(bin);
        c.arg("build");
        c
    } else if let Some(bin) = find_on_path("kubectl") {
        let mut c = Command::new(bin);
        c.arg("kustomize");
        c
    } else {
        return Err(RenderError::KustomizeNotFound { path: shown });
    };
    // Never --enable-alpha-plugins, --enable-exec or --enable-helm.
    cmd.args(["--load-restrictor", "LoadRestrictionsRootOnly", "."])
        .current_dir(root.join(rel_dir))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        // Defence in depth against network access: remote bases are refused above already.
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("ALL_PROXY", "http://127.0.0.1:9")
        .env("http_proxy", "http://127.0.0.1:9")
        .env("https_proxy", "http://127.0.0.1:9")
        .env("GIT_ALLOW_PROTOCOL", "file")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| RenderError::Io {
        path: shown.clone(),
        source,
    })?;

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
        // Keep draining so the child never blocks on a full stderr pipe.
        let _ = stderr.take(MAX_STDERR).read_to_end(&mut buf);
        buf
    });

    let deadline = Instant::now() + opts.timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|source| RenderError::Io {
            path: shown.clone(),
            source,
        })? {
            break status;
        }
        if overflow.load(Ordering::SeqCst) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(RenderError::TotalTooLarge {
                path: shown,
                limit: opts.max_total_size,
            });
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(RenderError::KustomizeTimeout {
                path: shown,
                timeout: opts.timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = out_thread
        .join()
        .unwrap_or_else(|_| Ok(Vec::new()))
        .map_err(|source| RenderError::Io {
            path: shown.clone(),
            source,
        })?;
    let stderr = err_thread.join().unwrap_or_default();
    // Checked before the exit status: we close the pipe at the limit, so the build may have
    // died of SIGPIPE.
    if overflow.load(Ordering::SeqCst) {
        return Err(RenderError::TotalTooLarge {
            path: shown,
            limit: opts.max_total_size,
        });
    }
    if !status.success() {
        let stderr = strip_klog_prefixes(&String::from_utf8_lossy(&stderr));
        return Err(RenderError::KustomizeFailed {
            path: shown,
            status: status.to_string(),
            stderr,
        });
    }
    let bytes = stdout.len() as u64;
    let text = String::from_utf8(stdout).map_err(|e| RenderError::NotUtf8 {
        path: shown.clone(),
        valid_up_to: e.utf8_error().valid_up_to(),
    })?;
    let manifests = parse_manifests(&text, &shown, max_documents)?;
    Ok((manifests, bytes))
}

/// kubectl logs errors as `E1126 23:25:49.438299    5958 run.go:72] "command failed" err=...`;
/// keep only the part after `] `.
fn strip_klog_prefixes(stderr: &str) -> String {
    stderr
        .trim()
        .lines()
        .map(|line| {
            let klog = line.len() > 5
                && matches!(line.as_bytes()[0], b'E' | b'W' | b'I' | b'F')
                && line.as_bytes()[1..5].iter().all(u8::is_ascii_digit);
            match line.find("] ") {
                Some(i) if klog => &line[i + 2..],
                _ => line,
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn klog_prefix_removed() {
        assert_eq!(
            super::strip_klog_prefixes(
                "E1126 23:25:49.438299    5958 run.go:72] \"command failed\" err=x\nplain\n"
            ),
            "\"command failed\" err=x\nplain"
        );
    }

    use super::*;

    #[test]
    fn remote_detection() {
        for remote in [
            "https://github.com/org/repo//base?ref=v1",
            "github.com/org/repo/base",
            "git::https://example.com/repo.git",
            "git@github.com:org/repo.git",
            "ssh://git@example.com/repo",
            "example.com/repo.git//base?ref=main",
        ] {
            assert!(is_remote(remote), "{remote}");
        }
        for local in [
            "../base",
            "deployment.yaml",
            "github-app/",
            "./overlays/prod",
        ] {
            assert!(!is_remote(local), "{local}");
        }
    }

    #[test]
    fn resolve_stays_in_root() {
        assert_eq!(
            resolve(Path::new("a/b"), "../c"),
            Some(PathBuf::from("a/c"))
        );
        assert_eq!(resolve(Path::new("a"), "../../x"), None);
        assert_eq!(resolve(Path::new("a"), "/etc"), None);
    }
}
