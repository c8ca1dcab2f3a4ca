//! Symlinks must stay inside the tree: each is resolved through the tree's other links.

use std::collections::{HashMap, HashSet};

use super::walk::Reader;
use super::{Entry, Error, Kind, Result};

/// How many symlinks a path may pass through before it counts as a loop.
const MAX_SYMLINK_HOPS: usize = 40;

/// Resolves every symlink over the exported entries and refuses any that ends (or passes)
/// outside the root.
pub(super) fn check_symlinks(reader: &Reader<'_>, entries: &[Entry]) -> Result<()> {
    let mut links = HashMap::new();
    for entry in entries {
        if entry.kind == Kind::Link {
            let target = reader.blob(entry.id, &entry.path)?;
            links.insert(
                entry.path.clone(),
                String::from_utf8_lossy(&target).into_owned(),
            );
        }
    }
    for (path, target) in &links {
        let escapes = || Error::SymlinkEscapes {
            commit: reader.commit.to_owned(),
            path: path.clone(),
            target: target.clone(),
        };
        let mut base: Vec<String> = path.split('/').map(str::to_owned).collect();
        base.pop();
        let mut hops = 0;
        if resolve(base, target, &links, &mut hops, &mut HashSet::new()).is_none() {
            return Err(escapes());
        }
    }
    Ok(())
}

/// Follows `target` from directory `base` through the tree's symlinks; `None` when it leaves
/// the root, is absolute, or loops.
fn resolve(
    mut stack: Vec<String>,
    target: &str,
    links: &HashMap<String, String>,
    hops: &mut usize,
    visiting: &mut HashSet<String>,
) -> Option<Vec<String>> {
    if target.starts_with('/') || target.is_empty() {
        return None;
    }
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                stack.pop()?;
            }
            name => {
                stack.push(name.to_owned());
                let here = stack.join("/");
                if let Some(next) = links.get(&here) {
                    *hops += 1;
                    if *hops > MAX_SYMLINK_HOPS || !visiting.insert(here.clone()) {
                        return None;
                    }
                    stack.pop();
                    stack = resolve(stack, next, links, hops, visiting)?;
                    visiting.remove(&here);
                }
            }
        }
    }
    Some(stack)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn escapes(path: &str, all: &HashMap<String, String>) -> bool {
        let mut base: Vec<String> = path.split('/').map(str::to_owned).collect();
        base.pop();
        resolve(base, &all[path], all, &mut 0, &mut HashSet::new()).is_none()
    }

    #[test]
    fn symlinks_are_resolved_through_other_links() {
        let all = links(&[
            ("a", "b/c"),
            ("up", ".."),
            ("sub/up", ".."),
            ("sub/via", "up/.."),
            ("abs", "/etc/passwd"),
            ("loop1", "loop2"),
            ("loop2", "loop1"),
            ("deep/ok", "../a"),
        ]);
        assert!(!escapes("a", &all));
        assert!(escapes("up", &all));
        assert!(!escapes("sub/up", &all));
        // Lexically sub/up/.. = sub, but sub/up is the root, so this is the root's parent.
        assert!(escapes("sub/via", &all));
        assert!(escapes("abs", &all));
        assert!(escapes("loop1", &all));
        assert!(!escapes("deep/ok", &all));
    }
}
