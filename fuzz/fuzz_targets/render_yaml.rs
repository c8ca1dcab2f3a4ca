//! Arbitrary bytes through plumb-render's YAML loading: a manifest file in a directory,
//! rendered with the default options, exactly as `plumb render` reads it.
//!
//! The parser is not public (`parse::parse_manifests` is crate-private), so the input goes
//! through the file system; the render must return `Ok` or `Err`, never panic, overflow the
//! stack, or run away in time or memory.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use plumb_render::{RenderOptions, render};

/// One directory for the whole fuzzing process; each input overwrites its single file.
fn workdir() -> &'static (tempfile::TempDir, PathBuf) {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory for fuzz inputs");
        let file = dir.path().join("input.yaml");
        (dir, file)
    })
}

fuzz_target!(|data: &[u8]| {
    let (dir, file) = workdir();
    std::fs::write(file, data).expect("writing the fuzz input");
    let opts = RenderOptions::default();
    if let Ok(manifests) = render(dir.path(), &opts) {
        assert!(manifests.len() <= opts.max_documents);
    }
});
