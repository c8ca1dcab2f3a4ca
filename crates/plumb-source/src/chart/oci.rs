//! OCI registries (distribution API v2): tags, the chart's manifest and layer, and the auth
//! flow (a `WWW-Authenticate` challenge: `Basic`, or `Bearer` with a token from the realm).

use std::sync::Arc;

use serde::Deserialize;
use url::Url;

use super::client::{self, Http, Response};
use super::{ChartRequest, Error, Resolved, ResolvedKind, Result};

/// Media type of a Helm chart layer.
pub const CHART_LAYER: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
/// Media type of a Helm chart's config.
pub const CHART_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json";
/// Tag list pages read at most.
const MAX_TAG_PAGES: usize = 20;

/// `oci://host[:port]/repository` split up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OciReference {
    /// `host[:port]`.
    pub registry: String,
    /// The repository path, chart name included (`charts/app`).
    pub repository: String,
}

impl OciReference {
    /// The reference of `chart` under `url`: `url` itself when its last path part is the
    /// chart's name (or `chart` is empty), else `url/chart`.
    pub fn parse(url: &str, chart: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let base = client::base_url(url)?;
        let host = base.host_str().expect("base_url checks the host");
        let registry = match base.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let path = base.path().trim_matches('/');
        let mut repository = path.to_owned();
        let last = path.rsplit('/').next().unwrap_or_default();
        if !chart.is_empty() && last != chart {
            repository = if path.is_empty() {
                chart.to_owned()
            } else {
                format!("{path}/{chart}")
            };
        }
        if repository.is_empty() {
            return Err(invalid("the URL names no repository"));
        }
        // The distribution spec's repository name grammar.
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        };
        if !repository.split('/').all(component_ok) {
            return Err(invalid(
                "the repository path must be lowercase letters, digits and . _ - separated by /",
            ));
        }
        Ok(Self {
            registry,
            repository,
        })
    }

    /// The chart's name: the last path part.
    pub fn chart(&self) -> &str {
        self.repository.rsplit('/').next().unwrap_or_default()
    }

    fn api(&self, rest: &str) -> Result<Url> {
        client::parse(&format!(
            "https://{}/v2/{}/{rest}",
            self.registry, self.repository
        ))
    }

    /// `oci://registry/repository`.
    pub fn url(&self) -> String {
        format!("oci://{}/{}", self.registry, self.repository)
    }
}

/// A `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=...`.
    Basic,
    /// `Bearer realm=...,service=...,scope=...`.
    Bearer {
        /// The token service.
        realm: String,
        /// `service`, if given.
        service: Option<String>,
        /// `scope`, if given.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value; `None` for a scheme Plumb does not speak.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(char::is_whitespace)
        .unwrap_or((header, ""));
    let params = parse_params(rest);
    let get = |k: &str| {
        params
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        })
    } else {
        None
    }
}

/// `k1="v1",k2=v2` (quoted strings may hold commas and escaped quotes).
fn parse_params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() || c == ',' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if name.is_empty() {
            break;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek() != Some(&'=') {
            continue;
        }
        chars.next();
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_owned();
        }
        out.push((name, value));
    }
    out
}

