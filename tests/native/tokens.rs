//! Access tokens through the whole decision: issued by the client-credentials exchange for a
//! key the admin API made, accepted on routes with zero store reads, refused when forged, and
//! ended by the revocation feed when their key changes.

use base64::Engine;
use keygate::decide::{Decision, Denial};
use keygate::key::KeyId;
use keygate::oauth::{self, TokenRequest};
use keygate::record::KeyRecord;
use keygate::store::{CountingStore, MemoryStore};
use serde_json::{Value, json};

use crate::{TOKEN, World, token_keys};

fn record<S>(w: &World<S>, id: &str) -> KeyRecord {
    let json = w
        .registry
        .record_json(&KeyId::parse(id).unwrap())
        .unwrap()
        .unwrap();
    serde_json::from_str(&json).unwrap()
}

/// The exchange for the key `id` (already authenticated), as the edge runs it.
fn exchange<S>(w: &World<S>, id: &str, scope: Option<&str>) -> Result<String, oauth::OAuthError> {
    let req = TokenRequest {
        client_id: id.to_owned(),
        client_secret: String::new(),
        scope: scope.map(str::to_owned),
        audience: None,
    };
    oauth::issue(
        &token_keys(),
        &w.gateway.policy.tokens,
        &req,
        &record(w, id),
        w.now,
    )
    .map(|(t, _)| t)
}

fn with_token<S: keygate::store::KvStore>(
    w: &World<S>,
    path: &str,
    token: &str,
    ip: Option<&str>,
) -> Decision {
    let bearer = format!("Bearer {token}");
    w.decide("GET", path, &[("authorization", &bearer)], ip)
}

fn denied(d: Decision) -> Option<Denial> {
    match d {
        Decision::Deny(d) => Some(d),
        _ => None,
    }
}

