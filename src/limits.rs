//! Rate limits, as the policy declares them and the edge applies them with the Workers Rate
//! Limiting binding (`[[ratelimits]]` in `wrangler.toml`). Pure: the binding calls and the
//! clock belong to the edge.
//!
//! - **Tiers** name a binding each, with the limit and period it was configured with (the
//!   binding does not report them, and the `RateLimit-Policy` header needs them). A key's
//!   `rate_tier`, else its route's `rate_tier`, picks the tier; the limiter key is the key id,
//!   so a key is limited across every route of its tier.
//! - **Failed authentication** is counted per client IP in its own binding. Past the limit, an
//!   isolate remembers the address ([`AuthBlocks`]) and answers it 429 before any KV read until
//!   the period has passed; every other isolate of the location learns it at that address's
//!   next failure there, which the binding then refuses.
//! - **On error** (the binding missing, or its call failing), `on_error` decides: `fail_open`
//!   (the default: a limit exists for availability) or `fail_closed`. The edge logs it either way.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use crate::decide::Denial;
use crate::policy::PolicyError;

/// What a limiter error means for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Serve the request as if it were under the limit.
    #[default]
    FailOpen,
    /// Answer `503 limiter_unavailable`.
    FailClosed,
}

/// One rate-limit tier: a binding and the limit it enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub name: String,
    /// The `[[ratelimits]]` binding's name.
    pub binding: String,
    /// Requests per period, as configured on the binding (`simple.limit`).
    pub limit: u32,
    /// 10 or 60 seconds (`simple.period`), the only periods the binding offers.
    pub period: u32,
}

impl Tier {
    /// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers): `"name";q=LIMIT;w=PERIOD`.
    pub fn policy_header(&self) -> String {
        format!("\"{}\";q={};w={}", self.name, self.limit, self.period)
    }

    /// The headers of a `429 rate_limited`: `Retry-After`, `RateLimit-Policy` and `RateLimit`
    /// with nothing remaining. The binding reports neither the count nor the window's end, so
    /// the reset is the period, an upper bound.
    pub fn exceeded_headers(&self) -> Vec<(&'static str, String)> {
        vec![
            ("Retry-After", self.period.to_string()),
            ("RateLimit-Policy", self.policy_header()),
            ("RateLimit", format!("\"{}\";r=0;t={}", self.name, self.period)),
        ]
    }
}

/// The policy's `limits` section, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub on_error: FailMode,
    /// The failed-authentication limiter per client IP; `None` when switched off.
    pub failed_auth: Option<Tier>,
    pub tiers: BTreeMap<String, Tier>,
}

