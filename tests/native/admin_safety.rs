//! Issue 8, natively: an admin key's reach on every axis, monotonic lifecycle states whatever
//! order the admin calls on a key run in (the registry runs them one at a time, so every serial
//! order is every outcome there is), strict inputs, and the platform limits.

use futures::executor::block_on;
use keygate::admin::Reply;
use keygate::decide::{Decision, Denial};
use keygate::key::KeyId;
use keygate::problem::Problem;
use keygate::record::KeyRecord;
use keygate::store::{CountingStore, KvStore, MemoryStore};
use keygate::time::Timestamp;
use serde_json::{Value, json};

use crate::{Call, TOKEN, World};

// ---- helpers ---------------------------------------------------------------------------------

pub fn token_call(method: &str, path: impl Into<String>, body: Option<Value>) -> Call<'_> {
    Call::token(method, path, body)
}

/// Run one admin call, as the registry does: one unit of work, then the replica flush.
pub fn one<S: KvStore>(w: &World<S>, call: Call<'_>) -> Result<Reply, Problem> {
    w.call(&call)
}

/// Run admin calls one after another, in the order given.
pub fn serially<S: KvStore>(w: &World<S>, calls: &[Call<'_>]) -> Vec<Result<Reply, Problem>> {
    calls.iter().map(|c| w.call(c)).collect()
}

/// Every ordering of `0..n`.
fn permutations(n: usize) -> Vec<Vec<usize>> {
    fn go(prefix: &mut Vec<usize>, n: usize, out: &mut Vec<Vec<usize>>) {
        if prefix.len() == n {
            out.push(prefix.clone());
            return;
        }
        for i in 0..n {
            if !prefix.contains(&i) {
                prefix.push(i);
                go(prefix, n, out);
                prefix.pop();
            }
        }
    }
    let mut out = Vec::new();
    go(&mut Vec::new(), n, &mut out);
    out
}

/// The record of `id` in the KV replica.
fn replica_record(store: &MemoryStore, id: &str) -> Option<KeyRecord> {
    store
        .snapshot()
        .get(&format!("key:{id}"))
        .map(|j| serde_json::from_str(j).unwrap())
}

/// The record of `id` in the registry (the source of truth).
fn registry_record<S>(w: &World<S>, id: &str) -> Option<KeyRecord> {
    block_on(KvStore::get(&w.registry, &format!("key:{id}")))
        .unwrap()
        .map(|j| serde_json::from_str(&j).unwrap())
}

/// How many key records the registry holds.
fn registry_record_count<S>(w: &World<S>) -> usize {
    let rows = keygate::registry::SqlDb::exec(w.registry.db(), "SELECT id FROM records", &[]).unwrap();
    rows.len()
}

fn as_key<'a>(
    key: &str,
    method: &'a str,
    path: impl Into<String>,
    body: Option<Value>,
    ip: Option<&'a str>,
) -> Call<'a> {
    Call {
        auth: key.to_owned(),
        ip,
        ..Call::token(method, path, body)
    }
}

fn code(r: Result<Reply, Problem>) -> (u16, String) {
    match r {
        Ok(reply) => (reply.status, String::new()),
        Err(p) => (p.status, p.code.to_owned()),
    }
}

fn ts(v: &Value) -> Option<Timestamp> {
    v.as_str().and_then(Timestamp::parse_rfc3339)
}

fn denial<S: KvStore>(w: &World<S>, key: &str) -> Option<Denial> {
    match w.decide("GET", "/licenses/x", &[("x-api-key", key)], None) {
        Decision::Deny(d) => Some(d),
        Decision::Forward(_) => None,
        Decision::Preflight(_) => panic!("not a preflight"),
    }
}

fn kv_keys(store: &MemoryStore, prefix: &str) -> Vec<String> {
    store
        .snapshot()
        .keys()
        .filter(|k| k.starts_with(prefix))
        .cloned()
        .collect()
}

/// A delegated admin key, fenced on every axis: 10.0.0.0/8, one hour, tenant `acme`.
fn fenced_admin<S: KvStore>(w: &World<S>) -> (String, String) {
    let (key, rec) = w.issue(json!({
        "name": "fenced admin",
        "scopes": ["admin:keys:read", "admin:keys:write", "admin:audit:read", "license:*"],
        "ip_allowlist": ["10.0.0.0/8"], "tenants": ["acme"], "expires_in": "1h"
    }));
    (key, rec["id"].as_str().unwrap().to_owned())
}

const INSIDE: Option<&str> = Some("10.1.2.3");

// ---- 1. reach --------------------------------------------------------------------------------

