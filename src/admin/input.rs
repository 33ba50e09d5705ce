//! What a request carries, checked: JSON bodies (size, content type, syntax, shape with the
//! JSON path of the offending field), the rules of each record field, durations and expiries,
//! and query strings.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::credential::HeaderSource;
use crate::credits::{MAX_CREDITS, Refill};
use crate::ip::IpAllowlist;
use crate::key::Environment;
use crate::problem::{
    Problem, invalid_field, invalid_query, malformed_json, payload_too_large, unsupported_media_type,
};
use crate::record::KeyRecord;
use crate::scope::Grant;
use crate::time::Timestamp;

use super::{AdminRequest, MAX_BODY, MAX_LIMIT, MAX_METADATA, MAX_PRINCIPAL_HEADER_BYTES};

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIST_ITEMS: usize = 64;

/// A record's own fields (name, description, group, scopes, tenants, metadata) may not hold an
/// API key: scopes and tenants travel to the origin in `X-Key-*` headers, and every field shows
/// in the admin API.
pub(super) fn no_key_inside(
    record: &KeyRecord,
    prefix: &crate::key::KeyPrefix,
    now: Timestamp,
) -> Result<(), Problem> {
    if crate::key::holds_key(&record.view(now).to_string(), prefix) {
        return Err(invalid_field(
            "",
            "A field holds an API key. Keys are secrets: never put one in a name, scope, tenant or metadata.",
        ));
    }
    Ok(())
}

/// Bytes the principal headers of `record` can add to a forwarded request, at most.
pub fn principal_header_bytes(record: &KeyRecord) -> usize {
    let line = |name: &str, value: usize| name.len() + 2 + value + 2;
    let scopes = record.scopes.iter().map(|g| g.to_string().len()).sum::<usize>()
        + record.scopes.len().saturating_sub(1);
    let tenant = record.tenants.iter().map(String::len).max();
    line("X-Key-Id", record.id.as_str().len())
        + line("X-Key-Scopes", scopes)
        + line("X-Key-Environment", record.environment.as_str().len())
        + tenant.map_or(0, |t| line("X-Key-Tenant", t))
        // The longest textual IPv6 address.
        + line("X-Key-Client-Ip", 45)
}

pub(super) fn check_header_size(record: &KeyRecord) -> Result<(), Problem> {
    let n = principal_header_bytes(record);
    if n > MAX_PRINCIPAL_HEADER_BYTES {
        return Err(invalid_field(
            "scopes",
            format!(
                "The key's principal headers (X-Key-Scopes with every grant, the longest tenant, ...) would add {n} bytes to forwarded requests; at most {MAX_PRINCIPAL_HEADER_BYTES} are allowed. Use fewer or shorter grants or tenants."
            ),
        ));
    }
    Ok(())
}

// ---- query strings -------------------------------------------------------------------------

/// A query string where every parameter is known to the endpoint and given once: anything else
/// is `400 invalid_query` naming the parameter, so a typo never widens what a request means.
pub(super) struct Query(pub(super) HashMap<String, String>);

impl Query {
    pub(super) fn parse(q: Option<&str>, allowed: &[&str]) -> Result<Self, Problem> {
        let mut map = HashMap::new();
        for pair in q.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let Some(name) = query_decode(k) else {
                return Err(invalid_query(
                    k,
                    format!("The query parameter name `{k}` is not valid percent-encoding."),
                ));
            };
            if !allowed.contains(&name.as_str()) {
                let known = if allowed.is_empty() {
                    "This endpoint takes no query parameters.".to_owned()
                } else {
                    format!("Known here: {}.", allowed.join(", "))
                };
                return Err(invalid_query(
                    &name,
                    format!("Unknown query parameter `{name}`. {known}"),
                ));
            }
            let Some(value) = query_decode(v) else {
                return Err(invalid_query(
                    &name,
                    format!("The value of `{name}` is not valid percent-encoding."),
                ));
            };
            if map.insert(name.clone(), value).is_some() {
                return Err(invalid_query(
                    &name,
                    format!("The query parameter `{name}` is given more than once."),
                ));
            }
        }
        Ok(Query(map))
    }

    pub(super) fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    pub(super) fn limit(&self) -> Result<u32, Problem> {
        match self.get("limit") {
            None => Ok(DEFAULT_LIMIT),
            Some(l) => match l.parse::<u64>() {
                Ok(0) | Err(_) => Err(invalid_field(
                    "limit",
                    format!("Use a whole number from 1; values over {MAX_LIMIT} are capped."),
                )),
                Ok(n) => Ok(u32::try_from(n.min(u64::from(MAX_LIMIT))).unwrap_or(MAX_LIMIT)),
            },
        }
    }
}

