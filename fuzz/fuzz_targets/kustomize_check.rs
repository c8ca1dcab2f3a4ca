//! Arbitrary UTF-8 through the pure Kustomize pre-build check: as a kustomization built for
//! manifests, as one used as a plugin directory, and as a file of plugin configs.
//!
//! Each must return `Ok` or `Err`, never panic or run away; every path returned must stay
//! inside the source root (only normal components), and every error must render.

#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use plumb_render::{
    KustomizationRole, Reference, check_kustomization_text_as, check_plugin_config_text,
};

fn check(result: plumb_render::Result<Vec<Reference>>) {
    match result {
        Ok(refs) => {
            for r in refs {
                assert!(
                    r.path
                        .components()
                        .all(|c| matches!(c, Component::Normal(_))),
                    "{r:?} leaves the root"
                );
            }
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert!(e.metric_label().starts_with("render_"));
            assert!(!e.is_retryable());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("app/kustomization.yaml");
    check(check_kustomization_text_as(
        file,
        text,
        KustomizationRole::Manifests,
    ));
    check(check_kustomization_text_as(
        file,
        text,
        KustomizationRole::PluginConfigs,
    ));
    check(check_plugin_config_text(
        Path::new("app/plugins/t.yaml"),
        Path::new("app"),
        text,
    ));
});