#[test]
fn a_token_is_checked_with_zero_store_reads() {
    let w = World::with_store(CountingStore {
        inner: MemoryStore::new(),
        reads: Default::default(),
    });
    let (_, rec) = w.issue(json!({"name": "t", "scopes": ["license:read"]}));
    let id = rec["id"].as_str().unwrap();
    let token = exchange(&w, id, None).unwrap();
    w.store.reads.set(0);
    for _ in 0..3 {
        match with_token(&w, "/licenses/1", &token, None) {
            Decision::Forward(f) => {
                let p = f.principal.unwrap();
                assert_eq!(p.key_id().as_str(), id);
                assert!(f.credential.in_bearer_header, "the token is stripped like a key");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(w.store.reads.get(), 0, "a token never reads the store");
}

#[test]
fn a_narrowed_token_has_only_its_scope() {
    let w = World::new();
    let (_, rec) = w.issue(json!({"name": "t", "scopes": ["license:read", "keyring.r1.encrypt"]}));
    let id = rec["id"].as_str().unwrap();
    let token = exchange(&w, id, Some("license:read")).unwrap();
    assert!(matches!(
        with_token(&w, "/licenses/1", &token, None),
        Decision::Forward(_)
    ));
    let bearer = format!("Bearer {token}");
    let d = w.decide(
        "POST",
        "/keyrings/r1/encrypt",
        &[("authorization", &bearer)],
        None,
    );
    assert!(matches!(denied(d), Some(Denial::InsufficientScope { .. })));
    let e = exchange(&w, id, Some("admin:keys:write")).unwrap_err();
    assert_eq!(e.error, "invalid_scope");
}

#[test]
fn tokens_expire_by_the_clock_passed_in() {
    let mut w = World::new();
    let (_, rec) = w.issue(json!({"name": "t", "scopes": ["license:read"]}));
    let token = exchange(&w, rec["id"].as_str().unwrap(), None).unwrap();
    w.now = w.now.plus_seconds(599);
    assert!(matches!(
        with_token(&w, "/licenses/1", &token, None),
        Decision::Forward(_)
    ));
    w.now = w.now.plus_seconds(1);
    assert_eq!(
        denied(with_token(&w, "/licenses/1", &token, None)),
        Some(Denial::ExpiredToken)
    );
}

#[test]
fn the_client_address_is_checked_on_every_request() {
    let w = World::new();
    let (_, rec) = w.issue(json!({"name": "t", "scopes": ["license:read"], "ip_allowlist": ["10.0.0.0/8"]}));
    let token = exchange(&w, rec["id"].as_str().unwrap(), None).unwrap();
    assert!(matches!(
        with_token(&w, "/licenses/1", &token, Some("10.1.2.3")),
        Decision::Forward(_)
    ));
    assert_eq!(
        denied(with_token(&w, "/licenses/1", &token, Some("192.0.2.1"))),
        Some(Denial::IpNotAllowed)
    );
}

#[test]
fn a_revoked_disabled_or_deleted_key_ends_its_tokens() {
    for (action, want) in [
        ("revoke", Denial::RevokedKey),
        ("disable", Denial::InvalidToken),
        ("narrow", Denial::InvalidToken),
        ("delete", Denial::InvalidKey),
    ] {
        let w = World::new();
        let (_, rec) = w.issue(json!({"name": "t", "scopes": ["license:read"]}));
        let id = rec["id"].as_str().unwrap().to_owned();
        let token = exchange(&w, &id, None).unwrap();
        assert!(matches!(
            with_token(&w, "/licenses/1", &token, None),
            Decision::Forward(_)
        ));
        let path = format!("/admin/keys/{id}");
        match action {
            "revoke" => w.admin("POST", &format!("{path}/revoke"), None),
            "disable" => w.admin("PATCH", &path, Some(json!({"enabled": false}))),
            "narrow" => w.admin("PATCH", &path, Some(json!({"scopes": ["other:read"]}))),
            _ => w.admin("DELETE", &path, None),
        }
        .unwrap();
        assert_eq!(
            denied(with_token(&w, "/licenses/1", &token, None)),
            Some(want),
            "{action}"
        );
    }
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn forged_tokens_are_refused() {
    let w = World::new();
    let (_, rec) = w.issue(json!({"name": "t", "scopes": ["license:read"]}));
    let token = exchange(&w, rec["id"].as_str().unwrap(), None).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap(),
    )
    .unwrap();
    let mut wider = payload.clone();
    wider["scope"] = json!("*");
    let forged = [
        format!("{}.{}.{}", parts[0], b64(&wider), parts[2]),
        format!("{}.{}.", b64(&json!({"alg": "none", "typ": "at+jwt"})), parts[1]),
        format!(
            "{}.{}.{}",
            b64(&json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "nope"})),
            parts[1],
            parts[2]
        ),
        format!("{}.{}.{}", parts[0], parts[1], "A".repeat(86)),
    ];
    for f in forged {
        // `alg: none` with an empty signature is not even token-shaped: a malformed credential.
        let d = denied(with_token(&w, "/licenses/1", &f, None));
        assert!(
            matches!(d, Some(Denial::InvalidToken | Denial::MalformedKey)),
            "{f}: {d:?}"
        );
    }
    // Another issuer's correctly signed token (another deployment's key) is not ours either.
    let other =
        keygate::token::TokenKeys::from_secret("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
    let alien = other.sign(keygate::token::ACCESS_TYP, &payload).unwrap();
    assert_eq!(
        denied(with_token(&w, "/licenses/1", &alien, None)),
        Some(Denial::InvalidToken)
    );
}

#[test]
fn a_token_is_no_admin_credential() {
    let w = World::new();
    let (_, rec) = w.issue(json!({"name": "t", "scopes": ["admin:keys:read"]}));
    let token = exchange(&w, rec["id"].as_str().unwrap(), None).unwrap();
    let e = w.admin_raw("GET", "/admin/keys", &token, None).unwrap_err();
    assert_eq!((e.status, e.code), (401, "invalid_admin_credential"));
    assert!(w.admin_raw("GET", "/admin/keys", TOKEN, None).is_ok());
}

#[test]
fn without_a_feed_or_for_another_audience_a_token_is_refused() {
    let w = World::new();
    let (_, rec) = w.issue(json!({"name": "t", "scopes": ["license:read"]}));
    let id = rec["id"].as_str().unwrap();
    let token = exchange(&w, id, None).unwrap();
    let bearer = format!("Bearer {token}");
    let headers = vec![("authorization".to_owned(), bearer)];
    let facts = keygate::decide::RequestFacts {
        method: "GET",
        path: "/licenses/1",
        query: None,
        headers: &headers,
        client_ip: None,
        host: "gw.example",
        has_body: false,
    };
    // An isolate that never reached the registry knows no revocation: fail closed.
    let never = keygate::revocation::Feed::default();
    match w.gateway.start(&facts, w.now, &never) {
        keygate::decide::Step::Done(Decision::Deny(d), _) => assert_eq!(d, Denial::StoreUnavailable),
        other => panic!("{other:?}"),
    }
    // A token of this signing key for another audience (another deployment sharing the key).
    let mut claims: keygate::token::AccessClaims =
        token_keys().verify(&token, keygate::token::ACCESS_TYP).unwrap();
    claims.aud = "urn:keygate:elsewhere".into();
    let other = token_keys().sign(keygate::token::ACCESS_TYP, &claims).unwrap();
    assert_eq!(
        denied(with_token(&w, "/licenses/1", &other, None)),
        Some(Denial::InvalidToken)
    );
}
