//! git's `allowed_signers` file (ssh-keygen(1), ALLOWED SIGNERS): which SSH keys may sign,
//! for which principals, namespaces and time window.

use std::path::Path;

/// Errors reading an `allowed_signers` file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A line does not follow the format.
    #[error("allowed signers line {line}: {reason}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The file cannot be read.
    #[error("cannot read allowed signers file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Result with [`enum@Error`] as default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Only a failed read may succeed on retry.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Read { .. })
    }

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Parse { .. } => "allowed_signers_parse",
            Error::Read { .. } => "allowed_signers_read",
        }
    }
}

/// One line of an `allowed_signers` file.
#[derive(Clone, Debug)]
pub struct AllowedSigner {
    /// Principal patterns (`*` and `?` wildcards, `!` negates), as written.
    pub principals: Vec<String>,
    /// Namespace patterns from `namespaces=`; `None` allows every namespace.
    pub namespaces: Option<Vec<String>>,
    /// `valid-after=` as Unix seconds (inclusive).
    pub valid_after: Option<i64>,
    /// `valid-before=` as Unix seconds (inclusive).
    pub valid_before: Option<i64>,
    /// The public key.
    pub key: ssh_key::PublicKey,
    /// 1-based line number in the file, for messages.
    pub line: usize,
}

impl AllowedSigner {
    /// The principals as one string, as in the file (`a@x,b@x`).
    pub fn principal(&self) -> String {
        self.principals.join(",")
    }

    /// Whether the entry may sign in `namespace` (git uses `git`).
    pub fn allows_namespace(&self, namespace: &str) -> bool {
        match &self.namespaces {
            None => true,
            Some(patterns) => match_pattern_list(namespace, patterns),
        }
    }

    /// Whether `principal` is one this entry vouches for (ssh-keygen `-Y verify -I`).
    pub fn matches_principal(&self, principal: &str) -> bool {
        match_pattern_list(principal, &self.principals)
    }

    /// `Err(reason)` when `time` (Unix seconds) lies outside `valid-after`/`valid-before`.
    pub fn check_time(&self, time: i64) -> std::result::Result<(), String> {
        if let Some(after) = self.valid_after
            && time < after
        {
            return Err(format!(
                "signature time {time} is before valid-after {after} (line {})",
                self.line
            ));
        }
        if let Some(before) = self.valid_before
            && time > before
        {
            return Err(format!(
                "signature time {time} is after valid-before {before} (line {})",
                self.line
            ));
        }
        Ok(())
    }
}

/// A parsed `allowed_signers` file.
#[derive(Clone, Debug, Default)]
pub struct AllowedSigners {
    entries: Vec<AllowedSigner>,
}

impl AllowedSigners {
    /// Parses the file's text. `cert-authority` lines are refused: certificates are not
    /// supported, list the signing keys themselves.
    pub fn parse(text: &str) -> Result<Self> {
        let mut entries = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            entries
                .push(parse_line(trimmed, line).map_err(|reason| Error::Parse { line, reason })?);
        }
        Ok(Self { entries })
    }

    /// Reads and parses a file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// The entries in file order.
    pub fn entries(&self) -> &[AllowedSigner] {
        &self.entries
    }

    /// Whether no key is allowed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries whose key is `key`.
    pub fn for_key<'a>(
        &'a self,
        key: &'a ssh_key::public::KeyData,
    ) -> impl Iterator<Item = &'a AllowedSigner> + 'a {
        self.entries.iter().filter(move |e| e.key.key_data() == key)
    }
}

/// Splits off the next field: a double-quoted string (quotes kept out) or a run of
/// non-whitespace characters in which quoted parts may hold spaces.
fn next_field(rest: &str) -> std::result::Result<(String, &str), String> {
    let rest = rest.trim_start();
    let mut in_quotes = false;
    let mut end = rest.len();
    for (i, c) in rest.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            c if c.is_whitespace() && !in_quotes => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    if in_quotes {
        return Err("unterminated quote".into());
    }
    let field = &rest[..end];
    let field = if field.len() >= 2
        && field.starts_with('"')
        && field.ends_with('"')
        && field.matches('"').count() == 2
    {
        field[1..field.len() - 1].to_owned()
    } else {
        field.to_owned()
    };
    Ok((field, &rest[end..]))
}

