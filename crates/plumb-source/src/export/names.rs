//! Which tree entry names are safe to write, and how a case-insensitive filesystem sees them.

/// Code points that HFS+ ignores in names (so `.g\u{200c}it` is `.git` there).
fn hfs_ignorable(c: char) -> bool {
    matches!(c,
        '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{206a}'..='\u{206f}' | '\u{feff}')
}

/// A name as a case-insensitive filesystem that drops ignorable code points sees it.
pub(crate) fn fold(name: &str) -> String {
    name.chars()
        .filter(|c| !hfs_ignorable(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

/// Refuses names that could leave the destination or that some filesystem or git itself
/// treats as `.git` (any case, HFS+ ignorable code points, NTFS trailing dots and spaces,
/// alternate data streams and the 8.3 short name `git~1`).
pub(super) fn check_name(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name == "." || name == ".." {
        return Err("'.' and '..' are not allowed as names");
    }
    if name.contains(['/', '\0', '\\']) {
        return Err("a name contains '/', '\\' or NUL");
    }
    let folded = fold(name);
    let ntfs = folded
        .split(':')
        .next()
        .unwrap_or_default()
        .trim_end_matches(['.', ' ']);
    if ntfs == ".git" || ntfs == "git~1" {
        return Err("'.git' (in any spelling a filesystem may treat as .git) is not allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_leave_the_tree_or_mean_git_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            ".git",
            ".GIT",
            "a\\b",
            ".git.",
            ".git ",
            ".Git. .",
            "git~1",
            "GIT~1",
            ".git::$INDEX_ALLOCATION",
            ".g\u{200c}it",
            "\u{feff}.git",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["..a", ".gitignore", ".github", "git", "a.git", "git~2"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn folding_finds_names_a_case_insensitive_filesystem_merges() {
        assert_eq!(fold("Prod"), fold("prod"));
        assert_eq!(fold("pr\u{200d}od"), fold("prod"));
        assert_ne!(fold("prod"), fold("prod2"));
    }
}
