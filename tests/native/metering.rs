//! The admin API's side of limits, credits and usage, in the registry on SQLite as the Durable
//! Object runs it: metered keys and their balance, top-ups, refills, rate tiers, rotation
//! moving the balance, the feed entry that makes isolates re-read a key that became metered,
//! and the usage endpoint's ranges.

use serde_json::{Value, json};

use keygate::policy::Policy;
use keygate::registry::AdminStore;
use keygate::registry::meter::{LeaseAnswer, LeaseRequest};

use crate::World;

fn world() -> World {
    let mut w = World::new();
    w.gateway.policy = Policy::from_json(&json!({
        "limits": {"tiers": {"free": {"binding": "RL_FREE", "limit": 10, "period": 10}}},
        "routes": [{"methods": ["GET"], "path": "/licenses/*", "scopes": ["license:read"], "cost": 2}]
    }))
    .unwrap();
    w
}

fn body(r: Result<keygate::admin::Reply, keygate::problem::Problem>) -> Value {
    match r {
        Ok(reply) => reply.body.unwrap_or(Value::Null),
        Err(p) => panic!("{} {}: {}", p.status, p.code, p.detail),
    }
}

fn problem(r: Result<keygate::admin::Reply, keygate::problem::Problem>) -> (u16, String, Value) {
    let p = r.expect_err("a problem");
    (
        p.status,
        p.code.to_owned(),
        p.extra.get("field").cloned().unwrap_or(Value::Null),
    )
}

fn lease(w: &World, id: &str, want: u64) -> LeaseAnswer {
    w.registry
        .lease(
            &LeaseRequest {
                key_id: id.into(),
                want,
                cost: 1,
                settle: vec![],
            },
            w.now,
        )
        .unwrap()
}

#[test]
fn a_key_created_with_credits_is_metered_and_shows_its_balance() {
    let w = world();
    let (_, rec) = w.issue(json!({"name": "m", "scopes": ["a"], "credits": 40, "rate_tier": "free"}));
    assert_eq!(rec["credits_remaining"], 40);
    assert_eq!(rec["credits_leased"], 0);
    assert_eq!(rec["rate_tier"], "free");
    assert_eq!(rec["refill"], Value::Null);
    assert_eq!(rec["last_used_at"], Value::Null);
    assert!(
        rec.get("metered").is_none(),
        "metered is shown as credits_remaining"
    );
    let id = rec["id"].as_str().unwrap();
    assert_eq!(lease(&w, id, 8), LeaseAnswer::Granted { lease: 1, granted: 8 });
    let got = body(w.admin("GET", &format!("/admin/keys/{id}"), None));
    assert_eq!(
        (got["credits_remaining"].clone(), got["credits_leased"].clone()),
        (json!(32), json!(8))
    );
    // An unmetered key shows nulls.
    let (_, plain) = w.issue(json!({"name": "p", "scopes": ["a"]}));
    assert_eq!(plain["credits_remaining"], Value::Null);
    assert_eq!(plain["rate_tier"], Value::Null);
}

#[test]
fn a_refill_alone_meters_the_key_from_its_amount() {
    let w = world();
    let (_, rec) = w.issue(
        json!({"name": "r", "scopes": ["a"], "refill": {"amount": 100, "interval": "month", "day": 31}}),
    );
    assert_eq!(rec["credits_remaining"], 100);
    assert_eq!(
        rec["refill"],
        json!({"amount": 100, "interval": "month", "day": 31})
    );
    let next = rec["next_refill_at"].as_str().unwrap();
    assert!(next.ends_with("T00:00:00Z"), "{next}");
    for (bad, field) in [
        (json!({"amount": 0, "interval": "day"}), "refill"),
        (json!({"amount": 1, "interval": "day", "day": 3}), "refill"),
        (json!({"amount": 1, "interval": "month", "day": 32}), "refill"),
        (json!({"amount": 1, "interval": "week"}), "refill.interval"),
    ] {
        let r = w.admin(
            "POST",
            "/admin/keys",
            Some(json!({"name": "x", "scopes": ["a"], "refill": bad})),
        );
        let (status, code, f) = problem(r);
        assert_eq!((status, code.as_str()), (422, "invalid_field"), "{bad}");
        assert_eq!(f, field, "{bad}");
    }
    let r = w.admin(
        "POST",
        "/admin/keys",
        Some(json!({"name": "x", "scopes": ["a"], "credits": -1})),
    );
    assert_eq!(problem(r).2, "credits");
    let r = w.admin(
        "POST",
        "/admin/keys",
        Some(json!({"name": "x", "scopes": ["a"], "credits": 1_000_000_000_001u64})),
    );
    assert_eq!(problem(r).2, "credits");
}

