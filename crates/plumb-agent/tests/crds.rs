//! The committed CRD YAML must be what the Rust types generate.

#[test]
fn committed_crds_are_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/crds.yaml");
    let generated = plumb_agent::api::crds_yaml();
    if std::env::var_os("PLUMB_BLESS").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "deploy/crds.yaml is stale: regenerate it with `PLUMB_BLESS=1 cargo test -p plumb-agent --test crds` \
         (or `plumb install --export --crds-only > deploy/crds.yaml`)"
    );
}