fn looks_like_key_type(field: &str) -> bool {
    field.starts_with("ssh-")
        || field.starts_with("ecdsa-")
        || field.starts_with("sk-")
        || field.starts_with("rsa-")
}

fn parse_line(text: &str, line: usize) -> std::result::Result<AllowedSigner, String> {
    let (principals, rest) = next_field(text)?;
    let principals: Vec<String> = principals
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    if principals.is_empty() {
        return Err("no principals".into());
    }
    let (mut field, mut rest) = next_field(rest)?;
    let mut options = None;
    if !looks_like_key_type(&field) {
        options = Some(field);
        (field, rest) = next_field(rest)?;
    }
    if field.is_empty() {
        return Err("missing key type and key".into());
    }
    let key_type = field;
    let (blob, _comment) = next_field(rest)?;
    if blob.is_empty() {
        return Err("missing the base64 key after the key type".into());
    }
    // Messages never quote the line: a tenant may point the agent at a Secret that is not an
    // allowed_signers file, and its content must not reach a status field.
    let key = ssh_key::PublicKey::from_openssh(&format!("{key_type} {blob}")).map_err(|e| {
        if looks_like_key_type(&key_type) {
            format!("invalid {key_type} public key: {e}")
        } else {
            "expected `principals [options] key-type base64-key`".to_owned()
        }
    })?;
    let mut signer = AllowedSigner {
        principals,
        namespaces: None,
        valid_after: None,
        valid_before: None,
        key,
        line,
    };
    if let Some(options) = options {
        for option in split_options(&options)? {
            let (name, value) = match option.split_once('=') {
                Some((n, v)) => (n, Some(unquote(v))),
                None => (option.as_str(), None),
            };
            match (name.to_ascii_lowercase().as_str(), value) {
                ("cert-authority", None) => {
                    return Err("cert-authority is not supported: list the signing keys \
                                themselves instead of a certificate authority"
                        .into());
                }
                ("namespaces", Some(v)) => {
                    signer.namespaces = Some(v.split(',').map(|s| s.trim().to_owned()).collect());
                }
                ("valid-after", Some(v)) => signer.valid_after = Some(parse_time(&v)?),
                ("valid-before", Some(v)) => signer.valid_before = Some(parse_time(&v)?),
                _ => {
                    return Err("unsupported option (supported: namespaces=, valid-after=, \
                                valid-before=)"
                        .into());
                }
            }
        }
    }
    Ok(signer)
}

fn unquote(v: &str) -> String {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
        .to_owned()
}

/// Splits `a,b="x,y",c` at commas outside quotes.
fn split_options(options: &str) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    for c in options.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                current.push(c);
            }
            ',' if !in_quotes => out.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    if in_quotes {
        return Err("unterminated quote in options".into());
    }
    out.push(current);
    if out.iter().any(String::is_empty) {
        return Err("empty option in the options field".into());
    }
    Ok(out)
}