fn query_decode(s: &str) -> Option<String> {
    crate::policy::percent_decode(&s.replace('+', " ")).map(std::borrow::Cow::into_owned)
}

// ---- bodies and validation ------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    pub(super) name: String,
    pub(super) description: Option<String>,
    pub(super) group: Option<String>,
    pub(super) environment: Option<String>,
    pub(super) scopes: Vec<String>,
    pub(super) ip_allowlist: Option<Vec<String>>,
    pub(super) tenants: Option<Vec<String>>,
    pub(super) metadata: Option<Value>,
    pub(super) expires_in: Option<Value>,
    pub(super) expires_at: Option<String>,
    pub(super) rate_tier: Option<String>,
    /// Makes the key metered, with this balance.
    pub(super) credits: Option<u64>,
    pub(super) refill: Option<Refill>,
}

/// `Some(None)` is an explicit `null`: clear the field.
fn nullable<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchBody {
    #[serde(default, deserialize_with = "not_null")]
    pub(super) name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub(super) description: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub(super) group: Option<Option<String>>,
    #[serde(default, deserialize_with = "not_null")]
    pub(super) scopes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "not_null")]
    pub(super) ip_allowlist: Option<Vec<String>>,
    #[serde(default, deserialize_with = "not_null")]
    pub(super) tenants: Option<Vec<String>>,
    #[serde(default, deserialize_with = "not_null")]
    pub(super) metadata: Option<Value>,
    #[serde(default, deserialize_with = "nullable_value")]
    pub(super) expires_in: Option<Value>,
    #[serde(default, deserialize_with = "nullable")]
    pub(super) expires_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "not_null")]
    pub(super) enabled: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    pub(super) rate_tier: Option<Option<String>>,
    /// A number sets the balance (and meters the key); `null` stops metering.
    #[serde(default, deserialize_with = "nullable")]
    pub(super) credits: Option<Option<u64>>,
    #[serde(default, deserialize_with = "nullable")]
    pub(super) refill: Option<Option<Refill>>,
}

/// `POST /admin/keys/{id}/credits`: exactly one of the two.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreditsBody {
    pub(super) add: Option<u64>,
    pub(super) set: Option<u64>,
}

/// Absent is `None`; an explicit `null` is a type error (these fields cannot be cleared).
fn not_null<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Keeps an explicit `null` as `Some(Value::Null)`.
fn nullable_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RevokeBody {
    pub(super) reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RotateBody {
    pub(super) grace: Option<Value>,
}

fn is_json(content_type: &str) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Size, content type, JSON syntax, then shape (unknown fields, types) with the JSON path of
/// the offending field. `empty_ok`: an absent body means `{}` (for revoke and rotate).
pub(super) fn parse_body<T: serde::de::DeserializeOwned, H: HeaderSource + ?Sized>(
    req: &AdminRequest<'_, H>,
    empty_ok: bool,
) -> Result<T, Problem> {
    if req.body.len() > MAX_BODY {
        return Err(payload_too_large());
    }
    // Revoke and rotate take an optional body: no body at all means `{}`. Anything else,
    // whitespace included, must be JSON.
    let absent = empty_ok && req.body.is_empty();
    let body: &[u8] = if absent { b"{}" } else { req.body };
    if !absent {
        let ct = req.headers.header("content-type").unwrap_or_default();
        if !is_json(&ct) {
            return Err(unsupported_media_type());
        }
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| malformed_json(&e))?;
    if !value.is_object() {
        return Err(invalid_field("", "The body must be a JSON object."));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.inner().to_string();
        let mut field = e.path().to_string();
        // A missing field is reported at its parent; serde names the field in its message.
        if inner.starts_with("missing field")
            && let Some(name) = inner.split('`').nth(1)
        {
            field = if field == "." {
                name.to_owned()
            } else {
                format!("{field}.{name}")
            };
        }
        if field == "." {
            field = String::new();
        }
        invalid_field(&field, inner)
    })
}

