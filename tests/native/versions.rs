//! Record versions and retries: `ETag` / `If-Match` on every write to an existing key,
//! `Idempotency-Key` on create and rotate, and the revocation feed that carries narrowing
//! changes to the gateway before its cache or the KV replica catch up.

use futures::executor::block_on;
use keygate::admin::Reply;
use keygate::decide::{Decision, Denial};
use keygate::problem::Problem;
use keygate::store::KvStore;
use serde_json::{Value, json};

use crate::World;

fn etag(r: &Reply) -> Option<&str> {
    r.headers
        .iter()
        .find(|(k, _)| *k == "ETag")
        .map(|(_, v)| v.as_str())
}

fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn status(r: &Result<Reply, Problem>) -> (u16, &str) {
    match r {
        Ok(reply) => (reply.status, ""),
        Err(p) => (p.status, p.code),
    }
}

fn denial(w: &World, key: &str) -> Option<Denial> {
    match w.decide("GET", "/licenses/x", &[("x-api-key", key)], None) {
        Decision::Deny(d) => Some(d),
        Decision::Forward(_) => None,
        Decision::Preflight(_) => panic!("not a preflight"),
    }
}

fn key_ids(w: &World) -> Vec<String> {
    let listed = w
        .admin("GET", "/admin/keys?limit=100", None)
        .unwrap()
        .body
        .unwrap();
    listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect()
}

// ---- versions and If-Match -----------------------------------------------------------------

#[test]
fn every_change_bumps_the_version_and_the_etag() {
    let w = World::new();
    let (_, rec) = w.issue(json!({"name": "v", "scopes": ["a"]}));
    assert_eq!(rec["version"], 1);
    let id = rec["id"].as_str().unwrap().to_owned();
    let path = format!("/admin/keys/{id}");
    let got = w.admin("GET", &path, None).unwrap();
    assert_eq!(etag(&got), Some("\"1\""));
    let r = w.admin("PATCH", &path, Some(json!({"name": "w"}))).unwrap();
    assert_eq!((r.status, etag(&r)), (200, Some("\"2\"")));
    assert_eq!(r.body.as_ref().unwrap()["version"], 2);
    // A PATCH that changes nothing keeps the version.
    let r = w.admin("PATCH", &path, Some(json!({"name": "w"}))).unwrap();
    assert_eq!(etag(&r), Some("\"2\""));
    let r = w.admin("POST", &format!("{path}/revoke"), None).unwrap();
    assert_eq!(etag(&r), Some("\"3\""));
    assert_eq!(etag(&w.admin("GET", &path, None).unwrap()), Some("\"3\""));
}

