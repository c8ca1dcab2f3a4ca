//! The HTTPS client of chart fetches: TLS with the system roots and an optional custom CA
//! (ring, as kube uses), https only, size-capped bodies, a timeout per request, redirects
//! followed by hand so that credentials never leave the repository's origin.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, header};
use http_body_util::{BodyExt as _, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use secrecy::ExposeSecret as _;
use sha2::{Digest as _, Sha256};
use url::Url;

use super::{ChartCredentials, ChartLimits, ChartRequest, Error, Result};

/// Redirects followed per request.
const MAX_REDIRECTS: usize = 5;

/// Scheme, host and port: where credentials may go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    pub(super) fn of(url: &Url) -> Self {
        Self {
            scheme: url.scheme().to_owned(),
            host: url.host_str().unwrap_or_default().to_ascii_lowercase(),
            port: url.port_or_known_default(),
        }
    }
}

/// A response with its body read (within the cap).
pub(super) struct Response {
    pub(super) status: u16,
    pub(super) headers: HeaderMap,
    pub(super) body: Vec<u8>,
    /// The URL that answered (after redirects).
    pub(super) url: Url,
}

/// One fetch's client, bound to the request's origin and credentials.
pub(super) struct Http {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    origin: Origin,
    credentials: ChartCredentials,
    pub(super) limits: ChartLimits,
    /// The `Authorization` value a registry's challenge led to, reused for later requests to
    /// the origin.
    pub(super) session: Mutex<Option<Arc<str>>>,
}

impl Http {
    /// A client for `req`: its URL must be `https://` or `oci://` without credentials.
    pub(super) fn new(req: &ChartRequest) -> Result<Self> {
        let base = base_url(&req.url)?;
        let mut roots = rustls::RootCertStore::empty();
        // Unreadable system certificates are skipped: a custom CA may be all that is needed.
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(pem) = &req.ca_pem {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject as _;
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| Error::InvalidUrl {
                    url: req.url.clone(),
                    reason: format!("the CA certificate (caFile) is not valid PEM: {e}"),
                })?;
                roots.add(cert).map_err(|e| Error::InvalidUrl {
                    url: req.url.clone(),
                    reason: format!("the CA certificate (caFile) cannot be used: {e}"),
                })?;
                added += 1;
            }
            if added == 0 {
                return Err(Error::InvalidUrl {
                    url: req.url.clone(),
                    reason: "the CA certificate (caFile) holds no PEM certificate".into(),
                });
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::InvalidUrl {
                url: req.url.clone(),
                reason: format!("TLS setup: {e}"),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(req.limits.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            client,
            origin: Origin::of(&base),
            credentials: req.credentials.clone(),
            limits: req.limits,
            session: Mutex::new(None),
        })
    }

    /// Whether credentials may be sent to `url`.
    pub(super) fn same_origin(&self, url: &Url) -> bool {
        Origin::of(url) == self.origin
    }

    /// Whether `url` is https on the repository's host (any port): where a registry's token
    /// service may get the login.
    pub(super) fn same_host(&self, url: &Url) -> bool {
        let other = Origin::of(url);
        other.scheme == "https" && other.host == self.origin.host
    }

    /// The `Authorization` value the request's own credentials give (Helm repositories,
    /// registries answering `Basic`, a bearer token).
    pub(super) fn own_auth(&self) -> Option<Arc<str>> {
        match &self.credentials {
            ChartCredentials::None => None,
            ChartCredentials::Basic { username, password } => {
                Some(basic(username, password.expose_secret()).into())
            }
            ChartCredentials::Bearer { token } => {
                Some(format!("Bearer {}", token.expose_secret()).into())
            }
        }
    }

    /// The request's basic credentials, if any (for a registry's token service).
    pub(super) fn basic_auth(&self) -> Option<Arc<str>> {
        match &self.credentials {
            ChartCredentials::Basic { username, password } => {
                Some(basic(username, password.expose_secret()).into())
            }
            _ => None,
        }
    }

    /// GET `url` with the request's credentials (on its origin only); a non-2xx status is an
    /// error naming `what`.
    pub(super) async fn get(
        &self,
        url: &str,
        accept: &str,
        limit: u64,
        what: &str,
    ) -> Result<Vec<u8>> {
        let parsed = parse(url)?;
        let response = self
            .send(&parsed, accept, limit, what, self.own_auth().as_deref())
            .await?;
        check_status(&response, what)?;
        Ok(response.body)
    }

    /// GET `url`, following redirects (https only; `auth` is sent only while on the origin),
    /// reading at most `limit` bytes of body; any status is returned.
    pub(super) async fn send(
        &self,
        url: &Url,
        accept: &str,
        limit: u64,
        what: &str,
        auth: Option<&str>,
    ) -> Result<Response> {
        let origin = self.origin.clone();
        self.send_with(url, accept, limit, what, auth, &origin)
            .await
    }

