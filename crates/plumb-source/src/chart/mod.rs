//! Helm charts from a Helm repository over HTTPS (`index.yaml`) or an OCI registry
//! (`oci://host[:port]/repo/chart`), unpacked safely into an artifact directory that the
//! renderer reads like a chart directory from Git.
//!
//! [`resolve`] finds the version to fetch (an exact version, a semver range: the newest
//! match, or the newest stable version) and its digest without downloading the chart;
//! [`download`] fetches the archive, checks its digest, fetches the chart's dependencies that
//! are not vendored in `charts/` (from their `https://` or `oci://` repositories, with the
//! request's credentials only on the same host) and writes the chart with the same checks as
//! a Git export (see [`unpack`]).
//!
//! Credentials are sent only to the repository's own origin (scheme, host and port): never
//! after a redirect to another origin, never to an index entry's URL on another host, never
//! to a token service on another host. Every response body is size-capped while it is read,
//! every request has a timeout.

mod cache;
mod client;
mod copy;
mod deps;
mod index;
mod oci;
pub mod unpack;

use std::path::Path;
use std::time::Duration;

use secrecy::SecretString;

pub use cache::ArchiveCache;
pub use copy::{ChartCopy, mentions_remote_repository, missing_dependencies_at, plain};
pub use index::{ChartIndex, IndexEntry, pick_version};
pub use oci::{Challenge, OciReference, parse_challenge};

use crate::export::ExportLimits;

/// Where a chart comes from, which version, and how to authenticate.
#[derive(Clone, Debug)]
pub struct ChartRequest {
    /// `https://host/path` (a Helm repository) or `oci://host[:port]/path` (a registry).
    pub url: String,
    /// The chart's name. For OCI, the reference is `url` when its last path part is this name,
    /// else `url/chart`; empty means the last path part of `url`.
    pub chart: String,
    /// An exact version (`1.2.3`) or a semver range (`>=1.0.0 <2.0.0`, `^1.2`, `1.x`);
    /// `None`: the newest version without a pre-release part.
    pub version: Option<String>,
    /// Sent only to the repository's own origin.
    pub credentials: ChartCredentials,
    /// PEM certificates trusted besides the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Size caps and timeouts.
    pub limits: ChartLimits,
}

impl ChartRequest {
    /// A request for `chart` from `url` at `version`, anonymous, with the default limits.
    pub fn new(url: impl Into<String>, chart: impl Into<String>, version: Option<String>) -> Self {
        Self {
            url: url.into(),
            chart: chart.into(),
            version,
            credentials: ChartCredentials::None,
            ca_pem: None,
            limits: ChartLimits::default(),
        }
    }

    /// `chart[@version]` from `url`, for messages.
    pub fn describe(&self) -> String {
        let version = match &self.version {
            Some(v) => format!("version {v:?}"),
            None => "the newest version".to_owned(),
        };
        if self.chart.is_empty() {
            format!("{version} of {}", self.url)
        } else {
            format!("chart {:?} {version} from {}", self.chart, self.url)
        }
    }
}

/// How to authenticate to a repository or registry.
#[derive(Clone, Debug, Default)]
pub enum ChartCredentials {
    /// Anonymous.
    #[default]
    None,
    /// Basic auth (a Helm repository), or the login for a registry's token service.
    Basic {
        /// User name.
        username: String,
        /// Password (or an access token used as password).
        password: SecretString,
    },
    /// `Authorization: Bearer <token>` on every request to the repository's origin.
    Bearer {
        /// The token.
        token: SecretString,
    },
}

/// Size caps and timeouts of chart fetches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChartLimits {
    /// Largest `index.yaml` (default 32 MiB).
    pub max_index_size: u64,
    /// Largest OCI manifest, tag list page or token response (default 4 MiB).
    pub max_manifest_size: u64,
    /// Largest chart archive, compressed (default 16 MiB).
    pub max_archive_size: u64,
    /// Largest total of the unpacked files of a chart and its dependencies (default 64 MiB),
    /// largest single file and most files (see [`ExportLimits`]).
    pub unpacked: ExportLimits,
    /// Most dependencies fetched for one chart (default 32).
    pub max_dependencies: usize,
    /// Timeout of one request, body included (default 60 s).
    pub request_timeout: Duration,
    /// Timeout of connecting (default 10 s).
    pub connect_timeout: Duration,
}

