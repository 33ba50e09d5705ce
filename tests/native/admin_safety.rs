//! Issue 8, natively: an admin key's reach on every axis, monotonic lifecycle states under
//! concurrent writes (every interleaving a seeded scheduler can produce), strict inputs, and the
//! platform limits.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::executor::block_on;
use futures::future::join_all;
use keygate::admin::{AdminContext, AdminRequest, Reply};
use keygate::decide::{Decision, Denial};
use keygate::ip::ClientIp;
use keygate::problem::Problem;
use keygate::record::KeyRecord;
use keygate::store::{KvStore, ListPage, MemoryStore, StoreError};
use keygate::time::Timestamp;
use serde_json::{Value, json};

use crate::{TOKEN, World};

// ---- a store that interleaves concurrent requests --------------------------------------------

/// Returns `Pending` once (waking itself), so that `join_all` moves on to another request.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// A memory store that, before every operation, yields a pseudo-random number of times (from a
/// seed), so requests run with `join_all` interleave differently for every seed. Counts every
/// KV operation.
pub struct Shuffled {
    pub inner: MemoryStore,
    state: Cell<u64>,
    pub ops: Cell<usize>,
}

impl Shuffled {
    pub fn new(seed: u64) -> Self {
        Shuffled {
            inner: MemoryStore::new(),
            state: Cell::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
            ops: Cell::new(0),
        }
    }

    async fn pause(&self) {
        let mut x = self.state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state.set(x);
        self.ops.set(self.ops.get() + 1);
        for _ in 0..(x % 5) {
            YieldNow(false).await;
        }
    }

    pub fn record(&self, id: &str) -> Option<KeyRecord> {
        self.inner
            .snapshot()
            .get(&format!("key:{id}"))
            .map(|j| serde_json::from_str(j).unwrap())
    }
}

impl KvStore for Shuffled {
    async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.pause().await;
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.pause().await;
        self.inner.put(key, value).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.pause().await;
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> Result<ListPage, StoreError> {
        self.pause().await;
        self.inner.list(prefix, cursor, limit).await
    }
}

// ---- helpers ---------------------------------------------------------------------------------

pub struct Call<'a> {
    pub method: &'a str,
    pub path: String,
    pub auth: String,
    pub body: Option<Value>,
    pub ip: Option<&'a str>,
}

pub fn token_call(method: &str, path: impl Into<String>, body: Option<Value>) -> Call<'_> {
    Call {
        method,
        path: path.into(),
        auth: TOKEN.to_owned(),
        body,
        ip: None,
    }
}