#[test]
fn if_match_guards_every_write() {
    let w = World::new();
    let (_, rec) = w.issue(json!({"name": "v", "scopes": ["a"]}));
    let id = rec["id"].as_str().unwrap().to_owned();
    let path = format!("/admin/keys/{id}");

    // The current version: applied, with the next ETag.
    let r = w
        .admin_with_headers(
            "PATCH",
            &path,
            Some(json!({"name": "two"})),
            &[("if-match", "\"1\"")],
        )
        .unwrap();
    assert_eq!((r.status, etag(&r)), (200, Some("\"2\"")));
    assert_eq!(r.body.unwrap()["name"], "two");

    // A stale version: 412 with the current one, and nothing written.
    let before = w.keys_state();
    for (method, p, body) in [
        ("PATCH", path.clone(), Some(json!({"name": "lost"}))),
        ("POST", format!("{path}/revoke"), None),
        ("POST", format!("{path}/rotate"), None),
        ("DELETE", path.clone(), None),
    ] {
        for tag in ["\"1\"", "W/\"1\"", "\"1\", \"3\"", "1"] {
            let e = w
                .admin_with_headers(method, &p, body.clone(), &[("if-match", tag)])
                .unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (412, "version_mismatch"),
                "{method} {p} {tag}"
            );
            assert_eq!(e.extra["current_version"], 2, "{method} {p}");
        }
    }
    assert_eq!(w.keys_state(), before, "a refused write wrote something");
    assert_eq!(registry_name(&w, &id), "two");

    // Strong comparison: a weak tag, or an empty header, never matches.
    for tag in ["W/\"2\"", ""] {
        let e = w
            .admin_with_headers(
                "PATCH",
                &path,
                Some(json!({"name": "weak"})),
                &[("if-match", tag)],
            )
            .unwrap_err();
        assert_eq!((e.status, e.code), (412, "version_mismatch"), "{tag:?}");
    }
    // A list holding the current version, and `*`, match.
    for (tag, name, version) in [
        ("\"7\", \"2\"", "three", 3),
        ("\"3\"", "four", 4),
        ("*", "five", 5),
    ] {
        let r = w
            .admin_with_headers("PATCH", &path, Some(json!({"name": name})), &[("if-match", tag)])
            .unwrap();
        assert_eq!(r.status, 200, "{tag}");
        assert_eq!(etag(&r), Some(format!("\"{version}\"").as_str()), "{tag}");
    }

    // Without If-Match a write applies to the latest version.
    let r = w.admin("PATCH", &path, Some(json!({"name": "six"}))).unwrap();
    assert_eq!((r.status, etag(&r)), (200, Some("\"6\"")));
    assert_eq!(registry_name(&w, &id), "six");

    // Revoke, rotate and delete honour a matching If-Match too.
    let r = w
        .admin_with_headers("POST", &format!("{path}/rotate"), None, &[("if-match", "\"6\"")])
        .unwrap();
    assert_eq!(r.status, 201);
    let e = w
        .admin_with_headers("DELETE", &path, None, &[("if-match", "\"6\"")])
        .unwrap_err();
    assert_eq!(
        (e.status, e.code),
        (412, "version_mismatch"),
        "the rotation bumped it"
    );
    assert_eq!(e.extra["current_version"], 7);
    let r = w
        .admin_with_headers("DELETE", &path, None, &[("if-match", "\"7\"")])
        .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(w.admin("GET", &path, None).unwrap_err().code, "key_not_found");
}

fn registry_name(w: &World, id: &str) -> String {
    let raw = block_on(KvStore::get(&w.registry, &format!("key:{id}")))
        .unwrap()
        .unwrap();
    let v: Value = serde_json::from_str(&raw).unwrap();
    v["name"].as_str().unwrap().to_owned()
}

// ---- Idempotency-Key -----------------------------------------------------------------------

#[test]
fn a_retried_create_returns_the_same_key_once() {
    let w = World::new();
    let body = json!({"name": "once", "scopes": ["license:read"]});
    let first = w
        .admin_with_headers(
            "POST",
            "/admin/keys",
            Some(body.clone()),
            &[("idempotency-key", "create-1")],
        )
        .unwrap();
    assert_eq!(first.status, 201);
    assert_eq!(header(&first, "Idempotent-Replayed"), None);
    let again = w
        .admin_with_headers(
            "POST",
            "/admin/keys",
            Some(body.clone()),
            &[("idempotency-key", "create-1")],
        )
        .unwrap();
    assert_eq!(again.status, 201);
    assert_eq!(header(&again, "Idempotent-Replayed"), Some("true"));
    assert_eq!(
        etag(&again),
        Some("\"1\""),
        "a replay carries the first response's ETag"
    );
    let (a, b) = (first.body.unwrap(), again.body.unwrap());
    assert_eq!(a["key"], b["key"], "a retry got another key");
    assert!(a["key"].as_str().unwrap().starts_with("kg_live_"));
    assert_eq!(a["record"]["id"], b["record"]["id"]);
    assert_eq!(key_ids(&w), [a["record"]["id"].as_str().unwrap()]);
    // The replayed key works.
    assert_eq!(denial(&w, b["key"].as_str().unwrap()), None);

    // The same idempotency key with another body is refused, and creates nothing.
    let e = w
        .admin_with_headers(
            "POST",
            "/admin/keys",
            Some(json!({"name": "other", "scopes": ["license:read"]})),
            &[("idempotency-key", "create-1")],
        )
        .unwrap_err();
    assert_eq!((e.status, e.code), (422, "idempotency_key_reused"));
    assert_eq!(key_ids(&w).len(), 1);

    // Another idempotency key is another request.
    let other = w
        .admin_with_headers(
            "POST",
            "/admin/keys",
            Some(body.clone()),
            &[("idempotency-key", "create-2")],
        )
        .unwrap();
    assert_eq!(header(&other, "Idempotent-Replayed"), None);
    assert_ne!(other.body.unwrap()["key"], a["key"]);
    assert_eq!(key_ids(&w).len(), 2);

    // Invalid idempotency keys: 400, nothing written.
    let before = w.keys_state();
    let long = "x".repeat(256);
    for bad in ["", "caf\u{e9}", "tab\there", long.as_str()] {
        let e = w
            .admin_with_headers(
                "POST",
                "/admin/keys",
                Some(body.clone()),
                &[("idempotency-key", bad)],
            )
            .unwrap_err();
        assert_eq!((e.status, e.code), (400, "invalid_idempotency_key"), "{bad:?}");
    }
    assert_eq!(w.keys_state(), before);

    // After a day the idempotency key is forgotten: a retry is a new request.
    let mut w = w;
    w.now = w.now.plus_seconds(24 * 3600 + 1);
    let late = w
        .admin_with_headers(
            "POST",
            "/admin/keys",
            Some(body),
            &[("idempotency-key", "create-1")],
        )
        .unwrap();
    assert_eq!(header(&late, "Idempotent-Replayed"), None);
    assert_ne!(late.body.unwrap()["key"], a["key"]);
}

