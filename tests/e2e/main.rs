//! End-to-end tests: the real built worker under workerd (`wrangler dev`), real local KV, a real
//! local origin, real HTTP. Four workers run: the main one (the policy of wrangler.toml), one
//! with an invalid policy, one without an admin token, and one of its own for schemathesis
//! (whose stateful phase revokes and deletes whatever keys it can list).
// Tests may unwrap and index: a failure here is a failed test, not an aborted isolate.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod admin;
mod admin_safety;
mod attacks;
mod gateway;
mod harness;
mod isolates;
mod limits;
mod operations;
mod registry;
mod tokens;
mod verify;

use std::sync::Arc;
use std::time::Duration;

use harness::{
    Origin, OriginVar, Resp, Worker, WorkerOptions, free_port, send, start_bounce, start_origin, start_worker,
};
use libtest_mimic::{Arguments, Trial};
use serde_json::{Value, json};

pub struct Ctx {
    pub main: Worker,
    pub bad_policy: Worker,
    /// ORIGIN is the bounce proxy, which sends everything back to this worker (a loop), and
    /// an ADMIN_TOKEN too short to enable the admin API.
    pub no_admin: Worker,
    pub fuzz: Worker,
    /// Sends everything back to `no_admin`, whose ORIGIN it is: a real forwarding loop.
    pub bounce: Origin,
    /// Route mode (ORIGIN empty) for its own address only.
    pub route_mode: Worker,
    /// The shipped routes with `default = "allow"`, matrix parameters allowed, an extra
    /// stripped header, and the admin API fenced to `admin.localhost` and 10.0.0.0/8.
    pub edge: Worker,
    pub origin: Origin,
    /// A well-formed key id whose KV record is corrupt (seeded before start).
    pub corrupt_id: String,
}

/// A fresh group name, so a test lists only its own keys.
pub fn group() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    format!("g-{}", hex::encode(b))
}

/// A key the KV-only version issued before the registry existed: seeded into the main worker's
/// KV before it starts (with a record as that version wrote it), imported on first use.
pub fn legacy_key() -> (String, String) {
    let id = "0000000000001e9a".to_owned();
    (forge_key("live", &id), id)
}

/// A KV-era key whose record was deleted (its `life:{id}:deleted` marker stayed).
pub const LEGACY_DELETED_ID: &str = "0000000000001e9d";

/// What the KV-only version left in KV: a record (no `version` yet) and a deleted key's record
/// with its marker.
fn legacy_seed() -> Vec<(String, String)> {
    let prefix = keygate::key::KeyPrefix::default();
    let (key, id) = legacy_key();
    let parsed = keygate::key::ApiKey::parse(&key, &prefix).expect("a well-formed legacy key");
    let (_, hash) = keygate::key::KeyHasher::new(None).hash(&parsed);
    let record = |id: &str, hash: &str| {
        json!({
            "id": id, "name": "from kv", "tag": "from-kv", "environment": "live",
            "scopes": ["license:read"], "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z", "enabled": true,
            "hash_version": "sha256", "hash": hash,
        })
        .to_string()
    };
    vec![
        (format!("key:{id}"), record(&id, &hash)),
        (
            format!("key:{LEGACY_DELETED_ID}"),
            record(LEGACY_DELETED_ID, &"0".repeat(64)),
        ),
        (
            format!("life:{LEGACY_DELETED_ID}:deleted"),
            json!({"at": "2026-01-02T00:00:00Z"}).to_string(),
        ),
    ]
}

/// A key string with a valid shape and checksum, for ids the worker never issued.
pub fn forge_key(env: &str, id: &str) -> String {
    let body = format!("kg_{env}_{id}_{}", "ab".repeat(32));
    format!("{body}_{:08x}", crc32fast::hash(body.as_bytes()))
}

