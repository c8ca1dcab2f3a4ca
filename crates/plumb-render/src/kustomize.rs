//! Kustomize builds, run as a locked-down subprocess.
//!
//! # The pre-build check
//!
//! Before anything runs, the kustomization and everything it reaches is checked; on the first
//! refusal the build does not run and nothing is returned. Kustomize's own loader fetches
//! `http(s)://` URLs in any field it reads a file from (the proxy variables set below do not
//! cover loopback), and loads directories named by `resources`, `components`, `generators`,
//! `transformers` and `validators` from anywhere, whatever the load restrictor says. So the
//! check ([`check_kustomization_text`], a pure function, and a filesystem walker around it)
//! refuses:
//!
//! - **Remote locations** ([`RenderError::RemoteResource`]) and **paths leaving the source
//!   root** ([`RenderError::ReferenceOutsideRoot`]: absolute, or `..` past the root after
//!   lexical resolution) in every field that names a file, directory or kustomization:
//!   `resources`, `bases`, `components`, `crds`, `configurations`, `generators`,
//!   `transformers`, `validators`, `patches[].path`, `patchesJson6902[].path`,
//!   `patchesStrategicMerge[]` (entries that are paths, see below), `replacements[].path`,
//!   `openapi.path`, `configMapGenerator[]`/`secretGenerator[]` `.files[]` (also the
//!   `key=path` form), `.envs[]` and `.env`, and `helmGlobals.chartHome`/`.configHome`.
//!   Remote means URL-like: any `scheme:` with a scheme of two or more characters (`http:`,
//!   `https://`, `file://`, `ssh://`, `gh:` ...), `//host`, `git::`, `git@`, `user@host:`,
//!   `github.com/`, `gitlab.com/`, `bitbucket.org/`, `_git/`, `.git/`, `.git?`, a trailing
//!   `.git`, or a `?ref=`/`?version=`/`?submodules=`/`?timeout=`/`?cache=` query.
//! - **Helm** ([`Refusal::Helm`]): non-empty `helmCharts` or `helmChartInflationGenerator`,
//!   and `HelmChartInflationGenerator` plugin configs. Plumb never passes `--enable-helm`.
//! - **Plugins other than builtins** ([`Refusal::NotBuiltinPlugin`],
//!   [`Refusal::UnknownBuiltin`]). Entries of `generators`/`transformers`/`validators` are
//!   inline YAML (text with a control character such as a newline, or starting with `{` or
//!   `[`) or paths. Inline text, files named there, and the manifests of a kustomization
//!   directory named there, are plugin configs: each must have `apiVersion: builtin`, no
//!   annotation naming a `function`, and a builtin kind of Kustomize v5. The file fields of
//!   builtins are checked like the kustomization fields they mirror: `ConfigMapGenerator`/
//!   `SecretGenerator` `files`/`envs`/`env`, `PatchTransformer.path`,
//!   `PatchJson6902Transformer.path`, `PatchStrategicMergeTransformer.paths`,
//!   `ReplacementTransformer.replacements[].path`, `ValueAddTransformer.targetFilePath`,
//!   with unknown keys refused; builtins without file fields may not carry keys that look
//!   like one (`*path*`, `*file*`, `*dir*`, `*url*`, `*uri*`, `*repo*`, `*home*`,
//!   `*chart*`). Relative paths in plugin configs resolve, as in Kustomize, against the
//!   directory of the kustomization that lists them. Inline entries are also refused if
//!   their first token is URL-like, if they contain `_git/`, or if they would leave the root
//!   as a path, in case Kustomize fails to parse them and falls back to a path.
//! - **Rewriting plugin configs** ([`Refusal::RewritesPluginConfig`]): a kustomization used
//!   as a plugin directory (and anything it reaches) may only gather configs and set names,
//!   namespaces, labels and annotations (`resources`, `bases`, `components`, `namespace`,
//!   `namePrefix`, `nameSuffix`, `commonLabels`, `commonAnnotations`, `labels`,
//!   `buildMetadata`); patches, replacements, vars and the like could turn a checked config
//!   into one that reads a URL.
//! - **Unknown fields** ([`Refusal::UnknownField`]): any top-level field not in Kustomize
//!   v5's `Kustomization` type as spelled (Kustomize matches names case-insensitively, and a
//!   later version may add fields that read files), and unknown keys in the entries of the
//!   fields above that name files. Values of the wrong type there are refused too
//!   ([`Refusal::Malformed`]).
//! - **Symlinks** ([`RenderError::Symlink`]) anywhere in the tree of each kustomization
//!   directory (except `.git`) and on the way to every path named.
//!
//! Not paths, so not checked as such: `patches[].patch`, `patchesJson6902[].patch` and
//! inline `patchesStrategicMerge` entries (YAML text as defined above: Kustomize tries the
//! text as a patch first, and text with a newline or starting with `{`/`[` cannot be fetched
//! as a URL if that fails, only loaded as a local file under the root-only restrictor), and
//! `literals`. A single-line `patchesStrategicMerge` entry is always checked as a path.
//!
//! # The build
//!
//! Then `kustomize build` (or `kubectl kustomize`) runs with
//! `--load-restrictor LoadRestrictionsRootOnly`, no plugin, exec or Helm flags, a proxy that
//! goes nowhere, git limited to local files, a timeout and an output cap.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use plumb_core::Manifest;

#[cfg(doc)]
use crate::error::Refusal;
use crate::error::{RenderError, Result};
use crate::parse::parse_manifests;
use crate::process::{find_on_path, run_renderer};
use crate::{RenderOptions, display_path};

mod check;

pub use check::{
    KustomizationRole, Reference, ReferenceKind, check_kustomization_text,
    check_kustomization_text_as, check_plugin_config_text,
};