#[test]
fn a_failed_create_may_be_retried_with_the_same_idempotency_key() {
    let w = World::new();
    let e = w
        .admin_with_headers(
            "POST",
            "/admin/keys",
            Some(json!({"name": "x", "scopes": ["bad*"]})),
            &[("idempotency-key", "k")],
        )
        .unwrap_err();
    assert_eq!(e.status, 422);
    // The failure was not stored: the same key with a corrected body goes through.
    let r = w
        .admin_with_headers(
            "POST",
            "/admin/keys",
            Some(json!({"name": "x", "scopes": ["good"]})),
            &[("idempotency-key", "k")],
        )
        .unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(header(&r, "Idempotent-Replayed"), None);
}

#[test]
fn a_retried_rotation_makes_one_successor() {
    let w = World::new();
    let (old_key, rec) = w.issue(json!({"name": "r", "scopes": ["license:read"]}));
    let id = rec["id"].as_str().unwrap().to_owned();
    let path = format!("/admin/keys/{id}/rotate");
    let body = json!({"grace": "1h"});
    let results: Vec<_> = (0..3)
        .map(|_| w.admin_with_headers("POST", &path, Some(body.clone()), &[("idempotency-key", "rot-1")]))
        .collect();
    let first = results[0].as_ref().unwrap();
    assert_eq!(first.status, 201);
    for r in &results[1..] {
        let r = r.as_ref().unwrap();
        assert_eq!((r.status, header(r, "Idempotent-Replayed")), (201, Some("true")));
        assert_eq!(r.body, first.body, "a retry got another successor");
    }
    let successor = first.body.as_ref().unwrap()["record"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ids = key_ids(&w);
    ids.sort();
    let mut want = vec![id.clone(), successor.clone()];
    want.sort();
    assert_eq!(ids, want, "exactly one successor");
    // Without the idempotency key, a second rotation is refused as before.
    assert_eq!(
        status(&w.admin("POST", &path, Some(body.clone()))),
        (409, "already_rotated")
    );
    // Another body under the same idempotency key is refused.
    assert_eq!(
        status(&w.admin_with_headers(
            "POST",
            &path,
            Some(json!({"grace": "2h"})),
            &[("idempotency-key", "rot-1")]
        )),
        (422, "idempotency_key_reused")
    );
    // The same idempotency key on another path is another request.
    let (_, other) = w.issue(json!({"name": "s", "scopes": ["license:read"]}));
    let other_path = format!("/admin/keys/{}/rotate", other["id"].as_str().unwrap());
    assert_eq!(
        status(&w.admin_with_headers("POST", &other_path, Some(body), &[("idempotency-key", "rot-1")])),
        (422, "idempotency_key_reused")
    );
    // Both keys work during the grace period.
    let new_key = first.body.as_ref().unwrap()["key"].as_str().unwrap();
    assert_eq!(denial(&w, &old_key), None);
    assert_eq!(denial(&w, new_key), None);
}

// ---- the revocation feed -------------------------------------------------------------------

#[test]
fn a_revocation_denies_at_once_through_the_feed_despite_the_cache() {
    let w = World::new();
    let (key, rec) = w.issue(json!({"name": "f", "scopes": ["license:read"]}));
    let id = rec["id"].as_str().unwrap().to_owned();
    // Warm: the gateway caches the active record.
    assert_eq!(denial(&w, &key), None);
    assert!(w.feed().is_empty());
    w.admin("POST", &format!("/admin/keys/{id}/revoke"), None)
        .unwrap();
    // The cache still holds the active record...
    let kid = keygate::key::KeyId::parse(&id).unwrap();
    let cached = w.cache.borrow_mut().get(&kid, w.now).unwrap().unwrap();
    assert!(cached.revoked_at.is_none() && cached.version == 1);
    // ...and the decision denies anyway.
    let entry = w.feed().entries(&kid).last().cloned().unwrap();
    assert_eq!(
        (entry.kind, entry.version),
        (keygate::revocation::Kind::Revoked, 2)
    );
    assert_eq!(denial(&w, &key), Some(Denial::RevokedKey));
    // Without the feed, the cached record alone would still forward.
    let headers = vec![("x-api-key".to_owned(), key.clone())];
    let facts = keygate::decide::RequestFacts {
        method: "GET",
        path: "/licenses/x",
        query: None,
        headers: &headers,
        client_ip: None,
        host: "gw.example",
        has_body: false,
    };
    assert!(matches!(
        block_on(w.gateway.decide(&facts, &w.records(), w.now)),
        Decision::Forward(_)
    ));
}

#[test]
fn the_feed_denies_disable_and_delete_but_never_overrides_a_newer_record() {
    let mut w = World::new();
    let (key, rec) = w.issue(json!({"name": "f", "scopes": ["license:read"]}));
    let id = rec["id"].as_str().unwrap().to_owned();
    let path = format!("/admin/keys/{id}");
    assert_eq!(denial(&w, &key), None);
    w.admin("PATCH", &path, Some(json!({"enabled": false}))).unwrap();
    assert_eq!(
        denial(&w, &key),
        Some(Denial::DisabledKey),
        "the feed denies the cached record"
    );
    w.admin("PATCH", &path, Some(json!({"enabled": true}))).unwrap();
    // The cache still holds version 1, which the feed says is stale ("disabled at 2"): it is
    // not used; the registry's current record (version 3, enabled again) decides at once.
    assert_eq!(
        denial(&w, &key),
        None,
        "the current record decides, not the stale cached one"
    );
    // Once the cache entry expires the record (version 3, enabled) is read from KV: the
    // feed's entry is older than it, so the key works again.
    w.now = w.now.plus_seconds(120);
    assert_eq!(denial(&w, &key), None, "the re-enabled key is still denied");
    w.cache.borrow_mut().clear();
    assert_eq!(denial(&w, &key), None);
    // A lagging replica that still serves the disabled record is denied by the record itself.
    let stored = w.store.snapshot()[&format!("key:{id}")].clone();
    let mut disabled: Value = serde_json::from_str(&stored).unwrap();
    disabled["enabled"] = json!(false);
    disabled["version"] = json!(2);
    block_on(w.store.put(&format!("key:{id}"), &disabled.to_string())).unwrap();
    w.cache.borrow_mut().clear();
    assert_eq!(denial(&w, &key), Some(Denial::DisabledKey));
    block_on(w.store.put(&format!("key:{id}"), &stored)).unwrap();
    w.cache.borrow_mut().clear();
    assert_eq!(denial(&w, &key), None);
    // Deleting: the feed denies the cached record as an unknown key.
    assert_eq!(denial(&w, &key), None);
    w.admin("DELETE", &path, None).unwrap();
    assert_eq!(denial(&w, &key), Some(Denial::InvalidKey));
}

#[test]
fn narrowed_grants_apply_at_once_from_the_registrys_record() {
    let w = World::new();
    let (key, rec) = w.issue(json!({"name": "g", "scopes": ["license:read", "other:read"]}));
    let id = rec["id"].as_str().unwrap().to_owned();
    assert_eq!(denial(&w, &key), None, "warm: the gateway caches version 1");
    w.admin(
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"scopes": ["other:read"]})),
    )
    .unwrap();
    let kid = keygate::key::KeyId::parse(&id).unwrap();
    let cached = w.cache.borrow_mut().get(&kid, w.now).unwrap().unwrap();
    assert_eq!(cached.version, 1, "the cache still grants license:read");
    let entry = w.feed().entries(&kid).last().cloned().unwrap();
    assert_eq!(
        (entry.kind, entry.version),
        (keygate::revocation::Kind::Changed, 2)
    );
    // The decision uses the registry's current record, not the cached one.
    assert!(matches!(denial(&w, &key), Some(Denial::InsufficientScope { .. })));
    // A stale record that cannot be refreshed is never used: fail closed.
    let feed = w.feed();
    let known = keygate::decide::Known::new(Ok(Some(cached))).with_feed(&feed, w.now);
    let headers = vec![("x-api-key".to_owned(), key.clone())];
    let facts = keygate::decide::RequestFacts {
        method: "GET",
        path: "/licenses/x",
        query: None,
        headers: &headers,
        client_ip: None,
        host: "gw.example",
        has_body: false,
    };
    let keygate::decide::Step::NeedRecord(pending) = w.gateway.start(&facts, w.now, &w.feed()) else {
        panic!("a well-formed key needs its record");
    };
    assert_eq!(
        w.gateway.finish(pending, known, w.now).0,
        Decision::Deny(Denial::StoreUnavailable)
    );
}