#[test]
fn reach_an_admin_key_cannot_lift_its_own_limits() {
    let w = World::new();
    let (admin, admin_id) = fenced_admin(&w);
    let before = w.keys_state();
    for body in [
        json!({"ip_allowlist": []}),
        json!({"ip_allowlist": ["0.0.0.0/0"]}),
        json!({"expires_in": null}),
        json!({"expires_in": "1d"}),
        json!({"expires_at": "2099-01-01T00:00:00Z"}),
        json!({"tenants": []}),
        json!({"tenants": ["acme", "other"]}),
        json!({"scopes": ["admin:**"]}),
    ] {
        let r = one(
            &w,
            as_key(
                &admin,
                "PATCH",
                format!("/admin/keys/{admin_id}"),
                Some(body.clone()),
                INSIDE,
            ),
        );
        assert_eq!(code(r), (403, "scope_escalation".into()), "{body}");
    }
    assert_eq!(w.keys_state(), before, "an escalation wrote something");
    let denied: Vec<_> = w
        .audit_events()
        .into_iter()
        .filter(|e| e["action"] == "admin.denied")
        .collect();
    assert!(!denied.is_empty(), "escalations are audited");
    assert!(
        denied
            .iter()
            .all(|e| e["code"] == "scope_escalation" && e["actor"] == admin_id.as_str()),
        "{denied:?}"
    );
    // Narrowing itself is fine.
    let r = one(
        &w,
        as_key(
            &admin,
            "PATCH",
            format!("/admin/keys/{admin_id}"),
            Some(json!({"ip_allowlist": ["10.1.0.0/16"]})),
            INSIDE,
        ),
    );
    assert_eq!(r.unwrap().status, 200);
}

#[test]
fn reach_creates_only_keys_inside_every_axis() {
    let w = World::new();
    let (admin, _) = fenced_admin(&w);
    let ok_body = json!({"name": "c", "scopes": ["license:read"], "tenants": ["acme"], "ip_allowlist": ["10.1.0.0/16", "10.2.3.4"], "expires_in": "30m"});
    let create = |body: &Value| {
        one(
            &w,
            as_key(&admin, "POST", "/admin/keys", Some(body.clone()), INSIDE),
        )
    };
    let before = kv_keys(&w.store, "key:");
    for (patch, why) in [
        (
            json!({"ip_allowlist": []}),
            "no allowlist is wider than 10.0.0.0/8",
        ),
        (json!({"ip_allowlist": ["11.0.0.0/8"]}), "outside"),
        (json!({"ip_allowlist": ["10.0.0.0/7"]}), "wider"),
        (json!({"ip_allowlist": ["2001:db8::/32"]}), "other family"),
        (json!({"expires_in": null}), "never expires"),
        (json!({"expires_in": "1d"}), "outlives the admin key"),
        (json!({"tenants": []}), "all tenants"),
        (json!({"tenants": ["acme", "other"]}), "foreign tenant"),
        (json!({"environment": "test"}), "other environment"),
        (json!({"scopes": ["billing:read"]}), "scope"),
    ] {
        let mut body = ok_body.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                body.as_object_mut().unwrap().remove(k);
            } else {
                body[k] = v.clone();
            }
        }
        assert_eq!(
            code(create(&body)),
            (403, "scope_escalation".into()),
            "{why}: {body}"
        );
    }
    assert_eq!(kv_keys(&w.store, "key:"), before, "an escalation wrote a key");
    let r = create(&ok_body).unwrap();
    assert_eq!(r.status, 201);
}

#[test]
fn reach_a_rotation_never_outlives_the_old_key_or_the_admin_key() {
    let mut w = World::new();
    let (_, rec) = w.issue(json!({"name": "r", "scopes": ["a"], "expires_in": "1d"}));
    let id = rec["id"].as_str().unwrap().to_owned();
    let old_expiry = ts(&rec["expires_at"]).unwrap();
    w.now = w.now.plus_seconds(12 * 3600);
    let r = one(
        &w,
        token_call(
            "POST",
            format!("/admin/keys/{id}/rotate"),
            Some(json!({"grace": "1h"})),
        ),
    )
    .unwrap();
    let new = &r.body.unwrap()["record"];
    assert_eq!(
        ts(&new["expires_at"]),
        Some(old_expiry),
        "capped at the old key's expiry"
    );
    let old: KeyRecord = serde_json::from_str(&w.store.snapshot()[&format!("key:{id}")]).unwrap();
    assert_eq!(old.expires_at, Some(w.now.plus_seconds(3600)));
}

