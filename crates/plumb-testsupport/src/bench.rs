//! Helpers for the benchmarks (`crates/plumb-bench`), which run outside the test harness: on a
//! control plane named by a kubeconfig file rather than `KUBECONFIG`, with repositories kept
//! where the caller says (`--keep-dir`).

use std::path::Path;

use anyhow::{Context as _, Result};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::git::Repo;

/// A client with the credentials and current context of the kubeconfig file `path`.
pub async fn client_for_kubeconfig(path: &Path) -> Result<Client> {
    let kubeconfig =
        Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading the kubeconfig {}", path.display()))?;
    Client::try_from(config).with_context(|| format!("building a client for {}", path.display()))
}

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