impl Ctx {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.main.base)
    }

    pub fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Resp {
        send(method, &self.url(path), headers, body)
    }

    /// An admin call with the operator token.
    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let auth = format!("Bearer {}", self.main.admin_token);
        let body = body.map(|b| b.to_string());
        let mut headers = vec![("Authorization", auth.as_str())];
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        let r = self.call(method, path, &headers, body.as_deref());
        assert_eq!(r.header("cache-control"), Some("no-store"), "{method} {path}");
        r
    }

    /// An admin call authenticated with an API key.
    pub fn admin_as(
        &self,
        key: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
        ip: Option<&str>,
    ) -> Resp {
        let auth = format!("Bearer {key}");
        let body = body.map(|b| b.to_string());
        let mut headers = vec![
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        if let Some(ip) = ip {
            headers.push(("CF-Connecting-IP", ip));
        }
        self.call(method, path, &headers, body.as_deref())
    }

    /// Issue a key; returns (plaintext key, record).
    pub fn create(&self, body: Value) -> (String, Value) {
        let r = self.admin("POST", "/admin/keys", Some(body.clone()));
        assert_eq!(r.status, 201, "create {body}: {}", r.body);
        let v = r.json();
        (v["key"].as_str().expect("key").to_owned(), v["record"].clone())
    }

    pub fn key_with(&self, scopes: &[&str]) -> (String, String) {
        let (k, rec) = self.create(json!({"name": "e2e", "scopes": scopes}));
        (k, rec["id"].as_str().unwrap_or_default().to_owned())
    }
}

/// The policy of wrangler.toml as JSON, as the shared workers run it, with `extra` merged
/// over its top level. Two changes for the suite: the failed-authentication limiter is off
/// (the suite sends thousands of bad keys from one address; `limits` tests it with the shipped
/// numbers), and usage is flushed every second (not every minute), so usage tests wait less.
pub fn shipped_policy_with(extra: Value) -> String {
    let mut policy = shipped_policy();
    policy["limits"]["failed_auth"] = json!({"enabled": false});
    policy["usage"] = json!({"flush_seconds": 1});
    if let (Some(p), Some(e)) = (policy.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    policy.to_string()
}

/// The policy of wrangler.toml as JSON, unchanged.
pub fn shipped_policy() -> Value {
    let text = std::fs::read_to_string(harness::root().join("wrangler.toml")).expect("wrangler.toml");
    let doc: toml::Value = toml::from_str(&text).expect("wrangler.toml parses");
    serde_json::to_value(&doc["vars"]["POLICY"]).expect("policy as JSON")
}

/// The tests that use the shared `wrangler dev` workers of `Ctx`.
fn shared_tests() -> impl Iterator<Item = &'static (&'static str, fn(&Ctx))> {
    gateway::TESTS
        .iter()
        .chain(admin::TESTS)
        .chain(admin_safety::TESTS)
        .chain(attacks::TESTS)
        .chain(operations::TESTS)
        .chain(registry::TESTS)
        .chain(tokens::TESTS)
        .chain(verify::TESTS)
        .chain(limits::TESTS)
}

