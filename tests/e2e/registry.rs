//! The registry Durable Object through the real worker: concurrent admin writes are serialised
//! (no lost update), ETag / If-Match, Idempotency-Key on create and rotate (concurrent and
//! delayed retries), the registry's status, and the import of KV-era records.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::Resp;
use crate::{Ctx, group};

type Test = (&'static str, fn(&Ctx));

pub const TESTS: &[Test] = &[
    (
        "registry::fifty_concurrent_writes_apply_in_some_serial_order",
        fifty_concurrent_writes,
    ),
    ("registry::etag_and_if_match", etag_and_if_match),
    (
        "registry::idempotent_create_concurrent_and_delayed",
        idempotent_create,
    ),
    (
        "registry::idempotent_rotate_concurrent_and_delayed",
        idempotent_rotate,
    ),
    ("registry::status_reports_replica_and_feed", status),
    ("registry::kv_era_records_are_imported", imported),
];

/// An admin call with extra headers.
fn admin_h(c: &Ctx, method: &str, path: &str, headers: &[(&str, &str)], body: Option<Value>) -> Resp {
    let auth = format!("Bearer {}", c.main.admin_token);
    let body = body.map(|b| b.to_string());
    let mut all = vec![("Authorization", auth.as_str())];
    if body.is_some() {
        all.push(("Content-Type", "application/json"));
    }
    all.extend_from_slice(headers);
    c.call(method, path, &all, body.as_deref())
}

fn version_of(r: &Resp) -> u64 {
    let etag = r
        .header("etag")
        .unwrap_or_else(|| panic!("no ETag: {} {}", r.status, r.body));
    etag.trim_matches('"').parse().expect("numeric ETag")
}

/// 50 PATCH, revoke and rotate calls race on one key. Each successful change must have seen
/// every change before it: the versions they produce are all different and consecutive, the
/// final record is the one the highest version describes, and once revoked the key never
/// works again.
fn fifty_concurrent_writes(c: &Ctx) {
    let (key, rec) = c.create(json!({"name": "race", "scopes": ["license:read"]}));
    let id = rec["id"].as_str().unwrap().to_owned();
    let path = format!("/admin/keys/{id}");
    assert_eq!(
        c.call(
            "GET",
            "/licenses/x",
            &[("Authorization", &format!("Bearer {key}"))],
            None
        )
        .status,
        200
    );
    let calls: Vec<(String, String, Value)> = (0..50)
        .map(|i| match i {
            25 => ("POST".into(), format!("{path}/revoke"), json!({"reason": "race"})),
            i if i % 10 == 7 => ("POST".into(), format!("{path}/rotate"), json!({"grace": 60})),
            i => (
                "PATCH".into(),
                path.clone(),
                json!({"name": format!("n{i}"), "metadata": {"i": i}}),
            ),
        })
        .collect();
    let results: Vec<(usize, Resp)> = std::thread::scope(|s| {
        let handles: Vec<_> = calls
            .iter()
            .enumerate()
            .map(|(i, (m, p, b))| s.spawn(move || (i, admin_h(c, m, p, &[], Some(b.clone())))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut versions = Vec::new();
    let mut last_patch: Option<(u64, String)> = None;
    let mut bumps = 0;
    let mut rotated = 0;
    for (i, r) in &results {
        let (method, p, _) = &calls[*i];
        match (
            method.as_str(),
            p.ends_with("/revoke"),
            p.ends_with("/rotate"),
            r.status,
        ) {
            ("PATCH", ..) if r.status == 200 => {
                let v = version_of(r);
                versions.push(v);
                bumps += 1;
                if last_patch.as_ref().is_none_or(|(lv, _)| v > *lv) {
                    last_patch = Some((v, r.json()["name"].as_str().unwrap().to_owned()));
                }
            }
            ("PATCH", ..) => assert_eq!(r.code(), "key_revoked", "PATCH {i}: {}", r.body),
            (_, true, _, 200) => {
                versions.push(version_of(r));
                bumps += 1;
            }
            (_, _, true, 201) => {
                rotated += 1;
                bumps += 1;
            }
            (_, _, true, 409) => {
                let code = r.code();
                assert!(
                    ["key_revoked", "already_rotated"].contains(&code.as_str()),
                    "rotate {i}: {}",
                    r.body
                );
            }
            _ => panic!("call {i} {method} {p}: {} {}", r.status, r.body),
        }
    }
    assert!(rotated <= 1, "one successor at most, got {rotated}");
    let unique: BTreeSet<u64> = versions.iter().copied().collect();
    assert_eq!(
        unique.len(),
        versions.len(),
        "two writes produced one version: a lost update"
    );
    let last = c.admin("GET", &path, None);
    let final_version = version_of(&last);
    assert_eq!(
        final_version,
        1 + bumps,
        "every successful change bumped the version once, none was lost"
    );
    let last = last.json();
    assert_eq!(last["status"], "revoked");
    assert_eq!(last["version"], final_version);
    if let Some((v, name)) = last_patch {
        assert!(v < final_version, "the revoke came after the last PATCH");
        assert_eq!(last["name"], name, "the newest PATCH's name is the final one");
    }
    // The audit log has one event per change, the revoke among them.
    let audit = c
        .admin("GET", &format!("/admin/audit?key_id={id}&limit=100"), None)
        .json();
    let actions: Vec<&str> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions.iter().filter(|a| **a == "key.revoke").count(), 1);
    // Revoked stays revoked, now and after the feed and caches have turned over.
    for _ in 0..2 {
        let r = c.call(
            "GET",
            "/licenses/x",
            &[("Authorization", &format!("Bearer {key}"))],
            None,
        );
        assert_eq!((r.status, r.code()), (401, "revoked_key".to_owned()));
        std::thread::sleep(Duration::from_millis(1200));
    }
}

fn etag_and_if_match(c: &Ctx) {
    let (_, rec) = c.create(json!({"name": "etag", "scopes": ["a"]}));
    let path = format!("/admin/keys/{}", rec["id"].as_str().unwrap());
    assert_eq!(rec["version"], 1);
    let r = c.admin("GET", &path, None);
    assert_eq!(r.header("etag"), Some("\"1\""));
    let r = admin_h(
        c,
        "PATCH",
        &path,
        &[("If-Match", "\"1\"")],
        Some(json!({"name": "two"})),
    );
    assert_eq!((r.status, r.header("etag")), (200, Some("\"2\"")), "{}", r.body);
    // A writer holding version 1 is told, not silently overwritten.
    let r = admin_h(
        c,
        "PATCH",
        &path,
        &[("If-Match", "\"1\"")],
        Some(json!({"name": "lost"})),
    );
    assert_eq!((r.status, r.code()), (412, "version_mismatch".to_owned()));
    assert_eq!(r.json()["current_version"], 2);
    for (method, p, body) in [
        ("POST", format!("{path}/revoke"), Some(json!({}))),
        ("POST", format!("{path}/rotate"), Some(json!({}))),
        ("DELETE", path.clone(), None),
    ] {
        let r = admin_h(c, method, &p, &[("If-Match", "\"1\"")], body);
        assert_eq!(r.status, 412, "{method} {p}: {}", r.body);
    }
    assert_eq!(c.admin("GET", &path, None).json()["name"], "two");
    let r = admin_h(
        c,
        "POST",
        &format!("{path}/revoke"),
        &[("If-Match", "W/\"9\", \"2\"")],
        Some(json!({})),
    );
    assert_eq!((r.status, r.header("etag")), (200, Some("\"3\"")), "{}", r.body);
    let r = admin_h(c, "DELETE", &path, &[("If-Match", "*")], None);
    assert_eq!(r.status, 204);
}

fn idempotent_create(c: &Ctx) {
    let g = group();
    let body = json!({"name": "idem", "group": g, "scopes": ["license:read"]});
    let idem = format!("create-{g}");
    let results: Vec<Resp> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let (b, k) = (body.clone(), idem.clone());
                s.spawn(move || admin_h(c, "POST", "/admin/keys", &[("Idempotency-Key", &k)], Some(b)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let keys: BTreeSet<String> = results
        .iter()
        .map(|r| {
            assert_eq!(r.status, 201, "{}", r.body);
            r.json()["key"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(keys.len(), 1, "concurrent retries made {} keys", keys.len());
    let replayed = results
        .iter()
        .filter(|r| r.header("idempotent-replayed") == Some("true"))
        .count();
    assert_eq!(replayed, 5, "all but the first are replays");
    std::thread::sleep(Duration::from_secs(2));
    let late = admin_h(
        c,
        "POST",
        "/admin/keys",
        &[("Idempotency-Key", &idem)],
        Some(body.clone()),
    );
    assert_eq!(late.status, 201);
    assert_eq!(late.json()["key"].as_str().unwrap(), keys.iter().next().unwrap());
    let listed = c.admin("GET", &format!("/admin/keys?group={g}"), None).json();
    assert_eq!(
        listed["keys"].as_array().unwrap().len(),
        1,
        "one key in the group"
    );
    // The replayed key is a real, working key.
    let key = keys.iter().next().unwrap();
    let r = c.call(
        "GET",
        "/licenses/x",
        &[("Authorization", &format!("Bearer {key}"))],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let other = admin_h(
        c,
        "POST",
        "/admin/keys",
        &[("Idempotency-Key", &idem)],
        Some(json!({"name": "other", "group": g, "scopes": ["a"]})),
    );
    assert_eq!(
        (other.status, other.code()),
        (422, "idempotency_key_reused".to_owned())
    );
}

fn idempotent_rotate(c: &Ctx) {
    let (_, rec) = c.create(json!({"name": "idem-rotate", "scopes": ["license:read"]}));
    let id = rec["id"].as_str().unwrap().to_owned();
    let path = format!("/admin/keys/{id}/rotate");
    let idem = format!("rotate-{id}");
    let results: Vec<Resp> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let (p, k) = (path.clone(), idem.clone());
                s.spawn(move || {
                    admin_h(
                        c,
                        "POST",
                        &p,
                        &[("Idempotency-Key", &k)],
                        Some(json!({"grace": 60})),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let successors: BTreeSet<String> = results
        .iter()
        .map(|r| {
            assert_eq!(r.status, 201, "{}", r.body);
            r.json()["record"]["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(successors.len(), 1, "one successor");
    std::thread::sleep(Duration::from_secs(2));
    let late = admin_h(
        c,
        "POST",
        &path,
        &[("Idempotency-Key", &idem)],
        Some(json!({"grace": 60})),
    );
    assert_eq!(late.status, 201, "{}", late.body);
    assert_eq!(late.header("idempotent-replayed"), Some("true"));
    assert!(successors.contains(late.json()["record"]["id"].as_str().unwrap()));
    // Without the header, a second rotation is refused: there really is only one successor.
    let again = c.admin("POST", &path, Some(json!({"grace": 60})));
    assert_eq!((again.status, again.code()), (409, "already_rotated".to_owned()));
}

fn status(c: &Ctx) {
    let (_, rec) = c.create(json!({"name": "status", "scopes": ["a"]}));
    c.admin(
        "POST",
        &format!("/admin/keys/{}/revoke", rec["id"].as_str().unwrap()),
        Some(json!({})),
    );
    let s = c.admin("GET", "/admin/registry", None);
    assert_eq!(s.status, 200, "{}", s.body);
    let s = s.json();
    assert_eq!(s["replica"]["pending"], 0, "the replica caught up: {s}");
    assert!(s["feed"]["entries"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["feed"]["seq"].as_u64().unwrap() >= 1, "{s}");
}

/// The main worker's KV was seeded with records written by the KV-only version (see `main`):
/// the registry imports them on first use, lifecycle facts applied, deleted ones left out.
fn imported(c: &Ctx) {
    let (legacy_key, legacy_id) = crate::legacy_key();
    let r = c.admin("GET", &format!("/admin/keys/{legacy_id}"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["name"], "from kv");
    assert_eq!(r.header("etag"), Some("\"1\""));
    let r = c.call(
        "GET",
        "/licenses/x",
        &[("Authorization", &format!("Bearer {legacy_key}"))],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = c.admin("GET", &format!("/admin/keys/{}", crate::LEGACY_DELETED_ID), None);
    assert_eq!(r.status, 404, "a key deleted in KV stays deleted: {}", r.body);
    // And it is the registry's record now: changes go through it.
    let r = c.admin(
        "PATCH",
        &format!("/admin/keys/{legacy_id}"),
        Some(json!({"name": "moved"})),
    );
    assert_eq!((r.status, r.header("etag")), (200, Some("\"2\"")), "{}", r.body);
}