#[test]
fn a_later_expiry_in_the_same_or_a_later_write_never_hides_a_narrowing() {
    // The red team's cases: one PATCH narrowing scopes with a later expiry; a disable followed by
    // a PATCH of the expiry; a narrowing followed by a rotation with grace.
    for case in 0..3 {
        let w = World::new();
        let (key, rec) = w.issue(json!({"name": "x", "scopes": ["license:read", "other:read"]}));
        let path = format!("/admin/keys/{}", rec["id"].as_str().unwrap());
        assert_eq!(denial(&w, &key), None, "case {case}: warm");
        let want = match case {
            0 => {
                w.admin(
                    "PATCH",
                    &path,
                    Some(json!({"scopes": ["other:read"], "expires_in": "30d"})),
                )
                .unwrap();
                "insufficient_scope"
            }
            1 => {
                w.admin("PATCH", &path, Some(json!({"enabled": false}))).unwrap();
                w.admin("PATCH", &path, Some(json!({"expires_in": "30d"})))
                    .unwrap();
                "disabled_key"
            }
            _ => {
                w.admin("PATCH", &path, Some(json!({"scopes": ["other:read"]})))
                    .unwrap();
                w.admin("POST", &format!("{path}/rotate"), Some(json!({"grace": "1h"})))
                    .unwrap();
                "insufficient_scope"
            }
        };
        let got = denial(&w, &key).map(|d| Problem::from_denial(&d, "keygate").code);
        assert_eq!(got, Some(want), "case {case}: the cached record must not pass");
    }
}

#[test]
fn a_replay_needs_the_key_it_made_to_still_be_there() {
    let w = World::new();
    let body = json!({"name": "gone", "scopes": ["a"]});
    let first = w
        .admin_with_headers(
            "POST",
            "/admin/keys",
            Some(body.clone()),
            &[("idempotency-key", "g-1")],
        )
        .unwrap();
    let id = first.body.unwrap()["record"]["id"].as_str().unwrap().to_owned();
    w.admin("DELETE", &format!("/admin/keys/{id}"), None).unwrap();
    let e = w
        .admin_with_headers("POST", "/admin/keys", Some(body), &[("idempotency-key", "g-1")])
        .unwrap_err();
    assert_eq!(
        (e.status, e.code),
        (404, "key_not_found"),
        "no secret of a deleted key"
    );
}
