//! Issue 8 end to end, against the real worker: an admin key's reach on every axis, states
//! that stay revoked, retired and disabled under concurrent writes, inputs that never mean
//! something else, and the platform limits and weak configuration refused at the door.

use serde_json::{Value, json};

use crate::harness::send;
use crate::{Ctx, forge_key, group};

type Test = (&'static str, fn(&Ctx));

pub const TESTS: &[Test] = &[
    (
        "admin_safety::reach_an_admin_key_cannot_lift_its_own_limits",
        cannot_lift_own_limits,
    ),
    (
        "admin_safety::reach_creates_only_keys_inside_every_axis",
        creates_inside_reach,
    ),
    ("admin_safety::reach_reads_follow_it", reads_follow_reach),
    ("admin_safety::monotonic_revoke_patch_races", revoke_patch_races),
    ("admin_safety::monotonic_delete_patch_races", delete_patch_races),
    ("admin_safety::monotonic_rotation_rules", rotation_rules),
    (
        "admin_safety::inputs_strict_query_parameters",
        strict_query_parameters,
    ),
    (
        "admin_safety::inputs_cursors_bound_to_endpoint_and_filters",
        cursors_bound,
    ),
    (
        "admin_safety::inputs_admin_credential_errors",
        admin_credential_errors,
    ),
    ("admin_safety::inputs_durations", durations),
    ("admin_safety::limits_list_and_audit_pages", page_cap),
    (
        "admin_safety::limits_principal_header_size",
        principal_header_size,
    ),
    ("admin_safety::limits_short_admin_token", short_admin_token),
];

const INSIDE: Option<&str> = Some("10.1.2.3");

/// A delegated admin key fenced on every axis: 10.0.0.0/8, one hour, tenant `acme`.
fn fenced_admin(c: &Ctx) -> (String, String) {
    let (k, r) = c.create(json!({
        "name": "fenced admin",
        "scopes": ["admin:keys:read", "admin:keys:write", "admin:audit:read", "license:*"],
        "ip_allowlist": ["10.0.0.0/8"], "tenants": ["acme"], "expires_in": "1h"
    }));
    (k, r["id"].as_str().unwrap().to_owned())
}

/// Every key of a group, following cursors (filters apply within each page).
fn ids_in_group(c: &Ctx, g: &str) -> Vec<String> {
    let (mut ids, mut url) = (Vec::new(), format!("/admin/keys?group={g}&limit=100"));
    loop {
        let v = c.admin("GET", &url, None).json();
        ids.extend(v["keys"].as_array().unwrap().iter().map(id_of));
        match v["cursor"].as_str() {
            Some(cur) => url = format!("/admin/keys?group={g}&limit=100&cursor={cur}"),
            None => return ids,
        }
    }
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

fn cannot_lift_own_limits(c: &Ctx) {
    let (admin, id) = fenced_admin(c);
    let path = format!("/admin/keys/{id}");
    let before = c.admin("GET", &path, None).json();
    for body in [
        json!({"ip_allowlist": []}),
        json!({"ip_allowlist": ["0.0.0.0/0"]}),
        json!({"expires_in": null}),
        json!({"expires_at": "2099-01-01T00:00:00Z"}),
        json!({"expires_in": "30d"}),
        json!({"tenants": []}),
        json!({"scopes": ["admin:**"]}),
    ] {
        let r = c.admin_as(&admin, "PATCH", &path, Some(body.clone()), INSIDE);
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "scope_escalation"),
            "{body}: {}",
            r.body
        );
    }
    let after = c.admin("GET", &path, None).json();
    assert_eq!(after, before, "a refused PATCH changed the admin key");
    // Still bound by its fence from outside it.
    let r = c.admin_as(&admin, "GET", &path, None, Some("192.0.2.1"));
    assert_eq!(r.code(), "ip_not_allowed");
}

