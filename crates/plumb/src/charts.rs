//! Charts from repositories for `render`, `diff` and `sync`: a chart directory's
//! `Chart.yaml` dependencies that `charts/` lacks, and a chart named by `--chart-url`, both
//! fetched with plumb-source's chart code (the agent's: same limits, digest checks,
//! credentials only to their own origin), never by Helm.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use plumb_source::chart::{
    ChartCopy, ChartCredentials, ChartLimits, ChartRequest, DependencyRepository, FetchedChart,
};

/// Chart repositories: a chart to render from one, and the credentials and CAs of the
/// repositories charts and their dependencies come from.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Charts from repositories")]
pub struct ChartRepoArgs {
    /// Render a chart from this Helm repository (`https://host/path`, its index.yaml) or
    /// OCI registry (`oci://host/path/chart`) instead of a DIR.
    #[arg(long, value_name = "URL")]
    pub chart_url: Option<String>,
    /// The chart's name in --chart-url (required for a Helm repository; OCI: default the
    /// URL's last part).
    #[arg(long, value_name = "NAME", requires = "chart_url")]
    pub chart: Option<String>,
    /// The chart's version or a semver range, e.g. `1.2.3`, `^1.2`, `>=1.0.0 <2.0.0` (the
    /// newest match; default: the newest version without a pre-release part).
    #[arg(long, value_name = "VERSION", requires = "chart_url")]
    pub chart_version: Option<String>,
    /// Credentials for a chart repository, `URL=FILE`: FILE holds YAML with `username` and
    /// `password` (basic auth; a registry's token login), or `bearerToken` (the keys of a
    /// ChartSource's secretRef). Sent only to URL's origin (scheme, host and port), for
    /// --chart-url and for Chart.yaml dependencies alike. Repeatable.
    #[arg(long = "chart-credentials", value_name = "URL=FILE")]
    pub credentials: Vec<String>,
    /// A CA certificate file (PEM) trusted for URL's origin besides the system's roots,
    /// `URL=FILE`. Repeatable.
    #[arg(long = "chart-ca", value_name = "URL=FILE")]
    pub ca: Vec<String>,
}

/// The keys of a credentials file (a ChartSource Secret's keys).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    username: Option<String>,
    password: Option<String>,
    #[serde(rename = "bearerToken")]
    bearer_token: Option<String>,
}

impl ChartRepoArgs {
    /// The repositories of --chart-credentials and --chart-ca, their files read. Errors name
    /// the flag and file, never a file's content.
    pub fn repositories(&self) -> Result<Vec<DependencyRepository>> {
        let mut out: Vec<DependencyRepository> = Vec::new();
        for flag in &self.credentials {
            let (url, file) = split("--chart-credentials", flag)?;
            let text = std::fs::read(&file).with_context(|| {
                format!("--chart-credentials {url}: reading {}", file.display())
            })?;
            // Never quote the file: it holds a secret.
            let parsed: CredentialsFile = serde_saphyr::from_slice(&text).map_err(|_| {
                anyhow::anyhow!(
                    "--chart-credentials {url}: {} is not a YAML mapping of `username` and \
                     `password`, or `bearerToken`",
                    file.display()
                )
            })?;
            let credentials = match parsed {
                CredentialsFile {
                    bearer_token: Some(token),
                    password: None,
                    ..
                } => ChartCredentials::Bearer {
                    token: token.trim().to_owned().into(),
                },
                CredentialsFile {
                    username,
                    password: Some(password),
                    bearer_token: None,
                } => ChartCredentials::Basic {
                    username: username.unwrap_or_default(),
                    password: password.trim_end_matches(['\r', '\n']).to_owned().into(),
                },
                _ => bail!(
                    "--chart-credentials {url}: {} must hold `password` (with `username`) or \
                     `bearerToken`, not both or neither",
                    file.display()
                ),
            };
            if out
                .iter()
                .any(|r| plumb_source::chart::same_origin(&r.url, &url))
            {
                bail!("--chart-credentials {url}: another one names the same origin");
            }
            out.push(DependencyRepository {
                url,
                credentials,
                ca_pem: None,
            });
        }
        for flag in &self.ca {
            let (url, file) = split("--chart-ca", flag)?;
            let pem = std::fs::read(&file)
                .with_context(|| format!("--chart-ca {url}: reading {}", file.display()))?;
            match out
                .iter_mut()
                .find(|r| plumb_source::chart::same_origin(&r.url, &url))
            {
                Some(repo) => repo.ca_pem.get_or_insert_with(Vec::new).extend(pem),
                None => out.push(DependencyRepository {
                    url,
                    credentials: ChartCredentials::None,
                    ca_pem: Some(pem),
                }),
            }
        }
        Ok(out)
    }
}