pub const DEFAULT_FAILED_AUTH_BINDING: &str = "FAILED_AUTH_LIMITER";
pub const DEFAULT_FAILED_AUTH_LIMIT: u32 = 100;
pub const DEFAULT_FAILED_AUTH_PERIOD: u32 = 60;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            on_error: FailMode::FailOpen,
            failed_auth: Some(Tier {
                name: "failed_auth".into(),
                binding: DEFAULT_FAILED_AUTH_BINDING.into(),
                limit: DEFAULT_FAILED_AUTH_LIMIT,
                period: DEFAULT_FAILED_AUTH_PERIOD,
            }),
            tiers: BTreeMap::new(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsDoc {
    #[serde(default)]
    on_error: FailMode,
    failed_auth: Option<FailedAuthDoc>,
    #[serde(default)]
    tiers: BTreeMap<String, TierDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailedAuthDoc {
    #[serde(default = "yes")]
    enabled: bool,
    binding: Option<String>,
    limit: Option<u32>,
    period: Option<u32>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TierDoc {
    binding: String,
    limit: u32,
    period: u32,
}

fn tier(name: &str, binding: String, limit: u32, period: u32, what: &str) -> Result<Tier, PolicyError> {
    let binding_ok = binding
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && binding.len() <= 64
        && binding.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !binding_ok {
        return Err(PolicyError(format!(
            "{what}.binding {binding:?} is not a binding name"
        )));
    }
    if limit == 0 {
        return Err(PolicyError(format!("{what}.limit must be at least 1")));
    }
    if period != 10 && period != 60 {
        return Err(PolicyError(format!(
            "{what}.period must be 10 or 60 (the periods the Rate Limiting binding offers)"
        )));
    }
    Ok(Tier {
        name: name.to_owned(),
        binding,
        limit,
        period,
    })
}

/// A tier name: what keys and routes refer to, and what headers carry.
pub fn valid_tier_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl Limits {
    pub(crate) fn from_doc(doc: LimitsDoc) -> Result<Self, PolicyError> {
        let mut tiers = BTreeMap::new();
        for (name, t) in doc.tiers {
            if !valid_tier_name(&name) {
                return Err(PolicyError(format!(
                    "limits.tiers: {name:?} is not a tier name (1-32 of a-z, 0-9, - and _)"
                )));
            }
            let what = format!("limits.tiers.{name}");
            let t = tier(&name, t.binding, t.limit, t.period, &what)?;
            tiers.insert(name, t);
        }
        let failed_auth = match doc.failed_auth {
            Some(f) if !f.enabled => None,
            f => {
                let f = f.unwrap_or(FailedAuthDoc {
                    enabled: true,
                    binding: None,
                    limit: None,
                    period: None,
                });
                Some(tier(
                    "failed_auth",
                    f.binding.unwrap_or_else(|| DEFAULT_FAILED_AUTH_BINDING.into()),
                    f.limit.unwrap_or(DEFAULT_FAILED_AUTH_LIMIT),
                    f.period.unwrap_or(DEFAULT_FAILED_AUTH_PERIOD),
                    "limits.failed_auth",
                )?)
            }
        };
        Ok(Limits {
            on_error: doc.on_error,
            failed_auth,
            tiers,
        })
    }

    /// The tier that applies to a key: its own, else its route's default.
    pub fn tier_for(&self, key_tier: Option<&str>, route_tier: Option<&str>) -> TierChoice<'_> {
        match key_tier.or(route_tier) {
            None => TierChoice::None,
            Some(name) => self.tiers.get(name).map_or(TierChoice::Unknown, TierChoice::Tier),
        }
    }
}

/// Which limiter a request goes through.
#[derive(Debug, PartialEq, Eq)]
pub enum TierChoice<'a> {
    /// Neither the key nor its route names a tier: no limit.
    None,
    Tier(&'a Tier),
    /// The key names a tier this policy does not declare (the policy changed since): handled
    /// as a limiter error, by `on_error`.
    Unknown,
}

/// Whether a denial counts as a failed authentication for the per-IP limiter: a credential
/// that is not one of this gateway's keys or tokens. (A real key that is revoked, expired or
/// short of scopes is not a guess.)
pub fn counts_as_failed_auth(d: &Denial) -> bool {
    matches!(
        d,
        Denial::MalformedKey | Denial::InvalidKey | Denial::InvalidToken | Denial::ExpiredToken
    )
}

/// The failed-auth limiter's key for a client address: an IPv4 address itself, an IPv6
/// address's /64 (one subscriber usually holds a whole /64, so its hosts share one count).
pub fn client_key(ip: crate::ip::ClientIp) -> String {
    match ip.addr() {
        std::net::IpAddr::V4(a) => a.to_string(),
        std::net::IpAddr::V6(a) => {
            let [s0, s1, s2, s3, ..] = a.segments();
            format!("{s0:x}:{s1:x}:{s2:x}:{s3:x}::/64")
        }
    }
}

/// Client addresses this isolate answers 429 without any lookup: those the failed-auth
/// limiter refused, until their period is over. Bounded: past `capacity`, expired entries go
/// first, then the entry closest to its end.
#[derive(Debug)]
pub struct AuthBlocks {
    until: HashMap<String, i64>,
    capacity: usize,
}

impl AuthBlocks {
    pub fn new(capacity: usize) -> Self {
        AuthBlocks {
            until: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Seconds until `ip` may try again, when it is blocked at `now_ms`.
    pub fn blocked(&mut self, ip: &str, now_ms: i64) -> Option<u32> {
        let until = *self.until.get(ip)?;
        if until <= now_ms {
            self.until.remove(ip);
            return None;
        }
        let secs = (until - now_ms).saturating_add(999) / 1000;
        Some(u32::try_from(secs).unwrap_or(u32::MAX))
    }

    /// Block `ip` for `period` seconds from `now_ms`.
    pub fn block(&mut self, ip: &str, now_ms: i64, period: u32) {
        if self.until.len() >= self.capacity && !self.until.contains_key(ip) {
            self.until.retain(|_, u| *u > now_ms);
            if self.until.len() >= self.capacity
                && let Some(first) = self.until.iter().min_by_key(|(_, u)| **u).map(|(k, _)| k.clone())
            {
                self.until.remove(&first);
            }
        }
        self.until
            .insert(ip.to_owned(), now_ms.saturating_add(i64::from(period) * 1000));
    }

    pub fn len(&self) -> usize {
        self.until.len()
    }

    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<Limits, PolicyError> {
        Limits::from_doc(serde_json::from_value(v).map_err(|e| PolicyError(e.to_string()))?)
    }

    #[test]
    fn defaults_count_failed_auth_at_100_per_minute_and_fail_open() {
        let l = parse(json!({})).unwrap();
        assert_eq!(l.on_error, FailMode::FailOpen);
        let f = l.failed_auth.clone().unwrap();
        assert_eq!(
            (f.binding.as_str(), f.limit, f.period),
            ("FAILED_AUTH_LIMITER", 100, 60)
        );
        assert_eq!(l, Limits::default());
    }

    #[test]
    fn tiers_are_validated() {
        let l = parse(
            json!({"on_error": "fail_closed", "failed_auth": {"enabled": false},
            "tiers": {"standard": {"binding": "RL_STANDARD", "limit": 100, "period": 60}}}),
        )
        .unwrap();
        assert_eq!(l.on_error, FailMode::FailClosed);
        assert!(l.failed_auth.is_none());
        assert_eq!(l.tiers["standard"].policy_header(), "\"standard\";q=100;w=60");
        for bad in [
            json!({"tiers": {"x": {"binding": "RL", "limit": 1, "period": 30}}}),
            json!({"tiers": {"x": {"binding": "RL", "limit": 0, "period": 60}}}),
            json!({"tiers": {"x": {"binding": "1RL", "limit": 1, "period": 60}}}),
            json!({"tiers": {"X y": {"binding": "RL", "limit": 1, "period": 60}}}),
            json!({"tiers": {"x": {"binding": "RL", "limit": 1, "period": 60, "burst": 2}}}),
            json!({"on_error": "fail_sideways"}),
            json!({"failed_auth": {"period": 5}}),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_key_tier_wins_over_the_route_tier() {
        let l = parse(json!({"tiers": {
            "a": {"binding": "RL_A", "limit": 1, "period": 10},
            "b": {"binding": "RL_B", "limit": 2, "period": 60}}}))
        .unwrap();
        assert_eq!(l.tier_for(None, None), TierChoice::None);
        assert!(matches!(l.tier_for(None, Some("b")), TierChoice::Tier(t) if t.name == "b"));
        assert!(matches!(l.tier_for(Some("a"), Some("b")), TierChoice::Tier(t) if t.name == "a"));
        assert_eq!(l.tier_for(Some("gone"), Some("b")), TierChoice::Unknown);
    }

    #[test]
    fn exceeded_headers_follow_the_draft() {
        let t = Tier {
            name: "gold".into(),
            binding: "RL".into(),
            limit: 5,
            period: 10,
        };
        let h = t.exceeded_headers();
        assert!(h.contains(&("Retry-After", "10".into())));
        assert!(h.contains(&("RateLimit", "\"gold\";r=0;t=10".into())));
        assert!(h.contains(&("RateLimit-Policy", "\"gold\";q=5;w=10".into())));
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let key = |s: &str| client_key(crate::ip::ClientIp::parse(s).unwrap());
        assert_eq!(key("198.51.100.7"), "198.51.100.7");
        assert_eq!(key("::ffff:198.51.100.7"), "198.51.100.7");
        assert_eq!(key("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:ffff::9"), "2001:db8:1:2::/64");
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
    }

    #[test]
    fn only_guesses_count_as_failed_auth() {
        assert!(counts_as_failed_auth(&Denial::InvalidKey));
        assert!(counts_as_failed_auth(&Denial::MalformedKey));
        assert!(counts_as_failed_auth(&Denial::InvalidToken));
        assert!(!counts_as_failed_auth(&Denial::RevokedKey));
        assert!(!counts_as_failed_auth(&Denial::MissingKey));
        assert!(!counts_as_failed_auth(&Denial::InsufficientScope {
            required: vec![]
        }));
    }

    #[test]
    fn blocks_end_with_their_period_and_stay_bounded() {
        let mut b = AuthBlocks::new(2);
        b.block("1.1.1.1", 0, 60);
        assert_eq!(b.blocked("1.1.1.1", 1), Some(60));
        assert_eq!(b.blocked("1.1.1.1", 59_001), Some(1));
        assert_eq!(b.blocked("1.1.1.1", 60_000), None);
        assert_eq!(b.blocked("2.2.2.2", 0), None);
        b.block("a", 0, 10);
        b.block("b", 0, 60);
        b.block("c", 0, 60);
        assert_eq!(b.len(), 2);
        assert_eq!(b.blocked("a", 1), None, "the entry closest to its end went first");
        assert!(b.blocked("c", 1).is_some());
    }
}
