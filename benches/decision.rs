//! The whole native decision path, `Gateway::decide`, against a bare SHA-256 of the key.
//!
//! Run with `cargo bench --bench decision`. The goals tracked by issue 14: a decision (warm
//! cache) costs at most 3x a bare SHA-256 of the key string (both in the `decision` group, so
//! one run gives both), and route matching at 1,000 routes at most 2x its cost at 10
//! (`route_match`).
//!
//! Setup (all built outside the timed loops):
//! - a policy of 56 routes mixing literal, `{param}` and `/*` paths, method restrictions, route
//!   IP allowlists, `tenant_param`, `any_scopes` and templates such as `keyring.{ring}.encrypt`;
//!   the request matches route 52 of 56 (first match wins, so nearly all routes are tried);
//! - a key record with 12 grants (literal, `*` and trailing `**`), 4 tenants and 11 CIDRs in
//!   its IP allowlist, IPv4 and IPv6, the client address matching only the last one;
//! - `MemoryStore` + `Records` with a warm `RecordCache` (steady state: a cache hit), plus a
//!   cold variant whose cache keeps nothing (store read + JSON parse every time).
// A benchmark: it may unwrap and index, a failure here aborts only the benchmark.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![recursion_limit = "512"] // The policy below is one large `json!` literal.

use std::cell::RefCell;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use futures::executor::block_on;
use keygate::cache::RecordCache;
use keygate::decide::{Decision, Denial, Gateway, RequestFacts};
use keygate::ip::{ClientIp, IpAllowlist};
use keygate::key::{ApiKey, Environment, KeyHasher};
use keygate::path::{PathRules, canonicalize};
use keygate::policy::Policy;
use keygate::record::KeyRecord;
use keygate::scope::Grant;
use keygate::store::{MemoryStore, Records};
use keygate::time::Timestamp;
use serde_json::json;
use sha2::{Digest, Sha256};

/// 2026-11-22T10:00:00Z, fixed so every iteration sees the same state.
const NOW: Timestamp = Timestamp::from_millis(1_795_341_600_000);

const METHOD: &str = "POST";
const PATH: &str = "/v1/orgs/acme/keyrings/comms/encrypt";
/// Inside the target route's allowlist and only the last entry of the key's.
const CLIENT_IP: &str = "2001:db8:abcd:12::7";
/// Outside the target route's allowlist.
const BLOCKED_IP: &str = "198.18.0.1";

