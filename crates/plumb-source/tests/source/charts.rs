//! Charts from a real HTTPS Helm repository (nginx, basic auth) and a real OCI registry
//! (docker-registry, TLS + htpasswd), made with the real `helm`.

use std::path::Path;

use plumb_source::chart::{self, ChartCredentials, ChartRequest, Error as ChartError};
use plumb_testsupport::charts::{ChartServers, RawEntry, raw_archive};
use sha2::{Digest as _, Sha256};

use super::TestResult;

const TEMPLATE: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-{{ .Chart.Name }}\ndata:\n  version: {{ .Chart.Version | quote }}\n";

fn request(
    servers: &ChartServers,
    url: &str,
    chart: &str,
    version: Option<&str>,
) -> anyhow::Result<ChartRequest> {
    let mut req = ChartRequest::new(url, chart, version.map(str::to_owned));
    req.credentials = ChartCredentials::Basic {
        username: servers.username().to_owned(),
        password: servers.password().to_owned().into(),
    };
    req.ca_pem = Some(servers.ca_pem()?.into_bytes());
    Ok(req)
}

fn sha256_of(file: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(file)?;
    Ok(format!("sha256:{:x}", Sha256::digest(&bytes)))
}

fn app(servers: &ChartServers, version: &str) -> anyhow::Result<std::path::PathBuf> {
    servers.package("app", version, &[("templates/cm.yaml", TEMPLATE)])
}