#[test]
fn reads_follow_reach_and_writes_beyond_it_are_not_found() {
    let w = World::new();
    let (admin, _) = fenced_admin(&w);
    let (_, outsider) = w.issue(json!({"name": "outsider", "scopes": ["license:read"]}));
    let outsider = outsider["id"].as_str().unwrap().to_owned();
    let inside = one(
        &w,
        as_key(
            &admin,
            "POST",
            "/admin/keys",
            Some(json!({"name": "in", "scopes": ["license:read"], "tenants": ["acme"], "ip_allowlist": ["10.0.0.0/8"], "expires_in": "30m"})),
            INSIDE,
        ),
    )
    .unwrap()
    .body
    .unwrap()["record"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // GET, list, audit.
    let get = |id: &str| {
        code(one(
            &w,
            as_key(&admin, "GET", format!("/admin/keys/{id}"), None, INSIDE),
        ))
    };
    assert_eq!(get(&outsider), (404, "key_not_found".into()));
    assert_eq!(get(&inside), (200, String::new()));
    let listed = one(&w, as_key(&admin, "GET", "/admin/keys?limit=100", None, INSIDE))
        .unwrap()
        .body
        .unwrap();
    let ids: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&inside.as_str()) && !ids.contains(&outsider.as_str()),
        "{ids:?}"
    );
    let audit = one(&w, as_key(&admin, "GET", "/admin/audit?limit=100", None, INSIDE))
        .unwrap()
        .body
        .unwrap();
    let events = audit["events"].as_array().unwrap();
    assert!(!events.is_empty());
    assert!(
        events.iter().all(|e| e["key_id"] != outsider.as_str()),
        "{events:?}"
    );
    assert_eq!(
        code(one(
            &w,
            as_key(
                &admin,
                "GET",
                format!("/admin/audit?key_id={outsider}"),
                None,
                INSIDE
            )
        )),
        (404, "key_not_found".into())
    );
    // Writes beyond reach: not found, nothing written.
    let before = w.keys_state();
    for (m, p, b) in [
        (
            "PATCH",
            format!("/admin/keys/{outsider}"),
            Some(json!({"name": "x"})),
        ),
        ("POST", format!("/admin/keys/{outsider}/revoke"), None),
        ("POST", format!("/admin/keys/{outsider}/rotate"), None),
        ("DELETE", format!("/admin/keys/{outsider}"), None),
    ] {
        assert_eq!(
            code(one(&w, as_key(&admin, m, p.clone(), b, INSIDE))),
            (404, "key_not_found".into()),
            "{m} {p}"
        );
    }
    assert_eq!(w.keys_state(), before);
    // The token keeps full reach.
    assert_eq!(
        code(one(
            &w,
            token_call("GET", format!("/admin/keys/{outsider}"), None)
        )),
        (200, String::new())
    );
    let all = one(&w, token_call("GET", "/admin/audit?limit=100", None))
        .unwrap()
        .body
        .unwrap();
    assert!(
        all["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["key_id"] == outsider.as_str())
    );
}

// ---- 2. monotonic states ---------------------------------------------------------------------

/// Where call `i` stands in `order`.
fn pos(order: &[usize], i: usize) -> usize {
    order.iter().position(|&x| x == i).unwrap()
}

#[test]
fn revocation_survives_every_order_of_patches() {
    let calls = |p: &str| {
        vec![
            token_call("PATCH", p.to_owned(), Some(json!({"name": "renamed"}))),
            token_call("PATCH", p.to_owned(), Some(json!({"enabled": false}))),
            token_call("POST", format!("{p}/revoke"), Some(json!({"reason": "race"}))),
            token_call("PATCH", p.to_owned(), Some(json!({"expires_in": "1d"}))),
            token_call("PATCH", p.to_owned(), Some(json!({"enabled": true}))),
        ]
    };
    let orders = permutations(5);
    assert_eq!(orders.len(), 120);
    for order in orders {
        let mut w = World::new();
        let (key, rec) = w.issue(json!({"name": "race", "scopes": ["license:read"]}));
        let id = rec["id"].as_str().unwrap().to_owned();
        // The gateway has the key cached as active.
        assert_eq!(denial(&w, &key), None, "{order:?}");
        let all = calls(&format!("/admin/keys/{id}"));
        let ordered: Vec<Call<'_>> = order.iter().map(|&i| all[i].clone()).collect();
        let results = serially(&w, &ordered);

        // The serial model: patches apply until the revocation, then are refused.
        let (mut name, mut enabled, mut expires_at, mut version, mut revoked) =
            ("race", true, None, 1u64, false);
        for (&i, result) in order.iter().zip(&results) {
            let got = code(result.clone());
            if i == 2 {
                assert_eq!(got, (200, String::new()), "{order:?}: revoke failed");
                revoked = true;
                version += 1;
                continue;
            }
            if revoked {
                assert_eq!(got, (409, "key_revoked".into()), "{order:?}: call {i}");
                continue;
            }
            assert_eq!(got, (200, String::new()), "{order:?}: call {i}");
            let changed = match i {
                0 => std::mem::replace(&mut name, "renamed") != "renamed",
                1 => std::mem::replace(&mut enabled, false),
                3 => expires_at.replace(w.now.plus_seconds(86_400)).is_none(),
                4 => !std::mem::replace(&mut enabled, true),
                _ => unreachable!(),
            };
            if changed {
                version += 1;
            }
        }
        let stored = registry_record(&w, &id).unwrap();
        assert_eq!(
            replica_record(&w.store, &id).as_ref(),
            Some(&stored),
            "{order:?}: the replica differs"
        );
        assert_eq!(stored.revoked_at, Some(w.now), "{order:?}");
        assert_eq!(stored.revoke_reason.as_deref(), Some("race"), "{order:?}");
        assert_eq!(
            (
                stored.name.as_str(),
                stored.enabled,
                stored.expires_at,
                stored.version
            ),
            (name, enabled, expires_at, version),
            "{order:?}: not the serial outcome"
        );
        let revokes = w
            .audit_events()
            .into_iter()
            .filter(|e| e["action"] == "key.revoke")
            .count();
        assert_eq!(revokes, 1, "{order:?}");
        // The cached (active) record is denied through the feed; a fresh read is revoked itself.
        assert_eq!(denial(&w, &key), Some(Denial::RevokedKey), "{order:?}: cached");
        w.cache.borrow_mut().clear();
        assert_eq!(denial(&w, &key), Some(Denial::RevokedKey), "{order:?}: fresh");
        // And never again, past the feed's retention and the key's expiry.
        w.now = w.now.plus_seconds(2 * 86_400);
        w.cache.borrow_mut().clear();
        assert_eq!(denial(&w, &key), Some(Denial::RevokedKey), "{order:?}: later");
    }
}

