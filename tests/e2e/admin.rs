//! The admin API, end to end: every endpoint and error, admin keys and escalation attempts,
//! the audit log, the OpenAPI document, and schemathesis against the live worker.

use std::process::Command;

use serde_json::{Value, json};

use crate::harness::{root, send, send_raw};
use crate::{Ctx, group};

type Test = (&'static str, fn(&Ctx));

pub const TESTS: &[Test] = &[
    ("admin::authentication", authentication),
    ("admin::disabled_without_token", disabled_without_token),
    ("admin::create_shows_the_key_once", create_shows_key_once),
    ("admin::create_validation_writes_nothing", create_validation),
    ("admin::bad_bodies", bad_bodies),
    ("admin::methods_are_taken_as_sent", methods_are_taken_as_sent),
    ("admin::key_ids_are_validated", key_ids_are_validated),
    ("admin::get_and_patch", get_and_patch),
    ("admin::list_filters_and_pages", list_filters_and_pages),
    ("admin::revoke_is_irreversible_and_idempotent", revoke_idempotent),
    ("admin::rotate_twice_and_revoked", rotate_conflicts),
    ("admin::audit_log", audit_log),
    ("admin::admin_keys_and_escalation", admin_keys_and_escalation),
    ("admin::admin_key_bounds", admin_key_bounds),
    ("admin::openapi_document", openapi_document),
    ("admin::schemathesis_against_live_worker", schemathesis),
];

fn ids_in_group(c: &Ctx, g: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(cur) => format!("/admin/keys?group={g}&limit=1000&cursor={cur}"),
            None => format!("/admin/keys?group={g}&limit=1000"),
        };
        let r = c.admin("GET", &q, None);
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        ids.extend(
            v["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["id"].as_str().unwrap().to_owned()),
        );
        match v["cursor"].as_str() {
            Some(cur) => cursor = Some(cur.to_owned()),
            None => return ids,
        }
    }
}

