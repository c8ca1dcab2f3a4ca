//! What an entry of a kustomization is: a URL or remote git spec, inline YAML, or a local path
//! that must stay inside the root.

use std::path::{Component, Path, PathBuf};

/// True if Kustomize may treat `entry` as something other than a local path: a URL (any
/// `scheme:`, `//host`), a remote git spec (`git::`, `gh:`, `git@`, `user@host:`,
/// `github.com/`, `?ref=`, `.git//`, `_git/`, ...). Absolute paths are not URL-like; they
/// fail [`resolve`] instead.
pub(super) fn is_url_like(entry: &str) -> bool {
    let e = entry.trim();
    let lower = e.to_ascii_lowercase();
    has_remote_marker(&lower)
        || lower.starts_with("//")
        || [
            "git::",
            "gh:",
            "git@",
            "github.com/",
            "github.com:",
            "gitlab.com/",
            "bitbucket.org/",
        ]
        .iter()
        .any(|p| lower.starts_with(p))
        || has_scheme(e)
        || e.split_once(':')
            .is_some_and(|(user_host, _)| user_host.contains('@'))
}

/// Markers of a URL or remote git spec that cannot be mistaken in YAML text.
fn has_remote_marker(lower: &str) -> bool {
    const QUERY_KEYS: [&str; 5] = ["ref=", "version=", "submodules=", "timeout=", "cache="];
    lower.contains("://")
        || lower.contains("_git/")
        || lower.contains(".git/")
        || lower.contains(".git?")
        || lower.ends_with(".git")
        || QUERY_KEYS
            .iter()
            .any(|k| lower.contains(&format!("?{k}")) || lower.contains(&format!("&{k}")))
}

/// `scheme:something` as a URL parser reads it (a letter, then letters, digits, `+`, `-`,
/// `.`), the scheme at least two characters so that nothing resembling a drive letter counts.
/// A bare `key:` (the first token of YAML text) is no URL.
fn has_scheme(e: &str) -> bool {
    let b = e.as_bytes();
    if !b.first().is_some_and(u8::is_ascii_alphabetic) {
        return false;
    }
    let n = b
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        .count();
    n >= 2 && b.get(n) == Some(&b':') && b.len() > n + 1
}

/// True if Kustomize reads `entry` (of `patchesStrategicMerge`, or of a plugin list) as YAML
/// text rather than as a path. Kustomize tries the text first and falls back to a path;
/// text with a control character (a newline) can never be fetched as a URL (Go's URL parser
/// rejects it) and text starting with `{` or `[` has no scheme, so such a fallback could only
/// load a local file, which the root-only load restrictor confines.
pub(super) fn is_inline(entry: &str) -> bool {
    entry.bytes().any(|b| b < 0x20 || b == 0x7f)
        || matches!(entry.trim_start().as_bytes().first(), Some(b'{' | b'['))
}

/// Resolves `entry` (relative to `base`, both relative to the root) lexically; `None` if it
/// is absolute or would leave the root.
pub(super) fn resolve(base: &Path, entry: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in base.join(entry).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_detection() {
        for remote in [
            "https://github.com/org/repo//base?ref=v1",
            "github.com/org/repo/base",
            "GitHub.com/org/repo",
            "git::https://example.com/repo.git",
            "git@github.com:org/repo.git",
            "deploy@example.com:org/repo",
            "ssh://git@example.com/repo",
            "example.com/repo.git//base?ref=main",
            "example.com/org/repo?version=v1",
            "dev.azure.com/org/_git/repo",
            "gh:org/repo",
            "//127.0.0.1/x",
            "http:127.0.0.1/x",
            "HTTPS://EXAMPLE.COM/x",
            "file:///etc/passwd",
            " http://127.0.0.1/x",
            "repo.git",
        ] {
            assert!(is_url_like(remote), "{remote}");
        }
        for local in [
            "../base",
            "deployment.yaml",
            "github-app/",
            "./overlays/prod",
            ".github/x.yaml",
            "a/.gitignore",
            "/etc/passwd",
            "c:x",
        ] {
            assert!(!is_url_like(local), "{local}");
        }
    }

    #[test]
    fn resolve_stays_in_root() {
        assert_eq!(
            resolve(Path::new("a/b"), "../c"),
            Some(PathBuf::from("a/c"))
        );
        assert_eq!(resolve(Path::new("a"), "../../x"), None);
        assert_eq!(resolve(Path::new("a"), "../a/../../x"), None);
        assert_eq!(resolve(Path::new("a"), "/etc"), None);
        assert_eq!(resolve(Path::new(""), "."), Some(PathBuf::new()));
    }
}