#[tokio::test]
async fn a_chart_from_an_https_repository_by_version_range_and_digest() -> TestResult {
    let servers = ChartServers::start()?;
    let mut archives = Vec::new();
    for v in ["1.0.0", "1.1.0", "2.0.0", "2.1.0-rc.1"] {
        let tgz = app(&servers, v)?;
        servers.publish("stable", &tgz)?;
        archives.push(tgz);
    }
    let url = servers.repo_url("stable");
    let resolve = |v: Option<&'static str>| {
        let req = request(&servers, &url, "app", v);
        async move { chart::resolve(&req?).await.map_err(anyhow::Error::from) }
    };
    // The newest stable version, an exact one, the newest in a range.
    assert_eq!(resolve(None).await?.version, "2.0.0");
    assert_eq!(resolve(Some("1.0.0")).await?.version, "1.0.0");
    assert_eq!(resolve(Some(">=1.0.0 <2.0.0")).await?.version, "1.1.0");
    let resolved = resolve(Some("~1.1")).await?;
    assert_eq!(
        resolved.digest.as_deref(),
        Some(sha256_of(&archives[1])?.as_str())
    );

    let dir = tempfile::tempdir()?;
    let dest = dir.path().join("chart");
    let req = request(&servers, &url, "app", Some("~1.1"))?;
    let fetched = chart::download(&req, &resolved, &dest).await?;
    assert_eq!(fetched.version, "1.1.0");
    assert_eq!(fetched.digest, sha256_of(&archives[1])?);
    assert_eq!(fetched.url, format!("{url}/app-1.1.0.tgz"));
    assert!(dest.join("Chart.yaml").is_file() && dest.join("templates/cm.yaml").is_file());
    assert_eq!(
        fetched.tree_digest,
        plumb_source::export::digest_dir(&dest)?
    );
    // The credentials went to the repository (nginx saw the user).
    let index = servers.requests("/stable/index.yaml");
    assert!(
        index.iter().all(|l| l.ends_with("200 user=plumb")),
        "{index:?}"
    );

    // Nothing matches: the message lists what there is.
    let err = resolve(Some(">=3.0.0"))
        .await
        .expect_err("no 3.x")
        .to_string();
    assert!(
        err.contains("2.0.0, 1.1.0, 1.0.0") || err.contains("2.1.0-rc.1"),
        "{err}"
    );
    let req = request(&servers, &url, "nope", None)?;
    let err = chart::resolve(&req)
        .await
        .expect_err("no chart")
        .to_string();
    assert!(err.contains("no chart named \"nope\""), "{err}");

    // A wrong password: a clear error without the password.
    let mut req = request(&servers, &url, "app", None)?;
    req.credentials = ChartCredentials::Basic {
        username: "plumb".into(),
        password: "wrong-Pa55word".to_owned().into(),
    };
    let err = chart::resolve(&req).await.expect_err("refused");
    assert!(
        matches!(err, ChartError::Unauthorized { status: 401, .. }),
        "{err:?}"
    );
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains("wrong-Pa55word") && text.contains(&url),
        "{text}"
    );
    // Without the custom CA the server is not trusted.
    let mut req = request(&servers, &url, "app", None)?;
    req.ca_pem = None;
    let err = chart::resolve(&req)
        .await
        .expect_err("untrusted")
        .to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_chart_from_an_oci_registry_records_the_manifest_digest() -> TestResult {
    let servers = ChartServers::start()?;
    let mut digests = Vec::new();
    for v in ["1.0.0", "1.2.0", "1.3.0+build.7"] {
        digests.push(servers.push("charts", &app(&servers, v)?)?);
    }
    let url = servers.oci_url("charts");
    let req = request(&servers, &url, "app", None)?;
    let resolved = chart::resolve(&req).await?;
    // Helm stores `+` as `_` in tags; the version reads as pushed.
    assert_eq!(resolved.version, "1.3.0+build.7");
    assert_eq!(resolved.digest.as_deref(), Some(digests[2].as_str()));
    let req = request(&servers, &format!("{url}/app"), "", Some("~1.0"))?;
    let resolved = chart::resolve(&req).await?;
    assert_eq!(resolved.version, "1.0.0");
    let dir = tempfile::tempdir()?;
    let dest = dir.path().join("chart");
    let fetched = chart::download(&req, &resolved, &dest).await?;
    assert_eq!(fetched.digest, digests[0]);
    assert_eq!(fetched.url, format!("{url}/app:1.0.0"));
    let chart_yaml = std::fs::read_to_string(dest.join("Chart.yaml"))?;
    assert!(chart_yaml.contains("version: 1.0.0"), "{chart_yaml}");
    assert_eq!(
        fetched.tree_digest,
        plumb_source::export::digest_dir(&dest)?
    );

    // An exact version needs no tag list.
    let req = request(&servers, &url, "app", Some("1.2.0"))?;
    assert_eq!(
        chart::resolve(&req).await?.digest.as_deref(),
        Some(digests[1].as_str())
    );

    // A wrong password, no credentials: refused, the password nowhere.
    let mut req = request(&servers, &url, "app", None)?;
    req.credentials = ChartCredentials::Basic {
        username: "plumb".into(),
        password: "wrong-Pa55word".to_owned().into(),
    };
    let err = chart::resolve(&req).await.expect_err("refused");
    assert!(matches!(err, ChartError::Unauthorized { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("wrong-Pa55word"));
    let mut req = request(&servers, &url, "app", None)?;
    req.credentials = ChartCredentials::None;
    let err = chart::resolve(&req).await.expect_err("anonymous");
    assert!(matches!(err, ChartError::Unauthorized { .. }), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn a_registry_with_token_auth_gives_a_token_for_the_login() -> TestResult {
    let servers = ChartServers::start_with_token_registry(&["charts/app"])?;
    let digest = servers.push_token("charts", &app(&servers, "1.0.0")?)?;
    let url = servers.token_oci_url("charts")?;
    // What helm asked the token service for is not ours.
    let before = servers.requests("/token").len();
    // The registry answers `Bearer realm=...`: the token service (same host, another port)
    // gets the login, the registry the token.
    let req = request(&servers, &url, "app", Some("^1"))?;
    let resolved = chart::resolve(&req).await?;
    assert_eq!(resolved.digest.as_deref(), Some(digest.as_str()));
    let dir = tempfile::tempdir()?;
    let fetched = chart::download(&req, &resolved, &dir.path().join("chart")).await?;
    assert_eq!(fetched.digest, digest);
    let tokens = servers.requests("/token").split_off(before);
    assert!(
        !tokens.is_empty() && tokens.iter().all(|l| l.ends_with("200 user=plumb")),
        "{tokens:?}"
    );
    // The token service refuses a wrong password: a clear error without it.
    let mut req = request(&servers, &url, "app", Some("^1"))?;
    req.credentials = ChartCredentials::Basic {
        username: "plumb".into(),
        password: "wrong-Pa55word".to_owned().into(),
    };
    let err = chart::resolve(&req).await.expect_err("refused");
    assert!(matches!(err, ChartError::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains("/token"), "{err}");
    assert!(!format!("{err} {err:?}").contains("wrong-Pa55word"));
    Ok(())
}

#[tokio::test]
async fn dependencies_are_fetched_by_plumb_with_credentials_only_on_their_origin() -> TestResult {
    let servers = ChartServers::start()?;
    // `base` in the same repository host (credentials go along), `db` in the registry (another
    // origin: anonymous, so refused), `extras` on a public repository named by another host
    // name (anonymous, served).
    servers.publish(
        "stable",
        &servers.package("base", "0.3.1", &[("templates/b.yaml", TEMPLATE)])?,
    )?;
    servers.publish(
        "public/extra",
        &servers.package("extras", "2.0.0", &[("templates/e.yaml", TEMPLATE)])?,
    )?;
    let port = servers
        .repo_url("")
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_owned();
    let public = format!("https://localhost:{port}/public/extra");
    let chart_yaml = format!(
        "apiVersion: v2\nname: app\nversion: 1.0.0\ndependencies:\n- name: base\n  version: \"^0.3.0\"\n  repository: {}\n- name: extras\n  version: \"2.x\"\n  repository: {public}\n- name: local\n  version: 0.1.0\n  repository: file://../local\n",
        servers.repo_url("stable"),
    );
    let archive = raw_archive(&[
        RawEntry::File("app/Chart.yaml", chart_yaml.as_bytes()),
        RawEntry::File("app/templates/cm.yaml", TEMPLATE.as_bytes()),
        // Vendored already: not fetched.
        RawEntry::File(
            "app/charts/local/Chart.yaml",
            b"apiVersion: v2\nname: local\nversion: 0.1.0\n",
        ),
    ])?;
    servers.publish_raw("apps", "app", "1.0.0", &archive)?;
    let req = request(&servers, &servers.repo_url("apps"), "app", None)?;
    let resolved = chart::resolve(&req).await?;
    let dir = tempfile::tempdir()?;
    let dest = dir.path().join("chart");
    let fetched = chart::download(&req, &resolved, &dest).await?;
    assert_eq!(fetched.dependencies.len(), 2, "{:?}", fetched.dependencies);
    assert!(
        fetched.dependencies[0].starts_with("base 0.3.1 sha256:"),
        "{:?}",
        fetched.dependencies
    );
    assert!(
        fetched.dependencies[1].starts_with("extras 2.0.0 sha256:"),
        "{:?}",
        fetched.dependencies
    );
    for file in [
        "charts/base/Chart.yaml",
        "charts/base/templates/b.yaml",
        "charts/extras/Chart.yaml",
        "charts/local/Chart.yaml",
    ] {
        assert!(dest.join(file).is_file(), "{file}");
    }
    let stable = servers.requests("/stable/index.yaml");
    assert!(
        !stable.is_empty() && stable.iter().all(|l| l.ends_with("user=plumb")),
        "{stable:?}"
    );
    let public = servers.requests("/public/extra/index.yaml");
    assert!(
        !public.is_empty() && public.iter().all(|l| l.ends_with("user=-")),
        "{public:?}"
    );

    // A dependency in the registry: another origin, so no credentials, and it needs some.
    servers.push(
        "deps",
        &servers.package("db", "1.0.0", &[("templates/d.yaml", TEMPLATE)])?,
    )?;
    let chart_yaml = format!(
        "apiVersion: v2\nname: app\nversion: 1.0.1\ndependencies:\n- name: db\n  version: \"1.x\"\n  repository: {}\n",
        servers.oci_url("deps")
    );
    let archive = raw_archive(&[RawEntry::File("app/Chart.yaml", chart_yaml.as_bytes())])?;
    servers.publish_raw("apps2", "app", "1.0.1", &archive)?;
    let req = request(&servers, &servers.repo_url("apps2"), "app", None)?;
    let resolved = chart::resolve(&req).await?;
    let dest = dir.path().join("chart2");
    let err = chart::download(&req, &resolved, &dest)
        .await
        .expect_err("anonymous");
    let text = err.to_string();
    assert!(
        text.contains("dependency \"db\"") && text.contains("authentication failed"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn credentials_never_leave_the_repository_origin() -> TestResult {
    let servers = ChartServers::start()?;
    let archive = std::fs::read(app(&servers, "1.0.0")?)?;
    let digest = plumb_testsupport::charts::digest_of(&archive)?;
    // An index entry on another host (a CDN): downloaded, without the login.
    servers.replace_file("public/cdn", "app-1.0.0.tgz", &archive)?;
    let cdn = servers.other_host_url("public/cdn/app-1.0.0.tgz");
    servers.write_index("stable", "app", "1.0.0", &cdn, &digest)?;
    let req = request(&servers, &servers.repo_url("stable"), "app", None)?;
    let resolved = chart::resolve(&req).await?;
    assert_eq!(resolved.url, cdn);
    let dir = tempfile::tempdir()?;
    let fetched = chart::download(&req, &resolved, &dir.path().join("a")).await?;
    assert_eq!(fetched.digest, digest);
    assert_eq!(
        servers.requests("/stable/index.yaml"),
        ["GET /stable/index.yaml 200 user=plumb"]
    );
    assert_eq!(
        servers.requests("/public/cdn/app-1.0.0.tgz"),
        ["GET /public/cdn/app-1.0.0.tgz 200 user=-"]
    );
    // A redirect to another host: followed without the login, which that path needs.
    let req = request(&servers, &servers.redirect_url("stable"), "app", None)?;
    let err = chart::resolve(&req)
        .await
        .expect_err("no login after the redirect");
    assert!(matches!(err, ChartError::Unauthorized { .. }), "{err:?}");
    let index: Vec<String> = servers
        .requests("/stable/index.yaml")
        .into_iter()
        .filter(|l| l.starts_with("GET /stable/"))
        .collect();
    assert_eq!(
        index,
        [
            "GET /stable/index.yaml 200 user=plumb",
            "GET /stable/index.yaml 401 user=-"
        ]
    );
    assert_eq!(
        servers.requests("/to-localhost/stable/index.yaml"),
        ["GET /to-localhost/stable/index.yaml 302 user=plumb"]
    );
    Ok(())
}

#[tokio::test]
async fn hostile_archives_are_refused_and_nothing_is_written() -> TestResult {
    let servers = ChartServers::start()?;
    let chart = b"apiVersion: v2\nname: app\nversion: 1.0.0\n";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "traversal",
            raw_archive(&[
                RawEntry::File("app/Chart.yaml", chart),
                RawEntry::File("app/../../../tmp/pwned", b"x"),
            ])?,
            "leaves the chart",
        ),
        (
            "absolute",
            raw_archive(&[RawEntry::File("/tmp/pwned", b"x")])?,
            "absolute path",
        ),
        (
            "symlink",
            raw_archive(&[
                RawEntry::File("app/Chart.yaml", chart),
                RawEntry::Symlink("app/templates", "/etc"),
            ])?,
            "symbolic link",
        ),
        (
            "hardlink",
            raw_archive(&[
                RawEntry::File("app/Chart.yaml", chart),
                RawEntry::HardLink("app/values.yaml", "/etc/shadow"),
            ])?,
            "hard link",
        ),
        (
            "oversized",
            raw_archive(&[
                RawEntry::File("app/Chart.yaml", chart),
                RawEntry::Zeros("app/big.yaml", 11 * 1024 * 1024),
            ])?,
            "larger than the limit",
        ),
        (
            "git",
            raw_archive(&[
                RawEntry::File("app/Chart.yaml", chart),
                RawEntry::File("app/.GIT/config", b"x"),
            ])?,
            ".GIT",
        ),
    ];
    let dir = tempfile::tempdir()?;
    for (name, archive, reason) in cases {
        servers.publish_raw(name, "app", "1.0.0", &archive)?;
        let req = request(&servers, &servers.repo_url(name), "app", None)?;
        let resolved = chart::resolve(&req).await?;
        let dest = dir.path().join(name);
        let err = chart::download(&req, &resolved, &dest)
            .await
            .expect_err(name)
            .to_string();
        assert!(
            err.contains(reason) && err.contains("app 1.0.0"),
            "{name}: {err}"
        );
        let written = std::fs::read_dir(&dest).map(|d| d.count()).unwrap_or(0);
        assert_eq!(written, 0, "{name}: something was written");
    }
    assert!(!Path::new("/tmp/pwned").exists());

    // An archive that is not the one the index promised.
    servers.publish_raw(
        "swapped",
        "app",
        "1.0.0",
        &raw_archive(&[RawEntry::File("app/Chart.yaml", chart)])?,
    )?;
    let req = request(&servers, &servers.repo_url("swapped"), "app", None)?;
    let resolved = chart::resolve(&req).await?;
    let other = raw_archive(&[RawEntry::File(
        "app/Chart.yaml",
        b"apiVersion: v2\nname: app\nversion: 6.6.6\n",
    )])?;
    servers.replace_file("swapped", "app-1.0.0.tgz", &other)?;
    let dest = dir.path().join("swapped");
    let err = chart::download(&req, &resolved, &dest)
        .await
        .expect_err("swapped")
        .to_string();
    assert!(err.contains("digest mismatch"), "{err}");
    assert!(!dest.exists());
    Ok(())
}

/// A chart directory (as in Git) whose dependency `base` lives in the repository `stable`
/// (basic auth) and `lib` in the registry at `charts/lib` (htpasswd), neither vendored.
fn chart_dir_with_remote_dependencies(servers: &ChartServers, dir: &Path) -> TestResult {
    servers.publish(
        "stable",
        &servers.package("base", "0.3.1", &[("templates/cm.yaml", TEMPLATE)])?,
    )?;
    let lib = servers.package("lib", "1.0.0", &[("templates/cm.yaml", TEMPLATE)])?;
    servers.push("charts", &lib)?;
    // Kept for the test: the archive is the registry's chart layer.
    std::fs::copy(&lib, dir.join("lib-layer.tgz"))?;
    let chart = dir.join("charts/app");
    std::fs::create_dir_all(chart.join("templates"))?;
    std::fs::write(
        chart.join("Chart.yaml"),
        format!(
            "apiVersion: v2\nname: app\nversion: 1.0.0\ndependencies:\n- name: base\n  version: \"~0.3\"\n  repository: {}\n- name: lib\n  version: 1.x\n  repository: {}\n",
            servers.repo_url("stable"),
            servers.oci_url("charts"),
        ),
    )?;
    std::fs::write(chart.join("templates/cm.yaml"), TEMPLATE)?;
    Ok(())
}

fn repositories(
    servers: &ChartServers,
    password: &str,
) -> anyhow::Result<Vec<chart::DependencyRepository>> {
    let login = || ChartCredentials::Basic {
        username: servers.username().to_owned(),
        password: password.to_owned().into(),
    };
    let ca = Some(servers.ca_pem()?.into_bytes());
    Ok(vec![
        chart::DependencyRepository {
            url: servers.repo_url("stable"),
            credentials: login(),
            ca_pem: ca.clone(),
        },
        chart::DependencyRepository {
            url: servers.oci_url("charts"),
            credentials: login(),
            ca_pem: ca,
        },
    ])
}

#[tokio::test]
async fn dependency_archives_come_from_the_cache_only_after_resolving_with_the_login() -> TestResult
{
    let servers = ChartServers::start()?;
    let source = tempfile::tempdir()?;
    chart_dir_with_remote_dependencies(&servers, source.path())?;
    let cache_dir = tempfile::tempdir()?;
    let cache = chart::ArchiveCache::new(cache_dir.path().join("deps"), 64 * 1024 * 1024);
    let rel = Path::new("charts/app");
    let vendor = |password: String| {
        let (servers, source, cache) = (&servers, source.path(), cache.clone());
        async move {
            let missing = chart::missing_dependencies_at(
                source,
                rel,
                "chart charts/app",
                chart::ChartLimits::default(),
            )
            .await?
            .expect("dependencies to fetch");
            let copy = missing
                .with_cache(cache)
                .vendor_copy(&repositories(servers, &password)?, source, rel, &[])
                .await?;
            anyhow::Ok(copy)
        }
    };
    let first = vendor(servers.password().to_owned()).await?;
    let second = vendor(servers.password().to_owned()).await?;
    assert_eq!(first.fetched(), second.fetched());
    for copy in [&first, &second] {
        for dep in ["base", "lib"] {
            assert!(
                copy.root()
                    .join("charts/app/charts")
                    .join(dep)
                    .join("Chart.yaml")
                    .is_file()
            );
        }
    }
    // The index was read each time (with the login), the archive downloaded once.
    assert_eq!(
        servers.requests("/stable/index.yaml"),
        [
            "GET /stable/index.yaml 200 user=plumb",
            "GET /stable/index.yaml 200 user=plumb"
        ]
    );
    assert_eq!(
        servers.requests("/stable/base-0.3.1.tgz"),
        ["GET /stable/base-0.3.1.tgz 200 user=plumb"]
    );

    // Without the login nothing is served from the cache: resolving fails first.
    let err = vendor("not-the-password".to_owned())
        .await
        .expect_err("a wrong login resolves nothing");
    assert!(
        format!("{err:#}").contains("authentication failed"),
        "{err:#}"
    );
    assert_eq!(servers.requests("/stable/base-0.3.1.tgz").len(), 1);

    // A cached archive changed on disk is refused and downloaded again.
    for entry in std::fs::read_dir(cache_dir.path().join("deps"))? {
        std::fs::write(entry?.path(), b"not the archive")?;
    }
    let third = vendor(servers.password().to_owned()).await?;
    assert_eq!(third.fetched(), first.fetched());
    assert_eq!(servers.requests("/stable/base-0.3.1.tgz").len(), 2);

    // The registry loses the archive's blob: the manifest still resolves (with the login)
    // and the archive comes from the cache.
    servers.remove_registry_blob(&sha256_of(&source.path().join("lib-layer.tgz"))?)?;
    // Without the cache the blob is gone indeed.
    let empty = tempfile::tempdir()?;
    let err = chart::missing_dependencies_at(
        source.path(),
        rel,
        "chart charts/app",
        chart::ChartLimits::default(),
    )
    .await?
    .expect("dependencies to fetch")
    .with_cache(chart::ArchiveCache::new(empty.path(), 1 << 20))
    .vendor_copy(
        &repositories(&servers, servers.password())?,
        source.path(),
        rel,
        &[],
    )
    .await
    .expect_err("the registry lost the blob");
    assert!(format!("{err}").contains("dependency \"lib\""), "{err}");
    let fourth = vendor(servers.password().to_owned()).await?;
    assert_eq!(fourth.fetched(), first.fetched());
    assert!(
        fourth
            .root()
            .join("charts/app/charts/lib/Chart.yaml")
            .is_file()
    );
    Ok(())
}