impl Default for ChartLimits {
    fn default() -> Self {
        Self {
            max_index_size: 32 * 1024 * 1024,
            max_manifest_size: 4 * 1024 * 1024,
            max_archive_size: 16 * 1024 * 1024,
            unpacked: ExportLimits {
                max_file_size: 10 * 1024 * 1024,
                max_total_size: 64 * 1024 * 1024,
                max_files: 10_000,
                max_depth: 32,
            },
            max_dependencies: 32,
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// The version [`resolve`] picked and where its archive is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The chart's name.
    pub chart: String,
    /// The chart version.
    pub version: String,
    /// `sha256:<hex>`: the archive's digest from the index (Helm repository; `None` when the
    /// index lists none, then the downloaded archive's digest is recorded), or the manifest's
    /// digest (OCI).
    pub digest: Option<String>,
    /// Where the archive (HTTPS) or the manifest (OCI) is, without credentials.
    pub url: String,
    kind: ResolvedKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ResolvedKind {
    Repository,
    Oci {
        reference: OciReference,
        /// The chart layer: digest and size.
        layer: (String, u64),
    },
}

/// A chart written into a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedChart {
    /// The chart's name.
    pub chart: String,
    /// Its version.
    pub version: String,
    /// `sha256:<hex>`: the archive's digest (Helm repository) or the manifest's (OCI).
    pub digest: String,
    /// Where it was downloaded from, without credentials.
    pub url: String,
    /// The digest of the written tree, as [`crate::export::digest_dir`] computes it.
    pub tree_digest: String,
    /// The dependencies fetched into `charts/` (`name version digest`), in Chart.yaml order.
    pub dependencies: Vec<String>,
}

/// What went wrong fetching a chart. Messages name the URL (never credentials), the chart and
/// version, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL or chart name cannot be used.
    #[error("invalid chart source {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given (credentials refused before this is built).
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The server refused the credentials (or demanded some).
    #[error(
        "{url}: authentication failed (HTTP {status}); check the username and password or token \
         of the secretRef"
    )]
    Unauthorized {
        /// The URL.
        url: String,
        /// 401 or 403.
        status: u16,
    },
    /// The server answered with another unexpected status.
    #[error("{url}: HTTP {status} {what}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// What was asked for.
        what: String,
    },
    /// Connecting, TLS or reading failed.
    #[error("{url}: {detail}")]
    Transport {
        /// The URL.
        url: String,
        /// What failed.
        detail: String,
    },
    /// A response exceeded its size cap.
    #[error("{url}: {what} is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// What was read.
        what: String,
        /// The cap.
        limit: u64,
    },
    /// A document (index, manifest, Chart.yaml) does not parse or lacks a field.
    #[error("{url}: {what}: {detail}")]
    Malformed {
        /// Where it came from.
        url: String,
        /// Which document.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// The repository has no chart of that name.
    #[error("{url}: no chart named {chart:?}")]
    NoSuchChart {
        /// The repository.
        url: String,
        /// The chart.
        chart: String,
    },
    /// No version matches.
    #[error("{url}: chart {chart:?} has no version matching {version:?} (available: {available})")]
    NoMatchingVersion {
        /// The repository.
        url: String,
        /// The chart.
        chart: String,
        /// The version or range asked for.
        version: String,
        /// The newest available versions, for the message.
        available: String,
    },
    /// A download does not have the digest the index or manifest promised.
    #[error("{url}: digest mismatch: expected {expected}, got {actual}; nothing was written")]
    Digest {
        /// The URL.
        url: String,
        /// The promised digest.
        expected: String,
        /// The computed one.
        actual: String,
    },
    /// The archive holds something Plumb refuses (see [`unpack`]).
    #[error("chart archive {archive}: {path:?}: {reason}; nothing was written")]
    Archive {
        /// Chart and version (and where from).
        archive: String,
        /// The entry.
        path: String,
        /// Why it is refused.
        reason: String,
    },
    /// A dependency of the chart could not be fetched.
    #[error("dependency {dependency:?} {from} of chart {chart:?} (Chart.yaml): {source}")]
    Dependency {
        /// The chart.
        chart: String,
        /// The dependency's name.
        dependency: String,
        /// `version "<version or range>" from <repository>` (`the newest version from ...`).
        from: String,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// The version range does not parse.
    #[error(transparent)]
    Range(#[from] crate::refs::Error),
    /// Writing the chart failed its checks or the disk.
    #[error(transparent)]
    Export(#[from] crate::export::Error),
    /// A local file or directory could not be made or copied.
    #[error("{what}: {source}")]
    Io {
        /// What was done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

/// Result with [`enum@Error`] as default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether trying again later may succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport { .. } => true,
            Error::Status { status, .. } => *status >= 500 || *status == 429,
            Error::Dependency { source, .. } => source.is_retryable(),
            Error::Export(e) => e.is_retryable(),
            Error::Io { .. } => true,
            _ => false,
        }
    }

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidUrl { .. } => "invalid_url",
            Error::Unauthorized { .. } => "unauthorized",
            Error::Status { .. } => "http_status",
            Error::Transport { .. } => "transport",
            Error::TooLarge { .. } => "too_large",
            Error::Malformed { .. } => "malformed",
            Error::NoSuchChart { .. } => "no_such_chart",
            Error::NoMatchingVersion { .. } => "no_matching_version",
            Error::Digest { .. } => "digest_mismatch",
            Error::Archive { .. } => "unsafe_archive",
            Error::Dependency { .. } => "dependency",
            Error::Range(e) => e.metric_label(),
            Error::Export(e) => e.metric_label(),
            Error::Io { .. } => "io",
        }
    }
}