/// Control characters, and the invisible format characters that reorder or hide text around
/// them (bidirectional overrides and isolates, zero-width characters): a name showing one id
/// while the key has another.
fn hidden_or_control(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

pub(super) fn valid_text(field: &str, s: String, max: usize) -> Result<String, Problem> {
    if s.chars().count() > max || s.chars().any(hidden_or_control) {
        return Err(invalid_field(
            field,
            format!(
                "Use at most {max} characters, without control characters or invisible formatting (bidirectional or zero-width)."
            ),
        ));
    }
    Ok(s)
}

pub(super) fn valid_environment(e: &str) -> Result<Environment, Problem> {
    Environment::parse(e).ok_or_else(|| invalid_field("environment", "Use `live` or `test`."))
}

pub(super) fn valid_description(d: Option<String>) -> Result<Option<String>, Problem> {
    d.map(|d| valid_text("description", d, 1024)).transpose()
}

pub(super) fn valid_group(g: Option<String>) -> Result<Option<String>, Problem> {
    g.map(|g| valid_text("group", g, 128)).transpose()
}

pub(super) fn valid_name(s: &str) -> Result<String, Problem> {
    if s.trim().is_empty() || s.chars().count() > 128 || s.chars().any(hidden_or_control) {
        return Err(invalid_field(
            "name",
            "Use 1-128 characters, not all blank, without control characters or invisible formatting (bidirectional or zero-width).",
        ));
    }
    Ok(s.to_owned())
}

pub(super) fn valid_scopes(list: &[String]) -> Result<Vec<Grant>, Problem> {
    if list.is_empty() || list.len() > MAX_LIST_ITEMS {
        return Err(invalid_field(
            "scopes",
            format!("Give 1-{MAX_LIST_ITEMS} scopes."),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, s)| Grant::parse(s).map_err(|e| invalid_field(&format!("scopes[{i}]"), e.to_string())))
        .collect()
}

pub(super) fn valid_allowlist(list: &[String]) -> Result<IpAllowlist, Problem> {
    if list.len() > MAX_LIST_ITEMS {
        return Err(invalid_field(
            "ip_allowlist",
            format!("Give at most {MAX_LIST_ITEMS} entries."),
        ));
    }
    IpAllowlist::parse(list).map_err(|(i, e)| invalid_field(&format!("ip_allowlist[{i}]"), e.to_string()))
}

pub(super) fn valid_tenants(list: Vec<String>) -> Result<Vec<String>, Problem> {
    if list.len() > MAX_LIST_ITEMS {
        return Err(invalid_field(
            "tenants",
            format!("Give at most {MAX_LIST_ITEMS} tenants."),
        ));
    }
    for (i, t) in list.iter().enumerate() {
        let ok = (1..=128).contains(&t.len())
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            return Err(invalid_field(
                &format!("tenants[{i}]"),
                "Use 1-128 of letters, digits, `-`, `_`, `.`.",
            ));
        }
    }
    Ok(list)
}

pub(super) fn valid_metadata(m: Option<Value>) -> Result<Map<String, Value>, Problem> {
    match m {
        None => Ok(Map::new()),
        Some(Value::Object(map)) => {
            if Value::Object(map.clone()).to_string().len() > MAX_METADATA {
                return Err(invalid_field(
                    "metadata",
                    "Metadata is over 1 KiB when serialised.",
                ));
            }
            Ok(map)
        }
        Some(_) => Err(invalid_field("metadata", "Metadata must be a JSON object.")),
    }
}

const PRESETS: [(&str, i64); 5] = [
    ("1h", 3600),
    ("12h", 43_200),
    ("1d", 86_400),
    ("5d", 432_000),
    ("1y", 31_536_000),
];
/// Expiries further out than this are refused (100 years).
const MAX_SECONDS: i64 = 100 * 31_536_000;

fn text_duration(s: &str) -> Option<i64> {
    if let Some((_, n)) = PRESETS.iter().find(|(p, _)| *p == s) {
        return Some(*n);
    }
    let (digits, unit) = match s.as_bytes().last()? {
        b'm' => (s.get(..s.len() - 1)?, 60),
        b'h' => (s.get(..s.len() - 1)?, 3600),
        b'd' => (s.get(..s.len() - 1)?, 86_400),
        _ => (s, 1),
    };
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !canonical || digits.len() > 12 {
        return None;
    }
    digits.parse::<i64>().ok()?.checked_mul(unit)
}

/// A duration as people write it: a preset (`1h`, `12h`, `1d`, `5d`, `1y`), `N` followed by
/// `m`, `h` or `d` (`30m`, `7d`, `30d`), or whole seconds as a number (`3600`, `3600.0`) or as
/// digits in a string (`"3600"`). `N` is digits without a sign or leading zeros. Positive (or
/// zero, with `zero_ok`), at most 100 years.
pub(super) fn duration(v: &Value, zero_ok: bool) -> Option<i64> {
    let s = match v {
        Value::String(s) => text_duration(s)?,
        // Whole-number floats (`3600.0`) are integers to JSON Schema and to many clients.
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
                .map(|f| f as i64)
        })?,
        _ => return None,
    };
    (s > 0 || (zero_ok && s == 0))
        .then_some(s)
        .filter(|s| *s <= MAX_SECONDS)
}