#[test]
fn deletion_survives_every_order_of_patches_and_revokes() {
    let calls = |p: &str| {
        vec![
            token_call("PATCH", p.to_owned(), Some(json!({"name": "renamed"}))),
            token_call("DELETE", p.to_owned(), None),
            token_call("POST", format!("{p}/revoke"), None),
            token_call("PATCH", p.to_owned(), Some(json!({"enabled": false}))),
        ]
    };
    for order in permutations(4) {
        let w = World::new();
        let (key, rec) = w.issue(json!({"name": "race", "scopes": ["license:read"]}));
        let id = rec["id"].as_str().unwrap().to_owned();
        assert_eq!(denial(&w, &key), None, "{order:?}");
        let p = format!("/admin/keys/{id}");
        let all = calls(&p);
        let ordered: Vec<Call<'_>> = order.iter().map(|&i| all[i].clone()).collect();
        let results = serially(&w, &ordered);
        let deleted_at = pos(&order, 1);
        for (at, (&i, result)) in order.iter().zip(&results).enumerate() {
            let want = if i == 1 {
                (204, String::new())
            } else if at > deleted_at {
                (404, "key_not_found".into())
            } else if (i == 0 || i == 3) && pos(&order, 2) < at {
                (409, "key_revoked".into())
            } else {
                (200, String::new())
            };
            assert_eq!(code(result.clone()), want, "{order:?}: call {i}");
        }
        assert!(
            registry_record(&w, &id).is_none(),
            "{order:?}: a deleted key came back"
        );
        assert!(replica_record(&w.store, &id).is_none(), "{order:?}");
        assert!(
            block_on(KvStore::get(&w.registry, &format!("life:{id}:deleted")))
                .unwrap()
                .is_some(),
            "{order:?}: no deletion fact"
        );
        // The cached record is denied through the feed, and a fresh read finds nothing.
        assert_eq!(denial(&w, &key), Some(Denial::InvalidKey), "{order:?}: cached");
        w.cache.borrow_mut().clear();
        assert_eq!(denial(&w, &key), Some(Denial::InvalidKey), "{order:?}: fresh");
        assert_eq!(
            code(one(&w, token_call("GET", p.clone(), None))),
            (404, "key_not_found".into())
        );
    }
}

