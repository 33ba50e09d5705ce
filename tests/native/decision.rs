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
    // A change that reaches only the replica (no feed entry): the cache holds the old record
    // until its entry expires.
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
    // The admin API runs in the registry, not on KV: it keeps working, and its writes wait in
    // the outbox for the replica to come back.
    let (issued, rec) = w.issue(json!({"name": "k", "scopes": ["license:read"]}));
    let id = rec["id"].as_str().unwrap().to_owned();
    let status = w.admin("GET", "/admin/registry", None).unwrap().body.unwrap();
    assert_eq!(status["replica"]["pending"], 1, "{status}");
    // The gateway reads KV: still closed.
    assert_eq!(
        denial(w.decide("GET", "/licenses/1", &[("x-api-key", &issued)], None)),
        Denial::StoreUnavailable
    );
    // When KV answers again, the pending write lands.
    let kv = MemoryStore::new();
    assert_eq!(
        futures::executor::block_on(w.registry.flush(&kv, 100)).unwrap(),
        1
    );
    assert!(kv.snapshot().contains_key(&format!("key:{id}")));
    let status = w.admin("GET", "/admin/registry", None).unwrap().body.unwrap();
    assert_eq!(status["replica"]["pending"], 0, "{status}");
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

// The two pure steps, driven with no store at all: the caller supplies the lookup's outcome.
mod steps {
    use std::rc::Rc;

    use keygate::credential::CredentialError;
    use keygate::decide::{Decision, Denial, Gateway, Known, RequestFacts, Step};
    use keygate::ip::ClientIp;
    use keygate::key::{ApiKey, Environment, KeyHasher, KeyId, KeyPrefix};
    use keygate::record::KeyRecord;
    use keygate::revocation::Feed;
    use keygate::store::{LookupError, StoreError};
    use keygate::time::Timestamp;
    use serde_json::{Value, json};

    use crate::{T0, policy};

