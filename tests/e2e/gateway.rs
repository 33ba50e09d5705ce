//! The validation path, end to end: every outcome, what the origin saw, stripped credentials and
//! spoofed headers, revocation, expiry, rotation, and what KV holds.

use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::harness::{dir_contains, send, wrangler_kv};
use crate::{Ctx, forge_key};

type Test = (&'static str, fn(&Ctx));

pub const TESTS: &[Test] = &[
    ("gateway::healthz_reports_version", healthz_reports_version),
    ("gateway::unmatched_path_is_no_route", unmatched_path_is_no_route),
    (
        "gateway::public_route_forwards_without_key_and_strips_spoofed_headers",
        public_route_forwards,
    ),
    (
        "gateway::origin_status_outside_200_599_is_502",
        origin_status_outside_http,
    ),
    ("gateway::missing_key", missing_key),
    ("gateway::malformed_keys", malformed_keys),
    (
        "gateway::ambiguous_and_repeated_keys",
        ambiguous_and_repeated_keys,
    ),
    (
        "gateway::unknown_id_and_wrong_secret_are_the_same_invalid_key",
        invalid_key,
    ),
    (
        "gateway::forwarded_request_as_the_origin_saw_it",
        forwarded_request,
    ),
    (
        "gateway::origin_response_comes_back_unchanged",
        origin_response_unchanged,
    ),
    ("gateway::scopes_wildcards_and_templates", scopes),
    (
        "gateway::route_ip_allowlist_before_any_key_work",
        route_ip_allowlist,
    ),
    ("gateway::key_ip_allowlist", key_ip_allowlist),
    ("gateway::tenants", tenants),
    ("gateway::environments", environments),
    ("gateway::disabled_then_enabled", disabled_then_enabled),
    ("gateway::revocation_is_immediate", revocation_is_immediate),
    ("gateway::expiry_and_sunset", expiry_and_sunset),
    ("gateway::rotation_grace_then_expired", rotation_grace),
    ("gateway::delete_stops_the_key_at_once", delete_stops_key),
    ("gateway::kv_holds_the_hash_never_the_key", kv_holds_hash_only),
    (
        "gateway::corrupt_record_fails_closed",
        corrupt_record_fails_closed,
    ),
    (
        "gateway::invalid_policy_fails_closed",
        invalid_policy_fails_closed,
    ),
];

const REALM: &str = "Bearer realm=\"keygate\"";
const INVALID_TOKEN: &str = "Bearer realm=\"keygate\", error=\"invalid_token\"";

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

fn healthz_reports_version(c: &Ctx) {
    let r = c.call("GET", "/healthz", &[], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["version"], env!("CARGO_PKG_VERSION"));
}

fn unmatched_path_is_no_route(c: &Ctx) {
    let r = c.call("GET", "/nowhere", &[], None);
    assert_eq!((r.status, r.code().as_str()), (404, "no_route"));
    // The test-only trap (`KEYGATE_TEST_PANIC`) is an ordinary unknown path without its variable.
    let r = c.call("GET", "/__keygate/panic", &[], None);
    assert_eq!((r.status, r.code().as_str()), (404, "no_route"));
    // Method restrictions: DELETE on /keyrings/x/encrypt matches no route.
    let r = c.call("DELETE", "/keyrings/comms/encrypt", &[], None);
    assert_eq!((r.status, r.code().as_str()), (404, "no_route"));
}

/// An origin status no response can carry (outside 200-599, or a 101 without a WebSocket, which
/// once made workers-rs panic and the isolate restart) is a 502 that says the origin may have
/// acted (no `Retry-After`), not a 500 saying nothing was forwarded.
fn origin_status_outside_http(c: &Ctx) {
    for status in ["600", "101"] {
        let r = c.call("GET", &format!("/public/status/{status}"), &[], None);
        assert_eq!(
            (r.status, r.code().as_str()),
            (502, "origin_unavailable"),
            "{status}: {}",
            r.body
        );
        assert!(
            r.json()["detail"].as_str().unwrap().contains(status),
            "{}",
            r.body
        );
        assert_eq!(r.header("retry-after"), None, "{status}");
    }
    let r = c.call("GET", "/public/status/599", &[], None);
    assert_eq!(r.status, 599, "{}", r.body);
    assert!(
        !c.main.log().contains("Reinitializing Wasm application"),
        "the worker re-instantiated its wasm"
    );
}

fn public_route_forwards(c: &Ctx) {
    let r = c.call(
        "GET",
        "/public/docs?x=1",
        &[("X-Key-Id", "spoofed"), ("x-key-scopes", "admin:**")],
        None,
    );
    assert_eq!(r.status, 200);
    let seen = r.echoed();
    assert_eq!(seen["path"], "/public/docs");
    assert_eq!(seen["query"], "x=1");
    let headers = seen["headers"].as_object().unwrap();
    assert!(
        headers.keys().all(|k| !k.starts_with("x-key-")),
        "X-Key-* reached the origin: {headers:?}"
    );
}

fn missing_key(c: &Ctx) {
    for headers in [
        vec![],
        vec![("Authorization", "Basic Zm9vOmJhcg==")],
        vec![("X_API_Key", "kg_live_x")],
    ] {
        let r = c.call("GET", "/licenses/1", &headers, None);
        assert_eq!((r.status, r.code().as_str()), (401, "missing_key"), "{headers:?}");
        assert_eq!(r.header("www-authenticate"), Some(REALM));
    }
    // A key only in the query string does not count (off by default).
    let (key, _) = c.key_with(&["license:read"]);
    let r = c.call("GET", &format!("/licenses/1?api_key={key}"), &[], None);
    assert_eq!(r.code(), "missing_key");
    // OPTIONS matches like any method: on a protected route that takes every method it needs a
    // key; where no route lists OPTIONS it matches nothing.
    assert_eq!(c.call("OPTIONS", "/orgs/acme/x", &[], None).code(), "missing_key");
    assert_eq!(c.call("OPTIONS", "/licenses/1", &[], None).code(), "no_route");
}

fn malformed_keys(c: &Ctx) {
    let (key, _) = c.key_with(&["license:read"]);
    let truncated = &key[..key.len() - 1];
    let mut typo = key.clone().into_bytes();
    typo[20] = if typo[20] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    for bad in [
        "nonsense",
        truncated,
        typo.as_str(),
        "Bearer",
        &key.to_uppercase(),
    ] {
        let auth = bearer(bad);
        let r = c.call("GET", "/licenses/1", &[("Authorization", &auth)], None);
        assert_eq!((r.status, r.code().as_str()), (401, "malformed_key"), "{bad}");
        assert_eq!(r.header("www-authenticate"), Some(INVALID_TOKEN));
        assert!(!r.body.contains(bad), "the key is echoed");
    }
}

fn ambiguous_and_repeated_keys(c: &Ctx) {
    let (k1, _) = c.key_with(&["license:read"]);
    let (k2, _) = c.key_with(&["license:read"]);
    let r = c.call(
        "GET",
        "/licenses/1",
        &[("Authorization", &bearer(&k1)), ("X-API-Key", &k2)],
        None,
    );
    assert_eq!((r.status, r.code().as_str()), (401, "ambiguous_key"));
    let r = c.call(
        "GET",
        "/licenses/1",
        &[("X-API-Key", &k1), ("X-API-Key", &k2)],
        None,
    );
    assert_eq!(r.code(), "ambiguous_key");
    // The same key twice is one credential.
    let r = c.call(
        "GET",
        "/licenses/1",
        &[("authorization", &format!("bearer  {k1} ")), ("X-API-Key", &k1)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

fn invalid_key(c: &Ctx) {
    let (key, id) = c.key_with(&["license:read"]);
    let id = id.as_str();
    let unknown = forge_key("live", "0123456789abcdef");
    let wrong_secret = forge_key("live", id);
    let a = c.call("GET", "/licenses/1", &[("X-API-Key", &unknown)], None);
    let b = c.call("GET", "/licenses/1", &[("X-API-Key", &wrong_secret)], None);
    assert_eq!((a.status, a.code().as_str()), (401, "invalid_key"));
    let without_id = |r: &crate::harness::Resp| {
        let mut v = r.json();
        v.as_object_mut().unwrap().remove("request_id");
        v
    };
    assert_eq!(
        without_id(&a),
        without_id(&b),
        "unknown id and hash mismatch must look the same"
    );
    assert_eq!(a.header("www-authenticate"), b.header("www-authenticate"));
    // The environment in the key must match the record's.
    let other_env = forge_key("test", id);
    assert_eq!(
        c.call("GET", "/licenses/1", &[("X-API-Key", &other_env)], None)
            .code(),
        "invalid_key"
    );
    assert_eq!(
        c.call("GET", "/licenses/1", &[("X-API-Key", &key)], None).status,
        200
    );
}

fn forwarded_request(c: &Ctx) {
    let (key, id) = c.key_with(&["license:*", "keyring.*.encrypt"]);
    let body = "{\"plaintext\": \"aGVsbG8=\"}";
    let r = c.call(
        "POST",
        "/licenses/42/activate?mode=fast&x=%2F",
        &[
            ("Authorization", &bearer(&key)),
            ("Content-Type", "application/json"),
            ("X-Custom", "kept"),
            ("X-Key-Id", "spoofed"),
            ("X-Key-Tenant", "spoofed"),
            ("X-Forwarded-For", "10.0.0.1"),
        ],
        Some(body),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = r.echoed();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/licenses/42/activate");
    assert_eq!(seen["query"], "mode=fast&x=%2F");
    assert_eq!(seen["body"], body);
    let h = &seen["headers"];
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(h["content-type"], "application/json");
    assert!(h.get("authorization").is_none(), "credential forwarded: {h}");
    assert_eq!(h["x-key-id"], id.as_str());
    assert_eq!(h["x-key-scopes"], "license:*,keyring.*.encrypt");
    assert_eq!(h["x-key-environment"], "live");
    assert!(
        h.get("x-key-tenant").is_none(),
        "no tenant_param on this route: {h}"
    );
    assert!(!seen.to_string().contains(&key), "the key reached the origin");
    // X-API-Key is removed too.
    let r = c.call("GET", "/licenses/1", &[("X-API-Key", &key)], None);
    assert!(r.echoed()["headers"].get("x-api-key").is_none());
}

fn origin_response_unchanged(c: &Ctx) {
    let (key, _) = c.key_with(&["license:read"]);
    let r = c.call("GET", "/licenses/status/418", &[("X-API-Key", &key)], None);
    assert_eq!(r.status, 418);
    assert_eq!(r.header("x-origin"), Some("echo"));
    let r = c.call(
        "GET",
        "/licenses/set-header/X-Answer/42",
        &[("X-API-Key", &key)],
        None,
    );
    assert_eq!(r.header("x-answer"), Some("42"));
    assert_eq!(r.header("sunset"), None, "no expiry, no Sunset");
}

fn scopes(c: &Ctx) {
    let (key, _) = c.key_with(&["keyring.comms.encrypt", "keyring.*.decrypt", "license.read"]);
    let call = |m: &str, p: &str| c.call(m, p, &[("X-API-Key", &key)], (m == "POST").then_some("x"));
    assert_eq!(call("POST", "/keyrings/comms/encrypt").status, 200);
    let r = call("POST", "/keyrings/other/encrypt");
    assert_eq!((r.status, r.code().as_str()), (403, "insufficient_scope"));
    assert_eq!(r.json()["required_scopes"], json!(["keyring.other.encrypt"]));
    assert_eq!(call("POST", "/keyrings/anything/decrypt").status, 200);
    // A path value is data: `*` or a dot cannot widen or extend the requirement.
    assert_eq!(call("POST", "/keyrings/*/decrypt").code(), "insufficient_scope");
    assert_eq!(call("POST", "/keyrings/a.b/decrypt").code(), "insufficient_scope");
    // `.` is not `:`.
    assert_eq!(call("GET", "/licenses/1").code(), "insufficient_scope");
    // any_scopes: one of keyring.read or keyring.{ring}.read.
    let (reader, _) = c.key_with(&["keyring.comms.read"]);
    let r = c.call("GET", "/keyrings/comms", &[("X-API-Key", &reader)], None);
    assert_eq!(r.status, 200);
    let r = c.call("GET", "/keyrings/other", &[("X-API-Key", &reader)], None);
    assert_eq!(r.code(), "insufficient_scope");
    // `**` matches one or more trailing segments.
    let (admin_like, _) = c.key_with(&["license:**"]);
    assert_eq!(
        c.call("DELETE", "/licenses/9", &[("X-API-Key", &admin_like)], None)
            .status,
        200
    );
}

fn route_ip_allowlist(c: &Ctx) {
    let (key, _) = c.key_with(&["internal:access"]);
    // Blocked address and no key: 403, not 401 (the IP check comes first).
    let r = c.call("GET", "/internal/x", &[("CF-Connecting-IP", "8.8.8.8")], None);
    assert_eq!((r.status, r.code().as_str()), (403, "ip_not_allowed"));
    // An invalid address with a list that applies: denied. (Without the header, wrangler dev
    // itself sends 127.0.0.1, which this list does not hold.)
    for ip in [
        None,
        Some("010.0.0.1"),
        Some("10.0.0.1, 10.0.0.2"),
        Some("fe80::1%eth0"),
    ] {
        let mut h = vec![("X-API-Key", key.as_str())];
        if let Some(ip) = ip {
            h.push(("CF-Connecting-IP", ip));
        }
        assert_eq!(
            c.call("GET", "/internal/x", &h, None).code(),
            "ip_not_allowed",
            "{ip:?}"
        );
    }
    // X-Forwarded-For and X-Real-IP are ignored.
    let h = [
        ("X-API-Key", key.as_str()),
        ("X-Forwarded-For", "10.1.2.3"),
        ("X-Real-IP", "10.1.2.3"),
    ];
    assert_eq!(c.call("GET", "/internal/x", &h, None).code(), "ip_not_allowed");
    for ok in ["10.9.8.7", "::ffff:10.9.8.7", "2001:db8::5"] {
        let h = [("X-API-Key", key.as_str()), ("CF-Connecting-IP", ok)];
        assert_eq!(c.call("GET", "/internal/x", &h, None).status, 200, "{ok}");
    }
    // Public route with a route allowlist.
    assert_eq!(
        c.call("GET", "/office/x", &[("CF-Connecting-IP", "203.0.113.9")], None)
            .status,
        200
    );
    assert_eq!(
        c.call("GET", "/office/x", &[("CF-Connecting-IP", "198.51.100.1")], None)
            .code(),
        "ip_not_allowed"
    );
}

fn key_ip_allowlist(c: &Ctx) {
    let (key, _) = c.create(json!({"name": "ip", "scopes": ["license:read", "internal:access"], "ip_allowlist": ["198.51.100.0/24", "10.1.0.0/16"]}));
    let call = |p: &str, ip: Option<&str>| {
        let mut h = vec![("X-API-Key", key.as_str())];
        if let Some(ip) = ip {
            h.push(("CF-Connecting-IP", ip));
        }
        c.call("GET", p, &h, None)
    };
    assert_eq!(call("/licenses/1", Some("198.51.100.20")).status, 200);
    assert_eq!(call("/licenses/1", Some("203.0.113.1")).code(), "ip_not_allowed");
    assert_eq!(call("/licenses/1", None).code(), "ip_not_allowed");
    // Route and key lists both apply: the address must be in both.
    assert_eq!(call("/internal/x", Some("10.1.2.3")).status, 200);
    assert_eq!(call("/internal/x", Some("10.2.0.1")).code(), "ip_not_allowed");
    assert_eq!(
        call("/internal/x", Some("198.51.100.20")).code(),
        "ip_not_allowed"
    );
}

fn tenants(c: &Ctx) {
    let (key, _) =
        c.create(json!({"name": "t", "scopes": ["org:access"], "tenants": ["misapret", "new-company"]}));
    let r = c.call(
        "GET",
        "/orgs/new-company/users",
        &[("X-API-Key", &key), ("X-Key-Tenant", "misapret")],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed()["headers"]["x-key-tenant"], "new-company");
    let r = c.call("GET", "/orgs/other/users", &[("X-API-Key", &key)], None);
    assert_eq!((r.status, r.code().as_str()), (403, "tenant_not_allowed"));
    // Tenants compare exactly.
    assert_eq!(
        c.call("GET", "/orgs/Misapret/x", &[("X-API-Key", &key)], None)
            .code(),
        "tenant_not_allowed"
    );
}

fn environments(c: &Ctx) {
    let (test_key, _) =
        c.create(json!({"name": "sandbox", "environment": "test", "scopes": ["billing:read"]}));
    assert!(test_key.starts_with("kg_test_"));
    let r = c.call("GET", "/live-only/invoices", &[("X-API-Key", &test_key)], None);
    assert_eq!((r.status, r.code().as_str()), (403, "environment_not_allowed"));
    let (live_key, _) = c.key_with(&["billing:read"]);
    let r = c.call("GET", "/live-only/invoices", &[("X-API-Key", &live_key)], None);
    assert_eq!(r.echoed()["headers"]["x-key-environment"], "live");
}

fn disabled_then_enabled(c: &Ctx) {
    let (key, id) = c.key_with(&["license:read"]);
    assert_eq!(
        c.admin(
            "PATCH",
            &format!("/admin/keys/{id}"),
            Some(json!({"enabled": false}))
        )
        .status,
        200
    );
    let r = c.call("GET", "/licenses/1", &[("X-API-Key", &key)], None);
    assert_eq!((r.status, r.code().as_str()), (401, "disabled_key"));
    assert_eq!(
        c.admin(
            "PATCH",
            &format!("/admin/keys/{id}"),
            Some(json!({"enabled": true}))
        )
        .status,
        200
    );
    assert_eq!(
        c.call("GET", "/licenses/1", &[("X-API-Key", &key)], None).status,
        200
    );
}

fn revocation_is_immediate(c: &Ctx) {
    let (key, id) = c.key_with(&["license:read"]);
    // Warm the isolate's cache with the live record first.
    assert_eq!(
        c.call("GET", "/licenses/1", &[("X-API-Key", &key)], None).status,
        200
    );
    let r = c.admin(
        "POST",
        &format!("/admin/keys/{id}/revoke"),
        Some(json!({"reason": "leaked"})),
    );
    assert_eq!(r.status, 200);
    let r = c.call("GET", "/licenses/1", &[("X-API-Key", &key)], None);
    assert_eq!((r.status, r.code().as_str()), (401, "revoked_key"));
    assert_eq!(r.header("www-authenticate"), Some(INVALID_TOKEN));
    // Revoked beats disabled and expired.
    c.admin(
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"enabled": false})),
    );
    assert_eq!(
        c.call("GET", "/licenses/1", &[("X-API-Key", &key)], None).code(),
        "revoked_key"
    );
}

fn expiry_and_sunset(c: &Ctx) {
    let (soon, _) = c.create(json!({"name": "short", "scopes": ["license:read"], "expires_in": 2}));
    let r = c.call("GET", "/licenses/1", &[("X-API-Key", &soon)], None);
    assert_eq!(r.status, 200);
    let sunset = r
        .header("sunset")
        .expect("Sunset within the warning window")
        .to_owned();
    assert!(sunset.ends_with(" GMT"), "{sunset}");
    std::thread::sleep(Duration::from_millis(2300));
    let r = c.call("GET", "/licenses/1", &[("X-API-Key", &soon)], None);
    assert_eq!((r.status, r.code().as_str()), (401, "expired_key"));
    // Outside the 7-day window: no Sunset.
    let (later, _) = c.create(json!({"name": "long", "scopes": ["license:read"], "expires_in": "1y"}));
    assert_eq!(
        c.call("GET", "/licenses/1", &[("X-API-Key", &later)], None)
            .header("sunset"),
        None
    );
}

fn rotation_grace(c: &Ctx) {
    let (old, old_id) = c.key_with(&["license:read"]);
    let r = c.admin(
        "POST",
        &format!("/admin/keys/{old_id}/rotate"),
        Some(json!({"grace": 3})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    let new = v["key"].as_str().unwrap().to_owned();
    assert_ne!(v["record"]["id"], old_id);
    assert_eq!(v["record"]["rotated_from"], old_id);
    assert_eq!(v["record"]["scopes"], json!(["license:read"]));
    let old_rec = c.admin("GET", &format!("/admin/keys/{old_id}"), None).json();
    assert_eq!(old_rec["rotated_to"], v["record"]["id"]);
    // During the grace period both work, and the old one announces its end.
    let r = c.call("GET", "/licenses/1", &[("X-API-Key", &old)], None);
    assert_eq!(r.status, 200);
    assert!(r.header("sunset").is_some());
    assert_eq!(
        c.call("GET", "/licenses/1", &[("X-API-Key", &new)], None).status,
        200
    );
    std::thread::sleep(Duration::from_millis(3300));
    assert_eq!(
        c.call("GET", "/licenses/1", &[("X-API-Key", &old)], None).code(),
        "expired_key"
    );
    assert_eq!(
        c.call("GET", "/licenses/1", &[("X-API-Key", &new)], None).status,
        200
    );
    // Grace 0: the old key stops at once.
    let (k, id) = c.key_with(&["license:read"]);
    assert_eq!(
        c.admin(
            "POST",
            &format!("/admin/keys/{id}/rotate"),
            Some(json!({"grace": 0}))
        )
        .status,
        201
    );
    assert_eq!(
        c.call("GET", "/licenses/1", &[("X-API-Key", &k)], None).code(),
        "expired_key"
    );
}

fn delete_stops_key(c: &Ctx) {
    let (key, id) = c.key_with(&["license:read"]);
    assert_eq!(
        c.call("GET", "/licenses/1", &[("X-API-Key", &key)], None).status,
        200
    );
    let r = c.admin("DELETE", &format!("/admin/keys/{id}"), None);
    assert_eq!(r.status, 204);
    assert_eq!(
        c.call("GET", "/licenses/1", &[("X-API-Key", &key)], None).code(),
        "invalid_key"
    );
    assert_eq!(
        c.admin("GET", &format!("/admin/keys/{id}"), None).code(),
        "key_not_found"
    );
    let events = c.admin("GET", &format!("/admin/audit?key_id={id}"), None).json();
    assert_eq!(events["events"][0]["action"], "key.delete");
}

fn kv_holds_hash_only(c: &Ctx) {
    let (key, id) = c.key_with(&["license:read"]);
    let stored = wrangler_kv(&c.main.persist, &["get", &format!("key:{id}")]);
    let record: serde_json::Value =
        serde_json::from_str(stored.trim()).unwrap_or_else(|e| panic!("{e}: {stored}"));
    assert_eq!(record["hash"], hex::encode(Sha256::digest(key.as_bytes())));
    assert_eq!(record["hash_version"], "sha256");
    assert_eq!(record["id"], id);
    assert!(!stored.contains(&key));
    // Nowhere in local KV's files, nor the worker's log.
    assert!(
        !dir_contains(&c.main.persist, key.as_bytes()),
        "the plaintext key is on disk"
    );
    let secret = key.split('_').nth(3).unwrap();
    assert!(
        !dir_contains(&c.main.persist, secret.as_bytes()),
        "the secret is on disk"
    );
}

fn corrupt_record_fails_closed(c: &Ctx) {
    let key = forge_key("live", &c.corrupt_id);
    let r = c.call("GET", "/licenses/1", &[("X-API-Key", &key)], None);
    assert_eq!((r.status, r.code().as_str()), (500, "record_invalid"));
    assert!(r.header("x-origin").is_none());
}

fn invalid_policy_fails_closed(c: &Ctx) {
    for path in ["/x", "/healthz", "/admin/keys", "/public/x"] {
        let r = send(
            "GET",
            &format!("{}{path}", c.bad_policy.base),
            &[("CF-Connecting-IP", "10.0.0.1")],
            None,
        );
        assert_eq!((r.status, r.code().as_str()), (500, "policy_invalid"), "{path}");
    }
}