fn authentication(c: &Ctx) {
    let r = c.call("GET", "/admin/keys", &[], None);
    assert_eq!((r.status, r.code().as_str()), (401, "missing_key"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let r = c.call(
        "GET",
        "/admin/keys",
        &[("Authorization", "Bearer wrong-token")],
        None,
    );
    assert_eq!(r.status, 401);
    // An ordinary key is authenticated but lacks admin scopes.
    let (key, _) = c.key_with(&["license:read"]);
    let r = c.admin_as(&key, "GET", "/admin/keys", None, None);
    assert_eq!((r.status, r.code().as_str()), (403, "insufficient_scope"));
    assert_eq!(r.json()["required_scopes"], json!(["admin:keys:read"]));
    // /admin is not subject to the route policy (default deny would say no_route).
    assert_eq!(c.admin("GET", "/admin/nothing-here", None).code(), "not_found");
    let r = c.admin("PUT", "/admin/keys", None);
    assert_eq!((r.status, r.code().as_str()), (405, "method_not_allowed"));
    assert!(r.header("allow").is_some());
}

fn disabled_without_token(c: &Ctx) {
    for (m, p) in [
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
        ("GET", "/admin/audit"),
    ] {
        let r = send(
            m,
            &format!("{}{p}", c.no_admin.base),
            &[("Authorization", "Bearer ")],
            None,
        );
        assert_eq!((r.status, r.code().as_str()), (503, "admin_disabled"), "{m} {p}");
    }
}

fn create_shows_key_once(c: &Ctx) {
    let g = group();
    let r = c.admin(
        "POST",
        "/admin/keys",
        Some(json!({
            "name": "My sandbox API key for xy company", "description": "CI", "group": g, "environment": "test",
            "scopes": ["license:read", "keyring.*.encrypt"], "ip_allowlist": ["203.0.113.0/24", "2001:db8::1"],
            "tenants": ["misapret"], "metadata": {"owner": "ci"}, "expires_in": "5d"
        })),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    let key = v["key"].as_str().unwrap();
    let rec = &v["record"];
    assert!(key.starts_with("kg_test_"));
    assert_eq!(rec["tag"], "my-sandbox-api-key-for-xy-company");
    assert_eq!(rec["status"], "active");
    assert_eq!(rec["environment"], "test");
    assert_eq!(rec["ip_allowlist"], json!(["203.0.113.0/24", "2001:db8::1"]));
    assert_eq!(rec["metadata"], json!({"owner": "ci"}));
    assert_eq!(rec["enabled"], true);
    for f in ["id", "created_at", "updated_at", "expires_at"] {
        assert!(rec[f].is_string(), "{f}");
    }
    for f in ["revoked_at", "revoke_reason", "rotated_from", "rotated_to"] {
        assert!(rec[f].is_null(), "{f}");
    }
    assert!(rec.get("hash").is_none() && rec.get("hash_version").is_none());
    // Later reads never show the key or the hash again.
    let got = c.admin(
        "GET",
        &format!("/admin/keys/{}", rec["id"].as_str().unwrap()),
        None,
    );
    assert!(!got.body.contains(key) && got.json().get("hash").is_none());
    assert_eq!(got.json()["name"], rec["name"]);
    // Defaults: live, enabled, no expiry.
    let (k, r) = c.create(json!({"name": "defaults", "scopes": ["a"]}));
    assert!(k.starts_with("kg_live_"));
    assert!(r["expires_at"].is_null());
}

fn create_validation(c: &Ctx) {
    let g = group();
    let base = json!({"name": "v", "group": g, "scopes": ["license:read"]});
    let cases: Vec<(Value, &str)> = vec![
        (json!({"surprise": 1}), "surprise"),
        (json!({"name": ""}), "name"),
        (json!({"name": "x".repeat(129)}), "name"),
        (json!({"name": 5}), "name"),
        (json!({"scopes": []}), "scopes"),
        (json!({"scopes": ["ok", "lic*:read"]}), "scopes[1]"),
        (json!({"scopes": "license:read"}), "scopes"),
        (json!({"environment": "prod"}), "environment"),
        (json!({"ip_allowlist": ["10.0.0.1/8"]}), "ip_allowlist[0]"),
        (
            json!({"ip_allowlist": ["1.2.3.4", "010.0.0.1"]}),
            "ip_allowlist[1]",
        ),
        (json!({"tenants": ["has space"]}), "tenants[0]"),
        (json!({"metadata": [1, 2]}), "metadata"),
        (json!({"metadata": {"big": "x".repeat(1100)}}), "metadata"),
        (json!({"expires_in": "2w"}), "expires_in"),
        (json!({"expires_in": 0}), "expires_in"),
        (json!({"expires_in": -5}), "expires_in"),
        (
            json!({"expires_in": "1h", "expires_at": "2099-01-01T00:00:00Z"}),
            "expires_in",
        ),
        (json!({"expires_at": "2001-01-01T00:00:00Z"}), "expires_at"),
        (json!({"expires_at": "next tuesday"}), "expires_at"),
    ];
    for (patch, field) in cases {
        let mut body = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = c.admin("POST", "/admin/keys", Some(body.clone()));
        assert_eq!(
            (r.status, r.code().as_str()),
            (422, "invalid_field"),
            "{body}: {}",
            r.body
        );
        assert_eq!(r.json()["field"], field, "{body}");
    }
    let mut missing = base.clone();
    missing.as_object_mut().unwrap().remove("name");
    assert_eq!(
        c.admin("POST", "/admin/keys", Some(missing)).json()["field"],
        "name"
    );
    assert!(ids_in_group(c, &g).is_empty(), "an invalid request wrote a key");
}

fn bad_bodies(c: &Ctx) {
    let auth = format!("Bearer {}", c.main.admin_token);
    let body = json!({"name": "x", "scopes": ["a"]}).to_string();
    let r = c.call(
        "POST",
        "/admin/keys",
        &[("Authorization", &auth), ("Content-Type", "text/plain")],
        Some(&body),
    );
    assert_eq!((r.status, r.code().as_str()), (415, "unsupported_media_type"));
    let r = c.call("POST", "/admin/keys", &[("Authorization", &auth)], Some(&body));
    assert_eq!(r.status, 415);
    let r = c.call(
        "POST",
        "/admin/keys",
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        Some("{\"name\": "),
    );
    assert_eq!((r.status, r.code().as_str()), (400, "malformed_json"));
    let big = format!("{{\"name\": \"{}\", \"scopes\": [\"a\"]}}", "x".repeat(70 * 1024));
    let r = c.call(
        "POST",
        "/admin/keys",
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        Some(&big),
    );
    assert_eq!((r.status, r.code().as_str()), (413, "payload_too_large"));
    let r = c.call(
        "POST",
        "/admin/keys",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json; charset=utf-8"),
        ],
        Some("[1]"),
    );
    assert_eq!(r.status, 422);
}

fn methods_are_taken_as_sent(c: &Ctx) {
    // The runtime maps unknown methods to GET; the worker must not.
    let auth = format!("Bearer {}", c.main.admin_token);
    for p in ["/admin/keys", "/admin/audit", "/admin/openapi.json"] {
        let r = send_raw("PROPFIND", &c.url(p), &[("Authorization", &auth)]);
        assert_eq!((r.status, r.code().as_str()), (405, "method_not_allowed"), "{p}");
        assert!(r.header("allow").is_some());
    }
    let r = c.call("POST", "/healthz", &[], None);
    assert_eq!((r.status, r.code().as_str()), (405, "method_not_allowed"));
    let (key, _) = c.key_with(&["license:read"]);
    let r = send_raw("PROPFIND", &c.url("/licenses/1"), &[("X-API-Key", &key)]);
    assert_eq!((r.status, r.code().as_str()), (501, "method_not_implemented"));
}

fn key_ids_are_validated(c: &Ctx) {
    for id in [
        "..%2Fkey%3Aabc",
        "0123456789ABCDEF",
        "0123456789abcdef0",
        "%C3%A9t%C3%A9",
        "audit",
        "key:0123456789abcdef",
    ] {
        let r = c.admin("GET", &format!("/admin/keys/{id}"), None);
        assert_eq!((r.status, r.code().as_str()), (404, "key_not_found"), "{id}");
        let r = c.admin("PATCH", &format!("/admin/keys/{id}"), Some(json!({"name": "x"})));
        assert_eq!(r.status, 404, "{id}");
    }
}

fn get_and_patch(c: &Ctx) {
    let g = group();
    let (key, rec) =
        c.create(json!({"name": "Before", "group": g, "scopes": ["license:read"], "expires_in": "1h"}));
    let id = rec["id"].as_str().unwrap();
    let path = format!("/admin/keys/{id}");
    let r = c.admin(
        "PATCH",
        &path,
        Some(json!({"name": "After Name", "description": "d", "scopes": ["license:*"], "tenants": ["acme"], "metadata": {"v": 2}, "expires_in": null})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["name"], "After Name");
    assert_eq!(v["tag"], "after-name");
    assert_eq!(v["scopes"], json!(["license:*"]));
    assert!(v["expires_at"].is_null(), "null clears the expiry");
    assert_ne!(v["updated_at"], rec["updated_at"]);
    // The new scopes apply at once.
    assert_eq!(
        c.call("DELETE", "/licenses/1", &[("X-API-Key", &key)], None)
            .status,
        200
    );
    // Clearing and validation.
    assert!(c.admin("PATCH", &path, Some(json!({"description": null}))).json()["description"].is_null());
    let r = c.admin("PATCH", &path, Some(json!({"scopes": []})));
    assert_eq!(r.json()["field"], "scopes");
    let r = c.admin("PATCH", &path, Some(json!({"ip_allowlist": ["10.0.0.1/8"]})));
    assert!(
        r.json()["detail"].as_str().unwrap().contains("10.0.0.0/8"),
        "{}",
        r.body
    );
    assert_eq!(
        c.admin("PATCH", &path, Some(json!({"hash": "00"}))).json()["field"],
        "hash"
    );
    assert_eq!(
        c.admin("PATCH", &path, Some(json!({"enabled": "no"}))).json()["field"],
        "enabled"
    );
    // Only description, group and the expiry can be cleared with null.
    for f in ["name", "scopes", "ip_allowlist", "tenants", "metadata", "enabled"] {
        let r = c.admin("PATCH", &path, Some(json!({ f: null })));
        assert_eq!(
            (r.status, r.json()["field"].as_str()),
            (422, Some(f)),
            "{f}: {}",
            r.body
        );
    }
    // A whole-number float is an integer.
    let r = c.admin("PATCH", &path, Some(json!({"expires_in": 3600.0})));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        c.admin(
            "PATCH",
            &path,
            Some(json!({"expires_at": "2000-01-01T00:00:00Z"}))
        )
        .code(),
        "invalid_field"
    );
    let r = c.admin(
        "PATCH",
        &path,
        Some(json!({"expires_at": "2099-06-01T00:00:00Z"})),
    );
    assert_eq!(r.json()["expires_at"], "2099-06-01T00:00:00Z");
    assert_eq!(c.admin("GET", &path, None).json()["name"], "After Name");
}

/// An RFC 3339 UTC time (`…:SS[.fff]Z`, fraction of 0 to 3 digits) as a string that sorts in
/// time order.
fn sortable_time(t: &str) -> String {
    let t = t.trim_end_matches('Z');
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    format!("{whole}.{frac:0<3}")
}

fn list_filters_and_pages(c: &Ctx) {
    let g = group();
    let mut made = Vec::new();
    let mut created = Vec::new();
    for i in 0..4 {
        let env = if i % 2 == 0 { "live" } else { "test" };
        let (_, rec) =
            c.create(json!({"name": format!("k{i}"), "group": g, "environment": env, "scopes": ["a"]}));
        made.push(rec["id"].as_str().unwrap().to_owned());
        created.push((
            sortable_time(rec["created_at"].as_str().unwrap()),
            rec["id"].as_str().unwrap().to_owned(),
        ));
    }
    c.admin(
        "PATCH",
        &format!("/admin/keys/{}", made[0]),
        Some(json!({"enabled": false})),
    );
    // Newest first: by creation time, then by id (both descending).
    created.sort();
    created.reverse();
    let sorted: Vec<String> = created.into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids_in_group(c, &g), sorted, "newest first, each key once");
    let test_ids: Vec<Value> = c
        .admin(
            "GET",
            &format!("/admin/keys?group={g}&environment=test&limit=1000"),
            None,
        )
        .json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["environment"].clone())
        .collect();
    assert_eq!(test_ids, vec![json!("test"), json!("test")]);
    let disabled = c
        .admin(
            "GET",
            &format!("/admin/keys?group={g}&status=disabled&limit=1000"),
            None,
        )
        .json();
    assert_eq!(disabled["keys"].as_array().unwrap().len(), 1);
    assert_eq!(disabled["keys"][0]["id"], made[0]);
    // Pages of two, following cursors, see every key exactly once.
    let mut seen = Vec::new();
    let mut url = "/admin/keys?limit=2".to_owned();
    for _ in 0..10_000 {
        let v = c.admin("GET", &url, None).json();
        let page = v["keys"].as_array().unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|k| k["id"].as_str().unwrap().to_owned()));
        match v["cursor"].as_str() {
            Some(cur) => url = format!("/admin/keys?limit=2&cursor={cur}"),
            None => break,
        }
    }
    let mut dedup = seen.clone();
    dedup.dedup();
    assert_eq!(seen, dedup);
    assert!(made.iter().all(|m| seen.contains(m)));
    assert_eq!(
        c.admin("GET", "/admin/keys?limit=5000", None).status,
        200,
        "limit is capped, not refused"
    );
    for bad in ["limit=0", "limit=x", "status=gone", "environment=prod"] {
        let r = c.admin("GET", &format!("/admin/keys?{bad}"), None);
        assert_eq!((r.status, r.code().as_str()), (422, "invalid_field"), "{bad}");
    }
    let r = c.admin("GET", "/admin/keys?cursor=forged", None);
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_cursor"));
}