/// Whether the `https://` or `oci://` URLs `a` and `b` have the same origin (scheme, host
/// and port; `oci://` is `https://`), as credentials are matched to repositories. False when
/// either does not parse.
pub fn same_origin(a: &str, b: &str) -> bool {
    match (client::base_url(a), client::base_url(b)) {
        (Ok(a), Ok(b)) => client::Origin::of(&a) == client::Origin::of(&b),
        _ => false,
    }
}

/// Whether `url` names an OCI registry (`oci://`).
pub fn is_oci(url: &str) -> bool {
    url.starts_with("oci://")
}

/// Finds the version to fetch and its digest, without downloading the chart: the index
/// (HTTPS) or the tag list and manifest (OCI).
pub async fn resolve(req: &ChartRequest) -> Result<Resolved> {
    let http = client::Http::new(req)?;
    let resolved = if is_oci(&req.url) {
        oci::resolve(&http, req).await
    } else {
        index::resolve(&http, req).await
    }?;
    check_version(&resolved)?;
    Ok(resolved)
}

/// Refuses a version that is not a plain version string: it names directories and
/// revisions (an index could list `../x`).
fn check_version(resolved: &Resolved) -> Result<()> {
    let v = &resolved.version;
    let plain = !v.is_empty()
        && v.len() <= 128
        && !v.starts_with('.')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    if plain {
        Ok(())
    } else {
        Err(Error::Malformed {
            url: resolved.url.clone(),
            what: format!("chart {:?}", resolved.chart),
            detail: format!("version {v:?} is not a plain version (letters, digits, . _ + -)"),
        })
    }
}

/// Downloads `resolved`, checks its digest, fetches the dependencies not vendored in the
/// archive and writes the chart (its top directory stripped) into `dest`, which must not
/// exist or be empty. On any error nothing is left in `dest` that a caller could mistake for
/// the chart (the caller discards the directory).
pub async fn download(
    req: &ChartRequest,
    resolved: &Resolved,
    dest: &Path,
) -> Result<FetchedChart> {
    download_with(req, resolved, dest, &[]).await
}

/// [`download`], where a dependency on another origin than the chart's repository gets the
/// credentials and CA of the entry of `others` on its origin (else none, as in
/// [`download`]).
pub async fn download_with(
    req: &ChartRequest,
    resolved: &Resolved,
    dest: &Path,
    others: &[DependencyRepository],
) -> Result<FetchedChart> {
    let http = client::Http::new(req)?;
    let (archive, digest) = fetch_archive(&http, req, resolved).await?;
    let label = format!(
        "{} {} from {}",
        resolved.chart, resolved.version, resolved.url
    );
    let limits = req.limits;
    let tree = tokio::task::spawn_blocking({
        let label = label.clone();
        move || unpack::read_archive(&archive, &label, &limits)
    })
    .await
    .map_err(|e| Error::Transport {
        url: resolved.url.clone(),
        detail: format!("unpacking stopped: {e}"),
    })??;
    unpack::check_chart_name(&tree, &resolved.chart, &label)?;
    let mut tree = tree;
    let dependencies = deps::fetch_missing(
        deps::Access::Request {
            http: &http,
            req,
            others,
        },
        &req.url,
        req.limits,
        &resolved.chart,
        &mut tree,
        None,
    )
    .await?;
    let dest = dest.to_owned();
    let written = tokio::task::spawn_blocking(move || unpack::write(&tree, &label, &dest, &limits))
        .await
        .map_err(|e| Error::Transport {
            url: resolved.url.clone(),
            detail: format!("writing stopped: {e}"),
        })??;
    Ok(FetchedChart {
        chart: resolved.chart.clone(),
        version: resolved.version.clone(),
        digest,
        url: resolved.url.clone(),
        tree_digest: written.tree_digest,
        dependencies,
    })
}