fn policy() -> Policy {
    let office = ["10.0.0.0/8", "192.0.2.0/24", "2001:db8:abcd::/48"];
    let doc = json!({
        "default": "deny",
        "cache_ttl_seconds": 60,
        "routes": [
            {"path": "/healthz", "public": true},
            {"path": "/status/*", "public": true},
            {"methods": ["GET"], "path": "/docs/*", "public": true},
            {"path": "/.well-known/*", "public": true},
            {"path": "/internal/*", "ip_allowlist": ["10.0.0.0/8", "fd00::/8"], "scopes": ["internal:access"]},
            {"methods": ["GET"], "path": "/v1/licenses", "scopes": ["license:read"]},
            {"methods": ["POST"], "path": "/v1/licenses", "scopes": ["license:write"]},
            {"methods": ["GET"], "path": "/v1/licenses/{id}", "scopes": ["license:read"]},
            {"methods": ["PUT", "PATCH"], "path": "/v1/licenses/{id}", "scopes": ["license:write"]},
            {"methods": ["DELETE"], "path": "/v1/licenses/{id}", "scopes": ["license:delete"]},
            {"methods": ["POST"], "path": "/v1/licenses/{id}/activate", "scopes": ["license:activate"]},
            {"methods": ["POST"], "path": "/v1/licenses/{id}/deactivate", "scopes": ["license:activate"]},
            {"methods": ["GET"], "path": "/v1/billing/invoices", "scopes": ["billing.invoices:read"]},
            {"methods": ["GET"], "path": "/v1/billing/invoices/{invoice}", "scopes": ["billing.invoices:read"]},
            {"methods": ["POST"], "path": "/v1/billing/invoices/{invoice}/pay", "scopes": ["billing.invoices:pay"]},
            {"path": "/v1/billing/*", "scopes": ["billing:manage"]},
            {"methods": ["GET"], "path": "/v1/users", "scopes": ["users:read"]},
            {"methods": ["POST"], "path": "/v1/users", "scopes": ["users:write"]},
            {"methods": ["GET"], "path": "/v1/users/{user}", "scopes": ["users:read"]},
            {"methods": ["PATCH"], "path": "/v1/users/{user}", "scopes": ["users:write"]},
            {"methods": ["DELETE"], "path": "/v1/users/{user}", "scopes": ["users:delete"], "ip_allowlist": office},
            {"methods": ["GET"], "path": "/v1/users/{user}/sessions", "scopes": ["users.sessions:read"]},
            {"methods": ["DELETE"], "path": "/v1/users/{user}/sessions/{session}", "scopes": ["users.sessions:revoke"]},
            {"methods": ["GET"], "path": "/v1/reports/{report}/export", "scopes": ["reports.{report}.export"]},
            {"methods": ["GET"], "path": "/v1/reports/*", "scopes": ["reports:read"]},
            {"methods": ["GET"], "path": "/v1/audit", "scopes": ["audit:read"], "ip_allowlist": office},
            {"methods": ["GET"], "path": "/v1/metrics/*", "any_scopes": ["metrics.read", "metrics.admin"]},
            {"methods": ["GET"], "path": "/v1/orgs", "scopes": ["orgs:list"]},
            {"methods": ["POST"], "path": "/v1/orgs", "scopes": ["orgs:create"], "environments": ["live"]},
            {"methods": ["GET"], "path": "/v1/orgs/{org}", "tenant_param": "org", "any_scopes": ["org.{org}.read", "orgs:read"]},
            {"methods": ["PATCH"], "path": "/v1/orgs/{org}", "tenant_param": "org", "scopes": ["org.{org}.admin"]},
            {"methods": ["GET"], "path": "/v1/orgs/{org}/members", "tenant_param": "org", "scopes": ["org.{org}.members"]},
            {"methods": ["POST"], "path": "/v1/orgs/{org}/members", "tenant_param": "org", "scopes": ["org.{org}.admin"]},
            {"methods": ["DELETE"], "path": "/v1/orgs/{org}/members/{member}", "tenant_param": "org", "scopes": ["org.{org}.admin"]},
            {"methods": ["GET"], "path": "/v1/orgs/{org}/projects", "tenant_param": "org", "scopes": ["org.{org}.projects"]},
            {"methods": ["GET"], "path": "/v1/orgs/{org}/projects/{project}", "tenant_param": "org", "scopes": ["org.{org}.projects"]},
            {"methods": ["POST"], "path": "/v1/orgs/{org}/projects/{project}/deploy", "tenant_param": "org", "scopes": ["org.{org}.deploy"], "environments": ["live"]},
            {"methods": ["GET"], "path": "/v1/orgs/{org}/keyrings", "tenant_param": "org", "scopes": ["keyring:list"]},
            {"methods": ["POST"], "path": "/v1/orgs/{org}/keyrings", "tenant_param": "org", "scopes": ["keyring:create"]},
            {"methods": ["GET"], "path": "/v1/orgs/{org}/keyrings/{ring}", "tenant_param": "org", "scopes": ["keyring.{ring}.read"]},
            {"methods": ["DELETE"], "path": "/v1/orgs/{org}/keyrings/{ring}", "tenant_param": "org", "scopes": ["keyring.{ring}.delete"], "ip_allowlist": office},
            {"methods": ["POST"], "path": "/v1/orgs/{org}/keyrings/{ring}/rotate", "tenant_param": "org", "scopes": ["keyring.{ring}.rotate"]},
            {"methods": ["POST"], "path": "/v1/orgs/{org}/keyrings/{ring}/decrypt", "tenant_param": "org", "scopes": ["keyring.{ring}.decrypt"]},
            {"methods": ["POST"], "path": "/v1/orgs/{org}/keyrings/{ring}/sign", "tenant_param": "org", "scopes": ["keyring.{ring}.sign"]},
            {"methods": ["POST"], "path": "/v1/orgs/{org}/keyrings/{ring}/verify", "tenant_param": "org", "scopes": ["keyring.{ring}.verify"]},
            {"methods": ["PUT"], "path": "/v1/orgs/{org}/keyrings/{ring}/encrypt", "tenant_param": "org", "scopes": ["keyring.{ring}.admin"]},
            {"methods": ["GET"], "path": "/v1/orgs/{org}/keyrings/{ring}/versions/*", "tenant_param": "org", "scopes": ["keyring.{ring}.read"]},
            {"methods": ["POST"], "path": "/v1/orgs/{org}/webhooks", "tenant_param": "org", "scopes": ["org.{org}.webhooks"]},
            {"methods": ["GET"], "path": "/v1/orgs/{org}/webhooks/{hook}", "tenant_param": "org", "scopes": ["org.{org}.webhooks"]},
            {"methods": ["GET"], "path": "/v2/orgs/{org}/keyrings/{ring}/encrypt", "tenant_param": "org", "scopes": ["keyring.{ring}.encrypt"]},
            {"methods": ["POST"], "path": "/v1/orgs/{org}/keyrings/{ring}/encrypt/batch", "tenant_param": "org", "scopes": ["keyring.{ring}.encrypt"]},
            {"methods": ["GET", "HEAD"], "path": "/v1/orgs/{org}/keyrings/{ring}/encrypt", "tenant_param": "org", "scopes": ["keyring.{ring}.read"]},
            // Route 52: the one the request matches.
            {
                "methods": ["POST"],
                "path": "/v1/orgs/{org}/keyrings/{ring}/encrypt",
                "tenant_param": "org",
                "scopes": ["keyring.{ring}.encrypt"],
                "any_scopes": ["crypto:operator", "org.{org}.crypto"],
                "ip_allowlist": office,
                "environments": ["live"]
            },
            {"methods": ["POST"], "path": "/v1/orgs/{org}/*", "tenant_param": "org", "scopes": ["org.{org}.write"]},
            {"path": "/v1/*", "scopes": ["api:access"]},
            {"path": "/*", "ip_allowlist": ["10.0.0.0/8"], "scopes": ["admin:root"]}
        ]
    });
    let policy = Policy::from_json(&doc).expect("valid policy");
    assert_eq!(policy.routes.len(), 56);
    let path = canonicalize(PATH, PathRules::default()).unwrap().segments;
    let route = policy.route(METHOD, &path).expect("a route");
    assert_eq!(route.index, 52, "the request must match near the end");
    policy
}