    fn gateway() -> Gateway {
        Gateway {
            policy: policy(),
            hasher: KeyHasher::new(None),
            tokens: None,
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_millis(T0)
    }

    fn headers(key: &str) -> Vec<(String, String)> {
        vec![("x-api-key".to_owned(), key.to_owned())]
    }

    fn facts<'a>(
        method: &'a str,
        path: &'a str,
        headers: &'a Vec<(String, String)>,
        ip: Option<&str>,
    ) -> RequestFacts<'a, Vec<(String, String)>> {
        RequestFacts {
            method,
            path,
            query: None,
            headers,
            client_ip: ip.and_then(ClientIp::parse),
            host: "gw.example",
            has_body: false,
        }
    }

    /// The record `key` was issued with, changed by `extra`.
    fn record(g: &Gateway, key: &ApiKey, extra: Value) -> Rc<KeyRecord> {
        let (version, hash) = g.hasher.hash(key);
        let mut v = json!({
            "id": key.id().as_str(), "name": "k", "tag": "t", "environment": "live",
            "scopes": ["license:read"], "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z", "enabled": true,
            "hash_version": version, "hash": hash,
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        Rc::new(serde_json::from_value(v).unwrap())
    }

    fn live_key() -> ApiKey {
        ApiKey::generate(&KeyPrefix::default(), Environment::Live).unwrap()
    }

    fn done(step: Step<'_, '_>) -> (Decision, Option<usize>, Option<KeyId>) {
        match step {
            Step::Done(d, t) => (d, t.route.get(), t.key_id.into_inner()),
            Step::NeedRecord(p) => panic!("expected a decision, got a lookup of {}", p.key_id()),
        }
    }

    /// Starts `GET /licenses/1` with `key`, which must need its record, and finishes it with
    /// `record` as the lookup's outcome.
    fn finish_with(
        g: &Gateway,
        key: &ApiKey,
        record: Result<Option<Rc<KeyRecord>>, LookupError>,
    ) -> (Decision, Option<usize>, Option<KeyId>) {
        let h = headers(key.expose());
        let Step::NeedRecord(pending) =
            g.start(&facts("GET", "/licenses/1", &h, None), now(), &Feed::default())
        else {
            panic!("a well-formed key needs its record");
        };
        let (d, t) = g.finish(pending, Known::new(record), now());
        (d, t.route.get(), t.key_id.into_inner())
    }

    fn deny(d: Decision) -> Denial {
        match d {
            Decision::Deny(d) => d,
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    #[test]
    fn start_decides_everything_that_needs_no_record() {
        let g = gateway();
        let licenses = g.policy.route("GET", &["licenses", "1"]).unwrap().index;

        let h = headers("kg_live_nope");
        let (d, route, key_id) =
            done(g.start(&facts("GET", "/licenses/1", &h, None), now(), &Feed::default()));
        assert_eq!(deny(d), Denial::MalformedKey);
        assert_eq!((route, key_id), (Some(licenses), None));

        let none = Vec::new();
        let (d, _, _) = done(g.start(&facts("GET", "/licenses/1", &none, None), now(), &Feed::default()));
        assert_eq!(deny(d), Denial::MissingKey);

        let key = live_key();
        let h = headers(key.expose());
        let (d, route, _) = done(g.start(
            &facts("GET", "/internal/x", &h, Some("8.8.8.8")),
            now(),
            &Feed::default(),
        ));
        assert_eq!(deny(d), Denial::IpNotAllowed);
        assert!(route.is_some());
        let (d, route, _) = done(g.start(&facts("GET", "/nowhere", &h, None), now(), &Feed::default()));
        assert_eq!((deny(d), route), (Denial::NoRoute, None));
        let (d, _, _) = done(g.start(&facts("GET", "/%zz", &h, None), now(), &Feed::default()));
        assert_eq!(deny(d), Denial::InvalidPath);

        match done(g.start(&facts("GET", "/public/x", &none, None), now(), &Feed::default())).0 {
            Decision::Forward(f) => assert!(f.principal.is_none()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn start_names_the_record_it_needs() {
        let g = gateway();
        let key = live_key();
        let h = headers(key.expose());
        match g.start(&facts("GET", "/licenses/1", &h, None), now(), &Feed::default()) {
            Step::NeedRecord(p) => {
                assert_eq!(p.key_id(), key.id());
                assert_eq!(
                    p.route_index(),
                    g.policy.route("GET", &["licenses", "1"]).unwrap().index
                );
            }
            Step::Done(d, _) => panic!("{d:?}"),
        }
    }

    #[test]
    fn finish_forwards_a_live_record_and_traces_the_key() {
        let g = gateway();
        let key = live_key();
        let (d, route, key_id) = finish_with(&g, &key, Ok(Some(record(&g, &key, json!({})))));
        match d {
            Decision::Forward(f) => {
                assert_eq!(f.path, "/licenses/1");
                assert_eq!(f.principal.unwrap().key_id(), key.id());
                assert!(f.credential.in_api_key_header);
            }
            other => panic!("{other:?}"),
        }
        assert!(route.is_some());
        assert_eq!(key_id.as_ref(), Some(key.id()));
    }

    #[test]
    fn finish_denies_unknown_keys_and_fails_closed_on_lookup_errors() {
        let g = gateway();
        let key = live_key();
        let (d, _, key_id) = finish_with(&g, &key, Ok(None));
        assert_eq!(deny(d), Denial::InvalidKey);
        assert_eq!(
            key_id.as_ref(),
            Some(key.id()),
            "the denial's log line names the key id"
        );

        let down = Err(LookupError::Store(StoreError("down".into())));
        assert_eq!(deny(finish_with(&g, &key, down).0), Denial::StoreUnavailable);
        let corrupt = Err(LookupError::Corrupt(key.id().clone()));
        assert_eq!(
            deny(finish_with(&g, &key, corrupt).0),
            Denial::RecordInvalid(key.id().clone())
        );
    }

    #[test]
    fn finish_checks_hash_state_and_route() {
        let g = gateway();
        let key = live_key();
        let with = |extra: Value| deny(finish_with(&g, &key, Ok(Some(record(&g, &key, extra)))).0);
        assert_eq!(
            with(json!({"revoked_at": "2026-06-01T00:00:00Z"})),
            Denial::RevokedKey
        );
        assert_eq!(with(json!({"enabled": false})), Denial::DisabledKey);
        assert_eq!(
            with(json!({"expires_at": "2026-06-01T00:00:00Z"})),
            Denial::ExpiredKey
        );
        assert_eq!(with(json!({"hash": "00".repeat(32)})), Denial::InvalidKey);
        assert_eq!(
            with(json!({"scopes": ["other:read"]})),
            Denial::InsufficientScope {
                required: vec!["license:read".into()]
            }
        );
        assert_eq!(
            with(json!({"ip_allowlist": ["10.0.0.0/8"]})),
            Denial::IpNotAllowed,
            "a key IP allowlist and no address"
        );
        // A lookup that returns another key's record, even with this key's hash, is not this key.
        let other = live_key();
        assert_eq!(with(json!({"id": other.id().as_str()})), Denial::InvalidKey);
    }

    #[test]
    fn authenticate_in_two_steps() {
        let g = gateway();
        assert_eq!(
            g.authenticate_start(Err(CredentialError::Missing)).unwrap_err(),
            Denial::MissingKey
        );
        assert_eq!(
            g.authenticate_start(Err(CredentialError::Ambiguous)).unwrap_err(),
            Denial::AmbiguousKey
        );
        assert_eq!(
            g.authenticate_start(Ok("kg_live_nope".into())).unwrap_err(),
            Denial::MalformedKey
        );
        let key = live_key();
        let start = || g.authenticate_start(Ok(key.expose().to_owned())).unwrap();
        assert_eq!(start().key_id(), key.id());
        let rec = record(&g, &key, json!({}));
        let got = g
            .authenticate_finish(start(), Known::new(Ok(Some(rec.clone()))), now())
            .unwrap();
        assert!(Rc::ptr_eq(&got, &rec));
        assert_eq!(
            g.authenticate_finish(start(), Known::new(Ok(None)), now())
                .unwrap_err(),
            Denial::InvalidKey
        );
        let down = Err(LookupError::Store(StoreError("down".into())));
        assert_eq!(
            g.authenticate_finish(start(), Known::new(down), now())
                .unwrap_err(),
            Denial::StoreUnavailable
        );
    }
}