#[test]
fn retirement_survives_every_order_of_patches_and_rotations() {
    let calls = |p: &str| {
        vec![
            token_call("PATCH", p.to_owned(), Some(json!({"expires_in": "1y"}))),
            token_call("POST", format!("{p}/rotate"), Some(json!({"grace": 60}))),
            token_call("POST", format!("{p}/rotate"), Some(json!({"grace": 60}))),
            token_call("PATCH", p.to_owned(), Some(json!({"expires_at": null}))),
            token_call("PATCH", p.to_owned(), Some(json!({"name": "renamed"}))),
        ]
    };
    for order in permutations(5) {
        let w = World::new();
        let (_, rec) = w.issue(json!({"name": "race", "scopes": ["license:read"], "expires_in": "5d"}));
        let id = rec["id"].as_str().unwrap().to_owned();
        let all = calls(&format!("/admin/keys/{id}"));
        let ordered: Vec<Call<'_>> = order.iter().map(|&i| all[i].clone()).collect();
        let results = serially(&w, &ordered);

        // The serial model: the first rotation wins, the second is refused; expiry changes
        // after the rotation are refused; the successor inherits the state at the rotation.
        let mut rotated: Option<String> = None;
        let (mut name, mut expires_at) = ("race", Some(w.now.plus_seconds(5 * 86_400)));
        let mut successor_state = None;
        for (&i, result) in order.iter().zip(&results) {
            match (i, &rotated) {
                (1 | 2, None) => {
                    let r = result.as_ref().unwrap();
                    assert_eq!(r.status, 201, "{order:?}");
                    let new = &r.body.as_ref().unwrap()["record"];
                    rotated = Some(new["id"].as_str().unwrap().to_owned());
                    successor_state = Some((name, expires_at));
                }
                (1 | 2, Some(_)) => {
                    assert_eq!(code(result.clone()), (409, "already_rotated".into()), "{order:?}")
                }
                (0 | 3, Some(_)) => {
                    assert_eq!(code(result.clone()), (409, "key_retired".into()), "{order:?}")
                }
                (0, None) => {
                    assert_eq!(code(result.clone()), (200, String::new()), "{order:?}");
                    expires_at = Some(w.now.plus_seconds(31_536_000));
                }
                (3, None) => {
                    assert_eq!(code(result.clone()), (200, String::new()), "{order:?}");
                    expires_at = None;
                }
                (4, _) => {
                    assert_eq!(code(result.clone()), (200, String::new()), "{order:?}");
                    name = "renamed";
                }
                _ => unreachable!(),
            }
        }
        let successor = rotated.unwrap();
        assert_eq!(
            registry_record_count(&w),
            2,
            "{order:?}: not exactly one successor"
        );
        let old = registry_record(&w, &id).unwrap();
        assert_eq!(replica_record(&w.store, &id).as_ref(), Some(&old), "{order:?}");
        assert_eq!(
            old.rotated_to.as_ref().map(|s| s.as_str()),
            Some(successor.as_str()),
            "{order:?}"
        );
        assert_eq!(
            old.expires_at,
            Some(w.now.plus_seconds(60)),
            "{order:?}: the retired key's expiry was lifted"
        );
        assert_eq!(old.name, "renamed", "{order:?}");
        let new = registry_record(&w, &successor).unwrap();
        assert_eq!(
            replica_record(&w.store, &successor).as_ref(),
            Some(&new),
            "{order:?}"
        );
        assert_eq!(new.rotated_from.as_ref().map(|s| s.as_str()), Some(id.as_str()));
        let (name_then, expiry_then) = successor_state.unwrap();
        assert_eq!(
            (new.name.as_str(), new.expires_at),
            (name_then, expiry_then),
            "{order:?}: the successor is not the key as it was rotated"
        );
    }
}

#[test]
fn a_write_built_on_a_stale_read_is_refused() {
    let w = World::new();
    let (_, rec) = w.issue(json!({"name": "k", "scopes": ["license:read"]}));
    let id = rec["id"].as_str().unwrap().to_owned();
    let kv_key = format!("key:{id}");
    let read = registry_record(&w, &id).unwrap();
    assert_eq!(read.version, 1);
    let r = w
        .admin(
            "PATCH",
            &format!("/admin/keys/{id}"),
            Some(json!({"name": "patched"})),
        )
        .unwrap();
    assert_eq!(r.status, 200);
    // A writer that read version 1 writes its change as version 2: refused, as is a write of
    // version 1 itself.
    let mut stale = read.clone();
    stale.name = "lost".into();
    stale.version = 2;
    for record in [stale, read] {
        let e = block_on(KvStore::put(
            &w.registry,
            &kv_key,
            &serde_json::to_string(&record).unwrap(),
        ))
        .unwrap_err();
        assert!(e.0.contains("version conflict"), "{}", e.0);
    }
    w.registry.commit(w.now).unwrap();
    let stored = registry_record(&w, &id).unwrap();
    assert_eq!(
        (stored.name.as_str(), stored.version),
        ("patched", 2),
        "a lost update"
    );
    // A write on the current version is accepted (and a discarded one leaves nothing).
    let mut next = stored.clone();
    next.name = "next".into();
    next.version = 3;
    block_on(KvStore::put(
        &w.registry,
        &kv_key,
        &serde_json::to_string(&next).unwrap(),
    ))
    .unwrap();
    w.registry.discard();
    w.registry.commit(w.now).unwrap();
    assert_eq!(registry_record(&w, &id).unwrap(), stored);
}

