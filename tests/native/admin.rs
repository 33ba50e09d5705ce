use serde_json::json;

use crate::World;

#[test]
fn token_may_purge_a_corrupt_record() {
    let w = World::new();
    let id = "00000000deadbeef";
    // A corrupt record in the registry (and its copy in the replica).
    keygate::registry::SqlDb::exec(
        w.registry.db(),
        "INSERT INTO records (id, version, created_at, environment, enabled, json) VALUES (?1, 1, 0, 'live', 1, 'garbage')",
        &[id.into()],
    )
    .unwrap();
    futures::executor::block_on(keygate::store::KvStore::put(
        &w.store,
        &format!("key:{id}"),
        "garbage",
    ))
    .unwrap();
    assert_eq!(
        w.admin("GET", &format!("/admin/keys/{id}"), None)
            .unwrap_err()
            .code,
        "record_invalid"
    );
    let listed = w.admin("GET", "/admin/keys", None).unwrap().body.unwrap();
    assert_eq!(listed["keys"], json!([]));
    assert_eq!(
        w.admin("DELETE", &format!("/admin/keys/{id}"), None)
            .unwrap()
            .status,
        204
    );
    let rows = keygate::registry::SqlDb::exec(w.registry.db(), "SELECT id FROM records", &[]).unwrap();
    assert!(rows.is_empty(), "{rows:?}");
    assert!(!w.store.snapshot().contains_key(&format!("key:{id}")));
    assert_eq!(
        w.admin("GET", &format!("/admin/keys/{id}"), None)
            .unwrap_err()
            .code,
        "key_not_found"
    );
}

#[test]
fn errors_write_nothing() {
    let w = World::new();
    let before = w.keys_state();
    for body in [
        json!({"name": "x", "scopes": ["ok", "bad*"]}),
        json!({"name": "x", "scopes": ["a"], "ip_allowlist": ["10.0.0.1/8"]}),
        json!({"name": "x", "scopes": ["a"], "expires_at": "1999-01-01T00:00:00Z"}),
    ] {
        assert_eq!(
            w.admin("POST", "/admin/keys", Some(body)).unwrap_err().status,
            422
        );
    }
    assert_eq!(
        w.admin_raw("POST", "/admin/keys", "wrong", Some("{}"))
            .unwrap_err()
            .status,
        401
    );
    assert_eq!(w.keys_state(), before);
    // Only the bad credential is audited, as a denied attempt; invalid input is not.
    let events = w.audit_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["action"], "admin.denied");
    assert_eq!(events[0]["code"], "invalid_admin_credential");
    assert_eq!(events[0]["actor"], "unknown");
    assert!(events[0]["key_id"].is_null());
}

#[test]
fn expiry_presets_and_rotation_lifetimes() {
    let w = World::new();
    for (preset, secs) in [
        ("1h", 3600),
        ("12h", 43_200),
        ("1d", 86_400),
        ("5d", 432_000),
        ("1y", 31_536_000),
    ] {
        let (_, rec) = w.issue(json!({"name": "p", "scopes": ["a"], "expires_in": preset}));
        let at = keygate::time::Timestamp::parse_rfc3339(rec["expires_at"].as_str().unwrap()).unwrap();
        assert_eq!(at, w.now.plus_seconds(secs), "{preset}");
    }
    let (_, rec) = w.issue(json!({"name": "p", "scopes": ["a"], "expires_in": 1}));
    assert_eq!(rec["status"], "active");
}

#[test]
fn never_a_secret_in_records_or_audit() {
    let w = World::new();
    let (key, _) = w.issue(json!({"name": "k", "scopes": ["a"]}));
    let secret = key.split('_').nth(3).unwrap();
    for (k, v) in w.store.snapshot() {
        assert!(!v.contains(secret) && !k.contains(secret), "{k}");
    }
}