/// File names that make a directory a Kustomize root.
pub const KUSTOMIZATION_FILES: [&str; 3] =
    ["kustomization.yaml", "kustomization.yml", "Kustomization"];

pub(crate) fn find_kustomization(dir: &Path) -> Option<&'static str> {
    KUSTOMIZATION_FILES
        .into_iter()
        .find(|name| fs::symlink_metadata(dir.join(name)).is_ok())
}

struct Checker<'a> {
    root: &'a Path,
    opts: &'a RenderOptions,
    /// Kustomizations checked: directory, role, and for the plugin role the directory the
    /// plugin configs resolve against (one directory may be checked in several ways).
    visited: BTreeSet<(PathBuf, KustomizationRole, PathBuf)>,
    /// Directories whose tree was scanned for symlinks.
    scanned: BTreeSet<PathBuf>,
    /// Plugin config files checked, with the directory their paths resolve against.
    configs: BTreeSet<(PathBuf, PathBuf)>,
}

impl Checker<'_> {
    fn io(rel: &Path) -> impl FnOnce(std::io::Error) -> RenderError + '_ {
        move |source| RenderError::Io {
            path: display_path(rel),
            source,
        }
    }

    /// Reads a file to check, with the per-file size limit.
    fn read_text(&self, file: &Path) -> Result<String> {
        let mut bytes = Vec::new();
        fs::File::open(self.root.join(file))
            .and_then(|f| f.take(self.opts.max_file_size + 1).read_to_end(&mut bytes))
            .map_err(Self::io(file))?;
        if bytes.len() as u64 > self.opts.max_file_size {
            return Err(RenderError::FileTooLarge {
                path: file.to_owned(),
                size: bytes.len() as u64,
                limit: self.opts.max_file_size,
            });
        }
        String::from_utf8(bytes).map_err(|e| RenderError::NotUtf8 {
            path: file.to_owned(),
            valid_up_to: e.utf8_error().valid_up_to(),
        })
    }

    /// Checks the kustomization in `rel_dir` and everything it references, recursively.
    /// `config_base` is where plugin configs resolve: Kustomize configures them with the
    /// loader of the kustomization that lists them under `generators`/`transformers`/
    /// `validators`, also when they come out of a plugin directory's build.
    fn kustomization(
        &mut self,
        rel_dir: &Path,
        role: KustomizationRole,
        config_base: &Path,
    ) -> Result<()> {
        let config_base = match role {
            KustomizationRole::Manifests => rel_dir,
            KustomizationRole::PluginConfigs => config_base,
        };
        if !self
            .visited
            .insert((rel_dir.to_owned(), role, config_base.to_owned()))
        {
            return Ok(());
        }
        self.no_symlinks(rel_dir)?;
        let Some(name) = find_kustomization(&self.root.join(rel_dir)) else {
            return Ok(());
        };
        let file = rel_dir.join(name);
        let text = self.read_text(&file)?;
        for reference in check::check_kustomization_text_as(&file, &text, role)? {
            self.follow(&reference, config_base)?;
        }
        Ok(())
    }

    /// Follows a checked reference: no symlink on the way; kustomization directories and
    /// plugin config files are checked in turn. Missing targets are left to Kustomize to
    /// report.
    fn follow(&mut self, reference: &Reference, config_base: &Path) -> Result<()> {
        let Some(meta) = self.no_symlink_on_path(&reference.path)? else {
            return Ok(());
        };
        match reference.kind {
            ReferenceKind::Kustomization if meta.is_dir() => {
                self.kustomization(&reference.path, KustomizationRole::Manifests, config_base)
            }
            ReferenceKind::PluginConfig if meta.is_dir() => self.kustomization(
                &reference.path,
                KustomizationRole::PluginConfigs,
                config_base,
            ),
            ReferenceKind::PluginConfig if meta.is_file() => {
                if !self
                    .configs
                    .insert((reference.path.clone(), config_base.to_owned()))
                {
                    return Ok(());
                }
                let text = self.read_text(&reference.path)?;
                for data in check::check_plugin_config_text(&reference.path, config_base, &text)? {
                    self.follow(&data, config_base)?;
                }
                Ok(())
            }
            // Manifest files and data are read by Kustomize inside trees checked here.
            _ => Ok(()),
        }
    }

    /// Refuses a symlink at any component of `rel` (relative to the root); returns the
    /// metadata of `rel`, or `None` if some component does not exist.
    fn no_symlink_on_path(&self, rel: &Path) -> Result<Option<fs::Metadata>> {
        let mut at = PathBuf::new();
        let mut meta = fs::symlink_metadata(self.root).map_err(Self::io(Path::new("")))?;
        for c in rel.components() {
            at.push(c);
            meta = match fs::symlink_metadata(self.root.join(&at)) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Self::io(&at)(e)),
            };
            if meta.file_type().is_symlink() {
                return Err(RenderError::Symlink { path: at });
            }
        }
        Ok(Some(meta))
    }

    /// Refuses any symlink in the tree below `rel_dir` (except inside `.git`).
    fn no_symlinks(&mut self, rel_dir: &Path) -> Result<()> {
        if !self.scanned.insert(rel_dir.to_owned()) {
            return Ok(());
        }
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
        scanned: BTreeSet::new(),
        configs: BTreeSet::new(),
    };
    checker.kustomization(rel_dir, KustomizationRole::Manifests, rel_dir)?;

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
        .env("GIT_TERMINAL_PROMPT", "0");
    let (status, stdout, stderr) =
        run_renderer(&mut cmd, max_bytes, opts, &shown, |path, timeout| {
            RenderError::KustomizeTimeout { path, timeout }
        })?;
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
}