fn revoke_idempotent(c: &Ctx) {
    let (_, id) = c.key_with(&["a"]);
    let path = format!("/admin/keys/{id}/revoke");
    let first = c
        .admin("POST", &path, Some(json!({"reason": "compromised"})))
        .json();
    assert_eq!(first["status"], "revoked");
    assert_eq!(first["revoke_reason"], "compromised");
    let second = c.admin("POST", &path, Some(json!({"reason": "again"})));
    assert_eq!(second.status, 200);
    assert_eq!(second.json()["revoked_at"], first["revoked_at"]);
    assert_eq!(second.json()["revoke_reason"], "compromised");
    // Irreversible: enabling does not bring it back.
    let r = c.admin(
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"enabled": true})),
    );
    assert_eq!((r.status, r.code().as_str()), (409, "key_revoked"));
    // A body-less revoke works too.
    let (_, id2) = c.key_with(&["a"]);
    let auth = format!("Bearer {}", c.main.admin_token);
    let r = c.call(
        "POST",
        &format!("/admin/keys/{id2}/revoke"),
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(r.json()["status"], "revoked");
}

fn rotate_conflicts(c: &Ctx) {
    let (_, rec) = c.create(json!({"name": "r", "scopes": ["a"], "metadata": {"m": 1}, "expires_in": "1d"}));
    let id = rec["id"].as_str().unwrap();
    let r = c.admin(
        "POST",
        &format!("/admin/keys/{id}/rotate"),
        Some(json!({"grace": "1h"})),
    );
    assert_eq!(r.status, 201);
    let new = r.json()["record"].clone();
    assert_eq!(new["metadata"], json!({"m": 1}));
    assert!(new["expires_at"].is_string(), "the successor keeps a lifetime");
    let r = c.admin(
        "POST",
        &format!("/admin/keys/{id}/rotate"),
        Some(json!({"grace": 0})),
    );
    assert_eq!((r.status, r.code().as_str()), (409, "already_rotated"));
    assert_eq!(
        c.admin(
            "POST",
            &format!("/admin/keys/{id}/rotate"),
            Some(json!({"grace": "2w"}))
        )
        .code(),
        "invalid_field"
    );
    let (_, rid) = c.key_with(&["a"]);
    c.admin("POST", &format!("/admin/keys/{rid}/revoke"), None);
    assert_eq!(
        c.admin("POST", &format!("/admin/keys/{rid}/rotate"), None).code(),
        "key_revoked"
    );
}

