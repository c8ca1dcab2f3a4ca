//! The one HTTP client of the tests: plain HTTP/1.1 to servers on loopback (the agent's
//! metrics, health and webhook ports).
//!
//! Built on `reqwest` without TLS and without proxies (no `HTTP_PROXY` from the environment):
//! every request goes to the loopback address it names, on a connection of its own.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The headers, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The body (decoded from chunked transfer encoding), as text.
    pub body: String,
}

impl Reply {
    /// The body as JSON (`Null` if it is none).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `method path` with `headers` and `body` to `addr` (which must be a loopback address)
/// and reads the whole response; fails on connection errors and after 20 s.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply> {
    ensure!(
        addr.ip().is_loopback(),
        "test HTTP requests go to loopback only, not {addr}"
    );
    // A client per request: a fresh connection, as a probe or a Git host's webhook makes it.
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(20))
        .build()
        .context("building the HTTP client")?;
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .with_context(|| format!("invalid HTTP method {method:?}"))?;
    let mut req = client
        .request(method.clone(), format!("http://{addr}{path}"))
        .body(body.to_vec());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("{method} http://{addr}{path}"))?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("reading the answer to {method} http://{addr}{path}"))?;
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Reply> {
    request(addr, "GET", path, &[], b"").await
}

/// `POST path` with `headers` and `body`.
pub async fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply> {
    request(addr, "POST", path, headers, body).await
}

/// A loopback address with a free port: bound and released at once, so whoever binds it a
/// moment later may find it taken by another process (retry with another one then).
pub fn free_addr() -> Result<SocketAddr> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(listener.local_addr()?)
}

/// The value of the sample `series` (name and labels, exactly as exposed) in the Prometheus
/// text `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.split(' ').next())
            .and_then(|v| v.parse().ok())
    })
}

/// The sum of every sample of counter `name` in `text` whose labels include all of `labels`
/// (`key="value"` each).
pub fn counter(text: &str, name: &str, labels: &[&str]) -> f64 {
    let wanted: Vec<(&str, &str)> = labels
        .iter()
        .filter_map(|l| {
            let (key, value) = l.split_once('=')?;
            Some((key, value.strip_prefix('"')?.strip_suffix('"')?))
        })
        .collect();
    samples(text, name)
        .iter()
        .filter(|s| {
            wanted
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// One sample of a labelled counter.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Label name to value (as written, escapes kept).
    pub labels: BTreeMap<String, String>,
    /// The counter's value.
    pub value: f64,
}

impl Sample {
    /// The label's value, `""` when absent.
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Every labelled sample of `metric` in `text`, in the order of the text. Samples without
/// labels, with a timestamp, or with an unreadable value are skipped.
pub fn samples(text: &str, metric: &str) -> Vec<Sample> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(metric)?.strip_prefix('{')?;
            // Like the regex `^metric\{(.*)\}\s+(\S+)$`: the last `}`, blank, one value.
            let (labels, after) = rest.rsplit_once('}')?;
            let value = after.trim();
            if !after.starts_with(char::is_whitespace)
                || value.is_empty()
                || value.contains(char::is_whitespace)
            {
                return None;
            }
            Some(Sample {
                labels: labels_of(labels),
                value: value.parse().ok()?,
            })
        })
        .collect()
}

/// `a="x",b="y\"z"` into a map. Text that is not `name="value"` is skipped.
fn labels_of(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        let Some((name, after)) = rest.split_once("=\"") else {
            return out;
        };
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let Some(end) = end else {
            return out;
        };
        let name = name.trim();
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(name.to_owned(), after[..end].to_owned());
        }
        rest = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_keep_escaped_quotes_and_commas() {
        let text = "m{a=\"x,y\",b=\"say \\\"hi\\\"\",c=\"\"} 2.5e3\nm 4\nm{a=\"1\"} 3 1700000000\n";
        let s = samples(text, "m");
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].label("a"), "x,y");
        assert_eq!(s[0].label("b"), "say \\\"hi\\\"");
        assert_eq!(s[0].label("c"), "");
        assert_eq!(s[0].value, 2500.0);
    }

    #[test]
    fn counter_sums_the_samples_with_all_the_labels() {
        let text =
            "m{a=\"1\",b=\"x,y\"} 2\nm{a=\"1\",b=\"z\"} 3\nm{a=\"2\"} 5\nm_other{a=\"1\"} 7\n";
        assert_eq!(counter(text, "m", &["a=\"1\""]), 5.0);
        assert_eq!(counter(text, "m", &["a=\"1\"", "b=\"x,y\""]), 2.0);
        assert_eq!(counter(text, "m", &["a=\"3\""]), 0.0);
    }
}
