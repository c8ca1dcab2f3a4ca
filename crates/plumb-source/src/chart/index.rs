//! Helm repositories: `index.yaml`, the version choice, the archive's URL.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::client::{self, Http};
use super::{ChartRequest, Error, Resolved, ResolvedKind, Result};

/// The parts of a Helm repository's `index.yaml` Plumb reads.
#[derive(Debug, Default, Deserialize)]
pub struct ChartIndex {
    /// Chart name -> its versions.
    #[serde(default)]
    pub entries: BTreeMap<String, Vec<IndexEntry>>,
}

/// One version of a chart in an index.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct IndexEntry {
    /// The chart version.
    #[serde(default)]
    pub version: String,
    /// Where the archive is: relative to the repository URL, or absolute.
    #[serde(default)]
    pub urls: Vec<String>,
    /// The archive's sha256 (hex), if the index records it.
    #[serde(default)]
    pub digest: Option<String>,
}

impl ChartIndex {
    /// Parses `index.yaml` (`url` names it in errors).
    pub fn parse(text: &str, url: &str) -> Result<Self> {
        serde_saphyr::from_str(text).map_err(|e| Error::Malformed {
            url: url.to_owned(),
            what: "index.yaml".into(),
            detail: e.to_string(),
        })
    }
}

/// The version to use among `versions` for `wanted`: the exact version when `wanted` is one
/// (also a non-semver string, compared as is), else the newest match of the semver range;
/// `None` wanted: the newest version without a pre-release part. A leading `v` is ignored on
/// both sides. `Ok(None)` when nothing matches.
pub fn pick_version<'a>(
    wanted: Option<&str>,
    versions: impl IntoIterator<Item = &'a str>,
) -> Result<Option<&'a str>> {
    let versions: Vec<&str> = versions.into_iter().collect();
    let parse =
        |v: &str| semver::Version::parse(v.trim().strip_prefix('v').unwrap_or(v.trim())).ok();
    let wanted = wanted.map(str::trim).filter(|w| !w.is_empty());
    if let Some(w) = wanted {
        if let Some(exact) = parse(w) {
            return Ok(versions
                .into_iter()
                .find(|v| parse(v).as_ref() == Some(&exact)));
        }
        if let Some(found) = versions.iter().find(|v| **v == w) {
            return Ok(Some(found));
        }
    }
    let req = match wanted {
        Some(range) if range != "*" && range != "latest" => Some(crate::refs::parse_range(range)?),
        _ => None,
    };
    let mut best: Option<(semver::Version, &str)> = None;
    for v in versions {
        let Some(version) = parse(v) else { continue };
        let fits = match &req {
            Some(req) => req.matches(&version),
            None => version.pre.is_empty(),
        };
        if fits && best.as_ref().is_none_or(|(b, _)| version > *b) {
            best = Some((version, v));
        }
    }
    Ok(best.map(|(_, v)| v))
}

/// The newest few versions, for a message.
pub(super) fn newest(versions: &[&str]) -> String {
    let mut parsed: Vec<(Option<semver::Version>, &str)> = versions
        .iter()
        .map(|v| {
            (
                semver::Version::parse(v.strip_prefix('v').unwrap_or(v)).ok(),
                *v,
            )
        })
        .collect();
    parsed.sort_by(|a, b| b.0.cmp(&a.0));
    let shown: Vec<&str> = parsed.iter().take(10).map(|(_, v)| *v).collect();
    if shown.is_empty() {
        "none".into()
    } else if parsed.len() > shown.len() {
        format!("{}, ...", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// Reads the repository's index and picks the version.
pub(super) async fn resolve(http: &Http, req: &ChartRequest) -> Result<Resolved> {
    let base = repository_base(&req.url)?;
    let index_url = base.join("index.yaml").map_err(|e| Error::InvalidUrl {
        url: req.url.clone(),
        reason: e.to_string(),
    })?;
    let shown = client::redacted(&index_url);
    let body = http
        .get(
            index_url.as_str(),
            "application/x-yaml, text/yaml, */*",
            http.limits.max_index_size,
            "index.yaml",
        )
        .await?;
    let text = String::from_utf8(body).map_err(|_| Error::Malformed {
        url: shown.clone(),
        what: "index.yaml".into(),
        detail: "not UTF-8".into(),
    })?;
    let index = ChartIndex::parse(&text, &shown)?;
    let chart = req.chart.clone();
    if chart.is_empty() {
        return Err(Error::InvalidUrl {
            url: req.url.clone(),
            reason: "a Helm repository needs a chart name".into(),
        });
    }
    let entries = index
        .entries
        .get(&chart)
        .ok_or_else(|| Error::NoSuchChart {
            url: req.url.clone(),
            chart: chart.clone(),
        })?;
    let versions: Vec<&str> = entries.iter().map(|e| e.version.as_str()).collect();
    let picked =
        pick_version(req.version.as_deref(), versions.iter().copied())?.ok_or_else(|| {
            Error::NoMatchingVersion {
                url: req.url.clone(),
                chart: chart.clone(),
                version: req
                    .version
                    .clone()
                    .unwrap_or_else(|| "newest stable".into()),
                available: newest(&versions),
            }
        })?;
    let entry = entries
        .iter()
        .find(|e| e.version == picked)
        .expect("the picked version is an entry's");
    let first = entry.urls.first().ok_or_else(|| Error::Malformed {
        url: shown.clone(),
        what: format!("entry {chart} {picked}"),
        detail: "it lists no urls".into(),
    })?;
    // Relative to the repository URL (as Helm resolves them), or absolute.
    let archive = base.join(first).map_err(|e| Error::Malformed {
        url: shown.clone(),
        what: format!("entry {chart} {picked}"),
        detail: format!("url {first:?}: {e}"),
    })?;
    if archive.scheme() != "https" {
        return Err(Error::Malformed {
            url: shown,
            what: format!("entry {chart} {picked}"),
            detail: format!("url {} is not https", client::redacted(&archive)),
        });
    }
    let digest = match entry.digest.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(d) => {
            let hex = d.strip_prefix("sha256:").unwrap_or(d).to_ascii_lowercase();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::Malformed {
                    url: shown,
                    what: format!("entry {chart} {picked}"),
                    detail: format!("digest {d:?} is not a sha256"),
                });
            }
            Some(format!("sha256:{hex}"))
        }
    };
    Ok(Resolved {
        chart,
        version: picked.to_owned(),
        digest,
        url: client::redacted(&archive),
        kind: ResolvedKind::Repository,
    })
}