fn audit_log(c: &Ctx) {
    let (key, id) = c.key_with(&["a"]);
    let auth = format!("Bearer {}", c.main.admin_token);
    let patch = json!({"enabled": false}).to_string();
    c.call(
        "PATCH",
        &format!("/admin/keys/{id}"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("CF-Connecting-IP", "198.51.100.77"),
        ],
        Some(&patch),
    );
    c.admin(
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"name": "renamed", "enabled": true})),
    );
    c.admin("POST", &format!("/admin/keys/{id}/revoke"), None);
    let r = c.admin("GET", &format!("/admin/audit?key_id={id}"), None);
    assert_eq!(r.status, 200);
    assert!(!r.body.contains(&key), "a secret in the audit log");
    let events = r.json()["events"].as_array().unwrap().clone();
    let actions: Vec<&str> = events.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        vec![
            "key.revoke",
            "key.update",
            "key.enable",
            "key.disable",
            "key.create"
        ],
        "newest first"
    );
    for e in &events {
        assert_eq!(e["key_id"], id);
        assert_eq!(e["actor"], "admin_token");
        for f in ["id", "at"] {
            assert!(e[f].is_string());
        }
    }
    assert_eq!(events[1]["changed"], json!(["name"]));
    assert_eq!(events[3]["client_ip"], "198.51.100.77");
    // Paging through the audit log.
    let page = c
        .admin("GET", &format!("/admin/audit?key_id={id}&limit=2"), None)
        .json();
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    let cur = page["cursor"].as_str().unwrap();
    let next = c
        .admin(
            "GET",
            &format!("/admin/audit?key_id={id}&limit=2&cursor={cur}"),
            None,
        )
        .json();
    assert_eq!(next["events"][0]["action"], "key.enable");
    assert_eq!(
        c.admin("GET", "/admin/audit?key_id=../x", None).code(),
        "invalid_field"
    );
    assert_eq!(c.admin("GET", "/admin/audit", None).status, 200);
}

