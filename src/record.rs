//! The stored key record, its derived status, and the public view the admin API shows.
//! A record holds the key's hash and never the key.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ip::IpAllowlist;
use crate::key::{Environment, HashVersion, KeyId};
use crate::scope::Grant;
use crate::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    pub id: KeyId,
    pub name: String,
    pub tag: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    pub environment: Environment,
    pub scopes: Vec<Grant>,
    #[serde(default)]
    pub ip_allowlist: IpAllowlist,
    #[serde(default)]
    pub tenants: Vec<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    pub enabled: bool,
    #[serde(default)]
    pub revoked_at: Option<Timestamp>,
    #[serde(default)]
    pub revoke_reason: Option<String>,
    #[serde(default)]
    pub rotated_from: Option<KeyId>,
    #[serde(default)]
    pub rotated_to: Option<KeyId>,
    pub hash_version: HashVersion,
    pub hash: String,
    /// Bumped by every committed change (the registry refuses a write that does not carry the
    /// stored version plus one). Served as the `ETag`; the revocation feed compares it.
    #[serde(default)]
    pub version: u64,
    /// The rate-limit tier (`limits.tiers` of the policy); `None`: the route's, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_tier: Option<String>,
    /// The key spends credits (`crate::credits`); the balance itself lives in the registry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub metered: bool,
    /// How a metered key's credits are refilled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill: Option<crate::credits::Refill>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Disabled,
    Expired,
    Revoked,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Disabled => "disabled",
            Status::Expired => "expired",
            Status::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Status::Active),
            "disabled" => Some(Status::Disabled),
            "expired" => Some(Status::Expired),
            "revoked" => Some(Status::Revoked),
            _ => None,
        }
    }
}

impl KeyRecord {
    /// The most permanent state wins: revoked, then disabled, then expired.
    pub fn status(&self, now: Timestamp) -> Status {
        if self.revoked_at.is_some() {
            Status::Revoked
        } else if !self.enabled {
            Status::Disabled
        } else if self.expires_at.is_some_and(|e| now >= e) {
            Status::Expired
        } else {
            Status::Active
        }
    }

    /// The refill that applies to the key's credits: none once it is retired by a rotation
    /// (its balance moved to the successor).
    pub fn refill_in_effect(&self) -> Option<crate::credits::Refill> {
        self.refill.filter(|_| self.rotated_to.is_none())
    }

    /// The public view: every field but the hash, plus the derived status.
    pub fn view(&self, now: Timestamp) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.remove("hash");
            m.remove("hash_version");
            m.remove("metered");
            m.entry("rate_tier").or_insert(Value::Null);
            m.entry("refill").or_insert(Value::Null);
            m.insert(
                "status".into(),
                serde_json::to_value(self.status(now)).unwrap_or(Value::Null),
            );
        }
        v
    }
}

/// A revocation, as the lifecycle marker `life:{id}:revoked` holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    pub at: Timestamp,
    #[serde(default)]
    pub reason: Option<String>,
}

/// A retirement by rotation, as the lifecycle marker `life:{id}:rotated` holds it: the
/// successor, and the latest instant the retired key may still work (its grace end).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retirement {
    pub successor: KeyId,
    pub expires_at: Timestamp,
}

/// The monotonic facts about a key: once true, no write path may make them false again.
/// Each is kept in its own KV entry (see `store`), apart from the record, so that a writer of
/// one fact can never overwrite another, and every record write re-applies them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lifecycle {
    pub revoked: Option<Revocation>,
    pub retired: Option<Retirement>,
    pub deleted: bool,
}

impl Lifecycle {
    /// Make `record` hold every fact here. Returns whether it changed. The marker is
    /// authoritative for the successor; an existing revocation in the record stands (the first
    /// revocation's time and reason win). Expiry only ever moves earlier.
    pub fn apply(&self, record: &mut KeyRecord) -> bool {
        let mut changed = false;
        if let Some(r) = &self.revoked
            && record.revoked_at.is_none()
        {
            record.revoked_at = Some(r.at);
            record.revoke_reason = r.reason.clone();
            changed = true;
        }
        if let Some(t) = &self.retired {
            if record.rotated_to.as_ref() != Some(&t.successor) {
                record.rotated_to = Some(t.successor.clone());
                changed = true;
            }
            changed |= cap_expiry(record, t.expires_at);
        }
        changed
    }
}

/// `expires_at = min(expires_at, at)`; a key without expiry counts as later than any instant.
fn cap_expiry(record: &mut KeyRecord, at: Timestamp) -> bool {
    match record.expires_at {
        Some(e) if e <= at => false,
        _ => {
            record.expires_at = Some(at);
            true
        }
    }
}