/// `URL=FILE` of `flag`, the URL an `https://` or `oci://` one.
fn split(flag: &str, text: &str) -> Result<(String, PathBuf)> {
    let Some((url, file)) = text.split_once('=') else {
        bail!("{flag}: expected URL=FILE, e.g. https://charts.example.com=login.yaml");
    };
    if !(url.starts_with("https://") || url.starts_with("oci://")) || url.contains('@') {
        bail!("{flag}: {url:?} must start with https:// or oci:// (and hold no credentials)");
    }
    if file.is_empty() {
        bail!("{flag} {url}: no FILE after `=`");
    }
    Ok((url.to_owned(), PathBuf::from(file)))
}

/// When the chart at `relative` below `root` lists dependencies from `https://` or `oci://`
/// repositories that its `charts/` lacks: a temporary copy with them fetched (with the
/// credentials and CAs of `args` on their origins, else anonymously), holding the values
/// files `values_files` (relative to `root`) too. `None`: nothing to fetch. The user's
/// directory is only read.
pub async fn with_dependencies(
    root: &Path,
    relative: &Path,
    values_files: &[PathBuf],
    args: &ChartRepoArgs,
    shown: &str,
) -> Result<Option<ChartCopy>> {
    let label = format!("chart {shown}");
    let missing = plumb_source::chart::missing_dependencies_at(
        root,
        relative,
        &label,
        ChartLimits::default(),
    )
    .await?;
    let Some(missing) = missing else {
        return Ok(None);
    };
    let repositories = args.repositories()?;
    let copy = missing
        .vendor_copy(&repositories, root, relative, values_files)
        .await
        .with_context(|| format!("fetching the dependencies of {label}"))?;
    for dep in copy.fetched() {
        tracing::info!(chart = %shown, dependency = %dep, "fetched a chart dependency");
    }
    Ok(Some(copy))
}

/// A chart fetched from --chart-url into a temporary directory, with the values files given
/// on the command line copied beside it.
pub struct RemoteChart {
    /// What was fetched.
    pub fetched: FetchedChart,
    /// The source root to render: it holds the chart at [`RemoteChart::PATH`].
    pub root: PathBuf,
    /// The values files, relative to `root`, in order.
    pub values_files: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

impl RemoteChart {
    /// Where the chart is below `root`.
    pub const PATH: &'static str = "chart";

