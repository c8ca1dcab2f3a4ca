//! Helpers for the benchmarks (`crates/plumb-bench`), which run outside the test harness:
//! repositories kept where the caller says (`--keep-dir`).

use std::path::Path;

use anyhow::{Context as _, Result};

use crate::git::Repo;

/// Creates the bare repository `path` (which must not exist; its name is the file name without
/// `.git`), reachable through [`Repo::path`] and [`Repo::file_url`]. Unlike [`Repo::local`] it is
/// not deleted when the value is dropped.
pub fn bare_repo_at(path: &Path) -> Result<Repo> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no UTF-8 file name", path.display()))?;
    let name = file_name.strip_suffix(".git").unwrap_or(file_name);
    Repo::init_bare(name, path.to_owned(), None, None, None)
}
