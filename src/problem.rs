//! RFC 9457 problem+json: every denial and error becomes one of these, here and nowhere else.
//! Independent of `worker`; the edge only copies status, headers and body into a Response.

use serde_json::{Map, Value, json};

use crate::decide::Denial;
use crate::store::{LookupError, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub status: u16,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub extra: Map<String, Value>,
    pub headers: Vec<(&'static str, String)>,
}

pub const CONTENT_TYPE: &str = "application/problem+json";

impl Problem {
    pub fn new(status: u16, code: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            status,
            code,
            title,
            detail: detail.into(),
            extra: Map::new(),
            headers: Vec::new(),
        }
    }

    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }

    /// The same problem with another detail.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(&self) -> String {
        let mut v = json!({
            "type": format!("urn:keygate:problem:{}", self.code),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        });
        if let Value::Object(m) = &mut v {
            m.extend(self.extra.clone());
        }
        v.to_string()
    }

    fn unauthorized(realm: &str, code: &'static str, title: &'static str, detail: &str) -> Self {
        let challenge = if code == "missing_key" {
            format!("Bearer realm=\"{realm}\"")
        } else {
            format!("Bearer realm=\"{realm}\", error=\"invalid_token\"")
        };
        Problem::new(401, code, title, detail).header("WWW-Authenticate", challenge)
    }

    /// The one mapping from a denial to HTTP. Never includes the key.
    pub fn from_denial(d: &Denial, realm: &str) -> Self {
        let unauth = |code, title, detail: &str| Problem::unauthorized(realm, code, title, detail);
        match d {
            Denial::LoopDetected => Problem::new(
                508,
                "loop_detected",
                "Loop detected",
                "This request was forwarded by this gateway and came back to it; it was not forwarded again. Check ORIGIN.",
            ),
            Denial::MisdirectedRequest => Problem::new(
                421,
                "misdirected_request",
                "Misdirected request",
                "This gateway does not serve this hostname.",
            ),
            Denial::InvalidPath => Problem::new(
                400,
                "invalid_path",
                "Invalid path",
                "The path has an invalid percent-encoding, or a segment that is `.` or `..` or holds `/`, `\\`, `;` or a control character, in some encoding.",
            ),
            Denial::KeyInPath => Problem::new(
                400,
                "key_in_path",
                "Key in path",
                "The path holds an API key. Send keys only in the Authorization or X-API-Key header; this one may have been logged by a proxy on the way and should be rotated.",
            ),
            Denial::BodyNotAllowed => Problem::new(
                400,
                "body_not_allowed",
                "Body not allowed",
                "A GET or HEAD request may not carry a body.",
            ),
            Denial::CorsOriginNotAllowed => Problem::new(
                403,
                "cors_origin_not_allowed",
                "CORS origin not allowed",
                "This route's CORS policy does not allow this Origin.",
            ),
            Denial::NoRoute => Problem::new(
                404,
                "no_route",
                "No route",
                "No route matches this method and path.",
            ),
            Denial::IpNotAllowed => Problem::new(
                403,
                "ip_not_allowed",
                "IP address not allowed",
                "The client address is not on an allowlist that applies to this request.",
            ),
            Denial::MissingKey => unauth(
                "missing_key",
                "API key missing",
                "Send the key as `Authorization: Bearer <key>` or `X-API-Key: <key>`.",
            ),
            Denial::MalformedKey => unauth(
                "malformed_key",
                "API key malformed",
                "The credential is not a well-formed API key.",
            ),
            Denial::AmbiguousKey => unauth(
                "ambiguous_key",
                "Ambiguous API key",
                "The request carries more than one different credential.",
            ),
            Denial::InvalidKey => unauth("invalid_key", "API key invalid", "The API key is not valid."),
            Denial::InvalidToken => unauth(
                "invalid_token",
                "Token invalid",
                "The access token is not valid: its signature, its type or its claims, or its key changed since it was issued. Get a new one.",
            ),
            Denial::ExpiredToken => unauth(
                "expired_token",
                "Token expired",
                "The access token has expired. Get a new one.",
            ),
            Denial::ExpiredKey => unauth("expired_key", "API key expired", "The API key has expired."),
            Denial::RevokedKey => unauth("revoked_key", "API key revoked", "The API key has been revoked."),
            Denial::DisabledKey => unauth("disabled_key", "API key disabled", "The API key is disabled."),
            Denial::InsufficientScope { required } => Problem::new(
                403,
                "insufficient_scope",
                "Insufficient scope",
                "The API key does not hold the scopes this route requires.",
            )
            .with("required_scopes", json!(required)),
            Denial::TenantNotAllowed => Problem::new(
                403,
                "tenant_not_allowed",
                "Tenant not allowed",
                "The API key is not allowed for this tenant.",
            ),
            Denial::EnvironmentNotAllowed => Problem::new(
                403,
                "environment_not_allowed",
                "Environment not allowed",
                "Keys of this environment may not use this route.",
            ),
            Denial::StoreUnavailable => store_unavailable(),
            Denial::RecordInvalid(_) => Problem::new(
                500,
                "record_invalid",
                "Key record invalid",
                "The stored record for this key could not be read; the request is denied.",
            ),
            Denial::PepperMissing(_) => Problem::new(
                500,
                "pepper_missing",
                "Server misconfigured",
                "This key needs KEY_PEPPER, which is not set; the request is denied.",
            ),
        }
    }
}

