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

    /// The public view: every field but the hash, plus the derived status.
    pub fn view(&self, now: Timestamp) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.remove("hash");
            m.remove("hash_version");
            m.insert(
                "status".into(),
                serde_json::to_value(self.status(now)).unwrap_or(Value::Null),
            );
        }
        v
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