fn admin_keys_and_escalation(c: &Ctx) {
    let g = group();
    let (admin, admin_id) = {
        let (k, r) = c.create(json!({
            "name": "delegated admin", "scopes": ["admin:keys:read", "admin:keys:write", "license:*", "keyring.comms.*"],
            "tenants": ["acme"], "group": g
        }));
        (k, r["id"].as_str().unwrap().to_owned())
    };
    let create = |body: Value| c.admin_as(&admin, "POST", "/admin/keys", Some(body), None);
    // Within its reach: 201, and the audit actor is the admin key's id.
    let r = create(
        json!({"name": "child", "group": g, "scopes": ["license:read", "keyring.comms.encrypt"], "tenants": ["acme"]}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let child = r.json()["record"]["id"].as_str().unwrap().to_owned();
    let ev = c
        .admin("GET", &format!("/admin/audit?key_id={child}"), None)
        .json();
    assert_eq!(ev["events"][0]["actor"], admin_id);
    // Escalations: broader scopes, another environment, foreign tenants, admin powers it lacks.
    for body in [
        json!({"name": "x", "group": g, "scopes": ["keyring.other.encrypt"]}),
        json!({"name": "x", "group": g, "scopes": ["license:**"]}),
        json!({"name": "x", "group": g, "scopes": ["keyring.*.encrypt"]}),
        json!({"name": "x", "group": g, "scopes": ["license:read"], "environment": "test"}),
        json!({"name": "x", "group": g, "scopes": ["license:read"], "tenants": ["other"]}),
        json!({"name": "x", "group": g, "scopes": ["admin:audit:read"]}),
    ] {
        let r = create(body.clone());
        assert_eq!((r.status, r.code().as_str()), (403, "scope_escalation"), "{body}");
    }
    assert_eq!(ids_in_group(c, &g).len(), 2, "an escalation attempt wrote a key");
    // Changing a key: neither widening its own child nor touching keys outside its reach.
    let r = c.admin_as(
        &admin,
        "PATCH",
        &format!("/admin/keys/{child}"),
        Some(json!({"scopes": ["billing:read"]})),
        None,
    );
    assert_eq!(r.code(), "scope_escalation");
    let (_, outsider) = c.key_with(&["billing:read"]);
    for (m, p) in [
        ("POST", format!("/admin/keys/{outsider}/revoke")),
        ("DELETE", format!("/admin/keys/{outsider}")),
        ("POST", format!("/admin/keys/{outsider}/rotate")),
    ] {
        // Beyond its reach, a key is not disclosed: 404, as for an unknown id.
        let r = c.admin_as(&admin, m, &p, None, None);
        assert_eq!(r.code(), "key_not_found", "{m} {p}");
    }
    assert_eq!(
        c.admin("GET", &format!("/admin/keys/{outsider}"), None).json()["status"],
        "active"
    );
    let r = c.admin_as(&admin, "POST", &format!("/admin/keys/{child}/revoke"), None, None);
    assert_eq!(r.json()["status"], "revoked");
    // No audit scope.
    assert_eq!(
        c.admin_as(&admin, "GET", "/admin/audit", None, None).code(),
        "insufficient_scope"
    );
}

fn admin_key_bounds(c: &Ctx) {
    let (reader, _) = c.key_with(&["admin:keys:read"]);
    assert_eq!(
        c.admin_as(&reader, "GET", "/admin/keys?limit=1", None, None)
            .status,
        200
    );
    let r = c.admin_as(
        &reader,
        "POST",
        "/admin/keys",
        Some(json!({"name": "x", "scopes": ["a"]})),
        None,
    );
    assert_eq!((r.status, r.code().as_str()), (403, "insufficient_scope"));
    // Its own IP allowlist binds it.
    let (fenced, _) =
        c.create(json!({"name": "fenced", "scopes": ["admin:**"], "ip_allowlist": ["10.0.0.0/8"]}));
    assert_eq!(
        c.admin_as(&fenced, "GET", "/admin/audit", None, Some("10.2.3.4"))
            .status,
        200
    );
    assert_eq!(
        c.admin_as(&fenced, "GET", "/admin/audit", None, Some("192.0.2.1"))
            .code(),
        "ip_not_allowed"
    );
    // Revocation and expiry bind it too.
    let (doomed, doomed_id) = c.key_with(&["admin:**"]);
    c.admin("POST", &format!("/admin/keys/{doomed_id}/revoke"), None);
    assert_eq!(
        c.admin_as(&doomed, "GET", "/admin/keys", None, None).code(),
        "revoked_key"
    );
}

fn openapi_document(c: &Ctx) {
    let r = c.call("GET", "/admin/openapi.json", &[], None);
    assert_eq!(r.status, 200);
    let v = r.json();
    assert!(v["openapi"].as_str().unwrap().starts_with("3.1"));
    for p in [
        "/admin/keys",
        "/admin/keys/{id}",
        "/admin/keys/{id}/revoke",
        "/admin/keys/{id}/rotate",
        "/admin/audit",
    ] {
        assert!(v["paths"].get(p).is_some(), "{p} missing from openapi.json");
    }
    // The gateway part is the policy this worker loaded: one operation per route and method.
    let g = &v["paths"]["/keyrings/{ring}/encrypt"];
    assert!(
        g["post"]["description"]
            .as_str()
            .unwrap()
            .contains("`keyring.{ring}.encrypt`"),
        "{g}"
    );
    assert!(g.get("get").is_none(), "the route lists POST only");
    assert!(v["paths"]["/public/{rest}"]["get"]["security"] == serde_json::json!([]));
    // Another worker, another policy: the edge worker's default-allow policy has the same routes,
    // and the invalid policy worker serves no document at all.
    let other = send("GET", &format!("{}/admin/openapi.json", c.edge.base), &[], None);
    assert_eq!(
        other.status, 404,
        "the edge worker's admin API is fenced: {}",
        other.body
    );
}

fn schemathesis(c: &Ctx) {
    let out = Command::new("bash")
        .arg("scripts/schemathesis.sh")
        .current_dir(root())
        .env("KEYGATE_URL", &c.fuzz.base)
        .env("KEYGATE_ADMIN_TOKEN", &c.fuzz.admin_token)
        .output()
        .expect("run scripts/schemathesis.sh");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    eprintln!(
        "{}",
        text.lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