#[derive(Deserialize)]
struct TagList {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// GET `url` on the registry, answering an auth challenge once: `Basic` with the request's
/// credentials, `Bearer` with a token from the realm (asked with the basic credentials only
/// when the realm is on the registry's origin). The `Authorization` that worked is kept for
/// later requests.
async fn registry_get(
    http: &Http,
    url: &Url,
    accept: &str,
    limit: u64,
    what: &str,
) -> Result<Response> {
    let session = http.session.lock().expect("session lock").clone();
    let first_auth = session.or_else(|| http.own_auth());
    let response = http
        .send(url, accept, limit, what, first_auth.as_deref())
        .await?;
    if response.status != 401 {
        return Ok(response);
    }
    let challenge = response
        .headers
        .get(http::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_challenge);
    let auth: Arc<str> = match challenge {
        Some(Challenge::Basic) => match http.basic_auth() {
            Some(basic) if first_auth.as_deref() != Some(&*basic) => basic,
            _ => return Ok(response),
        },
        Some(Challenge::Bearer {
            realm,
            service,
            scope,
        }) => format!("Bearer {}", token(http, &realm, service, scope).await?).into(),
        None => return Ok(response),
    };
    let retried = http.send(url, accept, limit, what, Some(&auth)).await?;
    if retried.status != 401 && retried.status != 403 {
        *http.session.lock().expect("session lock") = Some(auth);
    }
    Ok(retried)
}

/// A token from the realm of a `Bearer` challenge.
async fn token(
    http: &Http,
    realm: &str,
    service: Option<String>,
    scope: Option<String>,
) -> Result<String> {
    let mut url = client::parse(realm)?;
    {
        let mut query = url.query_pairs_mut();
        if let Some(s) = &service {
            query.append_pair("service", s);
        }
        if let Some(s) = &scope {
            query.append_pair("scope", s);
        }
    }
    // The login goes to the token service only on the registry's own host (any port, https),
    // and only to that service's origin (not after a redirect elsewhere); elsewhere the token
    // is asked for anonymously (enough for public repositories).
    let login = http.basic_auth().filter(|_| http.same_host(&url));
    let response = http
        .send_with(
            &url,
            "application/json",
            http.limits.max_manifest_size,
            "a registry token",
            login.as_deref(),
            &client::Origin::of(&url),
        )
        .await?;
    client::check_status(&response, "a registry token")?;
    let parsed: TokenResponse =
        serde_json::from_slice(&response.body).map_err(|e| Error::Malformed {
            url: client::redacted(&url),
            what: "the token response".into(),
            detail: e.to_string(),
        })?;
    parsed
        .token
        .or(parsed.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::Malformed {
            url: client::redacted(&url),
            what: "the token response".into(),
            detail: "it holds no token".into(),
        })
}

/// Every tag of the repository (following `Link` pages).
async fn tags(http: &Http, reference: &OciReference) -> Result<Vec<String>> {
    let mut url = reference.api("tags/list")?;
    let mut all = Vec::new();
    for _ in 0..MAX_TAG_PAGES {
        let response = registry_get(
            http,
            &url,
            "application/json",
            http.limits.max_manifest_size,
            "the tag list",
        )
        .await?;
        client::check_status(&response, "the tag list")?;
        let list: TagList =
            serde_json::from_slice(&response.body).map_err(|e| Error::Malformed {
                url: client::redacted(&url),
                what: "the tag list".into(),
                detail: e.to_string(),
            })?;
        all.extend(list.tags.unwrap_or_default());
        let next = response
            .headers
            .get(http::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(|link| link.split_once('<').and_then(|(_, r)| r.split_once('>')))
            .map(|(target, _)| target.to_owned());
        match next {
            Some(target) => {
                let next = url.join(&target).map_err(|e| Error::Malformed {
                    url: client::redacted(&url),
                    what: "the tag list's Link header".into(),
                    detail: e.to_string(),
                })?;
                if !http.same_origin(&next) {
                    break;
                }
                url = next;
            }
            None => break,
        }
    }
    Ok(all)
}

/// Picks the tag (Helm writes `+` in versions as `_` in tags), reads the manifest, finds the
/// chart layer and records the manifest's digest.
pub(super) async fn resolve(http: &Http, req: &ChartRequest) -> Result<Resolved> {
    let reference = OciReference::parse(&req.url, &req.chart)?;
    let chart = reference.chart().to_owned();
    let exact = req
        .version
        .as_deref()
        .map(str::trim)
        .filter(|v| semver::Version::parse(v.strip_prefix('v').unwrap_or(v)).is_ok());
    let tag = match exact {
        // An exact version needs no tag list (a registry may not allow listing).
        Some(v) => v.replace('+', "_"),
        None => {
            let tags = tags(http, &reference).await?;
            let versions: Vec<String> = tags.iter().map(|t| t.replace('_', "+")).collect();
            let picked =
                super::pick_version(req.version.as_deref(), versions.iter().map(String::as_str))?
                    .ok_or_else(|| Error::NoMatchingVersion {
                    url: reference.url(),
                    chart: chart.clone(),
                    version: req
                        .version
                        .clone()
                        .unwrap_or_else(|| "newest stable".into()),
                    available: super::index::newest(
                        &versions.iter().map(String::as_str).collect::<Vec<_>>(),
                    ),
                })?;
            picked.replace('+', "_")
        }
    };
    let manifest_url = reference.api(&format!("manifests/{tag}"))?;
    let response = registry_get(
        http,
        &manifest_url,
        MANIFEST_TYPES,
        http.limits.max_manifest_size,
        "the chart manifest",
    )
    .await?;
    if response.status == 404 {
        return Err(Error::NoMatchingVersion {
            url: reference.url(),
            chart,
            version: tag.replace('_', "+"),
            available: "no such tag".into(),
        });
    }
    client::check_status(&response, "the chart manifest")?;
    let digest = client::sha256_digest(&response.body);
    if let Some(said) = response
        .headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        && said.starts_with("sha256:")
        && !said.eq_ignore_ascii_case(&digest)
    {
        return Err(Error::Digest {
            url: client::redacted(&manifest_url),
            expected: said.to_owned(),
            actual: digest,
        });
    }
    let malformed = |detail: String| Error::Malformed {
        url: client::redacted(&manifest_url),
        what: "the chart manifest".into(),
        detail,
    };
    let manifest: Manifest =
        serde_json::from_slice(&response.body).map_err(|e| malformed(e.to_string()))?;
    if let Some(t) = &manifest.media_type
        && t != MANIFEST_TYPES
    {
        return Err(malformed(format!(
            "media type {t:?} is not an OCI image manifest (is this a Helm chart?)"
        )));
    }
    if manifest
        .config
        .as_ref()
        .is_some_and(|c| c.media_type != CHART_CONFIG)
    {
        return Err(malformed(format!(
            "its config is not a Helm chart config ({CHART_CONFIG}): this artifact is not a Helm chart"
        )));
    }
    let layer = manifest
        .layers
        .iter()
        .find(|l| l.media_type == CHART_LAYER || l.media_type == "application/tar+gzip")
        .ok_or_else(|| malformed(format!("it has no {CHART_LAYER} layer")))?;
    if !is_sha256(&layer.digest) {
        return Err(malformed(format!(
            "layer digest {:?} is not a sha256",
            layer.digest
        )));
    }
    if layer.size > req.limits.max_archive_size {
        return Err(Error::TooLarge {
            url: client::redacted(&manifest_url),
            what: "the chart layer (by its manifest)".into(),
            limit: req.limits.max_archive_size,
        });
    }
    Ok(Resolved {
        chart,
        version: tag.replace('_', "+"),
        digest: Some(digest),
        url: format!("{}:{tag}", reference.url()),
        kind: ResolvedKind::Oci {
            reference,
            layer: (layer.digest.clone(), layer.size),
        },
    })
}

fn is_sha256(digest: &str) -> bool {
    digest
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The chart layer's bytes, checked against its digest and size.
pub(super) async fn blob(
    http: &Http,
    reference: &OciReference,
    (digest, size): &(String, u64),
    limit: u64,
) -> Result<Vec<u8>> {
    let url = reference.api(&format!("blobs/{digest}"))?;
    let response = registry_get(http, &url, "*/*", limit.min(*size), "the chart layer").await?;
    client::check_status(&response, "the chart layer")?;
    let actual = client::sha256_digest(&response.body);
    if !actual.eq_ignore_ascii_case(digest) || response.body.len() as u64 != *size {
        return Err(Error::Digest {
            url: client::redacted(&url),
            expected: digest.clone(),
            actual,
        });
    }
    Ok(response.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        assert_eq!(
            parse_challenge(r#"Basic realm="basic-realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:charts/app:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into()),
                scope: Some("repository:charts/app:pull".into()),
            })
        );
        // Commas inside quotes, spaces around `=`, unquoted values, any case.
        assert_eq!(
            parse_challenge(
                r#"bearer realm = "https://a/t", scope="repository:a:pull,push", service=reg"#
            ),
            Some(Challenge::Bearer {
                realm: "https://a/t".into(),
                service: Some("reg".into()),
                scope: Some("repository:a:pull,push".into()),
            })
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn oci_references() {
        let r = OciReference::parse("oci://127.0.0.1:5000/charts/app", "app").expect("valid");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "charts/app");
        assert_eq!(r.chart(), "app");
        let r = OciReference::parse("oci://reg.example.com/charts", "app").expect("valid");
        assert_eq!(r.repository, "charts/app");
        assert_eq!(r.url(), "oci://reg.example.com/charts/app");
        let r = OciReference::parse("oci://reg.example.com/charts/app/", "").expect("valid");
        assert_eq!(r.chart(), "app");
        for bad in ["oci://reg.example.com", "oci://reg.example.com/Charts/App"] {
            assert!(OciReference::parse(bad, "").is_err(), "{bad}");
        }
        assert!(OciReference::parse("oci://reg/charts", "../x").is_err());
    }
}