#[test]
fn an_unknown_rate_tier_is_refused_naming_the_field() {
    let w = world();
    let r = w.admin(
        "POST",
        "/admin/keys",
        Some(json!({"name": "x", "scopes": ["a"], "rate_tier": "gold"})),
    );
    assert_eq!(problem(r), (422, "invalid_field".into(), json!("rate_tier")));
    let (_, rec) = w.issue(json!({"name": "t", "scopes": ["a"], "rate_tier": "free"}));
    let path = format!("/admin/keys/{}", rec["id"].as_str().unwrap());
    let r = w.admin("PATCH", &path, Some(json!({"rate_tier": "gold"})));
    assert_eq!(problem(r).2, "rate_tier");
    let r = body(w.admin("PATCH", &path, Some(json!({"rate_tier": null}))));
    assert_eq!(r["rate_tier"], Value::Null);
}

#[test]
fn patch_sets_or_stops_metering_and_post_credits_tops_up() {
    let w = world();
    let (_, rec) = w.issue(json!({"name": "p", "scopes": ["a"]}));
    let id = rec["id"].as_str().unwrap().to_owned();
    let path = format!("/admin/keys/{id}");
    let credits = format!("{path}/credits");
    // Not metered: no top-up.
    assert_eq!(problem(w.admin("POST", &credits, Some(json!({"add": 1})))).0, 422);
    let r = body(w.admin("PATCH", &path, Some(json!({"credits": 5}))));
    assert_eq!(
        (r["credits_remaining"].clone(), r["version"].clone()),
        (json!(5), json!(2))
    );
    // Every change of the balance is a new version (so `If-Match` orders them), audited as
    // `key.credits`.
    let r = body(w.admin("PATCH", &path, Some(json!({"credits": 7}))));
    assert_eq!(
        (r["credits_remaining"].clone(), r["version"].clone()),
        (json!(7), json!(3))
    );
    let r = body(w.admin("POST", &credits, Some(json!({"add": 3}))));
    assert_eq!(
        (r["credits_remaining"].clone(), r["version"].clone()),
        (json!(10), json!(4))
    );
    let stale = w.admin_with_headers(
        "POST",
        &credits,
        Some(json!({"set": 0})),
        &[("If-Match", "\"3\"")],
    );
    assert_eq!(problem(stale).0, 412, "a set built on an older read is refused");
    let r = body(w.admin_with_headers(
        "POST",
        &credits,
        Some(json!({"set": 1})),
        &[("If-Match", "\"4\"")],
    ));
    assert_eq!(r["credits_remaining"], 1);
    // A retried top-up with the same Idempotency-Key adds once.
    for _ in 0..2 {
        let r = w.admin_with_headers(
            "POST",
            &credits,
            Some(json!({"add": 5})),
            &[("Idempotency-Key", "top-up-1")],
        );
        assert_eq!(body(r)["credits_remaining"], 6);
    }
    for bad in [json!({}), json!({"add": 1, "set": 2}), json!({"sub": 1})] {
        assert_eq!(
            problem(w.admin("POST", &credits, Some(bad.clone()))).0,
            422,
            "{bad}"
        );
    }
    let actions: Vec<String> = w
        .audit_events()
        .iter()
        .filter(|e| e["key_id"] == id.as_str())
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| *a == "key.credits").count(),
        4,
        "{actions:?}"
    );
    assert_eq!(
        actions.iter().filter(|a| *a == "key.update").count(),
        1,
        "{actions:?}"
    );
    // Stopping metering forgets the balance and the refill.
    let r = body(w.admin("PATCH", &path, Some(json!({"credits": null}))));
    assert_eq!(
        (r["credits_remaining"].clone(), r["refill"].clone()),
        (Value::Null, Value::Null)
    );
    assert_eq!(lease(&w, &id, 1), LeaseAnswer::Unmetered);
    let r = w.admin(
        "PATCH",
        &path,
        Some(json!({"credits": null, "refill": {"amount": 1, "interval": "day"}})),
    );
    assert_eq!(problem(r).2, "refill");
}

#[test]
fn becoming_metered_is_in_the_feed_so_isolates_reread_the_key() {
    let w = world();
    let (_, rec) = w.issue(json!({"name": "f", "scopes": ["a"]}));
    let id = rec["id"].as_str().unwrap().to_owned();
    w.admin("PATCH", &format!("/admin/keys/{id}"), Some(json!({"credits": 1})))
        .unwrap();
    let page = serde_json::to_value(w.registry.feed(w.now).unwrap()).unwrap();
    assert!(
        page.to_string().contains(&id),
        "a key that became metered is a narrowing in the feed: {page}"
    );
}

#[test]
fn rotation_moves_the_balance_to_the_successor() {
    let w = world();
    let (_, rec) = w.issue(json!({"name": "rot", "scopes": ["a"], "credits": 9}));
    let id = rec["id"].as_str().unwrap().to_owned();
    let v = body(w.admin(
        "POST",
        &format!("/admin/keys/{id}/rotate"),
        Some(json!({"grace": "1h"})),
    ));
    assert_eq!(v["record"]["credits_remaining"], 9);
    let old = body(w.admin("GET", &format!("/admin/keys/{id}"), None));
    assert_eq!(old["credits_remaining"], 0, "the two keys never share credits");
}