fn record(key: &ApiKey, hasher: &KeyHasher) -> KeyRecord {
    let (hash_version, hash) = hasher.hash(key);
    let grants = [
        "license:read",
        "license:write",
        "billing.invoices:read",
        "users:*",
        "reports.*.export",
        "audit:read",
        "metrics.**",
        "keyring.*.decrypt",
        "keyring.backups.encrypt",
        "org.globex.**",
        "org.acme.**",
        "keyring.*.encrypt",
    ];
    let cidrs = [
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "203.0.113.0/24",
        "198.51.100.7",
        "2001:db8:1::/48",
        "2001:db8:2::/48",
        "fd00::/8",
        "2001:db8:ffff::1",
        "2001:db8:abcd:12::/64",
    ];
    KeyRecord {
        id: key.id().clone(),
        name: "Comms encryption service".into(),
        tag: "comms-encryption-service".into(),
        description: Some("Encrypts outgoing messages for the comms team".into()),
        group: Some("crypto".into()),
        environment: Environment::Live,
        scopes: grants.iter().map(|g| Grant::parse(g).unwrap()).collect(),
        ip_allowlist: IpAllowlist::parse(&cidrs).unwrap(),
        tenants: ["globex", "initech", "umbrella", "acme"]
            .map(String::from)
            .to_vec(),
        metadata: json!({"team": "comms", "ticket": "SEC-1234", "owner": "alice@example.com"})
            .as_object()
            .cloned()
            .unwrap(),
        created_at: NOW.plus_seconds(-30 * 86_400),
        updated_at: NOW.plus_seconds(-86_400),
        // Far enough away that no `Sunset` is due.
        expires_at: Some(NOW.plus_seconds(90 * 86_400)),
        enabled: true,
        revoked_at: None,
        revoke_reason: None,
        rotated_from: None,
        rotated_to: None,
        hash_version,
        hash,
        version: 1,
        rate_tier: None,
        metered: false,
        refill: None,
    }
}

