//! Which remote URLs are accepted.

use super::{Error, Result};

/// Whether `url` is plain `http://`.
pub fn is_http(url: &str) -> bool {
    url.trim()
        .split_once("://")
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("http"))
}

/// Refuses URLs that are not https, ssh, file or local paths, or that carry credentials.
pub fn check_url(url: &str) -> Result<()> {
    check_url_with(url, false)
}

/// [`check_url`], also accepting `http://` when `allow_http`.
pub fn check_url_with(url: &str, allow_http: bool) -> Result<()> {
    let url = url.trim();
    let invalid = |reason| {
        Err(Error::InvalidUrl {
            url: url.to_owned(),
            reason,
        })
    };
    if url.is_empty() {
        return invalid("it is empty");
    }
    if url.starts_with('-') {
        return invalid("it starts with '-'");
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::InvalidUrl {
            url: url.escape_debug().to_string(),
            reason: "it contains whitespace or control characters",
        });
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority = rest.split('/').next().unwrap_or_default();
        let userinfo = authority.rsplit_once('@').map(|(u, _)| u);
        match scheme.to_ascii_lowercase().as_str() {
            "https" => {
                if userinfo.is_some() {
                    return Err(Error::UrlHasCredentials);
                }
            }
            "ssh" => {
                if userinfo.is_some_and(|u| u.contains(':')) {
                    return Err(Error::UrlHasCredentials);
                }
            }
            "file" => {}
            "http" if allow_http => {
                if userinfo.is_some() {
                    return Err(Error::UrlHasCredentials);
                }
            }
            "http" => {
                return invalid(
                    "plain http is not allowed; use https (or opt in to insecure http for \
                     this source)",
                );
            }
            _ => return invalid("only https://, ssh://, file:// and local paths are supported"),
        }
        return Ok(());
    }
    if url.starts_with('/') {
        return Ok(());
    }
    // scp-like `user@host:path`: a colon before any slash.
    if let Some((host, _)) = url.split_once(':')
        && !host.is_empty()
        && !host.contains('/')
    {
        if url.contains("::") {
            return invalid("transport helpers (`<transport>::`) are not allowed");
        }
        return Ok(());
    }
    invalid("use https://, ssh://, user@host:path, file:// or an absolute path")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        for good in [
            "https://git.example.com/a.git",
            "ssh://git@example.com:22/a.git",
            "git@example.com:org/a.git",
            "file:///srv/a.git",
            "/srv/a.git",
        ] {
            assert!(check_url(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-uhttps://x",
            "http://x/a.git",
            "ext::sh -c touch% /tmp/pwned",
            "fd::17",
            "relative/path",
            "https://x/a b",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        let err = check_url("https://user:s3cr3t@x/a.git").expect_err("credentials refused");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        assert!(matches!(
            check_url("https://token@x/a.git"),
            Err(Error::UrlHasCredentials)
        ));
    }
}