    /// One line for humans: `chart app 1.2.0 (sha256:...) from https://...`.
    pub fn describe(&self) -> String {
        let f = &self.fetched;
        let mut text = format!(
            "chart {} {} ({}) from {}",
            f.chart, f.version, f.digest, f.url
        );
        for dep in &f.dependencies {
            text.push_str(&format!("; dependency {dep}"));
        }
        text
    }
}

/// Fetches the chart --chart-url names (its dependencies too: the chart's credentials only
/// on its origin, the other --chart-credentials/--chart-ca on theirs) and copies `values`
/// (files named relative to the working directory) beside it.
pub async fn fetch(args: &ChartRepoArgs, values: &[PathBuf]) -> Result<RemoteChart> {
    let url = args.chart_url.as_deref().context("no --chart-url")?;
    let mut req = ChartRequest::new(
        url,
        args.chart.clone().unwrap_or_default(),
        args.chart_version.clone(),
    );
    if !plumb_source::chart::is_oci(url) && req.chart.is_empty() {
        bail!("--chart-url {url} is a Helm repository: name the chart with --chart NAME");
    }
    let mut others = args.repositories()?;
    if let Some(at) = others
        .iter()
        .position(|r| plumb_source::chart::same_origin(&r.url, url))
    {
        let repo = others.remove(at);
        req.credentials = repo.credentials;
        req.ca_pem = repo.ca_pem;
    }
    let what = req.describe();
    let resolved = plumb_source::chart::resolve(&req)
        .await
        .with_context(|| format!("resolving {what}"))?;
    let dir = tempfile::Builder::new()
        .prefix("plumb-chart-")
        .tempdir()
        .context("creating a temporary directory for the chart")?;
    let root = dir.path().join("root");
    // Its dependencies on other origins with their own --chart-credentials/--chart-ca.
    let fetched =
        plumb_source::chart::download_with(&req, &resolved, &root.join(RemoteChart::PATH), &others)
            .await
            .with_context(|| format!("fetching {what}"))?;
    let mut values_files = Vec::new();
    for (i, file) in values.iter().enumerate() {
        let name = file
            .file_name()
            .with_context(|| format!("values file {} names no file", file.display()))?;
        let rel = Path::new("values").join(format!("{i}")).join(name);
        let target = root.join(&rel);
        std::fs::create_dir_all(target.parent().unwrap_or(&root))
            .and_then(|()| std::fs::copy(file, &target).map(|_| ()))
            .with_context(|| format!("reading values file {}", file.display()))?;
        values_files.push(rel);
    }
    Ok(RemoteChart {
        fetched,
        root,
        values_files,
        _dir: dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(credentials: &[String], ca: &[String]) -> ChartRepoArgs {
        ChartRepoArgs {
            credentials: credentials.to_vec(),
            ca: ca.to_vec(),
            ..ChartRepoArgs::default()
        }
    }

    #[test]
    fn credentials_and_cas_come_from_files_by_origin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path.display().to_string()
        };
        let basic = write("basic.yaml", "username: u\npassword: s3cret-basic\n");
        let token = write("token.yaml", "bearerToken: s3cret-token\n");
        let ca = write("ca.pem", "PEM");
        let repos = args(
            &[
                format!("https://a.example/stable={basic}"),
                format!("oci://b.example:5000/charts={token}"),
            ],
            &[
                format!("https://a.example/other={ca}"),
                format!("https://c.example={ca}"),
            ],
        )
        .repositories()
        .expect("valid flags");
        assert_eq!(repos.len(), 3);
        assert!(
            matches!(&repos[0].credentials, ChartCredentials::Basic { username, .. } if username == "u")
        );
        // The CA of the same origin joins the entry with the credentials.
        assert_eq!(repos[0].ca_pem.as_deref(), Some(&b"PEM"[..]));
        assert!(matches!(
            repos[1].credentials,
            ChartCredentials::Bearer { .. }
        ));
        assert!(matches!(repos[2].credentials, ChartCredentials::None));
        assert!(!format!("{repos:?}").contains("s3cret"));

        // Bad flags are named; a file's content never is.
        let both = write("both.yaml", "password: s3cret-both\nbearerToken: t\n");
        let junk = write("junk.yaml", "s3cret-junk");
        for (flag, want) in [
            (
                format!("https://a.example/stable{basic}"),
                "expected URL=FILE",
            ),
            (
                format!("http://a.example={basic}"),
                "must start with https://",
            ),
            (
                format!("https://u:p@a.example={basic}"),
                "hold no credentials",
            ),
            (format!("https://a.example={both}"), "not both or neither"),
            (format!("https://a.example={junk}"), "is not a YAML mapping"),
            (
                "https://a.example=/nonexistent/file".to_owned(),
                "reading /nonexistent/file",
            ),
        ] {
            let err = args(std::slice::from_ref(&flag), &[])
                .repositories()
                .expect_err(&flag);
            let text = format!("{err:#}");
            assert!(
                text.contains(want) && text.contains("--chart-credentials"),
                "{flag}: {text}"
            );
            assert!(!text.contains("s3cret"), "{text}");
        }
        let err = args(
            &[
                format!("https://a.example/x={basic}"),
                format!("https://a.example:443/y={basic}"),
            ],
            &[],
        )
        .repositories()
        .expect_err("two for one origin");
        assert!(format!("{err:#}").contains("same origin"), "{err:#}");
    }
}
