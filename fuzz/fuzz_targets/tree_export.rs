//! Tree export with hostile trees: whatever the tree (duplicate names, `.git` spellings,
//! links to `.`, `..` or absolute paths, deep nesting), an export either fails or leaves
//! every file and every resolvable link inside its destination, and nothing outside it.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use plumb_source::export::{ExportLimits, ItemMode, MemSource, ObjectId, TreeItem, export_from};

const NAMES: [&str; 10] = ["s", "a", "b", ".", "..", ".git", ".GIT ", "git~1", "x", "S"];
const TARGETS: [&str; 8] = [".", "..", "../..", "s/..", "/tmp", "a/b", "s/s/..", "x"];

/// Builds a tree from the bytes: each entry takes a byte for its kind and one for its name;
/// trees recurse (up to `depth`).
fn build(source: &mut MemSource, data: &mut &[u8], depth: usize) -> ObjectId {
    let mut items = Vec::new();
    let count = take(data) % 5;
    for _ in 0..count {
        let kind = take(data);
        let name = NAMES[usize::from(take(data)) % NAMES.len()].as_bytes().to_vec();
        let (mode, id) = match kind % 4 {
            0 if depth > 0 => (ItemMode::Tree, build(source, data, depth - 1)),
            1 => {
                let target = TARGETS[usize::from(take(data)) % TARGETS.len()];
                (ItemMode::Link, source.add_blob(target))
            }
            2 => (ItemMode::Executable, source.add_blob("#!/bin/sh\n")),
            _ => (ItemMode::File, source.add_blob("kind: ConfigMap\n")),
        };
        items.push(TreeItem { name, mode, id });
    }
    source.add_tree(items)
}

fn take(data: &mut &[u8]) -> u8 {
    match data.split_first() {
        Some((b, rest)) => {
            *data = rest;
            *b
        }
        None => 0,
    }
}

/// Every path below `dir` (links not followed).
fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        out.push(path.clone());
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&path, out);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let mut source = MemSource::default();
    let root = build(&mut source, &mut data, 4);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dest = tmp.path().join("a/b/c/dest");
    let result = export_from(
        &source,
        root,
        "fuzz",
        &dest,
        &[],
        &ExportLimits::default(),
    );
    let mut all = Vec::new();
    walk(tmp.path(), &mut all);
    let dest_real = std::fs::canonicalize(&dest).ok();
    for path in &all {
        let inside = path.starts_with(&dest);
        let is_parent = dest.starts_with(path);
        assert!(inside || is_parent, "written outside the export: {path:?}");
        if inside
            && let (Ok(real), Some(root)) = (std::fs::canonicalize(path), &dest_real)
        {
            assert!(real.starts_with(root), "{path:?} resolves outside to {real:?}");
        }
    }
    if result.is_err() {
        assert!(
            all.iter().all(|p| !p.starts_with(&dest) || p == &dest),
            "a failed export left files: {all:?}"
        );
    }
});
