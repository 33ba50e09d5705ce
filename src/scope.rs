//! Scopes, the grants keys hold, and the scope templates routes require.
//!
//! Grammar (case-sensitive):
//! ```text
//! scope    = segment *( sep segment )
//! sep      = "." / ":"                     ; distinct: `license.read` is not `license:read`
//! segment  = 1*( ALPHA / DIGIT / "_" / "-" )
//! grant    = gseg *( sep gseg ) [ sep "**" ]
//! gseg     = segment / "*"                 ; `*` is a whole segment and matches exactly one
//! template = tseg *( sep tseg )
//! tseg     = segment / "{" name "}"        ; a route path parameter, interpolated as data
//! ```
//! - `**` may only be the last segment of a grant; it matches one or more remaining segments,
//!   whatever separators they use. `license` alone does not match `license:read`.
//! - Separators must agree position by position.
//! - A path value interpolated into a template must itself be one `segment`; otherwise the
//!   requirement cannot be met (it is never read as a wildcard or as extra segments).
//! - At most 256 bytes and 32 segments, so matching stays cheap and bounded.

use std::fmt;

use serde::{Deserialize, Serialize};

const MAX_LEN: usize = 256;
const MAX_SEGMENTS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sep {
    Dot,
    Colon,
}

impl Sep {
    fn from_char(c: char) -> Option<Sep> {
        match c {
            '.' => Some(Sep::Dot),
            ':' => Some(Sep::Colon),
            _ => None,
        }
    }

