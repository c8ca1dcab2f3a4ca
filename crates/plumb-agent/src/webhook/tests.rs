//! Unit tests of `webhook`.

use super::*;

#[test]
fn spellings_of_one_repository_normalise_alike() {
    let want = "github.com/plumb-dev/plumb";
    for url in [
        "https://github.com/plumb-dev/plumb.git",
        "https://github.com/plumb-dev/plumb",
        "https://GitHub.com/plumb-dev/plumb/",
        "git@github.com:plumb-dev/plumb.git",
        "ssh://git@github.com/plumb-dev/plumb.git",
        "ssh://git@github.com:22/plumb-dev/plumb",
        "https://user@github.com:443/plumb-dev/plumb.git/",
    ] {
        assert_eq!(normalize_url(url), want, "{url}");
    }
    assert_ne!(
        normalize_url("https://github.com/plumb-dev/other.git"),
        want
    );
    // The path stays case-sensitive: some hosts treat it so.
    assert_ne!(normalize_url("https://github.com/Plumb-dev/plumb"), want);
    assert_eq!(normalize_url("file:///srv/git/app.git"), "/srv/git/app");
}

#[test]
fn hmac_signatures_verify_only_with_the_token() {
    let body = br#"{"ref":"refs/heads/main"}"#;
    let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let good = format!("sha256={hex}");
    assert_eq!(verify_hmac(b"s3cret", Some(&good), body), Ok(()));
    assert!(verify_hmac(b"other", Some(&good), body).is_err());
    assert!(verify_hmac(b"s3cret", Some(&good), b"tampered").is_err());
    assert!(verify_hmac(b"s3cret", None, body).is_err());
    assert!(verify_hmac(b"s3cret", Some(&hex), body).is_err());
    assert!(verify_hmac(b"s3cret", Some("sha256=zz"), body).is_err());
}

#[test]
fn receiver_names_are_dns_like() {
    assert!(valid_receiver_name("github-main"));
    assert!(!valid_receiver_name(""));
    assert!(!valid_receiver_name("../x"));
    assert!(!valid_receiver_name("Upper"));
    assert!(!valid_receiver_name("-x"));
}
