//! The one canonical form of a request path. It is computed once per request: routes are matched
//! on its segments, and the origin receives exactly those segments, re-encoded by
//! [`CanonicalPath::encoded`]. Nothing else about the client's path is ever forwarded.
//!
//! Canonicalisation:
//! - the raw path is split on `/`; empty segments (`//`) are dropped; a trailing `/` is kept as
//!   a flag, since some origins treat `/a/` and `/a` differently;
//! - each segment is percent-decoded once (upper- or lower-case hex). Invalid escapes or a result
//!   that is not UTF-8 make the path invalid;
//! - a segment is refused when, decoded, it is `.` or `..`, or holds `/`, `\`, `;` (unless the
//!   policy allows matrix parameters), NUL or any other control character. The same test runs on
//!   the segment decoded again, and again, until decoding changes nothing, so double (or deeper)
//!   encoding (`%252e%252e`, `%252F`) cannot smuggle a separator or a dot segment past an origin
//!   that decodes twice.
//!
//! Invariant (property-tested here and fuzzed in `fuzz/`): for every accepted input, decoding the
//! encoded path gives the matched segments again, and no segment of it is a dot segment.

use std::borrow::Cow;
use std::fmt::Write;

/// Why a path was refused (`400 invalid_path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// A bad percent escape, or bytes that are not UTF-8.
    BadEncoding,
    /// A `.` or `..` segment, in any encoding.
    DotSegment,
    /// A `/`, `\`, `;`, NUL or control character inside a segment, in any encoding.
    ForbiddenCharacter,
}

/// What the path rules allow beyond the defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathRules {
    /// Allow `;` inside segments (matrix parameters). Off by default.
    pub allow_semicolon: bool,
}

/// A request path after canonicalisation: the decoded segments, re-encoded for the origin, and
/// what routes are matched on ([`CanonicalPath::matched`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath<'a> {
    pub segments: Vec<Cow<'a, str>>,
    /// With matrix parameters allowed and present: each segment without its `;params`, which is
    /// what Tomcat, Spring, Jetty and JAX-RS route on. `None` when no segment has a `;`.
    pub names: Option<Vec<Cow<'a, str>>>,
    /// The raw path ended in `/` (after at least one segment).
    pub trailing_slash: bool,
}

impl<'a> CanonicalPath<'a> {
    /// The segments routes are matched on, and path parameters read from: the segments, minus
    /// any matrix parameters.
    pub fn matched(&self) -> &[Cow<'a, str>] {
        self.names.as_deref().unwrap_or(&self.segments)
    }
}

/// Characters that some origin, file system or normaliser (NFKC, IIS, Windows) reads as `.`,
/// `/` or `\`: refused inside segments like the real ones.
const LOOKALIKES: [char; 12] = [
    '\u{FF0E}', // fullwidth full stop
    '\u{FE52}', // small full stop
    '\u{2024}', // one dot leader
    '\u{FF0F}', // fullwidth solidus
    '\u{2215}', // division slash
    '\u{2044}', // fraction slash
    '\u{29F8}', // big solidus
    '\u{FF3C}', // fullwidth reverse solidus
    '\u{2216}', // set minus
    '\u{29F9}', // big reverse solidus
    '\u{FE68}', // small reverse solidus
    '\u{3002}', // ideographic full stop
];

/// Unicode format characters (category Cf): invisible, and stripped by some normalisers.
fn is_format(c: char) -> bool {
    matches!(c as u32,
        0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E
            | 0x2060..=0x2064 | 0x2066..=0x206F | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x1D173..=0x1D17A
            | 0xE0001 | 0xE0020..=0xE007F)
}

/// Percent-decodes; `None` for a bad escape or a result that is not UTF-8.
pub fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = (bytes.next()? as char).to_digit(16)?;
            let lo = (bytes.next()? as char).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

fn check_segment(s: &str, rules: PathRules) -> Result<(), PathError> {
    // With matrix parameters, Tomcat and others read `..;x=1` as `..`: the part before the
    // first `;` is the segment that counts, and it may not be empty.
    let name = s.split(';').next().unwrap_or(s);
    // `.`, `..`, and what Windows and IIS trim to them (`..%20`, `...`, `. .`).
    if !name.is_empty() && name.chars().all(|c| c == '.' || c == ' ') {
        return Err(PathError::DotSegment);
    }
    if name.is_empty() && s.contains(';') {
        return Err(PathError::ForbiddenCharacter);
    }
    let bad = |c: char| {
        c == '/'
            || c == '\\'
            || (c == ';' && !rules.allow_semicolon)
            || c.is_control()
            || is_format(c)
            || LOOKALIKES.contains(&c)
    };
    if s.contains(bad) {
        return Err(PathError::ForbiddenCharacter);
    }
    Ok(())
}

