//! `POST /oauth/token`: the client-credentials grant (RFC 6749 §4.4) as plain Rust. The client
//! authenticates with its key (`client_id` = the key id, `client_secret` = the whole key), by
//! HTTP Basic or form fields, never both; the key then passes every check a key on a gateway
//! route passes (the edge looks its record up between [`parse`] and [`issue`]). Errors are RFC
//! 6749 §5.2 bodies, which OAuth clients parse, not problem+json. No error description ever
//! quotes the request (a parameter may hold a key or a token).

use serde_json::{Value, json};

use crate::credential::HeaderSource;
use crate::key::KeyId;
use crate::record::KeyRecord;
use crate::scope::Grant;
use crate::time::Timestamp;
use crate::token::{ACCESS_TYP, AccessClaims, TokenKeys};

/// The largest token request body read.
pub const MAX_BODY: usize = 8 * 1024;
/// The most scope entries a token carries (a token must stay under the verifier's size limit).
pub const MAX_SCOPES: usize = 64;

/// An RFC 6749 §5.2 error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
}

impl OAuthError {
    fn new(status: u16, error: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            status,
            error,
            description: description.into(),
        }
    }

    pub fn invalid_request(d: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", d)
    }

    /// `401 invalid_client`, whatever was wrong with the credential (unknown, revoked, wrong
    /// address...): a client learns nothing more from the token endpoint than from a route.
    pub fn invalid_client(d: impl Into<String>) -> Self {
        Self::new(401, "invalid_client", d)
    }

    pub fn body(&self) -> String {
        json!({"error": self.error, "error_description": self.description}).to_string()
    }

    /// Headers of the error response: never cached, and a Basic challenge on 401.
    pub fn headers(&self, realm: &str) -> Vec<(&'static str, String)> {
        let mut h = vec![
            ("Cache-Control", "no-store".to_owned()),
            ("Pragma", "no-cache".to_owned()),
        ];
        if self.status == 401 {
            h.push(("WWW-Authenticate", format!("Basic realm=\"{realm}\"")));
        }
        if self.status == 405 {
            h.push(("Allow", "POST".to_owned()));
        }
        h
    }
}

/// A token request, its client not yet authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub client_id: String,
    /// The whole key. Never logged or echoed.
    pub client_secret: String,
    pub scope: Option<String>,
    /// `audience` or `resource`: a tenant the key holds.
    pub audience: Option<String>,
}

fn form_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Parse the request. `method` and the content type are checked; every parameter may appear
/// once (RFC 6749 §3.2).
pub fn parse<H: HeaderSource + ?Sized>(
    method: &str,
    headers: &H,
    body: &[u8],
) -> Result<TokenRequest, OAuthError> {
    if method != "POST" {
        return Err(OAuthError::new(405, "invalid_request", "Use POST."));
    }
    let form_type = headers.header("content-type").is_some_and(|t| {
        t.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    });
    if !form_type {
        return Err(OAuthError::invalid_request(
            "Send the parameters as application/x-www-form-urlencoded.",
        ));
    }
    let body =
        std::str::from_utf8(body).map_err(|_| OAuthError::invalid_request("The body is not UTF-8."))?;
    let mut params: Vec<(String, String)> = Vec::new();
    for pair in body.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(k), Some(v)) = (form_decode(k), form_decode(v)) else {
            return Err(OAuthError::invalid_request(
                "A parameter is not valid form encoding.",
            ));
        };
        if params.iter().any(|(p, _)| *p == k) {
            return Err(OAuthError::invalid_request("A parameter is repeated."));
        }
        params.push((k, v));
    }
    let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    match get("grant_type").as_deref() {
        None => return Err(OAuthError::invalid_request("`grant_type` is missing.")),
        Some("client_credentials") => {}
        Some(_) => {
            return Err(OAuthError::new(
                400,
                "unsupported_grant_type",
                "Only `client_credentials` is supported.",
            ));
        }
    }
    let basic = match headers.header("authorization") {
        None => None,
        Some(a) => match a.split_once(' ') {
            Some((scheme, value)) if scheme.eq_ignore_ascii_case("basic") => Some(basic_pair(value.trim())?),
            _ => {
                return Err(OAuthError::invalid_client(
                    "Authenticate with HTTP Basic (client id and key) or the client_id and client_secret parameters.",
                ));
            }
        },
    };
    let form = match (get("client_id"), get("client_secret")) {
        (Some(id), Some(secret)) => Some((id, secret)),
        (None, None) => None,
        (Some(id), None) if basic.as_ref().is_some_and(|(b, _)| *b == id) => None,
        (Some(_), None) if basic.is_some() => {
            return Err(OAuthError::invalid_request(
                "The client_id differs from the Basic credentials.",
            ));
        }
        _ => {
            return Err(OAuthError::invalid_request(
                "Give both client_id and client_secret.",
            ));
        }
    };
    let (client_id, client_secret) = match (basic, form) {
        (Some(_), Some(_)) => {
            return Err(OAuthError::invalid_request(
                "Use one client authentication method, not both.",
            ));
        }
        (Some(b), None) => b,
        (None, Some(f)) => f,
        (None, None) => return Err(OAuthError::invalid_client("No client credentials.")),
    };
    let audience = match (get("audience"), get("resource")) {
        (Some(_), Some(_)) => {
            return Err(OAuthError::invalid_request(
                "Give `audience` or `resource`, not both.",
            ));
        }
        (a, r) => a.or(r),
    };
    Ok(TokenRequest {
        client_id,
        client_secret,
        scope: get("scope"),
        audience,
    })
}