#[test]
fn usage_ranges_are_checked() {
    let w = world();
    let (_, rec) = w.issue(json!({"name": "u", "scopes": ["a"]}));
    let path = format!("/admin/keys/{}/usage", rec["id"].as_str().unwrap());
    let u = body(w.admin("GET", &path, None));
    assert_eq!(u["days"].as_array().unwrap().len(), 30);
    assert_eq!((u["allowed"].clone(), u["denied"].clone()), (json!(0), json!(0)));
    let u = body(w.admin("GET", &format!("{path}?from=2026-01-01&to=2026-12-31"), None));
    assert_eq!(u["days"].as_array().unwrap().len(), 365);
    for q in [
        "from=2025-01-01&to=2026-12-31",
        "from=2026-13-01",
        "to=2026-01-01&from=2026-01-02",
        "x=1",
    ] {
        let p = w.admin("GET", &format!("{path}?{q}"), None).expect_err(q);
        assert_eq!((p.status, p.code), (400, "invalid_query"), "{q}");
    }
    let p = w.admin("POST", &path, None).err().unwrap();
    assert_eq!(p.status, 405);
}

#[test]
fn a_retired_key_is_never_refilled() {
    let mut w = world();
    let refill = json!({"amount": 10, "interval": "day"});
    let (_, rec) = w.issue(json!({"name": "rot", "scopes": ["a"], "credits": 4, "refill": refill}));
    let id = rec["id"].as_str().unwrap().to_owned();
    let v = body(w.admin(
        "POST",
        &format!("/admin/keys/{id}/rotate"),
        Some(json!({"grace": "5d"})),
    ));
    let new_id = v["record"]["id"].as_str().unwrap().to_owned();
    assert_eq!(v["record"]["credits_remaining"], 4);
    // Two days later, during the grace: the successor was refilled, the retired key not.
    w.now = w.now.plus_seconds(2 * 86_400);
    assert_eq!(lease(&w, &id, 1), LeaseAnswer::Exhausted { retry_after: None });
    assert!(matches!(lease(&w, &new_id, 1), LeaseAnswer::Granted { .. }));
    let old = body(w.admin("GET", &format!("/admin/keys/{id}"), None));
    assert_eq!(
        (old["credits_remaining"].clone(), old["next_refill_at"].clone()),
        (json!(0), Value::Null)
    );
}

/// An admin key cannot lift its own limits, nor escape them through the keys it manages.
#[test]
fn limits_are_part_of_an_admin_keys_reach() {
    let w = world();
    let admin_scopes = json!(["admin:keys:read", "admin:keys:write", "a"]);
    let (limited, me) =
        w.issue(json!({"name": "limited admin", "scopes": admin_scopes, "credits": 5, "rate_tier": "free"}));
    let me_id = me["id"].as_str().unwrap().to_owned();
    let as_me =
        |method: &str, path: &str, body: Value| w.admin_raw(method, path, &limited, Some(&body.to_string()));
    // Without admin:limits:write: no credits, refill or tier, on itself or anything.
    let r = as_me(
        "POST",
        &format!("/admin/keys/{me_id}/credits"),
        json!({"add": 1_000_000}),
    );
    assert_eq!(problem(r).1, "insufficient_scope");
    let r = as_me("PATCH", &format!("/admin/keys/{me_id}"), json!({"credits": null}));
    assert_eq!(problem(r).1, "insufficient_scope");
    // A key it creates inherits its tier, and must be metered like itself.
    let r = as_me("POST", "/admin/keys", json!({"name": "child", "scopes": ["a"]}));
    let (status, code, _) = problem(r);
    assert_eq!(
        (status, code.as_str()),
        (403, "scope_escalation"),
        "an unmetered child of a metered admin key"
    );
    // With the scope, still not on itself.
    let admin_scopes = json!(["admin:keys:read", "admin:keys:write", "admin:limits:write", "a"]);
    let (boss, boss_rec) = w.issue(json!({"name": "boss", "scopes": admin_scopes, "rate_tier": "free"}));
    let boss_id = boss_rec["id"].as_str().unwrap().to_owned();
    let as_boss =
        |method: &str, path: &str, body: Value| w.admin_raw(method, path, &boss, Some(&body.to_string()));
    let r = as_boss(
        "PATCH",
        &format!("/admin/keys/{boss_id}"),
        json!({"rate_tier": null}),
    );
    assert_eq!(problem(r).1, "scope_escalation");
    let child = body(as_boss(
        "POST",
        "/admin/keys",
        json!({"name": "child", "scopes": ["a"], "credits": 3}),
    ));
    assert_eq!(child["record"]["rate_tier"], "free", "inherited");
    let child_id = child["record"]["id"].as_str().unwrap().to_owned();
    let r = as_boss(
        "PATCH",
        &format!("/admin/keys/{child_id}"),
        json!({"rate_tier": null}),
    );
    assert_eq!(
        problem(r).1,
        "scope_escalation",
        "a managed key stays on the admin key's tier"
    );
    let r = body(as_boss(
        "POST",
        &format!("/admin/keys/{child_id}/credits"),
        json!({"add": 2}),
    ));
    assert_eq!(r["credits_remaining"], 5);
}
