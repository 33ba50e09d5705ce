//! `POST /v1/keys/verify`: for services that receive a key (or a token) themselves, the decision
//! the gateway would make for it, as data. The caller authenticates with its own key, which
//! must hold [`SCOPE`]. The body names the credential and either a route (`method`, `path`) or
//! the scopes needed; the answer is always `200` with `valid` and the gateway's denial `code`.
//! The credential is never returned or logged.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::decide::{Decision, Denial};
use crate::ip::ClientIp;
use crate::problem::{Problem, invalid_field};
use crate::record::KeyRecord;
use crate::scope::Scope;

/// The scope a caller's key needs.
pub const SCOPE: &str = "keys:verify";
/// The largest body read.
pub const MAX_BODY: usize = 8 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    key: Option<String>,
    token: Option<String>,
    route: Option<RouteBody>,
    scopes: Option<Vec<String>>,
    ip: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteBody {
    method: String,
    path: String,
}

/// What to check the credential against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The route policy, as for a request with this method and path.
    Route { method: String, path: String },
    /// These scopes, all of them.
    Scopes(Vec<Scope>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyRequest {
    /// The key or token to verify. Never logged.
    pub credential: String,
    pub check: Check,
    /// The address the credential was presented from, for IP allowlists.
    pub ip: Option<ClientIp>,
}

pub fn parse(body: &[u8]) -> Result<VerifyRequest, Problem> {
    let b: Body = serde_json::from_slice(body).map_err(|_| {
        invalid_field(
            "body",
            "A JSON object with `key` or `token`, and `route` or `scopes`.",
        )
    })?;
    let credential = match (b.key, b.token) {
        (Some(k), None) => k,
        (None, Some(t)) => t,
        _ => return Err(invalid_field("key", "Give exactly one of `key` and `token`.")),
    };
    let check = match (b.route, b.scopes) {
        (Some(r), None) => {
            let method = r.method.to_ascii_uppercase();
            if !["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
                return Err(invalid_field(
                    "route.method",
                    "GET, HEAD, POST, PUT, PATCH or DELETE.",
                ));
            }
            if !r.path.starts_with('/') || r.path.len() > 2048 || r.path.contains(['?', '#']) {
                return Err(invalid_field(
                    "route.path",
                    "An absolute path (no query or fragment), at most 2048 bytes.",
                ));
            }
            Check::Route { method, path: r.path }
        }
        (None, Some(list)) => {
            if list.is_empty() || list.len() > 64 {
                return Err(invalid_field("scopes", "1 to 64 scopes."));
            }
            let scopes = list
                .iter()
                .map(|s| {
                    Scope::parse(s).map_err(|_| invalid_field("scopes", format!("`{s}` is not a scope.")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Check::Scopes(scopes)
        }
        _ => {
            return Err(invalid_field(
                "route",
                "Give exactly one of `route` and `scopes`.",
            ));
        }
    };
    let ip = match b.ip {
        None => None,
        Some(s) => Some(ClientIp::parse(&s).ok_or_else(|| invalid_field("ip", "Not an IP address."))?),
    };
    Ok(VerifyRequest {
        credential,
        check,
        ip,
    })
}

/// The scopes check for [`Check::Scopes`]: every scope granted by the record.
pub fn scopes_granted(record: &KeyRecord, scopes: &[Scope]) -> Result<(), Denial> {
    if scopes.iter().all(|s| crate::scope::granted(&record.scopes, s)) {
        Ok(())
    } else {
        Err(Denial::InsufficientScope {
            required: scopes.iter().map(ToString::to_string).collect(),
        })
    }
}

/// The answer: the decision as data. `key_id` is the id the credential named, when it got
/// that far (never the credential).
pub fn answer(decision: &Decision, key_id: Option<&str>, realm: &str) -> Value {
    match decision {
        Decision::Forward(f) => match &f.principal {
            Some(p) => json!({
                "valid": true,
                "code": null,
                "key_id": p.key_id().as_str(),
                "scopes": p.record.scopes,
                "environment": p.record.environment,
                "tenant": p.tenant,
                "expires_at": p.record.expires_at,
            }),
            // A public route: the gateway forwards without looking at any credential.
            None => json!({"valid": true, "code": null, "public": true}),
        },
        Decision::Deny(d) => {
            let p = Problem::from_denial(d, realm);
            json!({"valid": false, "code": p.code, "status": p.status, "key_id": key_id})
        }
        Decision::Preflight(_) => json!({"valid": false, "code": "preflight"}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_one_credential_and_one_check() {
        let r =
            parse(br#"{"key": "kg_x", "route": {"method": "get", "path": "/a"}, "ip": "10.0.0.1"}"#).unwrap();
        assert_eq!(
            r.check,
            Check::Route {
                method: "GET".into(),
                path: "/a".into()
            }
        );
        assert!(r.ip.is_some());
        let r = parse(br#"{"token": "eyJ", "scopes": ["license:read"]}"#).unwrap();
        assert!(matches!(r.check, Check::Scopes(ref s) if s.len() == 1));
        for bad in [
            &br#"{"key": "a", "token": "b", "scopes": ["x"]}"#[..],
            br#"{"scopes": ["x"]}"#,
            br#"{"key": "a"}"#,
            br#"{"key": "a", "scopes": []}"#,
            br#"{"key": "a", "scopes": ["Not A Scope"]}"#,
            br#"{"key": "a", "route": {"method": "TRACE", "path": "/"}}"#,
            br#"{"key": "a", "route": {"method": "GET", "path": "x"}}"#,
            br#"{"key": "a", "route": {"method": "GET", "path": "/orgs/acme?x"}}"#,
            br#"{"key": "a", "scopes": ["x"], "ip": "nope"}"#,
            br#"{"key": "a", "scopes": ["x"], "extra": 1}"#,
            b"not json",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
