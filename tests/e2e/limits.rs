//! Rate limits, credits and usage through the real worker.
//!
//! On the shared `wrangler dev` worker (miniflare's Rate Limiting binding, the registry Durable
//! Object): a tier's 429 with its headers, credits spent and topped up, usage buckets and
//! `last_used_at`. On the two-isolate workerd rig (`isolates::Pair`: two isolates sharing KV,
//! the Cache API, the registry and the rate limiters, with the KV service's read counters):
//! credits spent exactly across two isolates, a refill under a moved registry clock, and the
//! failed-authentication limiter stopping KV reads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use serde_json::{Value, json};

use crate::harness::{Resp, send};
use crate::isolates::Pair;
use crate::{Ctx, forge_key};

type Test = (&'static str, fn(&Ctx));

pub const TESTS: &[Test] = &[
    ("limits::a_tier_answers_429_with_ratelimit_headers", tier_429),
    ("limits::credits_are_spent_then_topped_up", credits_spent),
    ("limits::usage_buckets_and_last_used_at", usage_buckets),
    (
        "limits::server_timing_says_where_the_record_came_from",
        server_timing,
    ),
];

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test("isolates::credits_are_spent_exactly_across_two_isolates", || {
            credits_exact();
            Ok(())
        }),
        Trial::test(
            "isolates::credits_refill_when_the_registry_clock_passes_midnight",
            || {
                refill_with_moved_clock();
                Ok(())
            },
        ),
        Trial::test("isolates::failed_auth_limit_stops_kv_reads", || {
            failed_auth_stops_kv_reads();
            Ok(())
        }),
    ]
}

fn get(c: &Ctx, key: &str, marker: &str) -> Resp {
    c.call("GET", &format!("/licenses/{marker}"), &[("X-API-Key", key)], None)
}

/// A key on the `free` tier (10 per 10 s): past 10, `429 rate_limited` with `Retry-After`,
/// `RateLimit-Policy` and `RateLimit`; other keys of the tier are not affected, and a key with
/// no tier is never limited.
fn tier_429(c: &Ctx) {
    let (key, rec) = c.create(json!({"name": "free tier", "scopes": ["license:read"], "rate_tier": "free"}));
    assert_eq!(rec["rate_tier"], "free");
    let (other, _) =
        c.create(json!({"name": "free tier 2", "scopes": ["license:read"], "rate_tier": "free"}));
    let (plain, _) = c.create(json!({"name": "no tier", "scopes": ["license:read"]}));
    let responses: Vec<Resp> = (0..25).map(|i| get(c, &key, &format!("tier-{i}"))).collect();
    for (i, r) in responses.iter().take(10).enumerate() {
        assert_eq!(r.status, 200, "request {i} of a fresh window: {}", r.body);
        assert_eq!(r.header("ratelimit-policy"), Some("\"free\";q=10;w=10"));
    }
    let limited: Vec<&Resp> = responses.iter().filter(|r| r.status == 429).collect();
    let allowed = responses.iter().filter(|r| r.status == 200).count();
    assert!(
        !limited.is_empty(),
        "25 requests in one or two 10-second windows, none limited"
    );
    assert!(allowed <= 20, "{allowed} allowed in at most two windows of 10");
    assert_eq!(allowed + limited.len(), 25);
    let r = limited[0];
    assert_eq!(r.code(), "rate_limited");
    assert_eq!(r.header("retry-after"), Some("10"));
    assert_eq!(r.header("ratelimit-policy"), Some("\"free\";q=10;w=10"));
    assert_eq!(r.header("ratelimit"), Some("\"free\";r=0;t=10"));
    assert_eq!(r.json()["rate_tier"], "free");
    // Limited per key: the other key of the tier, and a key with no tier, go through.
    assert_eq!(get(c, &other, "tier-other").status, 200);
    for i in 0..15 {
        let r = get(c, &plain, &format!("tier-plain-{i}"));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("ratelimit-policy"), None);
    }
    // What was limited never reached the origin.
    let reached = c.origin.received("/licenses/tier-").len();
    assert!(reached >= allowed + 16, "{reached} reached the origin");
    // An unknown tier is refused at creation, naming the field.
    let r = c.admin(
        "POST",
        "/admin/keys",
        Some(json!({"name": "x", "scopes": ["a"], "rate_tier": "gold"})),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.json()["field"], "rate_tier");
}