fn main() {
    let args = Arguments::from_args();
    let corrupt_id = "00000000c0ffee00".to_owned();
    harness::build_worker();
    // The isolates suite starts its own workerd; the shared workers below start only when a
    // selected test needs them (`cargo test --test e2e -- isolates` runs that suite alone).
    if shared_tests().all(|(name, _)| args.is_filtered_out(&Trial::test(*name, || Ok(())))) {
        let mut trials = isolates::trials();
        trials.extend(limits::trials());
        libtest_mimic::run(&args, trials).exit();
    }
    let origin = start_origin();
    let origin_port = origin.port;
    let origin_var = OriginVar::Port(origin_port);
    let bounce_port = free_port();
    let mut seed = vec![(format!("key:{corrupt_id}"), "{not json".to_owned())];
    seed.extend(legacy_seed());
    let route_mode_policy = shipped_policy_with(
        json!({"route_mode": {"hostnames": ["127.0.0.1:{PORT}", format!("localhost:{bounce_port}")]}}),
    );
    let edge_policy = shipped_policy_with(json!({
        "default": "allow",
        "allow_semicolon_in_path": true,
        "forwarding": {"strip_headers": ["X-Internal-Debug"]},
        "admin": {"hostnames": ["admin.localhost"], "ip_allowlist": ["10.0.0.0/8"]}
    }));
    let suite_policy = shipped_policy_with(json!({}));
    let (p1, p2, p3) = (suite_policy.clone(), suite_policy.clone(), suite_policy);
    // Start the three workers side by side: each takes a while to boot.
    let main = std::thread::spawn(move || {
        start_worker(WorkerOptions {
            origin: origin_var,
            policy: Some(&p1),
            seed: &seed,
            no_admin_token: false,
        })
    });
    let bad = std::thread::spawn(move || {
        start_worker(WorkerOptions {
            origin: origin_var,
            policy: Some(r#"{"routes": [{"path": "/x", "ip_allowlist": ["10.0.0.1/8"]}]}"#),
            seed: &[],
            no_admin_token: false,
        })
    });
    let (main, bad_policy) = match (main.join(), bad.join()) {
        (Ok(m), Ok(b)) => (m, b),
        _ => panic!("e2e: a worker failed to start (see the messages above)"),
    };
    let no_admin = std::thread::spawn(move || {
        start_worker(WorkerOptions {
            origin: OriginVar::Port(bounce_port),
            policy: Some(&p2),
            seed: &[],
            no_admin_token: true,
        })
    });
    let fuzz = std::thread::spawn(move || {
        start_worker(WorkerOptions {
            origin: origin_var,
            policy: Some(&p3),
            seed: &[],
            no_admin_token: false,
        })
    });
    let (no_admin, fuzz) = match (no_admin.join(), fuzz.join()) {
        (Ok(n), Ok(f)) => (n, f),
        _ => panic!("e2e: a worker failed to start (see the messages above)"),
    };
    let no_admin_port = no_admin
        .base
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap();
    let bounce = start_bounce(bounce_port, no_admin_port);
    let edge = std::thread::spawn(move || {
        start_worker(WorkerOptions {
            origin: origin_var,
            policy: Some(&edge_policy),
            seed: &[],
            no_admin_token: false,
        })
    });
    let route_mode = std::thread::spawn(move || {
        start_worker(WorkerOptions {
            origin: OriginVar::Empty,
            policy: Some(&route_mode_policy),
            seed: &[],
            no_admin_token: false,
        })
    });
    let (edge, route_mode) = match (edge.join(), route_mode.join()) {
        (Ok(e), Ok(r)) => (e, r),
        _ => panic!("e2e: a worker failed to start (see the messages above)"),
    };
    let ctx = Arc::new(Ctx {
        main,
        bad_policy,
        no_admin,
        fuzz,
        bounce,
        route_mode,
        edge,
        origin,
        corrupt_id,
    });
    let ports: Vec<u16> = [
        &ctx.main,
        &ctx.bad_policy,
        &ctx.no_admin,
        &ctx.fuzz,
        &ctx.edge,
        &ctx.route_mode,
    ]
    .iter()
    .filter_map(|w| w.base.rsplit(':').next()?.parse().ok())
    .collect();

    let mut trials = isolates::trials();
    trials.extend(limits::trials());
    for (name, f) in shared_tests() {
        let ctx = Arc::clone(&ctx);
        let f = *f;
        trials.push(Trial::test(*name, move || {
            f(&ctx);
            Ok(())
        }));
    }
    let conclusion = libtest_mimic::run(&args, trials);
    if conclusion.has_failed() {
        eprintln!("e2e: main worker log tail:\n{}", ctx.main.log());
    }
    drop(ctx);
    std::thread::sleep(Duration::from_millis(200));
    for p in ports {
        assert!(
            !harness::port_open(p),
            "e2e: something still listens on port {p} after shutdown"
        );
    }
    conclusion.exit();
}