    fn as_char(self) -> char {
        match self {
            Sep::Dot => '.',
            Sep::Colon => ':',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeError(pub String);

impl fmt::Display for ScopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Splits on `.` and `:`, returning the segments and the separators between them.
fn split(s: &str) -> Result<(Vec<&str>, Vec<Sep>), ScopeError> {
    if s.is_empty() {
        return Err(ScopeError("scope is empty".into()));
    }
    if s.len() > MAX_LEN {
        return Err(ScopeError(format!("scope is longer than {MAX_LEN} bytes")));
    }
    let mut segs = Vec::new();
    let mut seps = Vec::new();
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if let Some(sep) = Sep::from_char(c) {
            segs.push(s.get(start..i).unwrap_or_default());
            seps.push(sep);
            start = i + 1;
        }
    }
    segs.push(s.get(start..).unwrap_or_default());
    if segs.len() > MAX_SEGMENTS {
        return Err(ScopeError(format!("scope has more than {MAX_SEGMENTS} segments")));
    }
    Ok((segs, seps))
}

fn join<T: AsRef<str>, W: fmt::Write>(f: &mut W, segs: &[T], seps: &[Sep]) -> fmt::Result {
    for (i, seg) in segs.iter().enumerate() {
        if i > 0
            && let Some(sep) = seps.get(i - 1)
        {
            f.write_char(sep.as_char())?;
        }
        f.write_str(seg.as_ref())?;
    }
    Ok(())
}

/// A concrete scope, such as `license:read` or `keyring.comms.encrypt`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    segs: Vec<String>,
    seps: Vec<Sep>,
}

impl Scope {
    pub fn parse(s: &str) -> Result<Self, ScopeError> {
        let (segs, seps) = split(s)?;
        if let Some(bad) = segs.iter().find(|g| !is_segment(g)) {
            return Err(ScopeError(format!("invalid segment {bad:?} in scope {s:?}")));
        }
        Ok(Scope {
            segs: segs.into_iter().map(str::to_owned).collect(),
            seps,
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        join(f, &self.segs, &self.seps)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum GSeg {
    Lit(String),
    One,
    Rest,
}

impl AsRef<str> for GSeg {
    fn as_ref(&self) -> &str {
        match self {
            GSeg::Lit(s) => s,
            GSeg::One => "*",
            GSeg::Rest => "**",
        }
    }
}

/// A grant held by a key: a scope pattern with `*` and a trailing `**`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Grant {
    segs: Vec<GSeg>,
    seps: Vec<Sep>,
}

impl Grant {
    pub fn parse(s: &str) -> Result<Self, ScopeError> {
        let (raw, seps) = split(s)?;
        let last = raw.len().saturating_sub(1);
        let mut segs = Vec::with_capacity(raw.len());
        for (i, seg) in raw.iter().enumerate() {
            segs.push(match *seg {
                "*" => GSeg::One,
                "**" if i == last => GSeg::Rest,
                "**" => {
                    return Err(ScopeError(format!("`**` must be the last segment in {s:?}")));
                }
                lit if is_segment(lit) => GSeg::Lit(lit.to_owned()),
                bad => {
                    return Err(ScopeError(format!(
                        "invalid segment {bad:?} in grant {s:?}: use letters, digits, `_`, `-`, or a whole `*` / trailing `**`"
                    )));
                }
            });
        }
        Ok(Grant { segs, seps })
    }

    /// Does this grant allow the concrete scope?
    pub fn matches(&self, scope: &Scope) -> bool {
        self.matches_parts(&scope.segs, &scope.seps)
    }

    /// [`Grant::matches`] on a scope given as its segments and separators.
    fn matches_parts<T: AsRef<str>>(&self, segs: &[T], seps: &[Sep]) -> bool {
        for (i, g) in self.segs.iter().enumerate() {
            if i > 0 && self.seps.get(i - 1) != seps.get(i - 1) {
                return false;
            }
            match g {
                GSeg::Rest => return i < segs.len(),
                GSeg::One => {
                    if i >= segs.len() {
                        return false;
                    }
                }
                GSeg::Lit(l) => {
                    if segs.get(i).map(AsRef::as_ref) != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        self.segs.len() == segs.len()
    }

    /// Does this grant allow everything `other` allows? Used to stop admin keys from issuing
    /// keys broader than themselves.
    pub fn covers(&self, other: &Grant) -> bool {
        for (i, g) in self.segs.iter().enumerate() {
            if i > 0 && self.seps.get(i - 1) != other.seps.get(i - 1) {
                return false;
            }
            let o = match other.segs.get(i) {
                Some(o) => o,
                None => return false,
            };
            match (g, o) {
                (GSeg::Rest, _) => return true,
                (_, GSeg::Rest) => return false,
                (GSeg::One, _) => {}
                (GSeg::Lit(a), GSeg::Lit(b)) if a == b => {}
                _ => return false,
            }
        }
        self.segs.len() == other.segs.len()
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        join(f, &self.segs, &self.seps)
    }
}

impl Serialize for Grant {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Grant {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Grant::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Does any of `grants` allow `scope`?
pub fn granted(grants: &[Grant], scope: &Scope) -> bool {
    grants.iter().any(|g| g.matches(scope))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TSeg {
    Lit(String),
    Param(String),
}

/// A scope a route requires, possibly naming path parameters: `keyring.{ring}.encrypt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeTemplate {
    segs: Vec<TSeg>,
    seps: Vec<Sep>,
    source: String,
}

impl ScopeTemplate {
    pub fn parse(s: &str) -> Result<Self, ScopeError> {
        let (raw, seps) = split(s)?;
        let mut segs = Vec::with_capacity(raw.len());
        for seg in raw {
            let param = seg.strip_prefix('{').and_then(|r| r.strip_suffix('}'));
            segs.push(match param {
                Some(name) if is_segment(name) => TSeg::Param(name.to_owned()),
                None if is_segment(seg) => TSeg::Lit(seg.to_owned()),
                _ => {
                    return Err(ScopeError(format!(
                        "invalid segment {seg:?} in required scope {s:?}: use a literal segment or a whole {{param}}"
                    )));
                }
            });
        }
        Ok(ScopeTemplate {
            segs,
            seps,
            source: s.to_owned(),
        })
    }

    /// Parameter names the template uses.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segs.iter().filter_map(|s| match s {
            TSeg::Param(p) => Some(p.as_str()),
            TSeg::Lit(_) => None,
        })
    }

    /// The concrete scope for the path values `value` gives, or `None` when a value is not one
    /// valid segment (then no grant can satisfy the requirement).
    pub fn render<'v>(&self, value: impl Fn(&str) -> Option<&'v str>) -> Option<Scope> {
        let mut segs = Vec::with_capacity(self.segs.len());
        for seg in &self.segs {
            segs.push(Self::resolve(seg, &value)?.to_owned());
        }
        Some(Scope {
            segs,
            seps: self.seps.clone(),
        })
    }

    /// One segment of the rendered scope: a literal, or a parameter value that is one valid
    /// segment.
    fn resolve<'s, 'v: 's>(seg: &'s TSeg, value: impl Fn(&str) -> Option<&'v str>) -> Option<&'s str> {
        match seg {
            TSeg::Lit(l) => Some(l),
            TSeg::Param(p) => value(p).filter(|v| is_segment(v)),
        }
    }

    /// Exactly `render(value).is_some_and(|s| granted(grants, &s))`, without building
    /// the scope (no allocation).
    pub(crate) fn granted_by<'v>(&self, grants: &[Grant], value: impl Fn(&str) -> Option<&'v str>) -> bool {
        // `split` caps a template at MAX_SEGMENTS segments.
        let mut segs = [""; MAX_SEGMENTS];
        let mut n = 0;
        for (slot, seg) in segs.iter_mut().zip(&self.segs) {
            match Self::resolve(seg, &value) {
                Some(v) => *slot = v,
                None => return false,
            }
            n += 1;
        }
        if n != self.segs.len() {
            return self.render(value).is_some_and(|s| granted(grants, &s));
        }
        let segs = segs.get(..n).unwrap_or_default();
        grants.iter().any(|g| g.matches_parts(segs, &self.seps))
    }

    /// The requirement as written, with parameters filled in where they are valid. For the
    /// `required_scopes` of a denial.
    /// The template as written in the policy (`keyring.{ring}.encrypt`).
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn describe<'v>(&self, value: impl Fn(&str) -> Option<&'v str>) -> String {
        match self.render(value) {
            Some(s) => s.to_string(),
            None => self.source.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn g(s: &str) -> Grant {
        Grant::parse(s).unwrap()
    }
    fn s(x: &str) -> Scope {
        Scope::parse(x).unwrap()
    }

    #[test]
    fn literal_and_wildcard_matching() {
        assert!(g("license:read").matches(&s("license:read")));
        assert!(
            !g("license:read").matches(&s("license.read")),
            "separators are distinct"
        );
        assert!(!g("license:read").matches(&s("License:read")), "case-sensitive");
        assert!(g("license:*").matches(&s("license:write")));
        assert!(
            !g("license:*").matches(&s("license:write:all")),
            "* is one segment"
        );
        assert!(!g("license:*").matches(&s("license")));
        assert!(g("keyring.*.encrypt").matches(&s("keyring.comms.encrypt")));
        assert!(!g("keyring.*.encrypt").matches(&s("keyring.comms.decrypt")));
        assert!(g("admin.**").matches(&s("admin.keys")));
        assert!(g("admin.**").matches(&s("admin.keys:read")));
        assert!(
            !g("admin.**").matches(&s("admin")),
            "** needs at least one segment"
        );
        assert!(!g("admin.**").matches(&s("admin:keys")));
        assert!(!g("license").matches(&s("license:read")));
        assert!(g("**").matches(&s("anything.at:all")));
    }

    #[test]
    fn invalid_grants_are_rejected() {
        for bad in [
            "",
            "lic*:read",
            "a.**.b",
            "a..b",
            ".a",
            "a:",
            "a b",
            "a.{x}",
            "é",
            "a.***",
        ] {
            assert!(Grant::parse(bad).is_err(), "{bad:?} should be invalid");
        }
        assert!(Grant::parse("a.".repeat(40).trim_end_matches('.')).is_err());
    }

    #[test]
    fn covers_is_wildcard_aware() {
        assert!(g("license:*").covers(&g("license:read")));
        assert!(g("license:*").covers(&g("license:*")));
        assert!(!g("license:read").covers(&g("license:*")));
        assert!(g("admin:**").covers(&g("admin:keys:*")));
        assert!(g("admin:**").covers(&g("admin:**")));
        assert!(!g("admin:*").covers(&g("admin:**")));
        assert!(!g("admin:keys:*").covers(&g("admin:**")));
        assert!(!g("a.b").covers(&g("a:b")));
    }

    #[test]
    fn templates_interpolate_values_as_data() {
        let t = ScopeTemplate::parse("keyring.{ring}.encrypt").unwrap();
        let ring = |v: &'static str| move |p: &str| (p == "ring").then_some(v);
        assert_eq!(t.render(ring("comms")), Some(s("keyring.comms.encrypt")));
        for evil in ["*", "**", "a.b", "a:b", "", "a/b", "é"] {
            assert_eq!(t.render(ring(evil)), None, "{evil:?} must not be interpolated");
        }
        assert_eq!(t.describe(ring("comms")), "keyring.comms.encrypt");
        assert_eq!(t.describe(ring("*")), "keyring.{ring}.encrypt");
        assert!(ScopeTemplate::parse("keyring.x{ring}.encrypt").is_err());
        assert!(ScopeTemplate::parse("keyring.*.encrypt").is_err());
        assert_eq!(t.params().collect::<Vec<_>>(), vec!["ring"]);
    }

    fn seg() -> impl Strategy<Value = String> {
        prop_oneof!["[a-c]", "[A-Za-z0-9_-]{1,6}"]
    }
    fn sep() -> impl Strategy<Value = char> {
        prop_oneof![Just('.'), Just(':')]
    }
    fn scope_str() -> impl Strategy<Value = String> {
        (seg(), proptest::collection::vec((sep(), seg()), 0..5)).prop_map(|(first, rest)| {
            let mut out = first;
            for (c, sg) in rest {
                out.push(c);
                out.push_str(&sg);
            }
            out
        })
    }
    fn grant_str() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(prop_oneof![3 => seg(), 1 => Just("*".to_owned())], 1..5),
            proptest::collection::vec(sep(), 5),
            any::<bool>(),
        )
            .prop_map(|(segs, seps, rest)| {
                let mut out = String::new();
                for (i, sg) in segs.iter().enumerate() {
                    if i > 0 {
                        out.push(seps[i - 1]);
                    }
                    out.push_str(sg);
                }
                if rest {
                    out.push(seps[4]);
                    out.push_str("**");
                }
                out
            })
    }

    proptest! {
        #[test]
        fn every_scope_is_a_grant_matching_itself(x in scope_str()) {
            let sc = s(&x);
            prop_assert_eq!(sc.to_string(), x.clone());
            prop_assert!(g(&x).matches(&sc));
            prop_assert!(g(&x).covers(&g(&x)));
        }

        #[test]
        fn grants_round_trip(x in grant_str()) {
            prop_assert_eq!(g(&x).to_string(), x.clone());
        }

        #[test]
        fn granted_by_is_render_then_granted(
            grants in proptest::collection::vec(grant_str(), 0..6),
            parts in proptest::collection::vec(
                (sep(), prop_oneof![3 => seg(), 1 => Just("{a}".to_owned()), 1 => Just("{b}".to_owned())]),
                1..6,
            ),
            a in prop_oneof![seg(), "\\PC{0,4}"],
            b in prop_oneof![Just("*".to_owned()), seg()],
            with_b in any::<bool>(),
        ) {
            let mut text = String::new();
            for (i, (c, sg)) in parts.iter().enumerate() {
                if i > 0 {
                    text.push(*c);
                }
                text.push_str(sg);
            }
            let t = ScopeTemplate::parse(&text).unwrap();
            let grants: Vec<Grant> = grants.iter().map(|x| g(x)).collect();
            let mut params = std::collections::HashMap::new();
            params.insert("a".to_owned(), a);
            if with_b {
                params.insert("b".to_owned(), b);
            }
            let value = |p: &str| params.get(p).map(String::as_str);
            let rendered = t.render(value);
            let expected = rendered.as_ref().is_some_and(|sc| granted(&grants, sc));
            prop_assert_eq!(t.granted_by(&grants, value), expected);
            prop_assert_eq!(t.describe(value), rendered.map_or(text, |sc| sc.to_string()));
        }

        #[test]
        fn star_matches_any_one_segment(x in scope_str(), i in 0usize..6) {
            let sc = s(&x);
            let i = i % sc.segs.len();
            let mut gr = Grant { segs: sc.segs.iter().cloned().map(GSeg::Lit).collect(), seps: sc.seps.clone() };
            gr.segs[i] = GSeg::One;
            prop_assert!(gr.matches(&sc));
        }

        #[test]
        fn double_star_matches_every_longer_scope(prefix in scope_str(), c in sep(), tail in scope_str()) {
            let grant = g(&[prefix.as_str(), c.encode_utf8(&mut [0; 4]), "**"].concat());
            let longer = [prefix.as_str(), c.encode_utf8(&mut [0; 4]), tail.as_str()].concat();
            prop_assert!(grant.matches(&s(&longer)));
            prop_assert!(!grant.matches(&s(&prefix)));
        }

        #[test]
        fn covering_is_sound(a in grant_str(), b in grant_str(), x in scope_str()) {
            // If a covers b, every scope b allows, a allows too.
            let (ga, gb, sc) = (g(&a), g(&b), s(&x));
            if ga.covers(&gb) && gb.matches(&sc) {
                prop_assert!(ga.matches(&sc));
            }
        }

        #[test]
        fn interpolated_values_never_widen(ring in "\\PC{0,8}") {
            let t = ScopeTemplate::parse("keyring.{ring}.encrypt").unwrap();
            match t.render(|p| (p == "ring").then_some(ring.as_str())) {
                Some(sc) => {
                    prop_assert!(is_segment(&ring));
                    prop_assert_eq!(sc.segs.len(), 3);
                    prop_assert!(!g("keyring.other.encrypt").matches(&sc) || ring == "other");
                }
                None => prop_assert!(!is_segment(&ring)),
            }
        }
    }
}