/// A key with 3 credits: 3 requests go through, the 4th is `429 credits_exhausted` (no refill:
/// no `Retry-After`); a top-up of 2 gives exactly 2 more; `credits: null` stops metering.
fn credits_spent(c: &Ctx) {
    let (key, rec) = c.create(json!({"name": "metered", "scopes": ["license:read"], "credits": 3}));
    let id = rec["id"].as_str().unwrap().to_owned();
    assert_eq!(rec["credits_remaining"], 3);
    let statuses: Vec<u16> = (0..5)
        .map(|i| get(c, &key, &format!("credit-{id}-{i}")).status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let r = get(c, &key, &format!("credit-{id}-x"));
    assert_eq!(r.code(), "credits_exhausted");
    assert_eq!(r.header("retry-after"), None, "no refill, no Retry-After");
    assert_eq!(c.origin.received(&format!("credit-{id}")).len(), 3);
    let view = c.admin("GET", &format!("/admin/keys/{id}"), None).json();
    assert_eq!(
        (view["credits_remaining"].clone(), view["credits_leased"].clone()),
        (json!(0), json!(0))
    );
    // Top up by 2: exactly two more.
    let r = c.admin(
        "POST",
        &format!("/admin/keys/{id}/credits"),
        Some(json!({"add": 2})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["credits_remaining"], 2);
    let statuses: Vec<u16> = (0..3)
        .map(|i| get(c, &key, &format!("credit-{id}-t{i}")).status)
        .collect();
    assert_eq!(statuses, [200, 200, 429]);
    // Both or neither of add and set.
    let r = c.admin(
        "POST",
        &format!("/admin/keys/{id}/credits"),
        Some(json!({"add": 1, "set": 1})),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    // The audit log has the top-up.
    let audit = c.admin("GET", &format!("/admin/audit?key_id={id}"), None).json();
    assert!(
        audit["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "key.credits"),
        "{audit}"
    );
    // Unmetered: every request goes through.
    let r = c.admin(
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"credits": null})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["credits_remaining"], Value::Null);
    for i in 0..4 {
        assert_eq!(get(c, &key, &format!("credit-{id}-u{i}")).status, 200);
    }
    // A top-up of an unmetered key is refused.
    let r = c.admin(
        "POST",
        &format!("/admin/keys/{id}/credits"),
        Some(json!({"add": 1})),
    );
    assert_eq!(r.status, 422, "{}", r.body);
}

/// Three allowed and two denied (insufficient scope) requests show in today's bucket, by code,
/// and as `last_used_at`, once the isolate has flushed (every second in this suite).
fn usage_buckets(c: &Ctx) {
    let (key, rec) = c.create(json!({"name": "usage", "scopes": ["license:read"]}));
    let id = rec["id"].as_str().unwrap().to_owned();
    assert_eq!(rec["last_used_at"], Value::Null);
    let started = Instant::now();
    for i in 0..3 {
        assert_eq!(get(c, &key, &format!("usage-{i}")).status, 200);
    }
    for i in 0..2 {
        let r = c.call(
            "POST",
            &format!("/licenses/usage-w{i}"),
            &[("X-API-Key", &key)],
            Some("{}"),
        );
        assert_eq!(r.code(), "insufficient_scope");
    }
    // Guesses count nowhere: a forged key for this id is an invalid key, not usage.
    let forged = forge_key("live", &id);
    assert_eq!(get(c, &forged, "usage-forged").status, 401);
    let path = format!("/admin/keys/{id}/usage");
    let deadline = Instant::now() + Duration::from_secs(20);
    let usage = loop {
        // Each admin request also gives the isolate a chance to flush (at most once a second).
        let u = c.admin("GET", &path, None).json();
        let today = u["days"]
            .as_array()
            .and_then(|d| d.last())
            .cloned()
            .unwrap_or_default();
        if today["allowed"] == 3 && today["denied"] == 2 {
            break u;
        }
        assert!(Instant::now() < deadline, "usage not flushed within 20 s: {u}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let days = usage["days"].as_array().unwrap();
    assert_eq!(days.len(), 30, "the default range is 30 days: {usage}");
    let today = days.last().unwrap();
    assert_eq!(today["codes"], json!({"insufficient_scope": 2}));
    assert_eq!(
        (usage["allowed"].clone(), usage["denied"].clone()),
        (json!(3), json!(2))
    );
    assert_eq!(usage["key_id"], id.as_str());
    let view = c.admin("GET", &format!("/admin/keys/{id}"), None).json();
    let last = view["last_used_at"].as_str().expect("last_used_at is set");
    let last = keygate::time::Timestamp::parse_rfc3339(last).expect("RFC 3339");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let age = now_ms - last.millis();
    assert!(
        (0..=started.elapsed().as_millis() as i64 + 1_000).contains(&age),
        "last_used_at {age} ms ago"
    );
    // One day, by date; ranges are checked.
    let date = today["date"].as_str().unwrap().to_owned();
    let one = c
        .admin("GET", &format!("{path}?from={date}&to={date}"), None)
        .json();
    assert_eq!(one["days"].as_array().unwrap().len(), 1);
    for (q, field) in [
        ("from=2026-02-30", "from"),
        ("to=yesterday", "to"),
        ("from=2026-02-01&to=2026-01-01", "from"),
        ("from=2024-01-01&to=2026-01-01", "from"),
        ("day=2026-01-01", "day"),
    ] {
        let r = c.admin("GET", &format!("{path}?{q}"), None);
        assert_eq!(r.status, 400, "{q}: {}", r.body);
        assert_eq!(r.code(), "invalid_query", "{q}");
        assert_eq!(r.json()["parameter"].as_str(), Some(field), "{q}: {}", r.body);
    }
}

/// With `SERVER_TIMING=1` (local dev), a forwarded response says how long the gateway and the
/// origin took, and where the record came from: KV on the first request, the isolate's cache
/// after; nothing for a public route.
fn server_timing(c: &Ctx) {
    let (key, _) = c.create(json!({"name": "timing", "scopes": ["license:read"]}));
    let first = get(c, &key, "timing-1");
    let second = get(c, &key, "timing-2");
    let parse = |r: &Resp| -> String {
        let h = r
            .header("server-timing")
            .unwrap_or_else(|| panic!("no Server-Timing: {:?}", r.headers))
            .to_owned();
        assert!(h.starts_with("gw;dur="), "{h}");
        assert!(h.contains(", origin;dur="), "{h}");
        h
    };
    assert!(parse(&first).ends_with("record;desc=\"kv\""), "{}", parse(&first));
    assert!(
        parse(&second).ends_with("record;desc=\"cache\""),
        "{}",
        parse(&second)
    );
    let public = c.call("GET", "/public/timing", &[], None);
    assert!(parse(&public).ends_with("record;desc=\"none\""));
    // Never on a denial (nothing was forwarded).
    let denied = c.call("GET", "/licenses/timing-x", &[], None);
    assert_eq!(denied.status, 401);
    assert_eq!(denied.header("server-timing"), None);
}

// ---- two isolates ----------------------------------------------------------------------------

fn create_in(p: &Pair, base: &str, body: Value) -> (String, String) {
    let r = p.admin(base, "POST", "/admin/keys", Some(body));
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    (
        v["key"].as_str().unwrap().to_owned(),
        v["record"]["id"].as_str().unwrap().to_owned(),
    )
}

/// 200 credits, 8 clients sending through both isolates at once until everything is refused,
/// then again after the leases ended: exactly 200 requests reach the origin, never more, and
/// the registry ends with nothing left and nothing leased.
fn credits_exact() {
    const CREDITS: usize = 200;
    let p = Pair::start_with(crate::shipped_policy_with(json!({})), &[]);
    let (key, id) = create_in(
        &p,
        &p.a,
        json!({"name": "exact", "scopes": ["license:read"], "credits": CREDITS}),
    );
    let allowed = AtomicUsize::new(0);
    let refused = AtomicUsize::new(0);
    let sent = AtomicUsize::new(0);
    let mut rounds = 0;
    // Round 1 spends while leases are out; later rounds (after the 5-second lease end) spend
    // what came back. Stop when a round is refused throughout.
    loop {
        rounds += 1;
        let before = allowed.load(Ordering::SeqCst);
        std::thread::scope(|s| {
            for t in 0..8 {
                let (p, key, allowed, refused, sent) = (&p, &key, &allowed, &refused, &sent);
                s.spawn(move || {
                    let base = if t % 2 == 0 { &p.a } else { &p.b };
                    for i in 0..60 {
                        sent.fetch_add(1, Ordering::SeqCst);
                        let r = p.read(base, key, &format!("exact-x-{rounds}-{t}-{i}"));
                        match r.status {
                            200 => allowed.fetch_add(1, Ordering::SeqCst),
                            429 => {
                                assert_eq!(r.code(), "credits_exhausted");
                                refused.fetch_add(1, Ordering::SeqCst)
                            }
                            s => panic!("unexpected {s}: {}", r.body),
                        };
                    }
                });
            }
        });
        let total = allowed.load(Ordering::SeqCst);
        assert!(
            total <= CREDITS,
            "overspent: {total} allowed of {CREDITS} credits"
        );
        if total == before && rounds > 1 {
            break;
        }
        assert!(
            rounds < 8,
            "credits still trickling in after {rounds} rounds: {total} allowed"
        );
        std::thread::sleep(Duration::from_millis(6_000));
    }
    let total = allowed.load(Ordering::SeqCst);
    let reached = p.origin.received("exact-x-").len();
    println!(
        "e2e credits: {} requests sent through 2 isolates, {total} allowed, {} refused, {CREDITS} credits, {reached} reached the origin",
        sent.load(Ordering::SeqCst),
        refused.load(Ordering::SeqCst)
    );
    assert_eq!(total, CREDITS, "every credit is spent once the leases came back");
    assert_eq!(reached, CREDITS, "the origin saw exactly the allowed requests");
    let view = p.admin(&p.a, "GET", &format!("/admin/keys/{id}"), None).json();
    assert_eq!(view["credits_remaining"], 0, "{view}");
}

fn seconds_to_next_utc_midnight() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    86_400 - now.rem_euclid(86_400)
}

/// A key with 2 credits and a daily refill of 5: after 2, `429 credits_exhausted` with
/// `Retry-After` until the next UTC midnight; with the registry's clock moved past midnight,
/// exactly 5 more, then `Retry-After` a day later.
fn refill_with_moved_clock() {
    let p = Pair::start_with(crate::shipped_policy_with(json!({})), &["KEYGATE_TEST_CLOCK=1"]);
    let (key, id) = create_in(
        &p,
        &p.a,
        json!({"name": "refill", "scopes": ["license:read"], "credits": 2, "refill": {"amount": 5, "interval": "day"}}),
    );
    // The rig, like a deployment, does not set SERVER_TIMING.
    let first = p.read(&p.a, &key, "refill-0");
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(
        first.header("server-timing"),
        None,
        "Server-Timing is off without SERVER_TIMING"
    );
    let statuses: Vec<u16> = (1..3)
        .map(|i| p.read(&p.a, &key, &format!("refill-{i}")).status)
        .collect();
    assert_eq!(statuses, [200, 429]);
    let r = p.read(&p.b, &key, "refill-b");
    assert_eq!(r.code(), "credits_exhausted");
    let retry: i64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
    let expected = seconds_to_next_utc_midnight();
    assert!(
        (retry - expected).abs() <= 5,
        "Retry-After {retry}, midnight in {expected} s"
    );
    let view = p.admin(&p.a, "GET", &format!("/admin/keys/{id}"), None).json();
    assert_eq!(view["credits_remaining"], 0);
    // Past midnight by a minute.
    let moved = p.admin(
        &p.a,
        "POST",
        "/admin/registry/clock",
        Some(json!({"offset_seconds": expected + 60})),
    );
    assert_eq!(moved.status, 200, "{}", moved.body);
    // Each isolate remembers "exhausted" for up to a second (the clock moved under it).
    std::thread::sleep(Duration::from_millis(1_100));
    let statuses: Vec<u16> = (0..7)
        .map(|i| {
            let base = if i % 2 == 0 { &p.a } else { &p.b };
            p.read(base, &key, &format!("refill-after-{i}")).status
        })
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "{statuses:?}");
    assert!(statuses.ends_with(&[429, 429]), "{statuses:?}");
    let r = p.read(&p.a, &key, "refill-after-x");
    let retry: i64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((retry - (86_400 - 60)).abs() <= 5, "Retry-After {retry}");
    // Without the test var, the clock cannot move (checked on the shared worker's registry by
    // the same path answering like any unknown admin path).
    let r = p.admin(
        &p.a,
        "POST",
        "/admin/registry/clock",
        Some(json!({"offset_seconds": "x"})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
}

fn kv_stats(p: &Pair) -> Value {
    let r = send("GET", &format!("{}/kv-stats", p.control), &[], None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Failed authentications from one address, through both isolates: the first 100 are 401s (each
/// a KV read of a made-up id), then each isolate refuses one more (the binding says over) and
/// from then on answers 429 with `Retry-After` before any KV read, for that address only.
fn failed_auth_stops_kv_reads() {
    let mut policy = crate::shipped_policy();
    policy["usage"] = json!({"flush_seconds": 1});
    let p = Pair::start_with(policy.to_string(), &[]);
    let (good, _) = create_in(&p, &p.a, json!({"name": "good", "scopes": ["license:read"]}));
    let attacker = "198.51.100.66";
    let guess = |base: &str, n: usize| {
        // A fresh, well-formed id each time: no negative cache can answer it.
        let id = format!("{:016x}", 0xbad0_0000_0000_u64 + n as u64);
        send(
            "GET",
            &format!("{base}/licenses/guess-{n}"),
            &[
                ("X-API-Key", &forge_key("live", &id)),
                ("CF-Connecting-IP", attacker),
            ],
            None,
        )
    };
    for n in 0..100 {
        let base = if n % 2 == 0 { &p.a } else { &p.b };
        let r = guess(base, n);
        assert_eq!(r.status, 401, "guess {n}: {}", r.body);
    }
    // One more per isolate: counted, over the limit, still a 401 (it was looked up).
    for (n, base) in [(100, &p.a), (101, &p.b)] {
        let r = guess(base, n);
        assert!(r.status == 401 || r.status == 429, "guess {n}: {}", r.body);
    }
    send("POST", &format!("{}/kv-stats/reset", p.control), &[], None);
    for n in 102..152 {
        let base = if n % 2 == 0 { &p.a } else { &p.b };
        let r = guess(base, n);
        assert_eq!(r.status, 429, "guess {n}: {}", r.body);
        assert_eq!(r.code(), "rate_limited");
        let retry: u32 = r.header("retry-after").expect("Retry-After").parse().unwrap();
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
        assert_eq!(r.header("ratelimit-policy"), Some("\"failed_auth\";q=100;w=60"));
    }
    // A genuine key from the blocked address is refused too (it would need a lookup)...
    let r = send(
        "GET",
        &format!("{}/licenses/blocked-good", p.a),
        &[("X-API-Key", &good), ("CF-Connecting-IP", attacker)],
        None,
    );
    assert_eq!(r.status, 429, "{}", r.body);
    // ... and so are the token and verify endpoints, which would look the caller's key up.
    for path in ["/v1/keys/verify", "/oauth/token"] {
        let r = send(
            "POST",
            &format!("{}{path}", p.b),
            &[
                ("X-API-Key", &good),
                ("CF-Connecting-IP", attacker),
                ("Content-Type", "application/json"),
            ],
            Some("{}"),
        );
        assert_eq!(r.status, 429, "{path}: {}", r.body);
    }
    let stats = kv_stats(&p);
    let reads = stats["gets_by_key"]
        .as_object()
        .map(|m| m.keys().filter(|k| k.starts_with("key:")).count())
        .unwrap_or(0);
    assert_eq!(reads, 0, "KV reads of key records while blocked: {stats}");
    // ... while other addresses are not affected.
    let r = send(
        "GET",
        &format!("{}/licenses/other-ip", p.b),
        &[("X-API-Key", &good), ("CF-Connecting-IP", "203.0.113.9")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = guess(&p.b, 999);
    assert_eq!(r.status, 429);
    let other = send(
        "GET",
        &format!("{}/licenses/other-guess", p.b),
        &[
            ("X-API-Key", &forge_key("live", "0000000000abcdef")),
            ("CF-Connecting-IP", "203.0.113.9"),
        ],
        None,
    );
    assert_eq!(other.status, 401, "{}", other.body);
}