/// Run admin calls concurrently against one store and cache (one `AdminContext` each, as the
/// worker does per request), interleaved at every store operation.
pub fn concurrently<S: KvStore>(w: &World<S>, calls: &[Call<'_>]) -> Vec<Result<Reply, Problem>> {
    concurrently_with_token(w, calls, TOKEN)
}

pub fn concurrently_with_token<S: KvStore>(
    w: &World<S>,
    calls: &[Call<'_>],
    admin_token: &str,
) -> Vec<Result<Reply, Problem>> {
    let owned: Vec<_> = calls
        .iter()
        .map(|c| {
            let mut headers = vec![("authorization".to_owned(), format!("Bearer {}", c.auth))];
            if c.body.is_some() {
                headers.push(("content-type".to_owned(), "application/json".to_owned()));
            }
            let body = c.body.as_ref().map(Value::to_string).unwrap_or_default();
            (headers, body)
        })
        .collect();
    let ctxs: Vec<_> = calls
        .iter()
        .map(|_| AdminContext::new(&w.gateway, w.records(), Some(admin_token), w.now))
        .collect();
    let reqs: Vec<_> = calls
        .iter()
        .zip(&owned)
        .map(|(c, (headers, body))| {
            let (path, query) = match c.path.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (c.path.as_str(), None),
            };
            AdminRequest {
                method: c.method,
                path,
                query,
                headers,
                body: body.as_bytes(),
                client_ip: c.ip.and_then(ClientIp::parse),
            }
        })
        .collect();
    block_on(join_all(ctxs.iter().zip(&reqs).map(|(c, r)| c.handle(r))))
}

pub fn one<S: KvStore>(w: &World<S>, call: Call<'_>) -> Result<Reply, Problem> {
    concurrently(w, &[call]).pop().unwrap()
}

fn as_key<'a>(
    key: &str,
    method: &'a str,
    path: impl Into<String>,
    body: Option<Value>,
    ip: Option<&'a str>,
) -> Call<'a> {
    Call {
        method,
        path: path.into(),
        auth: key.to_owned(),
        body,
        ip,
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

const SEEDS: u64 = 300;

#[test]
fn revocation_survives_every_interleaving_with_patches() {
    let mut revived = Vec::new();
    for seed in 0..SEEDS {
        let w = World::with_store(Shuffled::new(seed));
        let (key, rec) = w.issue(json!({"name": "race", "scopes": ["license:read"]}));
        let id = rec["id"].as_str().unwrap().to_owned();
        let p = format!("/admin/keys/{id}");
        let results = concurrently(
            &w,
            &[
                token_call("PATCH", p.clone(), Some(json!({"name": "renamed"}))),
                token_call("PATCH", p.clone(), Some(json!({"enabled": false}))),
                token_call("POST", format!("{p}/revoke"), Some(json!({"reason": "race"}))),
                token_call("PATCH", p.clone(), Some(json!({"expires_in": "1d"}))),
                token_call("PATCH", p.clone(), Some(json!({"enabled": true}))),
            ],
        );
        assert_eq!(
            results[2].as_ref().map(|r| r.status),
            Ok(200),
            "seed {seed}: revoke failed"
        );
        let stored = w.store.record(&id).unwrap();
        let cached = denial(&w, &key);
        w.cache.borrow_mut().clear();
        let fresh = denial(&w, &key);
        if stored.revoked_at.is_none()
            || cached != Some(Denial::RevokedKey)
            || fresh != Some(Denial::RevokedKey)
        {
            revived.push((seed, stored.revoked_at, cached, fresh));
        }
    }
    assert!(revived.is_empty(), "revived keys: {revived:?}");
}

#[test]
fn deletion_survives_every_interleaving_with_patches_and_revokes() {
    for seed in 0..SEEDS {
        let w = World::with_store(Shuffled::new(seed));
        let (key, rec) = w.issue(json!({"name": "race", "scopes": ["license:read"]}));
        let id = rec["id"].as_str().unwrap().to_owned();
        let p = format!("/admin/keys/{id}");
        let results = concurrently(
            &w,
            &[
                token_call("PATCH", p.clone(), Some(json!({"name": "renamed"}))),
                token_call("DELETE", p.clone(), None),
                token_call("POST", format!("{p}/revoke"), None),
                token_call("PATCH", p.clone(), Some(json!({"enabled": false}))),
            ],
        );
        assert_eq!(results[1].as_ref().map(|r| r.status), Ok(204), "seed {seed}");
        assert!(
            w.store.record(&id).is_none(),
            "seed {seed}: a deleted key came back"
        );
        w.cache.borrow_mut().clear();
        assert_eq!(denial(&w, &key), Some(Denial::InvalidKey), "seed {seed}");
        assert_eq!(
            code(one(&w, token_call("GET", p.clone(), None))),
            (404, "key_not_found".into())
        );
    }
}

#[test]
fn retirement_survives_every_interleaving_with_patches() {
    for seed in 0..SEEDS {
        let w = World::with_store(Shuffled::new(seed));
        let (_, rec) = w.issue(json!({"name": "race", "scopes": ["license:read"], "expires_in": "5d"}));
        let id = rec["id"].as_str().unwrap().to_owned();
        let p = format!("/admin/keys/{id}");
        let results = concurrently(
            &w,
            &[
                token_call("PATCH", p.clone(), Some(json!({"expires_in": "1y"}))),
                token_call("POST", format!("{p}/rotate"), Some(json!({"grace": 60}))),
                token_call("PATCH", p.clone(), Some(json!({"expires_at": null}))),
                token_call("PATCH", p.clone(), Some(json!({"name": "renamed"}))),
            ],
        );
        let rotated = match &results[1] {
            Ok(r) => r,
            // A PATCH changed the key while it was being rotated: nothing was rotated, and no
            // successor was left behind.
            Err(p) => {
                assert_eq!(p.code, "key_changed", "seed {seed}");
                let old = w.store.record(&id).unwrap();
                assert_eq!(old.rotated_to, None, "seed {seed}");
                let records = w
                    .store
                    .inner
                    .snapshot()
                    .keys()
                    .filter(|k| k.starts_with("key:"))
                    .count();
                assert_eq!(records, 1, "seed {seed}: a successor was left behind");
                continue;
            }
        };
        let successor = rotated.body.as_ref().unwrap()["record"]["id"].as_str().unwrap();
        let old = w.store.record(&id).unwrap();
        assert_eq!(
            old.rotated_to.as_ref().map(|s| s.as_str()),
            Some(successor),
            "seed {seed}"
        );
        assert!(
            old.expires_at.is_some_and(|e| e <= w.now.plus_seconds(60)),
            "seed {seed}: the retired key's expiry was lifted: {:?}",
            old.expires_at
        );
    }
}

#[test]
fn a_stale_read_never_un_revokes_the_isolate_cache() {
    let w = World::new();
    let (key, rec) = w.issue(json!({"name": "k", "scopes": ["license:read"]}));
    let id = rec["id"].as_str().unwrap().to_owned();
    let stale = w.store.snapshot()[&format!("key:{id}")].clone();
    w.admin("POST", &format!("/admin/keys/{id}/revoke"), None)
        .unwrap();
    // KV serves an old copy (another location's, or a lagging read).
    block_on(w.store.put(&format!("key:{id}"), &stale)).unwrap();
    let loaded = block_on(w.records().load(&keygate::key::KeyId::parse(&id).unwrap(), w.now))
        .unwrap()
        .unwrap();
    assert!(loaded.revoked_at.is_some());
    assert_eq!(denial(&w, &key), Some(Denial::RevokedKey));
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
fn list_and_audit_pages_stay_within_the_kv_operation_limit() {
    let w = World::with_store(Shuffled::new(7));
    let (admin, _) = w.issue(json!({"name": "admin", "scopes": ["admin:**", "a"]}));
    for i in 0..130 {
        w.issue(json!({"name": format!("k{i}"), "scopes": ["a"]}));
    }
    for path in ["/admin/keys?limit=1000", "/admin/audit?limit=1000"] {
        for auth in [TOKEN, admin.as_str()] {
            w.cache.borrow_mut().clear();
            w.store.ops.set(0);
            let r = one(
                &w,
                Call {
                    method: "GET",
                    path: path.to_owned(),
                    auth: auth.to_owned(),
                    body: None,
                    ip: None,
                },
            )
            .unwrap();
            let ops = w.store.ops.get();
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
            assert!(
                ops <= 250,
                "{path}: {ops} KV operations (the platform allows 1000)"
            );
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
        let e = concurrently_with_token(
            &w,
            &[Call {
                auth: short.to_owned(),
                ..token_call("GET", "/admin/keys", None)
            }],
            short,
        )
        .pop()
        .unwrap()
        .unwrap_err();
        assert_eq!((e.status, e.code), (503, "admin_disabled"), "{short}");
        assert!(e.detail.contains("too short"), "{}", e.detail);
        assert!(short.len() < 8 || !e.body().contains(short));
        assert!(keygate::admin::admin_token_weakness(Some(short)).is_some());
    }
    let long = "0123456789abcdef0123456789abcdef";
    let r = concurrently_with_token(
        &w,
        &[Call {
            auth: long.to_owned(),
            ..token_call("GET", "/admin/keys", None)
        }],
        long,
    );
    assert_eq!(r[0].as_ref().unwrap().status, 200);
    assert!(keygate::admin::admin_token_weakness(Some(long)).is_none());
    assert!(keygate::admin::admin_token_weakness(None).is_some());
}