pub fn store_unavailable() -> Problem {
    Problem::new(
        503,
        "store_unavailable",
        "Key store unavailable",
        "The key store could not be reached; the request is denied. Retry shortly.",
    )
    .header("Retry-After", "5")
}

pub fn method_not_allowed(allow: &'static str) -> Problem {
    Problem::new(
        405,
        "method_not_allowed",
        "Method not allowed",
        format!("Allowed: {allow}."),
    )
    .header("Allow", allow)
}

/// For methods the runtime cannot forward unchanged.
pub fn method_not_implemented() -> Problem {
    Problem::new(
        501,
        "method_not_implemented",
        "Method not implemented",
        "The gateway forwards GET, HEAD, POST, PUT, PATCH, DELETE and OPTIONS only.",
    )
}

pub fn origin_unavailable() -> Problem {
    Problem::new(
        502,
        "origin_unavailable",
        "Origin unavailable",
        "The origin could not be reached.",
    )
    .header("Retry-After", "5")
}

/// The origin answered, with a status no response can carry on (outside 200-599, or a 101
/// without a WebSocket):
/// the origin may have acted on the request, so no `Retry-After`.
pub fn origin_status_unusable(status: u16) -> Problem {
    Problem::new(
        502,
        "origin_unavailable",
        "Origin unavailable",
        format!(
            "The origin answered with status {status}, which cannot be passed on; it may have processed the request."
        ),
    )
}

pub fn internal_error(detail: &str) -> Problem {
    Problem::new(500, "internal_error", "Internal error", detail)
}

pub fn policy_invalid() -> Problem {
    Problem::new(
        500,
        "policy_invalid",
        "Policy invalid",
        "The gateway's route policy is invalid, so every request is denied. The reason is in the worker's logs.",
    )
}

// ---- limits and credits ------------------------------------------------------------------------

/// `429 rate_limited`: the key is over its tier's limit.
pub fn rate_limited(tier: &crate::limits::Tier) -> Problem {
    let mut p = Problem::new(
        429,
        "rate_limited",
        "Rate limited",
        format!(
            "This key is over the limit of its rate tier `{}`: {} requests per {} seconds.",
            tier.name, tier.limit, tier.period
        ),
    )
    .with("rate_tier", json!(tier.name));
    p.headers.extend(tier.exceeded_headers());
    p
}

/// `429 rate_limited`: too many failed authentications from this address.
pub fn auth_failures_limited(tier: &crate::limits::Tier, retry_after: u32) -> Problem {
    Problem::new(
        429,
        "rate_limited",
        "Rate limited",
        format!(
            "Too many failed authentications from this address (at most {} per {} seconds). Try again later.",
            tier.limit, tier.period
        ),
    )
    .header("Retry-After", retry_after.to_string())
    .header("RateLimit-Policy", tier.policy_header())
    .header("RateLimit", format!("\"{}\";r=0;t={retry_after}", tier.name))
}

/// `503 limiter_unavailable`: a limiter failed and the policy says `fail_closed`.
pub fn limiter_unavailable() -> Problem {
    Problem::new(
        503,
        "limiter_unavailable",
        "Limiter unavailable",
        "The rate limiter could not be reached, and this gateway fails closed when it cannot.",
    )
    .header("Retry-After", "5")
}