/// A repository that dependencies of a chart directory from Git are fetched from with
/// credentials or a CA: used for every dependency whose repository has the same origin
/// (scheme, host and port) as `url`, for no other.
#[derive(Clone, Debug)]
pub struct DependencyRepository {
    /// `https://host[/path]` or `oci://host[:port][/path]`.
    pub url: String,
    /// Sent only to that origin.
    pub credentials: ChartCredentials,
    /// PEM certificates trusted besides the system's roots, for that origin.
    pub ca_pem: Option<Vec<u8>>,
}

/// A chart directory from Git (read into memory) whose `Chart.yaml` lists dependencies with
/// an `https://` or `oci://` repository that `charts/` lacks: see [`missing_dependencies`].
#[derive(Debug)]
pub struct MissingDependencies {
    tree: unpack::Dir,
    label: String,
    limits: ChartLimits,
    cache: Option<ArchiveCache>,
}

/// Reads the chart directory `chart_dir` (from a Git artifact, which is never modified)
/// within `limits` (symlinks and special files refused); `Some` when its `Chart.yaml` lists
/// dependencies with an `https://` or `oci://` repository that `charts/` lacks, for
/// [`MissingDependencies::vendor`]. `label` names the chart (and its source) in messages.
pub async fn missing_dependencies(
    chart_dir: &Path,
    label: &str,
    limits: ChartLimits,
) -> Result<Option<MissingDependencies>> {
    let tree = tokio::task::spawn_blocking({
        let (dir, label) = (chart_dir.to_owned(), label.to_owned());
        move || unpack::read_dir(&dir, &label, &limits)
    })
    .await
    .map_err(|e| Error::Transport {
        url: label.to_owned(),
        detail: format!("reading stopped: {e}"),
    })??;
    Ok(deps::any_missing(&tree).then(|| MissingDependencies {
        tree,
        label: label.to_owned(),
        limits,
        cache: None,
    }))
}