    /// [`Http::send`], sending `auth` only while on `auth_origin`.
    pub(super) async fn send_with(
        &self,
        url: &Url,
        accept: &str,
        limit: u64,
        what: &str,
        auth: Option<&str>,
        auth_origin: &Origin,
    ) -> Result<Response> {
        let timeout = self.limits.request_timeout;
        let run = async {
            let mut current = url.clone();
            for _ in 0..=MAX_REDIRECTS {
                if current.scheme() != "https" {
                    return Err(Error::Transport {
                        url: redacted(&current),
                        detail: "refusing a URL that is not https".into(),
                    });
                }
                let mut builder = Request::get(current.as_str()).header(header::ACCEPT, accept);
                if let Some(auth) = auth
                    && Origin::of(&current) == *auth_origin
                {
                    let mut value = HeaderValue::from_str(auth).map_err(|_| Error::InvalidUrl {
                        url: redacted(url),
                        reason: "the credentials hold characters an HTTP header cannot carry"
                            .into(),
                    })?;
                    value.set_sensitive(true);
                    builder = builder.header(header::AUTHORIZATION, value);
                }
                let request =
                    builder
                        .body(Empty::<Bytes>::new())
                        .map_err(|e| Error::InvalidUrl {
                            url: redacted(&current),
                            reason: e.to_string(),
                        })?;
                let response =
                    self.client
                        .request(request)
                        .await
                        .map_err(|e| Error::Transport {
                            url: redacted(&current),
                            detail: chain(&e),
                        })?;
                let status = response.status();
                if status.is_redirection()
                    && let Some(location) = response.headers().get(header::LOCATION)
                {
                    let location = location.to_str().unwrap_or_default();
                    current = current.join(location).map_err(|e| Error::Transport {
                        url: redacted(&current),
                        detail: format!("invalid redirect location: {e}"),
                    })?;
                    continue;
                }
                let headers = response.headers().clone();
                if let Some(length) = headers
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    && length > limit
                {
                    return Err(Error::TooLarge {
                        url: redacted(&current),
                        what: what.to_owned(),
                        limit,
                    });
                }
                let mut body = response.into_body();
                let mut bytes = Vec::new();
                while let Some(frame) = body.frame().await {
                    let frame = frame.map_err(|e| Error::Transport {
                        url: redacted(&current),
                        detail: format!("reading {what}: {}", chain(&e)),
                    })?;
                    if let Ok(data) = frame.into_data() {
                        if bytes.len() as u64 + data.len() as u64 > limit {
                            return Err(Error::TooLarge {
                                url: redacted(&current),
                                what: what.to_owned(),
                                limit,
                            });
                        }
                        bytes.extend_from_slice(&data);
                    }
                }
                return Ok(Response {
                    status: status.as_u16(),
                    headers,
                    body: bytes,
                    url: current,
                });
            }
            Err(Error::Transport {
                url: redacted(url),
                detail: format!("more than {MAX_REDIRECTS} redirects"),
            })
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| Error::Transport {
                url: redacted(url),
                detail: format!("no complete answer within {}s", timeout.as_secs()),
            })?
    }
}

/// A non-2xx response as an error.
pub(super) fn check_status(response: &Response, what: &str) -> Result<()> {
    match response.status {
        200..=299 => Ok(()),
        401 | 403 => Err(Error::Unauthorized {
            url: redacted(&response.url),
            status: response.status,
        }),
        status => Err(Error::Status {
            url: redacted(&response.url),
            status,
            what: format!("fetching {what}"),
        }),
    }
}

/// `Basic base64(user:password)`.
fn basic(username: &str, password: &str) -> String {
    let raw = format!("{username}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// The request URL as an https URL (`oci://` read as `https://`), refusing credentials in it.
pub(super) fn base_url(text: &str) -> Result<Url> {
    let invalid = |reason: &str| Error::InvalidUrl {
        url: text.to_owned(),
        reason: reason.to_owned(),
    };
    let https = if let Some(rest) = text.strip_prefix("oci://") {
        format!("https://{rest}")
    } else if text.starts_with("https://") {
        text.to_owned()
    } else {
        return Err(invalid(
            "the URL must start with https:// (a Helm repository) or oci:// (a registry)",
        ));
    };
    let url = Url::parse(&https).map_err(|e| Error::InvalidUrl {
        url: "(not shown: it does not parse)".into(),
        reason: e.to_string(),
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::InvalidUrl {
            url: redacted(&url),
            reason: "credentials in the URL are refused; put them in the Secret of secretRef"
                .into(),
        });
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("the URL names no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("the URL must not have a query or fragment"));
    }
    Ok(url)
}

/// Parses an absolute URL met along the way (an index entry's, a token realm).
pub(super) fn parse(text: &str) -> Result<Url> {
    Url::parse(text).map_err(|e| Error::InvalidUrl {
        url: "(not shown: it does not parse)".into(),
        reason: e.to_string(),
    })
}

/// `url` without user info, for messages.
pub(super) fn redacted(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// `sha256:<hex>` of `bytes`.
pub(super) fn sha256_digest(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::from("sha256:");
    for b in Sha256::digest(bytes) {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// An error and its sources, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_and_oci_urls_without_credentials_are_accepted() {
        assert!(base_url("https://charts.example.com/stable").is_ok());
        assert_eq!(
            base_url("oci://reg.example.com:5000/charts/app")
                .expect("oci")
                .as_str(),
            "https://reg.example.com:5000/charts/app"
        );
        for bad in [
            "http://charts.example.com",
            "file:///etc",
            "charts.example.com",
            "https://?x",
        ] {
            assert!(base_url(bad).is_err(), "{bad}");
        }
        let err = base_url("https://user:s3cret@charts.example.com/")
            .expect_err("credentials")
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
        assert!(err.contains("secretRef"), "{err}");
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let a = Origin::of(&parse("https://Repo.example.com/x").expect("url"));
        assert_eq!(
            a,
            Origin::of(&parse("https://repo.example.com:443/y").expect("url"))
        );
        assert_ne!(
            a,
            Origin::of(&parse("https://repo.example.com:8443/x").expect("url"))
        );
        assert_ne!(
            a,
            Origin::of(&parse("https://other.example.com/x").expect("url"))
        );
    }
}
