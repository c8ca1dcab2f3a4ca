//! A per-render copy of a chart directory whose `Chart.yaml` lists dependencies from
//! `https://` or `oci://` repositories that `charts/` lacks: the agent (a chart in a Git
//! artifact) and the CLI (a chart in the user's directory) both render such a chart from a
//! temporary copy that holds the fetched dependencies, so that neither the artifact nor the
//! user's directory is ever modified and Helm never fetches anything.

use std::path::{Component, Path, PathBuf};

use super::{ChartLimits, DependencyRepository, Error, MissingDependencies, Result};

/// A temporary directory whose [`ChartCopy::root`] holds the chart at the same relative path
/// as in its source root, with its dependencies fetched into `charts/`, and the values files
/// it was made with. Removed when dropped.
#[derive(Debug)]
pub struct ChartCopy {
    dir: tempfile::TempDir,
    fetched: Vec<String>,
}

impl ChartCopy {
    /// The copy's source root: render the chart's relative path below it.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// `name version digest` of each fetched dependency, in `Chart.yaml` order.
    pub fn fetched(&self) -> &[String] {
        &self.fetched
    }

    /// The temporary directory (its `root` is [`ChartCopy::root`]), for a caller that keeps
    /// it until a render elsewhere is done.
    pub fn into_tempdir(self) -> tempfile::TempDir {
        self.dir
    }
}

/// The missing dependencies of the chart at `chart_rel` (relative, plain) below
/// `source_root`: `None` when the path is not plain (the renderer names it), holds no
/// regular `Chart.yaml`, or all its `https://`/`oci://` dependencies are vendored. Reads the
/// chart within `limits` (see [`super::missing_dependencies`]); fetches nothing.
pub async fn missing_dependencies_at(
    source_root: &Path,
    chart_rel: &Path,
    label: &str,
    limits: ChartLimits,
) -> Result<Option<MissingDependencies>> {
    // A quick look first: most charts list no remote dependency and are not read at all.
    if !mentions_remote_repository(source_root, chart_rel) {
        return Ok(None);
    }
    super::missing_dependencies(&source_root.join(chart_rel), label, limits).await
}

/// Whether the chart at `chart_rel` below `source_root` has a regular `Chart.yaml` that
/// mentions an `https://` or `oci://` repository: a quick look before parsing it (most charts
/// have no remote dependency). False for a path that is not plain (absolute, or with `..`):
/// nothing outside `source_root` is read.
pub fn mentions_remote_repository(source_root: &Path, chart_rel: &Path) -> bool {
    if !plain(chart_rel) {
        return false;
    }
    let chart_file = source_root.join(chart_rel).join("Chart.yaml");
    std::fs::symlink_metadata(&chart_file).is_ok_and(|m| m.is_file())
        && std::fs::read(&chart_file).is_ok_and(|text| {
            let text = String::from_utf8_lossy(&text);
            text.contains("https://") || text.contains("oci://")
        })
}

impl MissingDependencies {
    /// Fetches the missing dependencies (see [`MissingDependencies::vendor`]) into a new
    /// temporary copy of the chart at `chart_rel` below its root, and copies the values
    /// files `values_files` (relative to `source_root`) to the same relative paths in it.
    /// A values file that is not a plain relative path, has a symlink on its way or is no
    /// regular file is left out: the renderer then names it as missing or refused.
    pub async fn vendor_copy(
        self,
        repositories: &[DependencyRepository],
        source_root: &Path,
        chart_rel: &Path,
        values_files: &[PathBuf],
    ) -> Result<ChartCopy> {
        let io = |what: String| move |source| Error::Io { what, source };
        let dir = tempfile::Builder::new()
            .prefix("plumb-chart-deps-")
            .tempdir()
            .map_err(io(
                "creating a directory for the chart's dependencies".into()
            ))?;
        let root = dir.path().join("root");
        let dest = root.join(chart_rel);
        std::fs::create_dir_all(&dest).map_err(io(
            "creating a directory for the chart's dependencies".into(),
        ))?;
        let fetched = self.vendor(repositories, &dest).await?;
        for file in values_files {
            if !plain(file) {
                continue;
            }
            let mut source = source_root.to_owned();
            let mut no_link = true;
            for c in file.components() {
                source.push(c);
                no_link &=
                    std::fs::symlink_metadata(&source).is_ok_and(|m| !m.file_type().is_symlink());
            }
            if !no_link || !source.is_file() {
                continue;
            }
            let target = root.join(file);
            target
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::copy(&source, &target).map(|_| ()))
                .map_err(io(format!(
                    "copying the values file {} beside the chart's copy",
                    file.display()
                )))?;
        }
        Ok(ChartCopy { dir, fetched })
    }
}

/// Only normal parts (and `.`): nothing absolute, no `..`.
pub fn plain(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_chart_below_the_source_root_is_looked_at() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("root");
        let chart = "apiVersion: v2\nname: app\nversion: 1.0.0\ndependencies:\n- name: base\n  version: 1.0.0\n  repository: https://charts.example.com\n";
        for dir in [root.join("app"), tmp.path().join("outside")] {
            std::fs::create_dir_all(&dir).expect("dir");
            std::fs::write(dir.join("Chart.yaml"), chart).expect("write");
        }
        assert!(mentions_remote_repository(&root, Path::new("app")));
        assert!(mentions_remote_repository(&root, Path::new("./app")));
        // A Sync's path is tenant input: `..` and absolute paths read nothing outside.
        assert!(!mentions_remote_repository(&root, Path::new("../outside")));
        assert!(!mentions_remote_repository(
            &root,
            &tmp.path().join("outside")
        ));
    }
}
