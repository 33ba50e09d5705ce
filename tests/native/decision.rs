use keygate::decide::{Decision, Denial};
use keygate::key::{ApiKey, Environment, KeyHasher, KeyPrefix};
use keygate::problem::Problem;
use keygate::store::{CountingStore, KvStore, MemoryStore};
use serde_json::json;

use crate::{DownStore, World};

fn denial(d: Decision) -> Denial {
    match d {
        Decision::Deny(d) => d,
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn zero_store_reads_for_malformed_keys_route_ip_denials_and_cached_keys() {
    let w = World::with_store(CountingStore {
        inner: MemoryStore::new(),
        reads: Default::default(),
    });
    let (key, _) = w.issue(json!({"name": "k", "scopes": ["license:read"]}));
    w.cache.borrow_mut().clear();
    w.store.reads.set(0);

    assert_eq!(
        denial(w.decide("GET", "/licenses/1", &[("x-api-key", "kg_live_nope")], None)),
        Denial::MalformedKey
    );
    let last = if key.ends_with('0') { '1' } else { '0' };
    let typo = format!("{}{last}", &key[..key.len() - 1]);
    assert_eq!(
        denial(w.decide("GET", "/licenses/1", &[("x-api-key", &typo)], None)),
        Denial::MalformedKey
    );
    assert_eq!(
        denial(w.decide("GET", "/internal/x", &[("x-api-key", &key)], Some("8.8.8.8"))),
        Denial::IpNotAllowed
    );
    assert_eq!(
        w.store.reads.get(),
        0,
        "malformed keys and route-IP denials must not read the store"
    );

    assert!(matches!(
        w.decide("GET", "/licenses/1", &[("x-api-key", &key)], None),
        Decision::Forward(_)
    ));
    assert_eq!(w.store.reads.get(), 1, "the first use reads the record once");
    for _ in 0..5 {
        assert!(matches!(
            w.decide("GET", "/licenses/1", &[("x-api-key", &key)], None),
            Decision::Forward(_)
        ));
    }
    assert_eq!(w.store.reads.get(), 1, "a cached key costs no reads");

    // Unknown ids are cached too: a flood of random well-formed keys costs one read each, once.
    let unknown = ApiKey::generate(&KeyPrefix::default(), Environment::Live).unwrap();
    for _ in 0..5 {
        assert_eq!(
            denial(w.decide("GET", "/licenses/1", &[("x-api-key", unknown.expose())], None)),
            Denial::InvalidKey
        );
    }
    assert_eq!(w.store.reads.get(), 2);
}

#[test]
fn cache_entries_expire_so_other_isolates_changes_arrive() {
    let mut w = World::new();
    let (key, rec) = w.issue(json!({"name": "k", "scopes": ["license:read"]}));
    assert!(matches!(
        w.decide("GET", "/licenses/1", &[("x-api-key", &key)], None),
        Decision::Forward(_)
    ));
    // Another isolate revokes it: only the store changes.
    let id = rec["id"].as_str().unwrap();
    let raw = futures::executor::block_on(w.store.get(&format!("key:{id}")))
        .unwrap()
        .unwrap();
    let mut stored: serde_json::Value = serde_json::from_str(&raw).unwrap();
    stored["revoked_at"] = json!("2027-01-01T00:00:00Z");
    futures::executor::block_on(w.store.put(&format!("key:{id}"), &stored.to_string())).unwrap();
    assert!(
        matches!(
            w.decide("GET", "/licenses/1", &[("x-api-key", &key)], None),
            Decision::Forward(_)
        ),
        "still cached"
    );
    w.now = w.now.plus_seconds(10);
    assert_eq!(
        denial(w.decide("GET", "/licenses/1", &[("x-api-key", &key)], None)),
        Denial::RevokedKey
    );
}

#[test]
fn store_outage_fails_closed_with_503() {
    let w = World::with_store(DownStore);
    let key = ApiKey::generate(&KeyPrefix::default(), Environment::Live).unwrap();
    let d = denial(w.decide("GET", "/licenses/1", &[("x-api-key", key.expose())], None));
    assert_eq!(d, Denial::StoreUnavailable);
    let p = Problem::from_denial(&d, "keygate");
    assert_eq!((p.status, p.code), (503, "store_unavailable"));
    assert!(p.headers.iter().any(|(k, _)| *k == "Retry-After"));
    // Public routes need no store.
    assert!(matches!(
        w.decide("GET", "/public/x", &[], None),
        Decision::Forward(_)
    ));
    // The admin API refuses rather than pretending.
    let err = w
        .admin("POST", "/admin/keys", Some(json!({"name": "k", "scopes": ["a"]})))
        .unwrap_err();
    assert_eq!(err.status, 503);
}

#[test]
fn corrupt_records_and_missing_pepper_fail_closed() {
    let w = World::new();
    let key = ApiKey::generate(&KeyPrefix::default(), Environment::Live).unwrap();
    futures::executor::block_on(w.store.put(&format!("key:{}", key.id()), "{\"id\": 1}")).unwrap();
    assert!(matches!(
        denial(w.decide("GET", "/licenses/1", &[("x-api-key", key.expose())], None)),
        Denial::RecordInvalid(_)
    ));

    // A key issued with a pepper cannot be checked by a deployment that lost it.
    let mut peppered = World::new();
    peppered.gateway.hasher = KeyHasher::new(Some("pepper"));
    let (k, rec) = peppered.issue(json!({"name": "k", "scopes": ["license:read"]}));
    let raw = futures::executor::block_on(
        peppered
            .store
            .get(&format!("key:{}", rec["id"].as_str().unwrap())),
    )
    .unwrap()
    .unwrap();
    assert!(raw.contains("\"hash_version\":\"hmac_sha256\""));
    assert!(matches!(
        peppered.decide("GET", "/licenses/1", &[("x-api-key", &k)], None),
        Decision::Forward(_)
    ));
    peppered.gateway.hasher = KeyHasher::new(None);
    peppered.cache.borrow_mut().clear();
    assert!(matches!(
        denial(peppered.decide("GET", "/licenses/1", &[("x-api-key", &k)], None)),
        Denial::PepperMissing(_)
    ));
}

#[test]
fn tenant_and_scope_and_principal() {
    let w = World::new();
    let (key, rec) =
        w.issue(json!({"name": "k", "scopes": ["org:access", "keyring.*.encrypt"], "tenants": ["acme"]}));
    match w.decide(
        "GET",
        "/orgs/acme/x",
        &[("authorization", &format!("Bearer {key}"))],
        None,
    ) {
        Decision::Forward(f) => {
            let p = f.principal.unwrap();
            assert_eq!(p.key_id().as_str(), rec["id"]);
            assert_eq!(p.scopes_header(), "org:access,keyring.*.encrypt");
            assert_eq!(p.tenant.as_deref(), Some("acme"));
            assert!(f.credential.in_bearer_header && !f.credential.in_api_key_header);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        denial(w.decide("GET", "/orgs/other/x", &[("x-api-key", &key)], None)),
        Denial::TenantNotAllowed
    );
    assert_eq!(
        denial(w.decide("POST", "/keyrings/a%2Eb/encrypt", &[("x-api-key", &key)], None)),
        Denial::InsufficientScope {
            required: vec!["keyring.{ring}.encrypt".into()]
        }
    );
}

#[test]
fn default_allow_forwards_unmatched_paths_unauthenticated() {
    let mut w = World::new();
    w.gateway.policy = keygate::policy::Policy::from_json(&json!({
        "default": "allow",
        "routes": [{"path": "/private/*", "scopes": ["p"]}]
    }))
    .unwrap();
    match w.decide("GET", "/anything/else", &[("x-api-key", "whatever")], None) {
        Decision::Forward(f) => assert!(f.principal.is_none()),
        other => panic!("{other:?}"),
    }
    // A matched route still needs its key, and an undecodable path is refused before routing.
    assert_eq!(
        denial(w.decide("GET", "/private/x", &[], None)),
        Denial::MissingKey
    );
    assert_eq!(denial(w.decide("GET", "/%zz", &[], None)), Denial::InvalidPath);
    assert_eq!(
        denial(w.decide("GET", "/anything/..%2Fprivate/x", &[], None)),
        Denial::InvalidPath
    );
}

#[test]
fn query_keys_only_when_the_policy_opts_in() {
    let mut w = World::new();
    let (key, _) = w.issue(json!({"name": "k", "scopes": ["license:read"]}));
    let facts_with_query = |w: &World, q: &str| {
        let headers: Vec<(String, String)> = vec![];
        let facts = keygate::decide::RequestFacts {
            method: "GET",
            path: "/licenses/1",
            query: Some(q),
            headers: &headers,
            client_ip: None,
            host: "gw.example",
            has_body: false,
        };
        futures::executor::block_on(w.gateway.decide(&facts, &w.records(), w.now))
    };
    let q = format!("a=1&api_key={key}");
    assert_eq!(
        denial(facts_with_query(&w, &q)),
        Denial::MissingKey,
        "off by default"
    );
    let mut doc = json!({"credentials": {"query_param": "api_key"}, "routes": [
        {"methods": ["GET"], "path": "/licenses/*", "scopes": ["license:read"]}
    ]});
    w.gateway.policy = keygate::policy::Policy::from_json(&doc).unwrap();
    match facts_with_query(&w, &q) {
        Decision::Forward(f) => assert!(f.credential.in_query),
        other => panic!("{other:?}"),
    }
    doc["credentials"]["query_param"] = json!("bad name!");
    assert!(keygate::policy::Policy::from_json(&doc).is_err());
}