impl KeyRecord {
    /// Keep the monotonic facts `older` holds (another copy of the same key) in `self`:
    /// revocation, and retirement by rotation with its capped expiry. Used where two copies of
    /// a record meet (the isolate cache), so a stale copy never undoes a revocation.
    pub fn keep_monotonic_from(&mut self, older: &KeyRecord) -> bool {
        if older.id != self.id {
            return false;
        }
        let mut changed = false;
        if older.revoked_at.is_some() && self.revoked_at.is_none() {
            self.revoked_at = older.revoked_at;
            self.revoke_reason = older.revoke_reason.clone();
            changed = true;
        }
        if let Some(successor) = &older.rotated_to {
            if self.rotated_to.is_none() {
                self.rotated_to = Some(successor.clone());
                changed = true;
            }
            if let Some(at) = older.expires_at {
                changed |= cap_expiry(self, at);
            }
        }
        changed
    }
}

/// Cryptr-style tag: a lowercase slug of the name.
pub fn slug(name: &str) -> String {
    let mut out = String::new();
    let mut dash = false;
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
            dash = false;
        } else if !dash && !out.is_empty() {
            out.push('-');
            dash = true;
        }
    }
    out.trim_end_matches('-').to_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample(id: &str) -> KeyRecord {
        KeyRecord {
            id: KeyId::parse(id).unwrap(),
            name: "Sample".into(),
            tag: "sample".into(),
            description: None,
            group: None,
            environment: Environment::Live,
            scopes: vec![Grant::parse("license:read").unwrap()],
            ip_allowlist: IpAllowlist::default(),
            tenants: vec![],
            metadata: Map::new(),
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
            expires_at: None,
            enabled: true,
            revoked_at: None,
            revoke_reason: None,
            rotated_from: None,
            rotated_to: None,
            hash_version: HashVersion::Sha256,
            hash: "00".into(),
            version: 1,
            rate_tier: None,
            metered: false,
            refill: None,
        }
    }

    #[test]
    fn slugs() {
        assert_eq!(
            slug("My sandbox API key for xy company"),
            "my-sandbox-api-key-for-xy-company"
        );
        assert_eq!(slug("  Hello,  World!! "), "hello-world");
        assert_eq!(slug("Ünïcode"), "n-code");
    }

    #[test]
    fn status_precedence() {
        let now = Timestamp::from_millis(10_000);
        let mut r = sample("0123456789abcdef");
        assert_eq!(r.status(now), Status::Active);
        r.expires_at = Some(now);
        assert_eq!(r.status(now), Status::Expired);
        r.enabled = false;
        assert_eq!(r.status(now), Status::Disabled);
        r.revoked_at = Some(now);
        assert_eq!(r.status(now), Status::Revoked);
    }

    #[test]
    fn lifecycle_facts_only_ever_tighten() {
        let now = Timestamp::from_millis(10_000);
        let successor = KeyId::parse("00000000000000aa").unwrap();
        let life = Lifecycle {
            revoked: Some(Revocation {
                at: now,
                reason: Some("leak".into()),
            }),
            retired: Some(Retirement {
                successor: successor.clone(),
                expires_at: now.plus_seconds(60),
            }),
            deleted: false,
        };
        let mut r = sample("0123456789abcdef");
        assert!(life.apply(&mut r));
        assert_eq!(r.status(now), Status::Revoked);
        assert_eq!(r.rotated_to.as_ref(), Some(&successor));
        assert_eq!(r.expires_at, Some(now.plus_seconds(60)));
        assert!(!life.apply(&mut r), "idempotent");
        // An earlier expiry stays; the first revocation stands.
        let mut r2 = sample("0123456789abcdef");
        r2.expires_at = Some(now);
        r2.revoked_at = Some(Timestamp::from_millis(1));
        life.apply(&mut r2);
        assert_eq!(r2.expires_at, Some(now));
        assert_eq!(r2.revoked_at, Some(Timestamp::from_millis(1)));
    }

    #[test]
    fn a_stale_copy_never_undoes_a_revocation() {
        let now = Timestamp::from_millis(10_000);
        let mut revoked = sample("0123456789abcdef");
        revoked.revoked_at = Some(now);
        revoked.rotated_to = KeyId::parse("00000000000000aa");
        revoked.expires_at = Some(now);
        let mut stale = sample("0123456789abcdef");
        assert!(stale.keep_monotonic_from(&revoked));
        assert_eq!(stale.status(now), Status::Revoked);
        assert_eq!(stale.expires_at, Some(now));
        assert!(stale.rotated_to.is_some());
        let mut other = sample("0123456789abcde0");
        assert!(
            !other.keep_monotonic_from(&revoked),
            "another key's facts do not apply"
        );
    }

    #[test]
    fn view_hides_the_hash_and_round_trips() {
        let r = sample("0123456789abcdef");
        let v = r.view(Timestamp::from_millis(0));
        assert!(v.get("hash").is_none());
        assert_eq!(v["status"], "active");
        let json = serde_json::to_string(&r).unwrap();
        let back: KeyRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }
}
