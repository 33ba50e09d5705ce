//! The path invariant: for any input path the gateway accepts, the path it forwards decodes to
//! exactly the segments it matched, is itself canonical (a fixed point), and holds no dot
//! segment, separator or control character in any encoding, with or without matrix parameters.
#![no_main]

use keygate::path::{PathRules, canonicalize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    for rules in [PathRules { allow_semicolon: false }, PathRules { allow_semicolon: true }] {
        let Ok(matched) = canonicalize(raw, rules) else { continue };
        let forwarded = matched.encoded(rules);
        // Routes see each segment without its matrix parameters: never empty, never a dot segment.
        assert_eq!(matched.matched().len(), matched.segments.len());
        for name in matched.matched() {
            assert!(!name.is_empty() && !name.chars().all(|c| c == '.' || c == ' '), "{raw:?}");
            assert!(!name.contains(';'), "{raw:?}");
        }
        assert!(forwarded.starts_with('/'));
        let again = canonicalize(&forwarded, rules).expect("the forwarded path is accepted again");
        assert_eq!(again.segments, matched.segments, "{raw:?} -> {forwarded:?}");
        assert_eq!(again.encoded(rules), forwarded, "not a fixed point: {raw:?}");
        for seg in forwarded.split('/').skip(1) {
            assert!(!seg.contains(['\\', '?', '#']) && !seg.chars().any(char::is_control), "{forwarded:?}");
        }
        for seg in &matched.segments {
            let name = seg.split(';').next().unwrap_or(seg);
            assert!(name != "." && name != "..", "dot segment from {raw:?}");
            assert!(!seg.contains(['/', '\\']) && !seg.chars().any(char::is_control), "{raw:?}");
            assert!(rules.allow_semicolon || !seg.contains(';'), "{raw:?}");
            // Decoding again, as an origin that decodes twice would, never yields a dot segment
            // or a separator either.
            let mut cur = seg.to_string();
            while let Some(next) = keygate::path::percent_decode(&cur).map(|c| c.into_owned()) {
                if next == cur { break; }
                let name = next.split(';').next().unwrap_or(&next);
                assert!(name != "." && name != ".." && !next.contains(['/', '\\']), "double-decoding {raw:?}");
                cur = next;
            }
        }
    }
});