/// `429 credits_exhausted`: not enough credits for this route's cost; `Retry-After` until the
/// next refill, when the key has one.
pub fn credits_exhausted(cost: u64, retry_after: Option<u64>) -> Problem {
    let detail = match retry_after {
        Some(_) => format!(
            "This key has fewer credits left than this request costs ({cost}). They are refilled at the time in Retry-After."
        ),
        None => {
            format!("This key has fewer credits left than this request costs ({cost}), and it has no refill.")
        }
    };
    let p = Problem::new(429, "credits_exhausted", "Credits exhausted", detail).with("cost", json!(cost));
    match retry_after {
        Some(s) => p.header("Retry-After", s.to_string()),
        None => p,
    }
}

/// `503 credits_unavailable`: the registry, which holds the credits, did not answer. Credits
/// are never spent without it (fail closed).
pub fn credits_unavailable() -> Problem {
    Problem::new(
        503,
        "credits_unavailable",
        "Credits unavailable",
        "This key is metered, and its credits could not be checked. Try again shortly.",
    )
    .header("Retry-After", "2")
}

// ---- admin API -------------------------------------------------------------------------------

/// `503 admin_disabled`: no `ADMIN_TOKEN` is set.
pub fn admin_disabled() -> Problem {
    Problem::new(
        503,
        "admin_disabled",
        "Admin API disabled",
        "Set the ADMIN_TOKEN secret to enable the admin API.",
    )
}

/// `503 admin_disabled`: the `ADMIN_TOKEN` is too short to be trusted.
pub fn admin_token_too_short() -> Problem {
    Problem::new(
        503,
        "admin_disabled",
        "Admin API disabled",
        "The ADMIN_TOKEN secret is too short (fewer than 32 characters), so the admin API is off. Set a longer one, such as the output of `openssl rand -hex 32`.",
    )
}

/// `401 invalid_admin_credential`: the credential is neither the admin token nor a valid key.
pub fn invalid_admin_credential(realm: &str) -> Problem {
    Problem::new(
        401,
        "invalid_admin_credential",
        "Invalid admin credential",
        "The credential is neither the admin token nor a valid admin key.",
    )
    .header(
        "WWW-Authenticate",
        format!("Bearer realm=\"{realm}\", error=\"invalid_token\""),
    )
}

/// `403 insufficient_scope`: an admin key lacks the scope the endpoint requires.
pub fn admin_key_lacks_scope(scope: &str) -> Problem {
    Problem::new(
        403,
        "insufficient_scope",
        "Insufficient scope",
        format!("This admin key lacks `{scope}`."),
    )
    .with("required_scopes", json!([scope]))
}

/// `403 scope_escalation`: the key an admin key would create or change is beyond its reach;
/// `detail` says on which axis.
pub fn scope_escalation(detail: String) -> Problem {
    Problem::new(403, "scope_escalation", "Scope escalation", detail)
}

pub fn not_found() -> Problem {
    Problem::new(404, "not_found", "Not found", "No admin endpoint has this path.")
}

pub fn key_not_found() -> Problem {
    Problem::new(404, "key_not_found", "Key not found", "No key has this id.")
}

pub fn invalid_field(field: &str, detail: impl Into<String>) -> Problem {
    Problem::new(422, "invalid_field", "Invalid field", detail).with("field", json!(field))
}

pub fn invalid_query(parameter: &str, detail: String) -> Problem {
    Problem::new(400, "invalid_query", "Invalid query parameter", detail).with("parameter", json!(parameter))
}

pub fn invalid_cursor() -> Problem {
    Problem::new(
        400,
        "invalid_cursor",
        "Invalid cursor",
        "Not a cursor this endpoint returned for these filters: use the `cursor` of the previous page with the same endpoint and filters.",
    )
    .with("parameter", json!("cursor"))
}

pub fn payload_too_large() -> Problem {
    Problem::new(
        413,
        "payload_too_large",
        "Payload too large",
        "The body is over 64 KiB.",
    )
}

pub fn unsupported_media_type() -> Problem {
    Problem::new(
        415,
        "unsupported_media_type",
        "Unsupported media type",
        "Send `Content-Type: application/json`.",
    )
}

