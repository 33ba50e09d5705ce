//! Structured log lines: one JSON object per line, so `wrangler tail` and Workers Logs can filter
//! on any field (`code`, `key_id`, `request_id`). Every denial and every error writes one; every
//! admin write and every denied admin attempt writes one. A key never appears in a line: only its
//! public id, and a path that holds something key-shaped is replaced by a placeholder.

use serde_json::{Map, Value, json};

use crate::admin::AuditEvent;
use crate::ip::ClientIp;
use crate::key::{KeyPrefix, holds_secret};

/// What every line about a request carries.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    /// The raw path as received.
    pub path: &'a str,
    pub client_ip: Option<ClientIp>,
    pub key_prefix: &'a KeyPrefix,
    /// The admin token, so that no line can carry it either.
    pub token: Option<&'a str>,
}

/// The request id: `cf-ray` when the platform sent one that looks sane, otherwise `generate()`.
pub fn request_id(cf_ray: Option<&str>, generate: impl FnOnce() -> String) -> String {
    match cf_ray.map(str::trim) {
        Some(r)
            if !r.is_empty()
                && r.len() <= 64
                && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
        {
            r.to_owned()
        }
        _ => generate(),
    }
}

impl RequestContext<'_> {
    fn base(&self, level: &str, event: &str) -> Map<String, Value> {
        // A token (or any JWT) in a path segment is redacted as a key is.
        let jwt = self
            .path
            .split(['/', ';', '=', ','])
            .any(crate::token::looks_like_jwt);
        let path = if jwt || holds_secret(self.path, self.key_prefix, self.token) {
            "[path redacted: it holds a key, a token or the admin token]"
        } else {
            self.path
        };
        let mut m = Map::new();
        m.insert("level".into(), json!(level));
        m.insert("event".into(), json!(event));
        m.insert("request_id".into(), json!(self.request_id));
        m.insert("method".into(), json!(self.method));
        m.insert("path".into(), json!(path));
        m.insert("client_ip".into(), json!(self.client_ip.map(|i| i.to_string())));
        m
    }

    /// A request answered with a problem: `denied` below 500, `error` from 500 on.
    pub fn problem(
        &self,
        code: &str,
        status: u16,
        route: Option<usize>,
        key_id: Option<&str>,
    ) -> Map<String, Value> {
        let (level, event) = if status >= 500 {
            ("error", "error")
        } else {
            ("warn", "denied")
        };
        let mut m = self.base(level, event);
        m.insert("code".into(), json!(code));
        m.insert("status".into(), json!(status));
        m.insert("route".into(), json!(route));
        m.insert("key_id".into(), json!(key_id));
        m
    }

    /// An admin write or a denied admin attempt, as its audit event has it.
    pub fn admin(&self, e: &AuditEvent) -> Map<String, Value> {
        let mut m = self.base("info", "admin");
        m.insert("action".into(), json!(e.action));
        m.insert("actor".into(), json!(e.actor));
        m.insert("key_id".into(), json!(e.key_id.as_ref().map(|k| k.to_string())));
        m.insert("changed".into(), json!(e.changed));
        if let Some(code) = &e.code {
            m.insert("code".into(), json!(code));
        }
        m
    }
}

/// One line of JSON.
pub fn line(m: Map<String, Value>) -> String {
    Value::Object(m).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(path: &'a str, prefix: &'a KeyPrefix) -> RequestContext<'a> {
        RequestContext {
            request_id: "8f1c2b3a4d5e6f70-LHR",
            method: "GET",
            path,
            client_ip: ClientIp::parse("203.0.113.9"),
            key_prefix: prefix,
            token: Some("the-admin-token-0123456789abcdef0"),
        }
    }

    #[test]
    fn request_ids_come_from_cf_ray_or_are_generated() {
        assert_eq!(
            request_id(Some(" 8f1c2b3a4d5e6f70-LHR "), || "gen".into()),
            "8f1c2b3a4d5e6f70-LHR"
        );
        for bad in [None, Some(""), Some("a b"), Some("x\"y")] {
            assert_eq!(request_id(bad, || "gen".into()), "gen", "{bad:?}");
        }
    }

    #[test]
    fn denial_lines_carry_every_field_and_never_a_key() {
        let prefix = KeyPrefix::default();
        let l = line(ctx("/licenses/1", &prefix).problem(
            "insufficient_scope",
            403,
            Some(2),
            Some("3f9a0c1d2b4e5f60"),
        ));
        let v: Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["event"], "denied");
        assert_eq!(v["code"], "insufficient_scope");
        assert_eq!(v["status"], 403);
        assert_eq!(v["route"], 2);
        assert_eq!(v["key_id"], "3f9a0c1d2b4e5f60");
        assert_eq!(v["client_ip"], "203.0.113.9");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/licenses/1");
        assert_eq!(v["request_id"], "8f1c2b3a4d5e6f70-LHR");
        let key = "kg_live_3f9a0c1d2b4e5f60_abababababababababababababababababababababababababababababababab_00000000";
        let l = line(ctx(&format!("/public/{key}"), &prefix).problem("origin_unavailable", 502, None, None));
        assert!(!l.contains("abababab"), "{l}");
        let encoded = key.replace('_', "%255F");
        let l2 = line(ctx(&format!("/x/{encoded}"), &prefix).problem("key_in_path", 400, None, None));
        assert!(!l2.contains("abababab"), "{l2}");
        let l3 =
            line(ctx("/x/the-admin-token-0123456789abcdef0", &prefix).problem("no_route", 404, None, None));
        assert!(!l3.contains("the-admin-token"), "{l3}");
        assert!(l.contains("\"event\":\"error\""));
    }
}
