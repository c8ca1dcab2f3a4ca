//! A chart's dependencies (`Chart.yaml` `dependencies`) that its archive does not vendor in
//! `charts/`: fetched here from their `https://` or `oci://` repository (the version from
//! `Chart.lock` when it pins one, else the range in `Chart.yaml`), never by Helm at render
//! time. The request's credentials and CA go along only to a dependency on the same origin
//! as the chart's own repository. A dependency's own dependencies must be vendored in its
//! archive (as `helm dependency build` does it). Other repositories (`file://`, `@alias`)
//! are left to the renderer, which names a dependency that is still missing.

use serde::Deserialize;

use super::client::{self, Http};
use super::unpack::{self, Dir, Node};
use super::{ChartCredentials, ChartRequest, Error, Result};

#[derive(Debug, Default, Deserialize)]
struct Meta {
    #[serde(default)]
    dependencies: Vec<Dependency>,
}

#[derive(Debug, Default, Deserialize)]
struct Dependency {
    #[serde(default)]
    name: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    repository: Option<String>,
}

/// Where a dependency's credentials and CA come from.
pub(super) enum Access<'a> {
    /// A chart fetched by a [`ChartRequest`]: its credentials (and client) only for a
    /// dependency on the same origin, its CA for every dependency; a dependency on another
    /// origin gets the entry of `others` on its origin (credentials, and its CA besides the
    /// request's), else none.
    Request {
        /// The chart's client.
        http: &'a Http,
        /// The chart's request.
        req: &'a ChartRequest,
        /// Repositories on other origins (the CLI's `--chart-credentials`).
        others: &'a [super::DependencyRepository],
    },
    /// A chart directory from Git: each dependency with the entry of `repositories` on its
    /// origin (credentials and CA), else anonymously with the system's roots.
    Repositories(&'a [super::DependencyRepository]),
}

/// Whether `root` lists a dependency with an `https://` or `oci://` repository that
/// `charts/` lacks.
pub(super) fn any_missing(root: &Dir) -> bool {
    let Some(meta) = root
        .file("Chart.yaml")
        .and_then(|text| serde_saphyr::from_slice::<Meta>(text).ok())
    else {
        return false;
    };
    meta.dependencies.iter().any(|dep| {
        dep.repository
            .as_deref()
            .map(str::trim)
            .is_some_and(|r| r.starts_with("https://") || r.starts_with("oci://"))
            && !vendored(root, &dep.name)
    })
}