#[test]
fn a_stale_read_never_un_revokes_the_isolate_cache() {
    let w = World::new();
    let (key, rec) = w.issue(json!({"name": "k", "scopes": ["license:read"]}));
    let id = rec["id"].as_str().unwrap().to_owned();
    let stale = w.store.snapshot()[&format!("key:{id}")].clone();
    w.admin("POST", &format!("/admin/keys/{id}/revoke"), None)
        .unwrap();
    // The isolate reads the revoked record.
    assert_eq!(denial(&w, &key), Some(Denial::RevokedKey));
    // The replica serves an old copy (another location's, or a lagging read).
    block_on(w.store.put(&format!("key:{id}"), &stale)).unwrap();
    let kid = KeyId::parse(&id).unwrap();
    let loaded = block_on(w.records().load(&kid, w.now)).unwrap().unwrap();
    assert!(loaded.revoked_at.is_some(), "the cache forgot the revocation");
    assert_eq!(denial(&w, &key), Some(Denial::RevokedKey));
    // An isolate that never saw the revoked record: the stale record alone would pass, the
    // feed denies it.
    w.cache.borrow_mut().clear();
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
    let without_feed = block_on(w.gateway.decide(&facts, &w.records(), w.now));
    assert!(
        matches!(without_feed, Decision::Forward(_)),
        "the stale record is active"
    );
    w.cache.borrow_mut().clear();
    assert_eq!(
        denial(&w, &key),
        Some(Denial::RevokedKey),
        "the feed did not deny"
    );
}

#[test]
fn a_retired_key_keeps_its_grace_expiry() {
    let w = World::new();
    let (_, rec) = w.issue(json!({"name": "k", "scopes": ["a"]}));
    let id = rec["id"].as_str().unwrap().to_owned();
    w.admin(
        "POST",
        &format!("/admin/keys/{id}/rotate"),
        Some(json!({"grace": "1h"})),
    )
    .unwrap();
    for body in [
        json!({"expires_at": null}),
        json!({"expires_in": "1y"}),
        json!({"expires_in": 60}),
    ] {
        let e = w
            .admin("PATCH", &format!("/admin/keys/{id}"), Some(body.clone()))
            .unwrap_err();
        assert_eq!((e.status, e.code), (409, "key_retired"), "{body}");
    }
    // Other fields may still change.
    assert_eq!(
        w.admin(
            "PATCH",
            &format!("/admin/keys/{id}"),
            Some(json!({"name": "old"}))
        )
        .unwrap()
        .status,
        200
    );
    let stored = w.store.snapshot();
    let rec: KeyRecord = serde_json::from_str(&stored[&format!("key:{id}")]).unwrap();
    assert_eq!(rec.expires_at, Some(w.now.plus_seconds(3600)));
}

#[test]
fn a_disabled_key_cannot_be_rotated() {
    let w = World::new();
    let (_, rec) = w.issue(json!({"name": "k", "scopes": ["a"]}));
    let id = rec["id"].as_str().unwrap().to_owned();
    w.admin(
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"enabled": false})),
    )
    .unwrap();
    let before = kv_keys(&w.store, "key:");
    let e = w
        .admin("POST", &format!("/admin/keys/{id}/rotate"), None)
        .unwrap_err();
    assert_eq!((e.status, e.code), (409, "key_disabled"));
    assert_eq!(kv_keys(&w.store, "key:"), before, "no successor");
}