pub fn malformed_json(e: &serde_json::Error) -> Problem {
    Problem::new(
        400,
        "malformed_json",
        "Malformed JSON",
        format!("The body is not valid JSON: {e}"),
    )
}

pub fn key_revoked(detail: &str) -> Problem {
    Problem::new(409, "key_revoked", "Key revoked", detail)
}

pub fn key_retired() -> Problem {
    Problem::new(
        409,
        "key_retired",
        "Key retired",
        "This key was retired by a rotation: its expiry is the end of its grace period and cannot change.",
    )
}

pub fn key_disabled() -> Problem {
    Problem::new(
        409,
        "key_disabled",
        "Key disabled",
        "A disabled key cannot be rotated: enable it first, or issue a new key.",
    )
}

pub fn key_expired() -> Problem {
    Problem::new(
        409,
        "key_expired",
        "Key expired",
        "An expired key cannot be rotated (its successor could not outlive it); issue a new key.",
    )
}

pub fn already_rotated() -> Problem {
    Problem::new(
        409,
        "already_rotated",
        "Already rotated",
        "This key has already been rotated; rotate its successor.",
    )
}

/// `409 already_rotated`: another rotation of the same key won the race.
pub fn rotated_concurrently() -> Problem {
    Problem::new(
        409,
        "already_rotated",
        "Already rotated",
        "This key was rotated by another request at the same time; rotate its successor.",
    )
}

/// `409 key_changed`: the key changed between the read and the retirement of a rotation.
pub fn key_changed() -> Problem {
    Problem::new(
        409,
        "key_changed",
        "Key changed",
        "The key changed while it was being rotated; nothing was rotated. Read it again and retry.",
    )
}

/// `412 version_mismatch`: `If-Match` named no current version of the key.
pub fn version_mismatch(current: u64) -> Problem {
    Problem::new(
        412,
        "version_mismatch",
        "Version mismatch",
        format!("The key changed since you read it; its version is now {current}. Read it again (its ETag) and retry."),
    )
    .with("current_version", serde_json::json!(current))
}

/// `400 invalid_idempotency_key`: empty, too long, or not printable ASCII.
pub fn invalid_idempotency_key() -> Problem {
    Problem::new(
        400,
        "invalid_idempotency_key",
        "Invalid Idempotency-Key",
        "An Idempotency-Key is 1 to 255 printable ASCII characters.",
    )
}

/// `422 idempotency_key_reused`: the key was used with another request body.
pub fn idempotency_key_reused() -> Problem {
    Problem::new(
        422,
        "idempotency_key_reused",
        "Idempotency-Key reused",
        "This Idempotency-Key was used with a different request in the last 24 hours; use a new key for a new request.",
    )
}

/// `409 idempotency_key_unusable`: the stored response cannot be opened (the admin token
/// changed since it was stored).
pub fn idempotency_key_unusable() -> Problem {
    Problem::new(
        409,
        "idempotency_key_unusable",
        "Idempotency-Key unusable",
        "The response stored under this Idempotency-Key can no longer be read (the admin token changed); the request was not repeated. Check the key list before retrying with a new key.",
    )
}

pub fn store_error(_: StoreError) -> Problem {
    store_unavailable()
}

pub fn lookup_error(e: LookupError) -> Problem {
    match e {
        LookupError::Store(_) => store_unavailable(),
        LookupError::Corrupt(_) => Problem::new(
            500,
            "record_invalid",
            "Key record invalid",
            "The stored record for this key could not be read.",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let p = Problem::from_denial(&Denial::MissingKey, "r");
        assert_eq!(p.status, 401);
        assert_eq!(
            p.headers,
            vec![("WWW-Authenticate", "Bearer realm=\"r\"".to_owned())]
        );
        let p = Problem::from_denial(&Denial::RevokedKey, "r");
        assert_eq!(p.headers[0].1, "Bearer realm=\"r\", error=\"invalid_token\"");
        let body: Value = serde_json::from_str(
            &Problem::from_denial(
                &Denial::InsufficientScope {
                    required: vec!["a:b".into()],
                },
                "r",
            )
            .body(),
        )
        .unwrap();
        assert_eq!(body["required_scopes"], json!(["a:b"]));
        assert_eq!(body["status"], 403);
        assert_eq!(body["code"], "insufficient_scope");
        for k in ["type", "title", "detail"] {
            assert!(body[k].is_string());
        }
    }
}