pub(super) fn expiry(
    expires_in: Option<&Value>,
    expires_at: Option<&str>,
    now: Timestamp,
) -> Result<Option<Timestamp>, Problem> {
    match (expires_in, expires_at) {
        (Some(_), Some(_)) => Err(invalid_field(
            "expires_in",
            "Give either `expires_in` or `expires_at`, not both.",
        )),
        (Some(v), None) => duration(v, false)
            .map(|s| Some(now.plus_seconds(s)))
            .ok_or_else(|| {
                invalid_field(
                    "expires_in",
                    "Use a preset (`1h`, `12h`, `1d`, `5d`, `1y`), `Nm`, `Nh`, `Nd` (such as `30d`), or whole seconds above 0 (a number or digits).",
                )
            }),
        (None, Some(at)) => match Timestamp::parse_rfc3339(at) {
            Some(t) if t > now && t <= now.plus_seconds(MAX_SECONDS) => Ok(Some(t)),
            Some(_) => Err(invalid_field(
                "expires_at",
                "The expiry must be in the future (and within 100 years).",
            )),
            None => Err(invalid_field(
                "expires_at",
                "Use an RFC 3339 date-time, such as 2027-01-01T00:00:00Z.",
            )),
        },
        (None, None) => Ok(None),
    }
}

/// A rate tier the policy declares (`limits.tiers`).
pub(super) fn valid_rate_tier(
    policy: &crate::policy::Policy,
    tier: Option<String>,
) -> Result<Option<String>, Problem> {
    match tier {
        None => Ok(None),
        Some(t) if policy.limits.tiers.contains_key(&t) => Ok(Some(t)),
        Some(t) => {
            let known: Vec<&str> = policy.limits.tiers.keys().map(String::as_str).collect();
            let known = if known.is_empty() {
                "This deployment declares no tiers (limits.tiers in the policy).".to_owned()
            } else {
                format!("Declared: {}.", known.join(", "))
            };
            Err(invalid_field(
                "rate_tier",
                format!(
                    "`{}` is not a rate tier of this deployment. {known}",
                    t.chars().take(40).collect::<String>()
                ),
            ))
        }
    }
}

pub(super) fn valid_credits(field: &str, n: u64) -> Result<u64, Problem> {
    if n > MAX_CREDITS {
        return Err(invalid_field(field, format!("At most {MAX_CREDITS} credits.")));
    }
    Ok(n)
}

pub(super) fn valid_refill(r: Option<Refill>) -> Result<Option<Refill>, Problem> {
    if let Some(p) = r.as_ref().and_then(Refill::problem) {
        return Err(invalid_field("refill", p));
    }
    Ok(r)
}