/// `YYYYMMDD[HHMM[SS]][Z]` as Unix seconds. ssh-keygen reads times without `Z` as local
/// time; Plumb reads them as UTC too, so a result never depends on the host's time zone.
pub fn parse_time(value: &str) -> std::result::Result<i64, String> {
    let digits = value.strip_suffix(['Z', 'z']).unwrap_or(value);
    let bad = || "invalid time: expected YYYYMMDD[HHMM[SS]][Z]".to_owned();
    if !matches!(digits.len(), 8 | 12 | 14) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> i64 {
        digits.get(range).and_then(|s| s.parse().ok()).unwrap_or(0)
    };
    let (year, month, day) = (num(0..4), num(4..6), num(6..8));
    let (hour, minute, second) = (num(8..10), num(10..12), num(12..14));
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// OpenSSH `match_pattern_list`: true when some pattern matches and no negated (`!`) one does.
pub fn match_pattern_list(text: &str, patterns: &[String]) -> bool {
    let mut matched = false;
    for pattern in patterns {
        if let Some(negated) = pattern.strip_prefix('!') {
            if wildcard_match(negated.as_bytes(), text.as_bytes()) {
                return false;
            }
        } else if wildcard_match(pattern.as_bytes(), text.as_bytes()) {
            matched = true;
        }
    }
    matched
}

/// `*` matches any run, `?` one byte.
fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH4WNiDTZsNk5UQ5+sKG/rug8pFrM5mrXeWdpkXI8Oop";

    #[test]
    fn parses_principals_options_and_comments() {
        let text = format!(
            "# comment\n\nalice@x.org,*@ops.x.org namespaces=\"git,file\",valid-after=\"20240101\",valid-before=20250101Z {KEY} alice\n\
             \"bob@x.org\" {KEY}\n"
        );
        let signers = AllowedSigners::parse(&text).expect("valid file");
        let [a, b] = signers.entries() else {
            panic!("expected two entries")
        };
        assert_eq!(a.principals, ["alice@x.org", "*@ops.x.org"]);
        assert_eq!(a.line, 3);
        assert!(a.allows_namespace("git") && !a.allows_namespace("other"));
        assert_eq!(a.valid_after, Some(1_704_067_200));
        assert_eq!(a.valid_before, Some(1_735_689_600));
        assert!(a.matches_principal("carol@ops.x.org"));
        assert!(!a.matches_principal("carol@x.org"));
        assert!(a.check_time(1_704_067_199).is_err());
        assert!(a.check_time(1_720_000_000).is_ok());
        assert!(a.check_time(1_735_689_601).is_err());
        assert_eq!(b.principals, ["bob@x.org"]);
        assert!(b.allows_namespace("anything"));
    }

    #[test]
    fn parse_errors_never_quote_the_text() {
        // What a tenant might point the agent at instead of an allowed_signers file.
        for secret in [
            "db-password: hunter2s3cret".to_owned(),
            "user hunter2s3cret".to_owned(),
            "user hunter2s3cret more".to_owned(),
            "user ssh-ed25519 hunter2s3cret".to_owned(),
            format!("user hunter2s3cret=1 {KEY}"),
            format!("user valid-after=hunter2s3cret {KEY}"),
            format!("user namespaces=\"git\",,hunter2s3cret {KEY}"),
        ] {
            let err = AllowedSigners::parse(&secret)
                .expect_err(&secret)
                .to_string();
            assert!(!err.contains("hunter2"), "{err}");
        }
        let err = crate::Keyring::from_armored("hunter2s3cret").expect_err("not a key");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn errors_name_the_line() {
        let err = AllowedSigners::parse(&format!("a@x {KEY}\nb@x cert-authority {KEY}\n"))
            .expect_err("cert-authority refused");
        let msg = err.to_string();
        assert!(
            msg.contains("line 2") && msg.contains("cert-authority"),
            "{msg}"
        );
        for bad in [
            "a@x",
            "a@x ssh-ed25519",
            "a@x ssh-ed25519 AAAAnotbase64!",
            &format!("a@x valid-after=2024 {KEY}"),
            &format!("a@x frobnicate {KEY}"),
            &format!("\"a@x {KEY}"),
        ] {
            let err = AllowedSigners::parse(bad).expect_err(bad);
            assert!(err.to_string().contains("line 1"), "{err}");
        }
    }

    #[test]
    fn patterns_follow_openssh() {
        let p = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(match_pattern_list("a@x.org", &p(&["*@x.org"])));
        assert!(!match_pattern_list("a@x.org", &p(&["*@x.org", "!a@*"])));
        assert!(match_pattern_list("ab", &p(&["a?"])));
        assert!(!match_pattern_list("abc", &p(&["a?"])));
    }

    #[test]
    fn times_with_and_without_clock() {
        assert_eq!(parse_time("19700101"), Ok(0));
        assert_eq!(parse_time("197001010001"), Ok(60));
        assert_eq!(parse_time("19700101000001Z"), Ok(1));
        assert!(parse_time("20241301").is_err());
    }
}