impl MissingDependencies {
    /// Takes archives from `cache` instead of downloading them again, and keeps downloaded
    /// ones there (see [`ArchiveCache`]: the index or manifest is still resolved with the
    /// repository's credentials every time).
    pub fn with_cache(mut self, cache: ArchiveCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Fetches the missing dependencies into `charts/` (as [`download`] does for a chart from
    /// a repository: the version `Chart.lock` pins, else the range; credentials and CA from
    /// the entry of `repositories` on the dependency's origin, else anonymous with the
    /// system's roots) and writes the chart into `dest`, which must not exist or be empty.
    /// Returns `name version digest` of each fetched dependency.
    pub async fn vendor(
        self,
        repositories: &[DependencyRepository],
        dest: &Path,
    ) -> Result<Vec<String>> {
        let Self {
            mut tree,
            label,
            limits,
            cache,
        } = self;
        let name = tree
            .file("Chart.yaml")
            .and_then(|t| serde_saphyr::from_slice::<serde_json::Value>(t).ok())
            .and_then(|m| m.get("name").and_then(|n| n.as_str()).map(str::to_owned))
            .unwrap_or_default();
        let fetched = deps::fetch_missing(
            deps::Access::Repositories(repositories),
            &label,
            limits,
            &name,
            &mut tree,
            cache.as_ref(),
        )
        .await?;
        let dest = dest.to_owned();
        let url = label.clone();
        tokio::task::spawn_blocking(move || unpack::write(&tree, &label, &dest, &limits))
            .await
            .map_err(|e| Error::Transport {
                url,
                detail: format!("writing stopped: {e}"),
            })??;
        Ok(fetched)
    }
}

/// [`fetch_archive`], through `cache` when given: an archive cached under the key of
/// (`req.url`, chart, version, the archive's digest that `resolved` promises) is used
/// instead of a download, a downloaded one is kept there.
async fn fetch_archive_cached(
    http: &client::Http,
    req: &ChartRequest,
    resolved: &Resolved,
    cache: Option<&ArchiveCache>,
) -> Result<(Vec<u8>, String)> {
    let archive_digest = match &resolved.kind {
        ResolvedKind::Repository => resolved.digest.as_deref(),
        ResolvedKind::Oci { layer, .. } => Some(layer.0.as_str()),
    };
    let cached = cache.zip(
        archive_digest
            .and_then(|d| cache::Key::new(&req.url, &resolved.chart, &resolved.version, d)),
    );
    let Some((cache, key)) = cached else {
        return fetch_archive(http, req, resolved).await;
    };
    let hit = tokio::task::spawn_blocking({
        let (cache, key, max) = (cache.clone(), key.clone(), req.limits.max_archive_size);
        move || cache.get(&key, max)
    })
    .await
    .ok()
    .flatten();
    if let Some(bytes) = hit {
        let digest = match &resolved.kind {
            ResolvedKind::Repository => client::sha256_digest(&bytes),
            ResolvedKind::Oci { .. } => resolved
                .digest
                .clone()
                .expect("an OCI resolution has the manifest digest"),
        };
        tracing::debug!(chart = %resolved.chart, version = %resolved.version, "chart archive from the cache");
        return Ok((bytes, digest));
    }
    let (bytes, digest) = fetch_archive(http, req, resolved).await?;
    let cache = cache.clone();
    let bytes = tokio::task::spawn_blocking(move || {
        cache.put(&key, &bytes);
        bytes
    })
    .await
    .map_err(|e| Error::Transport {
        url: resolved.url.clone(),
        detail: format!("caching stopped: {e}"),
    })?;
    Ok((bytes, digest))
}

/// The archive bytes of `resolved` and the digest to record, checked against what the index
/// or manifest promised.
async fn fetch_archive(
    http: &client::Http,
    req: &ChartRequest,
    resolved: &Resolved,
) -> Result<(Vec<u8>, String)> {
    match &resolved.kind {
        ResolvedKind::Repository => {
            let body = http
                .get(
                    &resolved.url,
                    "*/*",
                    req.limits.max_archive_size,
                    "the chart archive",
                )
                .await?;
            let actual = client::sha256_digest(&body);
            if let Some(expected) = &resolved.digest
                && !expected.eq_ignore_ascii_case(&actual)
            {
                return Err(Error::Digest {
                    url: resolved.url.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
            Ok((body, actual))
        }
        ResolvedKind::Oci { reference, layer } => {
            let body = oci::blob(http, reference, layer, req.limits.max_archive_size).await?;
            let digest = resolved
                .digest
                .clone()
                .expect("an OCI resolution has the manifest digest");
            Ok((body, digest))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(version: &str) -> Resolved {
        Resolved {
            chart: "app".into(),
            version: version.into(),
            digest: None,
            url: "https://h/app.tgz".into(),
            kind: ResolvedKind::Repository,
        }
    }

    #[test]
    fn only_plain_versions_name_directories() {
        for ok in ["1.2.3", "v1.2.3", "1.0.0-rc.1+build_7", "2024.01"] {
            check_version(&resolved(ok)).expect(ok);
        }
        // An index may list anything as a version: none of it reaches a path.
        for bad in ["../../etc", "1.0/../x", ".hidden", "", "1.0.0 ", "a\0b"] {
            let err = check_version(&resolved(bad)).expect_err(bad).to_string();
            assert!(err.contains("not a plain version"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn requests_describe_themselves_without_credentials() {
        let mut req = ChartRequest::new("https://h/stable", "app", Some("^1".into()));
        req.credentials = ChartCredentials::Basic {
            username: "u".into(),
            password: "s3cret".to_owned().into(),
        };
        assert_eq!(
            req.describe(),
            "chart \"app\" version \"^1\" from https://h/stable"
        );
        assert!(!format!("{req:?}").contains("s3cret"));
        let req = ChartRequest::new("oci://r/charts/app", "", None);
        assert_eq!(req.describe(), "the newest version of oci://r/charts/app");
    }
}