/// Checks a decoded segment, and what further decoding rounds would make of it.
fn check_all_rounds(decoded: &str, rules: PathRules) -> Result<(), PathError> {
    check_segment(decoded, rules)?;
    let mut current = Cow::Borrowed(decoded);
    // Each round that changes something shortens the text, so this ends.
    while current.contains('%') {
        // A literal `%` that is not an escape (`100%`) is data: nothing more to decode.
        let next = match percent_decode(&current) {
            Some(n) if n != current => n.into_owned(),
            _ => break,
        };
        check_segment(&next, rules)?;
        current = Cow::Owned(next);
    }
    Ok(())
}

/// Canonicalises a raw (still percent-encoded) URL path.
pub fn canonicalize(raw: &str, rules: PathRules) -> Result<CanonicalPath<'_>, PathError> {
    let mut segments = Vec::with_capacity(raw.bytes().filter(|&b| b == b'/').count() + 1);
    for s in raw.split('/').filter(|s| !s.is_empty()) {
        let decoded = percent_decode(s).ok_or(PathError::BadEncoding)?;
        check_all_rounds(&decoded, rules)?;
        segments.push(decoded);
    }
    let trailing_slash = !segments.is_empty() && raw.ends_with('/');
    let names = (rules.allow_semicolon && segments.iter().any(|s| s.contains(';'))).then(|| {
        segments
            .iter()
            .map(|s| match s.split_once(';') {
                Some((name, _)) => Cow::Owned(name.to_owned()),
                None => s.clone(),
            })
            .collect()
    });
    Ok(CanonicalPath {
        segments,
        names,
        trailing_slash,
    })
}

/// Characters kept as they are in a forwarded segment: RFC 3986 `pchar` without `%` (always
/// encoded) and without `;` (kept only when the policy allows matrix parameters).
fn keep(b: u8, rules: PathRules) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
        )
        || (b == b';' && rules.allow_semicolon)
}