#[test]
fn no_field_may_hold_a_key() {
    let w = World::new();
    let (key, rec) = w.issue(json!({"name": "k", "scopes": ["license:read"]}));
    let id = rec["id"].as_str().unwrap();
    let before = w.keys_state();
    for body in [
        json!({"name": "x", "scopes": [key.clone()]}),
        json!({"name": key.clone(), "scopes": ["a"]}),
        json!({"name": "x", "scopes": ["a"], "tenants": [key.clone()]}),
        json!({"name": "x", "scopes": ["a"], "metadata": {"note": format!("old key {key}")}}),
    ] {
        let p = w.admin("POST", "/admin/keys", Some(body)).unwrap_err();
        assert_eq!((p.status, p.code), (422, "invalid_field"));
    }
    let p = w
        .admin(
            "PATCH",
            &format!("/admin/keys/{id}"),
            Some(json!({"description": key})),
        )
        .unwrap_err();
    assert_eq!(p.status, 422);
    assert_eq!(w.keys_state(), before);
}

#[test]
fn unverified_attempts_expire_from_the_audit_log_and_real_changes_do_not() {
    let mut w = World::new();
    let (_, rec) = w.issue(json!({"name": "k", "scopes": ["license:read"]}));
    let id = rec["id"].as_str().unwrap().to_owned();
    let p = w
        .admin_raw("GET", "/admin/keys", "not-the-token", None)
        .unwrap_err();
    assert_eq!(p.code, "invalid_admin_credential");
    let actions = |w: &World| -> Vec<(String, String)> {
        w.audit_events()
            .iter()
            .map(|e| (e["action"].as_str().unwrap().to_owned(), e["actor"].to_string()))
            .collect()
    };
    assert_eq!(
        actions(&w),
        [
            ("admin.denied".to_owned(), "\"unknown\"".to_owned()),
            ("key.create".to_owned(), "\"admin_token\"".to_owned()),
        ]
    );
    // Still there just before 30 days.
    w.now = w.now.plus_seconds(30 * 24 * 3600 - 1);
    assert_eq!(actions(&w).len(), 2);
    // Gone after 30 days (and pruned for good); the real change stays.
    w.now = w.now.plus_seconds(24 * 3600 + 1);
    assert_eq!(
        actions(&w),
        [("key.create".to_owned(), "\"admin_token\"".to_owned())]
    );
    w.registry.prune(w.now).unwrap();
    let rows = keygate::registry::SqlDb::exec(w.registry.db(), "SELECT actor FROM audit", &[]).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let events = w
        .admin("GET", &format!("/admin/audit?key_id={id}"), None)
        .unwrap()
        .body
        .unwrap();
    assert_eq!(events["events"].as_array().unwrap().len(), 1);
}

/// Names, groups, descriptions and revoke reasons may not hold bidirectional controls or
/// zero-width characters: a name that reorders the text around it could show one key's id for
/// another in the console.
#[test]
fn invisible_formatting_is_refused_in_text_fields() {
    let w = crate::World::new();
    for (field, value) in [
        ("name", "prod-billing\u{202e}"),
        ("name", "a\u{200b}b"),
        ("group", "g\u{2066}x"),
        ("description", "d\u{feff}"),
    ] {
        let mut body = serde_json::json!({"name": "ok", "scopes": ["a"]});
        body[field] = serde_json::json!(value);
        let p = w.admin("POST", "/admin/keys", Some(body)).expect_err(field);
        assert_eq!((p.status, p.code), (422, "invalid_field"), "{field}");
        assert_eq!(p.extra["field"], field);
    }
    let (_, rec) = w.issue(serde_json::json!({"name": "plain", "scopes": ["a"]}));
    let id = rec["id"].as_str().unwrap();
    let p = w
        .admin(
            "POST",
            &format!("/admin/keys/{id}/revoke"),
            Some(serde_json::json!({"reason": "x\u{202d}y"})),
        )
        .expect_err("reason");
    assert_eq!(p.extra["field"], "reason");
}
