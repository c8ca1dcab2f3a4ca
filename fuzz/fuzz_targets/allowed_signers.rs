//! Arbitrary bytes as an `allowed_signers` file (lossy UTF-8, as `AllowedSigners::from_file`
//! would see any text): parsing must return `Ok` or `Err`, never panic, and every parsed
//! entry must answer the questions signature verification asks of it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use plumb_source::AllowedSigners;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(signers) = AllowedSigners::parse(&text) else {
        return;
    };
    for entry in signers.entries() {
        assert!(entry.line >= 1, "line numbers are 1-based");
        assert!(!entry.principals.is_empty(), "an entry without principals");
        if let (Some(after), Some(before)) = (entry.valid_after, entry.valid_before) {
            // Both bounds are inclusive, so a time between them must pass.
            if after <= before {
                assert!(entry.check_time(after).is_ok());
            }
        }
        // Extreme commit times come from untrusted commits: no overflow, no panic.
        for time in [i64::MIN, -1, 0, i64::MAX] {
            let _ = entry.check_time(time);
        }
        let _ = entry.allows_namespace("git");
        let _ = entry.matches_principal(&entry.principal());
        let _ = signers.for_key(entry.key.key_data()).count();
    }
});