/// The repository URL with a trailing `/`, so that relative URLs resolve below it.
fn repository_base(url: &str) -> Result<url::Url> {
    let mut base = client::base_url(url)?;
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERSIONS: [&str; 6] = ["1.0.0", "1.2.0", "1.10.0", "2.0.0-rc.1", "v1.5.0", "0.9.0"];

    #[test]
    fn exact_versions_ranges_and_the_newest_stable() {
        let pick = |w: Option<&str>| pick_version(w, VERSIONS).expect("valid");
        assert_eq!(pick(None), Some("1.10.0"));
        assert_eq!(pick(Some("*")), Some("1.10.0"));
        assert_eq!(pick(Some("1.2.0")), Some("1.2.0"));
        // An exact version is not a caret range (semver's default for a bare version).
        assert_eq!(pick(Some("1.3.0")), None);
        assert_eq!(pick(Some("1.5.0")), Some("v1.5.0"));
        assert_eq!(pick(Some(">=1.0.0 <1.6.0")), Some("v1.5.0"));
        assert_eq!(pick(Some("^1.2")), Some("1.10.0"));
        assert_eq!(pick(Some("~1.2")), Some("1.2.0"));
        assert_eq!(pick(Some(">=2.0.0-0")), Some("2.0.0-rc.1"));
        assert_eq!(pick(Some("2.0.0-rc.1")), Some("2.0.0-rc.1"));
        assert_eq!(pick(Some(">=3")), None);
        assert!(pick_version(Some("not a range"), VERSIONS).is_err());
    }

    #[test]
    fn an_index_parses_and_lists_versions() {
        let text = "apiVersion: v1\nentries:\n  app:\n  - version: 1.0.0\n    urls: [app-1.0.0.tgz]\n    digest: abc\n    created: \"2026-01-01T00:00:00Z\"\n    name: app\n  - version: 1.1.0\n    urls: [https://cdn.example.com/app-1.1.0.tgz]\ngenerated: \"2026\"\n";
        let index = ChartIndex::parse(text, "https://x/index.yaml").expect("parses");
        let app = &index.entries["app"];
        assert_eq!(app.len(), 2);
        assert_eq!(app[0].urls, ["app-1.0.0.tgz"]);
        assert_eq!(app[0].digest.as_deref(), Some("abc"));
        assert_eq!(app[1].digest, None);
        let err = ChartIndex::parse("entries: [", "https://x/index.yaml").expect_err("bad");
        assert!(err.to_string().contains("https://x/index.yaml"), "{err}");
    }

    #[test]
    fn relative_urls_resolve_below_the_repository() {
        let base = repository_base("https://h.example.com/charts").expect("base");
        assert_eq!(
            base.join("app-1.0.0.tgz").expect("join").as_str(),
            "https://h.example.com/charts/app-1.0.0.tgz"
        );
        assert_eq!(newest(&["1.0.0", "3.0.0", "2.0.0"]), "3.0.0, 2.0.0, 1.0.0");
    }
}
