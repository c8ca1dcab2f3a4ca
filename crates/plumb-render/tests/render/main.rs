//! Render tests on temporary directory fixtures.

use std::fs;
use std::path::Path;

use plumb_render::{RenderError, RenderOptions, render};

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

fn cm(name: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n")
}

fn err(dir: &Path) -> RenderError {
    render(dir, &RenderOptions::default()).unwrap_err()
}

fn has_kustomize() -> bool {
    ["kustomize", "kubectl"].iter().any(|b| {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(b).is_file()))
            .unwrap_or(false)
    })
}

mod helm;
mod kustomize;
mod plain;
mod prebuild;
