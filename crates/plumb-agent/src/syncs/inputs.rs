//! Whether a new revision can change what a Sync renders, from the exported file lists alone.
//!
//! A plain directory of manifests renders from the files below its path only: the renderer
//! reads nothing else and refuses symlinks. A Kustomization anywhere below the path (it may
//! load bases and files from anywhere in the source) or a Helm chart (its dependencies and
//! values files may lie outside the path) can read outside it, and a symlink is not
//! followed here, so any of them makes the answer "may change": the Sync renders as before.

use plumb_source::export::{ExportedFile, entries_under};

/// Whether rendering `path` (a Sync's `spec.path`) from the files `new` gives exactly what
/// it gave from `old`: the same paths, modes and Git object ids below the path, and nothing
/// below it that may read outside it. Both lists come from this agent's own exports (see
/// [`crate::artifacts::ArtifactStore::files_of`]).
pub(super) fn same_input(old: &[ExportedFile], new: &[ExportedFile], path: Option<&str>) -> bool {
    let Some(dir) = normalize(path.unwrap_or("")) else {
        return false;
    };
    let below = entries_under(new, &dir);
    if below.is_empty() {
        return false;
    }
    let closed = below.iter().all(|f| {
        let name = f.name();
        !f.is_link()
            && name != plumb_render::CHART_FILE
            && !plumb_render::KUSTOMIZATION_FILES.contains(&name)
    });
    closed && entries_under(old, &dir) == below
}

/// `path` as the renderer reads it (`""`, `.` and `./x/` are the root and `x`), `/`-joined;
/// `None` for what it refuses (`..`, absolute paths).
fn normalize(path: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    if path.starts_with('/') {
        return None;
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use plumb_source::export::ObjectId;

    fn file(path: &str, mode: &'static str, content: u8) -> ExportedFile {
        let mut bytes = [0u8; 20];
        bytes[0] = content;
        ExportedFile {
            path: path.to_owned(),
            mode,
            id: ObjectId::from_bytes_or_panic(&bytes),
        }
    }

    fn tree(files: &[(&str, u8)]) -> Vec<ExportedFile> {
        let mut out: Vec<_> = files.iter().map(|(p, c)| file(p, "100644", *c)).collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    #[test]
    fn a_change_elsewhere_leaves_a_plain_directory_unchanged() {
        let old = tree(&[("apps/a/x.yaml", 1), ("apps/b/y.yaml", 1), ("README", 1)]);
        let new = tree(&[("apps/a/x.yaml", 1), ("apps/b/y.yaml", 2), ("README", 2)]);
        for path in ["apps/a", "./apps/a/", "apps//a"] {
            assert!(same_input(&old, &new, Some(path)), "{path}");
        }
        assert!(!same_input(&old, &new, Some("apps/b")));
        assert!(!same_input(&old, &new, Some("apps")));
        assert!(!same_input(&old, &new, None), "the root holds the change");
    }

    #[test]
    fn added_removed_or_retyped_files_below_the_path_are_changes() {
        let old = tree(&[("a/x.yaml", 1)]);
        assert!(!same_input(
            &old,
            &tree(&[("a/x.yaml", 1), ("a/y.yaml", 1)]),
            Some("a")
        ));
        assert!(!same_input(
            &tree(&[("a/x.yaml", 1), ("a/y.yaml", 1)]),
            &old,
            Some("a")
        ));
        let executable = vec![file("a/x.yaml", "100755", 1)];
        assert!(!same_input(&old, &executable, Some("a")));
    }

    #[test]
    fn what_may_read_outside_the_path_is_always_rendered() {
        for name in [
            "kustomization.yaml",
            "kustomization.yml",
            "Kustomization",
            "Chart.yaml",
        ] {
            let files = tree(&[
                ("a/x.yaml", 1),
                (&format!("a/sub/{name}"), 1),
                ("base/b.yaml", 1),
            ]);
            assert!(!same_input(&files, &files, Some("a")), "{name}");
        }
        let link = vec![file("a/l", "120000", 1), file("a/x.yaml", "100644", 1)];
        assert!(!same_input(&link, &link, Some("a")));
    }

    #[test]
    fn a_missing_or_refused_path_is_rendered() {
        let files = tree(&[("a/x.yaml", 1)]);
        assert!(!same_input(&files, &files, Some("b")));
        assert!(!same_input(&files, &files, Some("a/../a")));
        assert!(!same_input(&files, &files, Some("/a")));
        assert!(
            !same_input(&files, &files, Some("a/x.yaml")),
            "a file, not a directory"
        );
    }
}