/// Polls a future that never waits (`MemoryStore` answers at once) to completion, without the
/// executor bookkeeping of `block_on`, so that the timings are the decision's own.
fn ready<F: Future>(f: F) -> F::Output {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("MemoryStore futures never wait"),
    }
}

/// Typical edge request headers, the credential near the end.
fn headers(credential: &str) -> Vec<(String, String)> {
    [
        ("host", "api.example.com"),
        ("user-agent", "comms-worker/2.3.1 (+https://example.com)"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
        ("content-type", "application/json"),
        ("content-length", "512"),
        ("cf-connecting-ip", CLIENT_IP),
        ("cf-ray", "8f1c2a3b4d5e6f70-AMS"),
        ("x-request-id", "0c6b3d9e-2f0a-4b7e-9d61-3f1e2a4c5b6d"),
        ("authorization", &format!("Bearer {credential}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn decision(c: &mut Criterion) {
    let hasher = KeyHasher::new(None);
    let policy = policy();
    let key = ApiKey::generate(&policy.key_prefix, Environment::Live).unwrap();
    let rec = record(&key, &hasher);
    // RFC 8037's example seed: a fixed signing key for the token case.
    let keys = keygate::token::TokenKeys::from_secret("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A").unwrap();
    let token_request = keygate::oauth::TokenRequest {
        client_id: rec.id.to_string(),
        client_secret: String::new(),
        scope: None,
        audience: None,
    };
    let (token, _) = keygate::oauth::issue(&keys, &policy.tokens, &token_request, &rec, NOW).unwrap();
    let gateway = Gateway {
        policy,
        hasher,
        tokens: Some(keys),
    };

    let store = MemoryStore::new();
    let warm_cache = RefCell::new(RecordCache::new(1024, 1024, 60, 5));
    let warm = Records {
        store: &store,
        cache: &warm_cache,
    };
    // `put` writes the JSON to the store and the record to this cache: the warm path is a hit.
    block_on(warm.put(rec, NOW)).unwrap();
    // A TTL of 0 caches nothing, so every lookup reads the store and parses the JSON.
    let cold_cache = RefCell::new(RecordCache::new(1024, 1024, 0, 0));
    let cold = Records {
        store: &store,
        cache: &cold_cache,
    };

    let good_headers = headers(key.expose());
    // A typo in the checksum: rejected by the parser, before any lookup.
    let mut typo = key.expose().to_owned();
    let last = typo.pop().unwrap();
    typo.push(if last == '0' { '1' } else { '0' });
    let typo_headers = headers(&typo);

    let request = |headers, ip| RequestFacts {
        method: METHOD,
        path: PATH,
        query: Some("format=json"),
        headers,
        client_ip: ClientIp::parse(ip),
        host: "gw.example",
        has_body: false,
    };
    let ok = request(&good_headers, CLIENT_IP);
    let token_headers = headers(&token);
    let with_token = request(&token_headers, CLIENT_IP);
    let malformed = request(&typo_headers, CLIENT_IP);
    let blocked = request(&good_headers, BLOCKED_IP);

    // Outside the timed loops: make sure each benchmark measures the outcome it is named for.
    for records in [&warm, &cold] {
        match block_on(gateway.decide(&ok, records, NOW)) {
            Decision::Forward(f) => {
                let p = f.principal.expect("an authenticated principal");
                assert_eq!(p.key_id(), key.id());
                assert_eq!(p.tenant.as_deref(), Some("acme"));
                assert!(f.credential.in_bearer_header);
                assert_eq!(f.sunset, None);
            }
            other => panic!("expected Forward, got {other:?}"),
        }
    }
    // A token is decided from its claims: no lookup at all (the cold cache stays empty).
    match block_on(gateway.decide(&with_token, &cold, NOW)) {
        Decision::Forward(f) => assert_eq!(f.principal.expect("a principal").key_id(), key.id()),
        other => panic!("expected Forward for the token, got {other:?}"),
    }
    assert_eq!(warm_cache.borrow().len(), 1);
    assert!(cold_cache.borrow().is_empty());
    assert_eq!(
        block_on(gateway.decide(&malformed, &warm, NOW)),
        Decision::Deny(Denial::MalformedKey)
    );
    assert_eq!(
        block_on(gateway.decide(&blocked, &warm, NOW)),
        Decision::Deny(Denial::IpNotAllowed)
    );

    let mut group = c.benchmark_group("decision");
    group.bench_function("sha256_baseline", |b| {
        b.iter(|| Sha256::digest(black_box(key.expose()).as_bytes()))
    });
    group.bench_function("decide_warm", |b| {
        b.iter(|| ready(gateway.decide(black_box(&ok), &warm, NOW)))
    });
    group.bench_function("decide_token", |b| {
        b.iter(|| ready(gateway.decide(black_box(&with_token), &cold, NOW)))
    });
    group.bench_function("decide_cold", |b| {
        b.iter(|| ready(gateway.decide(black_box(&ok), &cold, NOW)))
    });
    group.bench_function("deny_malformed_key", |b| {
        b.iter(|| ready(gateway.decide(black_box(&malformed), &warm, NOW)))
    });
    group.bench_function("deny_route_ip", |b| {
        b.iter(|| ready(gateway.decide(black_box(&blocked), &warm, NOW)))
    });
    group.finish();
}

/// Start-up cost of a large policy: parsing and validating 500 routes (each with a parameter,
/// two scope templates and an IP allowlist), as the Worker does once per isolate.
fn policy_load(c: &mut Criterion) {
    let routes: Vec<serde_json::Value> = (0..500)
        .map(|i| {
            serde_json::json!({
                "methods": ["GET"],
                "path": format!("/service-{i}/items/{{item}}/*"),
                "scopes": [format!("service-{i}:read"), "item.{item}.read"],
                "ip_allowlist": [format!("10.{}.0.0/16", i % 256)],
            })
        })
        .collect();
    let text = serde_json::json!({ "routes": routes }).to_string();
    c.bench_function("policy_load_500_routes", |b| {
        b.iter(|| {
            let v: serde_json::Value = serde_json::from_str(&text).expect("json");
            Policy::from_json(&v).expect("valid")
        })
    });
}

/// A policy of `n` routes, each `GET {first}/svc-{i}/items/{item}` needing its own scope.
/// `shared = None`: every route has its own literal first segment (`/svc-{i}/...`), as services
/// behind one gateway usually do; `Some(p)`: all of them start with the literal `p` (`/v1`), so
/// the first-segment index cannot narrow the candidates.
fn routes_policy(n: usize, shared: Option<&str>) -> Policy {
    let first = shared.map(|p| format!("/{p}")).unwrap_or_default();
    let routes: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            json!({
                "methods": ["GET"],
                "path": format!("{first}/svc-{i}/items/{{item}}"),
                "scopes": [format!("svc-{i}:read")],
            })
        })
        .collect();
    Policy::from_json(&json!({ "routes": routes })).expect("valid policy")
}

/// Route matching alone (`Policy::route` on the canonical segments), at 10 and at 1,000 routes,
/// the request matching the last route. The issue's target: 1,000 routes cost at most 2x 10.
fn route_matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    for (label, shared) in [("own_prefix", None), ("shared_prefix", Some("v1"))] {
        for n in [10usize, 1000] {
            let policy = routes_policy(n, shared);
            let first = shared.map(|p| format!("/{p}")).unwrap_or_default();
            let path = format!("{first}/svc-{}/items/42", n - 1);
            let segments = canonicalize(&path, PathRules::default()).unwrap().segments;
            let route = policy.route("GET", &segments).expect("a route");
            assert_eq!(route.index, n - 1, "the request matches the last route");
            group.bench_function(format!("{label}_{n}"), |b| {
                b.iter(|| {
                    policy
                        .route(black_box("GET"), black_box(&segments))
                        .map(|r| r.index)
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, decision, route_matching, policy_load);
criterion_main!(benches);