/// `Basic base64(form-encoded id ":" form-encoded secret)` (RFC 6749 §2.3.1).
fn basic_pair(value: &str) -> Result<(String, String), OAuthError> {
    use base64::Engine;
    let bad = || OAuthError::invalid_client("The Basic credentials do not decode.");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (id, secret) = text.split_once(':').ok_or_else(bad)?;
    Ok((
        form_decode(id).ok_or_else(bad)?,
        form_decode(secret).ok_or_else(bad)?,
    ))
}

/// The claimed client id must be the key's own id (checked after the key parses, before any
/// lookup).
pub fn client_matches(req: &TokenRequest, key_id: &KeyId) -> Result<(), OAuthError> {
    if req.client_id == key_id.as_str() {
        Ok(())
    } else {
        Err(OAuthError::invalid_client("The client id is not the key's."))
    }
}

/// Issue a token for an authenticated, live key: `(token, response body)`. The scope narrows
/// the key's grants (every requested entry must be covered by one of them); the audience names
/// one of the key's tenants; the lifetime never outlives the key.
pub fn issue(
    keys: &TokenKeys,
    policy: &crate::policy::TokenPolicy,
    req: &TokenRequest,
    record: &KeyRecord,
    now: Timestamp,
) -> Result<(String, Value), OAuthError> {
    let grants: Vec<Grant> = match &req.scope {
        None => record.scopes.clone(),
        Some(s) => {
            let mut out: Vec<Grant> = Vec::new();
            for entry in s.split(' ').filter(|e| !e.is_empty()) {
                let g = Grant::parse(entry).map_err(|_| {
                    OAuthError::new(400, "invalid_scope", "A requested scope is not a scope.")
                })?;
                if !record.scopes.iter().any(|mine| mine.covers(&g)) {
                    return Err(OAuthError::new(
                        400,
                        "invalid_scope",
                        "The key does not hold a requested scope.",
                    ));
                }
                if !out.contains(&g) {
                    out.push(g);
                }
            }
            if out.len() > MAX_SCOPES {
                return Err(OAuthError::new(400, "invalid_scope", "Too many scopes."));
            }
            if out.is_empty() {
                return Err(OAuthError::new(400, "invalid_scope", "The scope is empty."));
            }
            out
        }
    };
    let (aud, tenants) = match &req.audience {
        None => (policy.audience.clone(), record.tenants.clone()),
        Some(t) if record.tenants.iter().any(|mine| mine == t) => (t.clone(), vec![t.clone()]),
        Some(_) => {
            return Err(OAuthError::new(
                400,
                "invalid_target",
                "The audience is not a tenant of this key.",
            ));
        }
    };
    let now_s = now.millis().div_euclid(1000);
    let mut exp = now_s.saturating_add(i64::from(policy.ttl_seconds));
    if let Some(e) = record.expires_at {
        exp = exp.min(e.millis().div_euclid(1000));
    }
    if exp <= now_s {
        return Err(OAuthError::invalid_client("The key expires within a second."));
    }
    let jti =
        crate::key::random_hex(8).map_err(|_| OAuthError::new(500, "server_error", "No randomness."))?;
    let scope = grants
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    let claims = AccessClaims {
        iss: policy.issuer.clone(),
        sub: record.id.clone(),
        aud,
        exp,
        iat: now_s,
        jti,
        scope: scope.clone(),
        client_id: record.id.clone(),
        environment: record.environment,
        tenants,
        ip_allowlist: record.ip_allowlist.clone(),
        ver: record.version,
        rate_tier: record.rate_tier.clone(),
        metered: record.metered,
        htm: None,
        htu: None,
        metadata: None,
    };
    let token = keys
        .sign(ACCESS_TYP, &claims)
        .map_err(|_| OAuthError::new(500, "server_error", "The token could not be signed."))?;
    // A token the gateway would refuse (over its size limit) is never handed out.
    if token.len() > crate::token::MAX_TOKEN_BYTES {
        return Err(OAuthError::new(
            400,
            "invalid_scope",
            "The token would be too large: ask for fewer scopes.",
        ));
    }
    let body = json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": exp - now_s,
        "scope": scope,
    });
    Ok((token, body))
}

#[cfg(test)]
mod tests;