fn creates_inside_reach(c: &Ctx) {
    let (admin, _) = fenced_admin(c);
    let g = group();
    let good = json!({"name": "child", "group": g, "scopes": ["license:read"], "tenants": ["acme"],
                      "ip_allowlist": ["10.1.0.0/16"], "expires_in": "30m"});
    for (change, why) in [
        (json!({"ip_allowlist": null}), "unfenced"),
        (json!({"ip_allowlist": ["192.0.2.0/24"]}), "outside its network"),
        (json!({"expires_in": null}), "never expires"),
        (json!({"expires_in": "1d"}), "outlives the admin key"),
        (json!({"tenants": null}), "all tenants"),
        (json!({"tenants": ["acme", "other"]}), "a foreign tenant"),
        (json!({"environment": "test"}), "another environment"),
        (json!({"scopes": ["billing:read"]}), "an uncovered scope"),
    ] {
        let mut body = good.clone();
        for (k, v) in change.as_object().unwrap() {
            if v.is_null() {
                body.as_object_mut().unwrap().remove(k);
            } else {
                body[k] = v.clone();
            }
        }
        let r = c.admin_as(&admin, "POST", "/admin/keys", Some(body.clone()), INSIDE);
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "scope_escalation"),
            "{why}: {}",
            r.body
        );
    }
    assert!(ids_in_group(c, &g).is_empty(), "an escalation wrote a key");
    let r = c.admin_as(&admin, "POST", "/admin/keys", Some(good), INSIDE);
    assert_eq!(r.status, 201, "{}", r.body);
}