#[test]
fn a_deleted_successor_lets_the_old_key_rotate_again_without_extending_it() {
    let w = World::new();
    let (_, rec) = w.issue(json!({"name": "k", "scopes": ["a"], "expires_in": "1d"}));
    let id = rec["id"].as_str().unwrap().to_owned();
    let rotate = |grace: Value| {
        w.admin(
            "POST",
            &format!("/admin/keys/{id}/rotate"),
            Some(json!({"grace": grace})),
        )
    };
    let b = rotate(json!("1h")).unwrap().body.unwrap()["record"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(rotate(json!("1h")).unwrap_err().code, "already_rotated");
    w.admin("DELETE", &format!("/admin/keys/{b}"), None).unwrap();
    let c = rotate(json!("12h")).unwrap().body.unwrap();
    let c_expiry = ts(&c["record"]["expires_at"]).unwrap();
    assert!(
        c_expiry <= w.now.plus_seconds(3600),
        "the successor outlives the old key: {c_expiry}"
    );
    let old = w.store.snapshot();
    let old: KeyRecord = serde_json::from_str(&old[&format!("key:{id}")]).unwrap();
    assert_eq!(
        old.rotated_to.as_ref().map(|s| s.as_str()),
        c["record"]["id"].as_str()
    );
    assert_eq!(
        old.expires_at,
        Some(w.now.plus_seconds(3600)),
        "grace not extended"
    );
    assert_eq!(rotate(json!(0)).unwrap_err().code, "already_rotated");
}

// ---- 3. inputs -------------------------------------------------------------------------------

#[test]
fn unknown_or_repeated_query_parameters_are_refused() {
    let w = World::new();
    let (_, rec) = w.issue(json!({"name": "k", "scopes": ["a"]}));
    let id = rec["id"].as_str().unwrap().to_owned();
    let before = w.keys_state();
    for (m, p, param) in [
        ("GET", "/admin/keys?tenant=acme".to_owned(), "tenant"),
        ("GET", "/admin/keys?Status=revoked".to_owned(), "Status"),
        (
            "GET",
            "/admin/keys?status=revoked&status=active".to_owned(),
            "status",
        ),
        ("GET", "/admin/keys?limit=1&limit=2".to_owned(), "limit"),
        ("GET", "/admin/audit?group=a".to_owned(), "group"),
        ("GET", format!("/admin/keys/{id}?x=1"), "x"),
        ("POST", format!("/admin/keys/{id}/revoke?status=active"), "status"),
        ("DELETE", format!("/admin/keys/{id}?force"), "force"),
    ] {
        let e = w.admin(m, &p, None).unwrap_err();
        assert_eq!((e.status, e.code), (400, "invalid_query"), "{m} {p}");
        assert_eq!(e.extra["parameter"], param, "{p}");
        assert!(e.detail.contains(param), "{}", e.detail);
    }
    assert_eq!(w.keys_state(), before, "a refused request wrote something");
    // An unsupported method is still 405 with Allow, whatever the query string.
    for (m, p) in [
        ("TRACE", "/admin/keys?limit=5".to_owned()),
        ("PUT", format!("/admin/keys/{id}?x=1")),
    ] {
        let e = w.admin(m, &p, None).unwrap_err();
        assert_eq!((e.status, e.code), (405, "method_not_allowed"), "{m} {p}");
    }
}

#[test]
fn cursors_are_bound_to_their_endpoint_and_filters() {
    let w = World::new();
    for i in 0..3 {
        w.issue(json!({"name": format!("k{i}"), "group": "a", "scopes": ["a"]}));
    }
    let page = w
        .admin("GET", "/admin/keys?group=a&limit=1", None)
        .unwrap()
        .body
        .unwrap();
    let cur = page["cursor"].as_str().unwrap().to_owned();
    assert_eq!(
        w.admin("GET", &format!("/admin/keys?group=a&limit=2&cursor={cur}"), None)
            .unwrap()
            .status,
        200
    );
    for p in [
        format!("/admin/audit?cursor={cur}"),
        format!("/admin/keys?cursor={cur}"),
        format!("/admin/keys?group=b&cursor={cur}"),
        format!("/admin/keys?group=a&status=active&cursor={cur}"),
        "/admin/keys?cursor=forged".to_owned(),
        "/admin/keys?cursor=6b65793a.000000000000000000000000".to_owned(),
    ] {
        let e = w.admin("GET", &p, None).unwrap_err();
        assert_eq!((e.status, e.code), (400, "invalid_cursor"), "{p}");
    }
    let audit = w
        .admin("GET", "/admin/audit?limit=1", None)
        .unwrap()
        .body
        .unwrap();
    let acur = audit["cursor"].as_str().unwrap();
    let e = w
        .admin("GET", &format!("/admin/keys?cursor={acur}"), None)
        .unwrap_err();
    assert_eq!(e.code, "invalid_cursor");
}

#[test]
fn wrong_admin_credentials_say_so() {
    let w = World::new();
    let forged = {
        let body = format!("kg_live_0123456789abcdef_{}", "ab".repeat(32));
        format!("{body}_{:08x}", crc32fast::hash(body.as_bytes()))
    };
    for cred in ["wrong-token", "kg_live_nope", forged.as_str(), &TOKEN[1..]] {
        let e = w.admin_raw("GET", "/admin/keys", cred, None).unwrap_err();
        assert_eq!((e.status, e.code), (401, "invalid_admin_credential"), "{cred}");
        assert!(
            e.headers
                .iter()
                .any(|(k, v)| *k == "WWW-Authenticate" && v.contains("invalid_token"))
        );
        assert!(!e.body().contains(cred), "the credential is echoed");
    }
}

#[test]
fn durations_as_people_write_them() {
    let w = World::new();
    for (given, secs) in [
        (json!("30m"), 1800),
        (json!("2h"), 7200),
        (json!("7d"), 604_800),
        (json!("30d"), 2_592_000),
        (json!("3600"), 3600),
        (json!(3600), 3600),
        (json!("1y"), 31_536_000),
        (json!("5d"), 432_000),
    ] {
        let (_, rec) = w.issue(json!({"name": "d", "scopes": ["a"], "expires_in": given}));
        assert_eq!(ts(&rec["expires_at"]), Some(w.now.plus_seconds(secs)), "{given}");
    }
    for bad in [
        json!("07d"),
        json!("1w"),
        json!("-1d"),
        json!("+5d"),
        json!("1.5h"),
        json!(""),
        json!("d"),
        json!("0"),
        json!("0d"),
        json!(" 1d"),
        json!("36501d"),
        json!("99999999999999999999d"),
    ] {
        let e = w
            .admin(
                "POST",
                "/admin/keys",
                Some(json!({"name": "d", "scopes": ["a"], "expires_in": bad})),
            )
            .unwrap_err();
        assert_eq!(
            (e.status, e.extra["field"].clone()),
            (422, json!("expires_in")),
            "{bad}"
        );
    }
    let (_, rec) = w.issue(json!({"name": "g", "scopes": ["a"]}));
    let id = rec["id"].as_str().unwrap();
    let r = w
        .admin(
            "POST",
            &format!("/admin/keys/{id}/rotate"),
            Some(json!({"grace": "0"})),
        )
        .unwrap();
    assert_eq!(r.status, 201);
}

// ---- 4. limits -------------------------------------------------------------------------------

#[test]
fn list_and_audit_pages_are_capped_and_never_read_the_replica() {
    let w = World::with_store(CountingStore {
        inner: MemoryStore::new(),
        reads: Default::default(),
    });
    let (admin, _) = w.issue(json!({"name": "admin", "scopes": ["admin:**", "a"]}));
    for i in 0..130 {
        w.issue(json!({"name": format!("k{i}"), "scopes": ["a"]}));
    }
    for path in ["/admin/keys?limit=1000", "/admin/audit?limit=1000"] {
        for auth in [TOKEN, admin.as_str()] {
            w.cache.borrow_mut().clear();
            w.store.reads.set(0);
            let r = one(
                &w,
                Call {
                    auth: auth.to_owned(),
                    ..token_call("GET", path, None)
                },
            )
            .unwrap();
            let body = r.body.unwrap();
            let n = body
                .as_object()
                .unwrap()
                .values()
                .find_map(Value::as_array)
                .unwrap()
                .len();
            assert_eq!(n, 100, "{path}: the page is capped at 100");
            assert!(body["cursor"].is_string());
            // A page is SQL in the registry: not one KV operation, let alone one per item.
            assert_eq!(w.store.reads.get(), 0, "{path}: the admin API read the replica");
        }
    }
}

#[test]
fn principal_headers_are_bounded_at_create_and_patch() {
    let w = World::new();
    let grant = |i: usize| format!("scope{i:02}.{}", "x".repeat(90));
    let big: Vec<String> = (0..45).map(grant).collect();
    let small: Vec<String> = (0..30).map(grant).collect();
    let e = w
        .admin("POST", "/admin/keys", Some(json!({"name": "big", "scopes": big})))
        .unwrap_err();
    assert_eq!(
        (e.status, e.code, e.extra["field"].clone()),
        (422, "invalid_field", json!("scopes"))
    );
    let (_, rec) = w.issue(json!({"name": "ok", "scopes": small}));
    let id = rec["id"].as_str().unwrap();
    let e = w
        .admin(
            "PATCH",
            &format!("/admin/keys/{id}"),
            Some(json!({"scopes": big})),
        )
        .unwrap_err();
    assert_eq!((e.status, e.extra["field"].clone()), (422, json!("scopes")));
    let stored: KeyRecord = serde_json::from_str(&w.store.snapshot()[&format!("key:{id}")]).unwrap();
    assert!(keygate::admin::principal_header_bytes(&stored) <= keygate::admin::MAX_PRINCIPAL_HEADER_BYTES);
}

#[test]
fn a_short_admin_token_turns_the_admin_api_off() {
    let w = World::new();
    for short in ["x", "0123456789abcdef0123456789abcde"] {
        let e = one(
            &w,
            Call {
                auth: short.to_owned(),
                admin_token: short,
                ..token_call("GET", "/admin/keys", None)
            },
        )
        .unwrap_err();
        assert_eq!((e.status, e.code), (503, "admin_disabled"), "{short}");
        assert!(e.detail.contains("too short"), "{}", e.detail);
        assert!(short.len() < 8 || !e.body().contains(short));
        assert!(keygate::admin::admin_token_weakness(Some(short)).is_some());
    }
    let long = "0123456789abcdef0123456789abcdef";
    let r = one(
        &w,
        Call {
            auth: long.to_owned(),
            admin_token: long,
            ..token_call("GET", "/admin/keys", None)
        },
    );
    assert_eq!(r.unwrap().status, 200);
    assert!(keygate::admin::admin_token_weakness(Some(long)).is_none());
    assert!(keygate::admin::admin_token_weakness(None).is_some());
}