impl CanonicalPath<'_> {
    /// The path the origin receives: each segment percent-encoded (upper-case hex), joined by
    /// `/`, with the trailing slash kept.
    pub fn encoded(&self, rules: PathRules) -> String {
        let mut out = String::with_capacity(self.segments.iter().map(|s| s.len() + 1).sum::<usize>() + 1);
        for s in &self.segments {
            out.push('/');
            for b in s.bytes() {
                if keep(b, rules) {
                    out.push(char::from(b));
                } else {
                    let _ = write!(out, "%{b:02X}");
                }
            }
        }
        if out.is_empty() || self.trailing_slash {
            out.push('/');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STRICT: PathRules = PathRules {
        allow_semicolon: false,
    };

    fn segs(raw: &str) -> Vec<String> {
        canonicalize(raw, STRICT)
            .unwrap()
            .segments
            .into_iter()
            .map(Cow::into_owned)
            .collect()
    }

    #[test]
    fn decodes_once_and_collapses_empty_segments() {
        assert_eq!(segs("/%69nternal//x"), ["internal", "x"]);
        assert_eq!(segs("/a/b%20c"), ["a", "b c"]);
        assert_eq!(segs("/"), Vec::<String>::new());
        assert_eq!(segs("/a/100%25"), ["a", "100%"]);
        assert_eq!(canonicalize("/a/100%", STRICT), Err(PathError::BadEncoding));
    }

    #[test]
    fn refuses_separators_and_dot_segments_in_any_encoding() {
        for raw in [
            "/public/..%2Finternal/x",
            "/public/..%2finternal/x",
            "/public/%2e%2e/internal",
            "/public/%2E%2E/internal",
            "/public/%2e/x",
            "/public/../internal",
            "/public/./x",
            "/public/%252e%252e/internal",
            "/public/%25252e%25252e/internal",
            "/public/..%252Finternal",
            "/public/a%5Cb",
            "/public/a\\b",
            "/public/a%3Bjsessionid=1",
            "/public/a;b",
            "/public/a%00b",
            "/public/a%0ab",
            "/public/a%7Fb",
            "/public/a%C2%85b",
            "/public/%2525252F",
            "/public/%EF%BC%8E%EF%BC%8E/internal",
            "/public/a%EF%BC%8Fb",
            "/public/a%E2%88%95b",
            "/public/..%20",
            "/public/...",
            "/public/.%20.",
            "/public/a%E2%80%AEb",
            "/public/a%E2%80%8Bb",
            "/public/%25EF%25BC%258E%25EF%25BC%258E",
        ] {
            assert!(canonicalize(raw, STRICT).is_err(), "{raw}");
        }
        assert_eq!(canonicalize("/a/%zz", STRICT), Err(PathError::BadEncoding));
        assert_eq!(canonicalize("/a/%ff", STRICT), Err(PathError::BadEncoding));
        assert_eq!(canonicalize("/a/%2e%2e", STRICT), Err(PathError::DotSegment));
        assert_eq!(
            canonicalize("/a/b%2Fc", STRICT),
            Err(PathError::ForbiddenCharacter)
        );
    }

    #[test]
    fn semicolons_only_when_allowed() {
        let open = PathRules {
            allow_semicolon: true,
        };
        let p = canonicalize("/a/b;v=1", open).unwrap();
        assert_eq!(p.segments, ["a", "b;v=1"]);
        assert_eq!(p.encoded(open), "/a/b;v=1");
        assert!(canonicalize("/a/b;v=1", STRICT).is_err());
        // Still no separators or dot segments, also not before a parameter (`..;/`).
        assert_eq!(canonicalize("/a/..;/b", open), Err(PathError::DotSegment));
        assert_eq!(canonicalize("/a/.;x=1/b", open), Err(PathError::DotSegment));
        assert_eq!(canonicalize("/a/%2e%2e;x/b", open), Err(PathError::DotSegment));
        assert!(canonicalize("/a/..x;y/b", open).is_ok());
        // Routes see the segment without its parameters; the origin gets them.
        let p = canonicalize("/licenses;x/1;v=2/", open).unwrap();
        assert_eq!(p.matched(), ["licenses", "1"]);
        assert_eq!(p.encoded(open), "/licenses;x/1;v=2/");
        assert_eq!(canonicalize("/a/;x/b", open), Err(PathError::ForbiddenCharacter));
        assert_eq!(canonicalize("/a/b", open).unwrap().names, None);
        assert!(canonicalize("/a/%2e%2e/b", open).is_err());
    }

    #[test]
    fn encodes_what_it_matched() {
        let p = canonicalize("/a/b%20c/%7Euser/%41/x%25y/", STRICT).unwrap();
        assert_eq!(p.encoded(STRICT), "/a/b%20c/~user/A/x%25y/");
        assert_eq!(canonicalize("", STRICT).unwrap().encoded(STRICT), "/");
        assert_eq!(canonicalize("//", STRICT).unwrap().encoded(STRICT), "/");
        assert_eq!(
            canonicalize("/caf%C3%A9", STRICT).unwrap().encoded(STRICT),
            "/caf%C3%A9"
        );
        // A literal `%` is data, and is encoded so the origin decodes it to `%` again.
        assert_eq!(
            canonicalize("/100%25", STRICT).unwrap().encoded(STRICT),
            "/100%25"
        );
    }

    proptest! {
        #[test]
        fn forwarded_path_decodes_to_the_matched_segments(raw in "(/([a-zA-Z0-9._~;%\\\\-]|%[0-9a-fA-F]{2}|%25[0-9a-fA-F]{2}){0,6}){0,6}/?") {
            for rules in [STRICT, PathRules { allow_semicolon: true }] {
                if let Ok(p) = canonicalize(&raw, rules) {
                    let forwarded = p.encoded(rules);
                    let again = canonicalize(&forwarded, rules).expect("the forwarded path is canonical");
                    prop_assert_eq!(&again.segments, &p.segments);
                    prop_assert_eq!(again.encoded(rules), forwarded.clone());
                    prop_assert_eq!(p.matched().len(), p.segments.len());
                    for s in forwarded.split('/').chain(p.segments.iter().map(|s| s.as_ref())) {
                        let name = s.split(';').next().unwrap_or(s);
                        prop_assert!(name != "." && name != "..");
                        prop_assert!(!s.contains(['/', '\\']));
                    }
                }
            }
        }
    }
}
