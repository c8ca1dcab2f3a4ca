//! What a tenant's GitSource may point at, decided before any fetch: local paths and `file://`
//! URLs only with `--allow-local-sources`, credentials only towards the hosts their Secret
//! names. Pure functions; the reconciler calls them with the spec and the Secret's annotation.

/// Annotation on a `secretRef` Secret naming the hosts its credentials may be sent to:
/// comma-separated host names or `host:port`, matched case-insensitively against the
/// GitSource URL's host.
pub const CREDENTIAL_HOSTS_ANNOTATION: &str = "plumb.dev/credential-hosts";

/// The flag of `plumb agent` that permits local sources.
pub const ALLOW_LOCAL_SOURCES_FLAG: &str = "--allow-local-sources";

/// The host (and port, when the URL names one) a Git URL connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlHost {
    /// The host name or address, lowercased, without IPv6 brackets.
    pub host: String,
    /// The port, when the URL spells one out.
    pub port: Option<u16>,
}

impl std::fmt::Display for UrlHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            Some(p) => write!(f, "{host}:{p}"),
            None => f.write_str(&host),
        }
    }
}

/// Whether `url` reads the agent's own disk: `file://` URLs and local paths (absolute or
/// relative), as opposed to `scheme://host/...` and scp-like `[user@]host:path`.
///
/// Anything that is not clearly remote counts as local, so that the refusal errs on the safe
/// side; URLs that are neither are refused later by the fetcher's own URL check anyway.
pub fn is_local_url(url: &str) -> bool {
    url_host(url).is_none()
}

/// The host `url` connects to: `scheme://[user@]host[:port]/path` (any scheme but `file`) or
/// scp-like `[user@]host:path`; `None` for `file://` URLs and local paths.
pub fn url_host(url: &str) -> Option<UrlHost> {
    let url = url.trim();
    if let Some((scheme, rest)) = url.split_once("://") {
        if scheme.eq_ignore_ascii_case("file") || scheme.contains(['/', '\\']) {
            return None;
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = split_host_port(host_port)?;
        return Some(UrlHost {
            host: host.to_ascii_lowercase(),
            port,
        });
    }
    // scp-like: a colon before any slash, and something before it. git treats `./a:b` and
    // `/a:b` as paths.
    let (before, _) = url.split_once(':')?;
    if before.is_empty() || before.contains('/') {
        return None;
    }
    let host = before.rsplit_once('@').map_or(before, |(_, h)| h);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some(UrlHost {
        host: host.to_ascii_lowercase(),
        port: None,
    })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`; `None` when there is no host or the port is not
/// a number.
fn split_host_port(text: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => return None,
        }
    } else {
        match text.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        None | Some("") => None,
        Some(p) => Some(p.parse().ok()?),
    };
    Some((host, port))
}

/// Whether the annotation value `allowed` (comma-separated `host` or `host:port` entries)
/// names `target`. An entry without a port matches the host on any port; an entry with a
/// port matches only a URL that spells out that port.
pub fn credential_hosts_allow(allowed: &str, target: &UrlHost) -> bool {
    allowed
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .filter_map(split_host_port)
        .any(|(host, port)| {
            host.eq_ignore_ascii_case(&target.host) && (port.is_none() || port == target.port)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str, port: Option<u16>) -> Option<UrlHost> {
        Some(UrlHost {
            host: h.to_owned(),
            port,
        })
    }

    #[test]
    fn local_urls_are_recognised() {
        for local in [
            "file:///srv/git/app.git",
            "FILE:///srv/git/app.git",
            "file://localhost/srv/git/app.git",
            "/srv/git/app.git",
            "/srv/odd:name.git",
            "./relative",
            "../up",
            "relative/path",
            "app.git",
            "",
        ] {
            assert!(is_local_url(local), "{local:?}");
        }
        for remote in [
            "https://git.example.com/app.git",
            "ssh://git@git.example.com:2222/app.git",
            "git@git.example.com:org/app.git",
            "git.example.com:app.git",
        ] {
            assert!(!is_local_url(remote), "{remote:?}");
        }
    }

    #[test]
    fn hosts_are_parsed_from_every_spelling() {
        assert_eq!(
            url_host("https://user@Git.Example.com:8443/a.git"),
            host("git.example.com", Some(8443))
        );
        assert_eq!(
            url_host("https://git.example.com/a.git"),
            host("git.example.com", None)
        );
        assert_eq!(
            url_host("ssh://git@[::1]:2222/a.git"),
            host("::1", Some(2222))
        );
        assert_eq!(
            url_host("git@GitHub.com:org/a.git"),
            host("github.com", None)
        );
        assert_eq!(url_host("https://x:notaport/a"), None);
        assert_eq!(url_host("file:///a"), None);
    }

    #[test]
    fn credential_hosts_bind_secrets_to_hosts() {
        let target = UrlHost {
            host: "git.example.com".into(),
            port: Some(8443),
        };
        assert!(credential_hosts_allow("git.example.com", &target));
        assert!(credential_hosts_allow(
            "other.example.com, GIT.example.com:8443",
            &target
        ));
        assert!(!credential_hosts_allow("git.example.com:443", &target));
        assert!(!credential_hosts_allow("example.com", &target));
        assert!(!credential_hosts_allow("evil.git.example.com", &target));
        assert!(!credential_hosts_allow("", &target));
        assert!(!credential_hosts_allow(" , ", &target));
        let no_port = UrlHost {
            host: "git.example.com".into(),
            port: None,
        };
        assert!(!credential_hosts_allow("git.example.com:443", &no_port));
        assert!(credential_hosts_allow("git.example.com", &no_port));
        let v6 = UrlHost {
            host: "::1".into(),
            port: Some(2222),
        };
        assert!(credential_hosts_allow("[::1]:2222", &v6));
        assert_eq!(v6.to_string(), "[::1]:2222");
    }
}