/// The dependencies `root` lists that `charts/` lacks, fetched into `charts/<name>/`
/// (archives through `cache` when given); returns `name version digest` of each. `source`
/// names where the chart came from in messages.
pub(super) async fn fetch_missing(
    access: Access<'_>,
    source: &str,
    limits: super::ChartLimits,
    chart: &str,
    root: &mut Dir,
    cache: Option<&super::ArchiveCache>,
) -> Result<Vec<String>> {
    let parse = |file: &str, text: &[u8]| -> Result<Meta> {
        serde_saphyr::from_slice(text).map_err(|e| Error::Malformed {
            url: source.to_owned(),
            what: format!("{file} of chart {chart:?}"),
            detail: e.to_string(),
        })
    };
    let Some(text) = root.file("Chart.yaml") else {
        return Ok(Vec::new());
    };
    let meta = parse("Chart.yaml", text)?;
    if meta.dependencies.is_empty() {
        return Ok(Vec::new());
    }
    let lock = match root.file("Chart.lock") {
        Some(text) => parse("Chart.lock", text)?,
        None => Meta::default(),
    };
    let own_origin = match &access {
        Access::Request { req, .. } => {
            Some(client::base_url(&req.url).map(|u| client::Origin::of(&u))?)
        }
        Access::Repositories(_) => None,
    };
    let origin_of = |url: &str| client::base_url(url).ok().map(|u| client::Origin::of(&u));
    let mut fetched = Vec::new();
    for dep in &meta.dependencies {
        let Some(repository) = dep.repository.as_deref().map(str::trim) else {
            continue;
        };
        if !(repository.starts_with("https://") || repository.starts_with("oci://")) {
            continue;
        }
        if vendored(root, &dep.name) {
            continue;
        }
        if fetched.len() >= limits.max_dependencies {
            return Err(Error::Dependency {
                chart: chart.to_owned(),
                dependency: dep.name.clone(),
                from: from(dep.version.as_deref(), repository),
                source: Box::new(Error::Malformed {
                    url: source.to_owned(),
                    what: "Chart.yaml".into(),
                    detail: format!(
                        "more than {} dependencies to fetch",
                        limits.max_dependencies
                    ),
                }),
            });
        }
        let pinned = lock
            .dependencies
            .iter()
            .find(|l| {
                l.name == dep.name && l.repository.as_deref().map(str::trim) == Some(repository)
            })
            .and_then(|l| l.version.clone());
        let dep_origin = origin_of(repository);
        let (credentials, ca_pem, own_http) = match &access {
            Access::Request { http, req, others } => {
                if dep_origin.is_some() && dep_origin == own_origin {
                    (req.credentials.clone(), req.ca_pem.clone(), Some(*http))
                } else {
                    match others
                        .iter()
                        .find(|r| dep_origin.is_some() && origin_of(&r.url) == dep_origin)
                    {
                        Some(r) => {
                            let mut ca = req.ca_pem.clone();
                            if let Some(pem) = &r.ca_pem {
                                ca.get_or_insert_with(Vec::new).extend_from_slice(pem);
                            }
                            (r.credentials.clone(), ca, None)
                        }
                        None => (ChartCredentials::None, req.ca_pem.clone(), None),
                    }
                }
            }
            Access::Repositories(repositories) => match repositories
                .iter()
                .find(|r| dep_origin.is_some() && origin_of(&r.url) == dep_origin)
            {
                Some(r) => (r.credentials.clone(), r.ca_pem.clone(), None),
                None => (ChartCredentials::None, None, None),
            },
        };
        let dep_req = ChartRequest {
            url: repository.to_owned(),
            chart: dep.name.clone(),
            version: pinned.or_else(|| dep.version.clone()),
            credentials,
            ca_pem,
            limits,
        };
        let wrap = |source: Error| Error::Dependency {
            chart: chart.to_owned(),
            dependency: dep.name.clone(),
            from: from(dep_req.version.as_deref(), repository),
            source: Box::new(source),
        };
        // A client of its own: bound to the dependency's origin (and credentials).
        let dep_http;
        let use_http = match own_http {
            Some(http) => http,
            None => {
                dep_http = Http::new(&dep_req).map_err(wrap)?;
                &dep_http
            }
        };
        let resolved = if super::is_oci(repository) {
            super::oci::resolve(use_http, &dep_req).await
        } else {
            super::index::resolve(use_http, &dep_req).await
        }
        .map_err(wrap)?;
        let (archive, digest) = super::fetch_archive_cached(use_http, &dep_req, &resolved, cache)
            .await
            .map_err(wrap)?;
        let label = format!(
            "{} {} (dependency of {chart}) from {}",
            resolved.chart, resolved.version, resolved.url
        );
        let tree = tokio::task::spawn_blocking({
            let label = label.clone();
            move || unpack::read_archive(&archive, &label, &limits)
        })
        .await
        .map_err(|e| {
            wrap(Error::Transport {
                url: resolved.url.clone(),
                detail: format!("unpacking stopped: {e}"),
            })
        })?
        .map_err(wrap)?;
        unpack::check_chart_name(&tree, &dep.name, &label).map_err(wrap)?;
        let charts = match root
            .entries
            .entry("charts".to_owned())
            .or_insert_with(|| Node::Dir(Dir::default()))
        {
            Node::Dir(d) => d,
            Node::File { .. } => {
                return Err(wrap(Error::Archive {
                    archive: chart.to_owned(),
                    path: "charts".into(),
                    reason: "is a file, not the directory of dependencies".into(),
                }));
            }
        };
        if charts.entries.contains_key(&dep.name) {
            return Err(wrap(Error::Archive {
                archive: chart.to_owned(),
                path: format!("charts/{}", dep.name),
                reason: "exists but is not the dependency's chart".into(),
            }));
        }
        charts.entries.insert(dep.name.clone(), Node::Dir(tree));
        fetched.push(format!("{} {} {digest}", dep.name, resolved.version));
    }
    Ok(fetched)
}

/// `version "x" from URL` for messages.
fn from(version: Option<&str>, repository: &str) -> String {
    match version {
        Some(v) => format!("version {v:?} from {repository}"),
        None => format!("the newest version from {repository}"),
    }
}

/// Whether `charts/` holds `name`: a directory whose Chart.yaml names it, or an archive
/// `<name>-<version>.tgz`.
fn vendored(root: &Dir, name: &str) -> bool {
    let Some(charts) = root.dir("charts") else {
        return false;
    };
    charts.entries.iter().any(|(file, node)| match node {
        Node::Dir(d) => d.file("Chart.yaml").is_some_and(|text| {
            serde_saphyr::from_slice::<serde_json::Value>(text)
                .ok()
                .and_then(|m| m.get("name").and_then(|n| n.as_str()).map(|n| n == name))
                .unwrap_or(false)
        }),
        Node::File { .. } => file
            .strip_suffix(".tgz")
            .and_then(|stem| stem.strip_prefix(name))
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit() || c == 'v')),
    })
}