fn reads_follow_reach(c: &Ctx) {
    let (admin, _) = fenced_admin(c);
    let (_, outsider) = c.create(json!({"name": "outsider", "scopes": ["license:read"]}));
    let outsider = id_of(&outsider);
    let r = c.admin_as(
        &admin,
        "POST",
        "/admin/keys",
        Some(json!({"name": "in", "scopes": ["license:read"], "tenants": ["acme"], "ip_allowlist": ["10.0.0.0/8"], "expires_in": "30m"})),
        INSIDE,
    );
    let inside = id_of(&r.json()["record"]);
    let r = c.admin_as(&admin, "GET", &format!("/admin/keys/{outsider}"), None, INSIDE);
    assert_eq!((r.status, r.code().as_str()), (404, "key_not_found"));
    assert_eq!(
        c.admin_as(&admin, "GET", &format!("/admin/keys/{inside}"), None, INSIDE)
            .status,
        200
    );
    // Every page of the list: the insider, never the outsider.
    let (mut seen, mut url) = (Vec::new(), "/admin/keys?limit=100".to_owned());
    loop {
        let v = c.admin_as(&admin, "GET", &url, None, INSIDE).json();
        seen.extend(v["keys"].as_array().unwrap().iter().map(id_of));
        match v["cursor"].as_str() {
            Some(cur) => url = format!("/admin/keys?limit=100&cursor={cur}"),
            None => break,
        }
    }
    assert!(seen.contains(&inside) && !seen.contains(&outsider));
    let audit = c
        .admin_as(&admin, "GET", "/admin/audit?limit=100", None, INSIDE)
        .json();
    let events = audit["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["key_id"] == inside.as_str()));
    assert!(events.iter().all(|e| e["key_id"] != outsider.as_str()));
    let r = c.admin_as(
        &admin,
        "GET",
        &format!("/admin/audit?key_id={outsider}"),
        None,
        INSIDE,
    );
    assert_eq!((r.status, r.code().as_str()), (404, "key_not_found"));
    for (m, p) in [
        ("PATCH", format!("/admin/keys/{outsider}")),
        ("POST", format!("/admin/keys/{outsider}/revoke")),
        ("POST", format!("/admin/keys/{outsider}/rotate")),
        ("DELETE", format!("/admin/keys/{outsider}")),
    ] {
        let body = (m == "PATCH").then(|| json!({"name": "x"}));
        let r = c.admin_as(&admin, m, &p, body, INSIDE);
        assert_eq!((r.status, r.code().as_str()), (404, "key_not_found"), "{m} {p}");
    }
    let o = c.admin("GET", &format!("/admin/keys/{outsider}"), None).json();
    assert_eq!(
        (o["status"].as_str(), o["name"].as_str()),
        (Some("active"), Some("outsider"))
    );
}

/// Concurrent PATCHes and a revoke at one key, many times over: the key must end revoked at
/// the gateway and in the admin API every time.
fn revoke_patch_races(c: &Ctx) {
    const ROUNDS: usize = 25;
    let mut revived = Vec::new();
    for round in 0..ROUNDS {
        let (key, rec) = c.create(json!({"name": "race", "scopes": ["license:read"]}));
        let id = id_of(&rec);
        let path = format!("/admin/keys/{id}");
        let bodies = [
            json!({"name": format!("r{round}")}),
            json!({"enabled": false}),
            json!({"expires_in": "1d"}),
            json!({"enabled": true}),
            json!({"name": "again"}),
            json!({"enabled": true}),
        ];
        let barrier = std::sync::Barrier::new(bodies.len() + 1);
        let revoke_status = std::thread::scope(|s| {
            for b in &bodies {
                let (barrier, path) = (&barrier, &path);
                s.spawn(move || {
                    barrier.wait();
                    c.admin("PATCH", path, Some(b.clone()));
                });
            }
            let revoke = s.spawn(|| {
                barrier.wait();
                c.admin("POST", &format!("{path}/revoke"), Some(json!({"reason": "race"})))
                    .status
            });
            revoke.join().unwrap()
        });
        assert_eq!(revoke_status, 200, "round {round}: the revoke failed");
        let gw = c.call(
            "GET",
            "/licenses/x",
            &[("Authorization", &format!("Bearer {key}"))],
            None,
        );
        let admin_view = c.admin("GET", &path, None).json();
        let gw_code = if gw.status == 401 {
            gw.code()
        } else {
            format!("{}", gw.status)
        };
        if gw_code != "revoked_key" || admin_view["status"] != "revoked" || admin_view["revoked_at"].is_null()
        {
            revived.push((round, gw_code, admin_view["status"].clone()));
        }
    }
    assert!(
        revived.is_empty(),
        "revived keys (round, gateway, admin status): {revived:?}"
    );
}

fn delete_patch_races(c: &Ctx) {
    for round in 0..10 {
        let (key, rec) = c.create(json!({"name": "race", "scopes": ["license:read"]}));
        let path = format!("/admin/keys/{}", id_of(&rec));
        let barrier = std::sync::Barrier::new(4);
        std::thread::scope(|s| {
            for b in [
                json!({"name": "x"}),
                json!({"enabled": false}),
                json!({"enabled": true}),
            ] {
                let (barrier, path) = (&barrier, &path);
                s.spawn(move || {
                    barrier.wait();
                    c.admin("PATCH", path, Some(b));
                });
            }
            barrier.wait();
            assert_eq!(c.admin("DELETE", &path, None).status, 204, "round {round}");
        });
        let r = c.admin("GET", &path, None);
        assert_eq!(
            (r.status, r.code().as_str()),
            (404, "key_not_found"),
            "round {round}: a deleted key came back"
        );
        let gw = c.call("GET", "/licenses/x", &[("X-API-Key", &key)], None);
        assert_eq!(
            (gw.status, gw.code().as_str()),
            (401, "invalid_key"),
            "round {round}"
        );
    }
}

fn rotation_rules(c: &Ctx) {
    // A disabled key: 409, no successor.
    let g = group();
    let (_, rec) = c.create(json!({"name": "d", "group": g, "scopes": ["license:read"]}));
    let id = id_of(&rec);
    c.admin(
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"enabled": false})),
    );
    let r = c.admin("POST", &format!("/admin/keys/{id}/rotate"), None);
    assert_eq!((r.status, r.code().as_str()), (409, "key_disabled"));
    assert_eq!(ids_in_group(c, &g), vec![id.clone()], "no successor");
    // The successor expires with the old key; the old key's grace cannot be lifted.
    let (old_key, rec) = c.create(json!({"name": "r", "scopes": ["license:read"], "expires_in": "1d"}));
    let id = id_of(&rec);
    let r = c.admin(
        "POST",
        &format!("/admin/keys/{id}/rotate"),
        Some(json!({"grace": "1h"})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let succ = r.json()["record"].clone();
    assert_eq!(
        succ["expires_at"], rec["expires_at"],
        "a rotation never extends a key's life"
    );
    for body in [json!({"expires_at": null}), json!({"expires_in": "1y"})] {
        let r = c.admin("PATCH", &format!("/admin/keys/{id}"), Some(body));
        assert_eq!((r.status, r.code().as_str()), (409, "key_retired"));
    }
    let gw = c.call("GET", "/licenses/x", &[("X-API-Key", &old_key)], None);
    assert_eq!(gw.status, 200);
    assert!(
        gw.header("sunset").is_some(),
        "the retired key still announces its end"
    );
    // Deleting the successor lets the old key rotate again, still within its grace.
    let r = c.admin("POST", &format!("/admin/keys/{id}/rotate"), None);
    assert_eq!(r.code(), "already_rotated");
    assert_eq!(
        c.admin("DELETE", &format!("/admin/keys/{}", id_of(&succ)), None)
            .status,
        204
    );
    let r = c.admin(
        "POST",
        &format!("/admin/keys/{id}/rotate"),
        Some(json!({"grace": "12h"})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let old = c.admin("GET", &format!("/admin/keys/{id}"), None).json();
    assert_eq!(old["rotated_to"], r.json()["record"]["id"]);
    let grace_end = old["expires_at"].as_str().unwrap().to_owned();
    assert!(
        r.json()["record"]["expires_at"].as_str().unwrap() <= grace_end.as_str(),
        "the new successor outlives the old key"
    );
}

fn strict_query_parameters(c: &Ctx) {
    let (_, id) = c.key_with(&["a"]);
    for (m, p, param) in [
        ("GET", "/admin/keys?tenant=acme".to_owned(), "tenant"),
        ("GET", "/admin/keys?Status=revoked".to_owned(), "Status"),
        (
            "GET",
            "/admin/keys?status=revoked&status=active".to_owned(),
            "status",
        ),
        ("GET", "/admin/audit?group=a".to_owned(), "group"),
        ("GET", format!("/admin/keys/{id}?verbose=1"), "verbose"),
        ("POST", format!("/admin/keys/{id}/revoke?dry_run=1"), "dry_run"),
    ] {
        let r = c.admin(m, &p, None);
        assert_eq!((r.status, r.code().as_str()), (400, "invalid_query"), "{m} {p}");
        let v = r.json();
        assert_eq!(v["parameter"], param);
        assert!(v["detail"].as_str().unwrap().contains(param));
    }
    assert_eq!(
        c.admin("GET", &format!("/admin/keys/{id}"), None).json()["status"],
        "active"
    );
}

fn cursors_bound(c: &Ctx) {
    let g = group();
    for i in 0..3 {
        c.create(json!({"name": format!("c{i}"), "group": g, "scopes": ["a"]}));
    }
    // Page until a cursor appears with this filter (other tests' keys share the listing).
    let v = c
        .admin("GET", &format!("/admin/keys?group={g}&limit=1"), None)
        .json();
    let cur = v["cursor"].as_str().expect("a cursor").to_owned();
    assert_eq!(
        c.admin(
            "GET",
            &format!("/admin/keys?group={g}&limit=5&cursor={cur}"),
            None
        )
        .status,
        200,
        "limit may change between pages"
    );
    for p in [
        format!("/admin/audit?cursor={cur}"),
        format!("/admin/keys?cursor={cur}"),
        format!("/admin/keys?group=other&cursor={cur}"),
        format!("/admin/keys?group={g}&status=revoked&cursor={cur}"),
        "/admin/keys?cursor=forged".to_owned(),
    ] {
        let r = c.admin("GET", &p, None);
        assert_eq!((r.status, r.code().as_str()), (400, "invalid_cursor"), "{p}");
    }
}

fn admin_credential_errors(c: &Ctx) {
    let forged = forge_key("live", "0123456789abcdef");
    for cred in ["wrong-token", "kg_live_nope", forged.as_str()] {
        let r = c.call(
            "GET",
            "/admin/keys",
            &[("Authorization", &format!("Bearer {cred}"))],
            None,
        );
        assert_eq!(
            (r.status, r.code().as_str()),
            (401, "invalid_admin_credential"),
            "{cred}"
        );
        assert!(
            r.header("www-authenticate")
                .is_some_and(|h| h.contains("invalid_token"))
        );
        assert!(!r.body.contains(cred));
    }
    let r = c.call("GET", "/admin/keys", &[], None);
    assert_eq!(r.code(), "missing_key");
}

fn durations(c: &Ctx) {
    for (given, secs) in [
        (json!("7d"), 604_800_i64),
        (json!("30d"), 2_592_000),
        (json!("45m"), 2700),
        (json!("3600"), 3600),
    ] {
        let (_, rec) = c.create(json!({"name": "d", "scopes": ["a"], "expires_in": given}));
        let at = time_ms(&rec["expires_at"]);
        let created = time_ms(&rec["created_at"]);
        assert_eq!((at - created) / 1000, secs, "{given}");
    }
    for bad in [json!("2w"), json!("07d"), json!("1.5h")] {
        let r = c.admin(
            "POST",
            "/admin/keys",
            Some(json!({"name": "d", "scopes": ["a"], "expires_in": bad})),
        );
        assert_eq!(
            (r.status, r.json()["field"].clone()),
            (422, json!("expires_in")),
            "{bad}"
        );
    }
}

fn time_ms(v: &Value) -> i64 {
    keygate::time::Timestamp::parse_rfc3339(v.as_str().unwrap())
        .unwrap()
        .millis()
}

fn page_cap(c: &Ctx) {
    let g = group();
    for i in 0..101 {
        c.create(json!({"name": format!("p{i}"), "group": g, "scopes": ["a"]}));
    }
    // 100 KV keys per page; a few may be skipped (the seeded corrupt record, keys other tests
    // delete meanwhile), but never more than 100 and far more than the default 50.
    let v = c.admin("GET", "/admin/keys?limit=1000", None).json();
    let n = v["keys"].as_array().unwrap().len();
    assert!((90..=100).contains(&n), "capped at 100: {n}");
    assert!(v["cursor"].is_string());
    let v = c.admin("GET", "/admin/audit?limit=1000", None).json();
    assert_eq!(v["events"].as_array().unwrap().len(), 100);
    let doc = c.call("GET", "/admin/openapi.json", &[], None).json();
    for p in ["/admin/keys", "/admin/audit"] {
        let limit = doc["paths"][p]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "limit")
            .unwrap()
            .clone();
        assert!(
            limit["description"].as_str().unwrap().contains("100"),
            "{p}: {limit}"
        );
    }
}

fn principal_header_size(c: &Ctx) {
    let grant = |i: usize| format!("scope{i:02}.{}", "x".repeat(90));
    let big: Vec<String> = (0..45).map(grant).collect();
    let r = c.admin("POST", "/admin/keys", Some(json!({"name": "big", "scopes": big})));
    assert_eq!((r.status, r.code().as_str()), (422, "invalid_field"));
    assert_eq!(r.json()["field"], "scopes");
    let small: Vec<String> = (0..30).map(grant).collect();
    let (_, rec) = c.create(json!({"name": "ok", "scopes": small}));
    let r = c.admin(
        "PATCH",
        &format!("/admin/keys/{}", id_of(&rec)),
        Some(json!({"scopes": big})),
    );
    assert_eq!((r.status, r.json()["field"].as_str()), (422, Some("scopes")));
}

fn short_admin_token(c: &Ctx) {
    // The no_admin worker runs with a 31-character token.
    let short = c.no_admin.admin_token.as_str();
    assert_eq!(short.len(), 31);
    let w = &c.no_admin;
    let r = send(
        "GET",
        &format!("{}/admin/keys", w.base),
        &[("Authorization", &format!("Bearer {short}"))],
        None,
    );
    assert_eq!((r.status, r.code().as_str()), (503, "admin_disabled"));
    assert!(r.json()["detail"].as_str().unwrap().contains("too short"));
    assert!(!r.body.contains(short));
}
