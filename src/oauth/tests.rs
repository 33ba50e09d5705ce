use base64::Engine;
use serde_json::Value;

use super::*;
use crate::policy::Policy;
use crate::record::tests::sample;
use crate::token::TokenKeys;

const SEED: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";

fn form(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut h = vec![(
        "content-type".to_owned(),
        "application/x-www-form-urlencoded".to_owned(),
    )];
    h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    h
}

fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

fn err(r: Result<TokenRequest, OAuthError>) -> (u16, &'static str) {
    let e = r.unwrap_err();
    (e.status, e.error)
}

#[test]
fn parses_basic_and_form_credentials_but_never_both() {
    let h = form(&[("authorization", &basic("0123456789abcdef", "kg_live_x"))]);
    let r = parse("POST", h.as_slice(), b"grant_type=client_credentials&scope=a+b").unwrap();
    assert_eq!(
        (r.client_id.as_str(), r.client_secret.as_str(), r.scope.as_deref()),
        ("0123456789abcdef", "kg_live_x", Some("a b"))
    );
    let h = form(&[]);
    let r = parse(
        "POST",
        h.as_slice(),
        b"grant_type=client_credentials&client_id=0123456789abcdef&client_secret=kg%5Flive&resource=acme",
    )
    .unwrap();
    assert_eq!(
        (r.client_secret.as_str(), r.audience.as_deref()),
        ("kg_live", Some("acme"))
    );
    let both = form(&[("authorization", &basic("a", "b"))]);
    assert_eq!(
        err(parse(
            "POST",
            both.as_slice(),
            b"grant_type=client_credentials&client_id=a&client_secret=b"
        )),
        (400, "invalid_request")
    );
}

#[test]
fn every_error_code() {
    let h = form(&[]);
    let ok = b"grant_type=client_credentials&client_id=a&client_secret=b";
    assert_eq!(err(parse("GET", h.as_slice(), ok)).0, 405);
    let json = vec![("content-type".to_owned(), "application/json".to_owned())];
    assert_eq!(err(parse("POST", json.as_slice(), ok)), (400, "invalid_request"));
    assert_eq!(
        err(parse("POST", h.as_slice(), b"client_id=a&client_secret=b")),
        (400, "invalid_request")
    );
    assert_eq!(
        err(parse(
            "POST",
            h.as_slice(),
            b"grant_type=password&client_id=a&client_secret=b"
        )),
        (400, "unsupported_grant_type")
    );
    assert_eq!(
        err(parse(
            "POST",
            h.as_slice(),
            b"grant_type=client_credentials&grant_type=client_credentials"
        )),
        (400, "invalid_request"),
        "a repeated parameter"
    );
    assert_eq!(
        err(parse("POST", h.as_slice(), b"grant_type=client_credentials")),
        (401, "invalid_client")
    );
    let bearer = form(&[("authorization", "Bearer eyJhbGciOiJFZERTQSJ9.e30.sig")]);
    assert_eq!(
        err(parse("POST", bearer.as_slice(), b"grant_type=client_credentials")),
        (401, "invalid_client"),
        "a token is never exchanged"
    );
    assert_eq!(
        err(parse(
            "POST",
            h.as_slice(),
            b"grant_type=client_credentials&client_id=a"
        )),
        (400, "invalid_request")
    );
    assert_eq!(
        err(parse(
            "POST",
            h.as_slice(),
            b"grant_type=client_credentials&client_id=a&client_secret=%zz"
        )),
        (400, "invalid_request")
    );
    let e = OAuthError::invalid_client("x");
    assert!(
        e.headers("keygate")
            .iter()
            .any(|(k, v)| *k == "WWW-Authenticate" && v.contains("Basic"))
    );
    assert!(
        e.headers("keygate")
            .contains(&("Cache-Control", "no-store".to_owned()))
    );
    let body: Value = serde_json::from_str(&e.body()).unwrap();
    assert_eq!(body["error"], "invalid_client");
}

fn policy() -> Policy {
    Policy::from_json(&serde_json::json!({"tokens": {"ttl_seconds": 600}})).unwrap()
}

fn request(scope: Option<&str>, audience: Option<&str>) -> TokenRequest {
    TokenRequest {
        client_id: "0123456789abcdef".into(),
        client_secret: "unused here".into(),
        scope: scope.map(str::to_owned),
        audience: audience.map(str::to_owned),
    }
}

#[test]
fn issues_narrowed_tokens_that_never_outlive_the_key() {
    let keys = TokenKeys::from_secret(SEED).unwrap();
    let p = policy();
    let mut rec = sample("0123456789abcdef");
    rec.scopes = vec![
        Grant::parse("license:*").unwrap(),
        Grant::parse("billing:read").unwrap(),
    ];
    rec.tenants = vec!["acme".into()];
    rec.version = 4;
    let now = Timestamp::from_millis(1_800_000_000_000);
    let (token, body) = issue(
        &keys,
        &p.tokens,
        &request(Some("license:read"), Some("acme")),
        &rec,
        now,
    )
    .unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 600);
    assert_eq!(body["scope"], "license:read");
    let claims: AccessClaims = keys.verify(&token, ACCESS_TYP).unwrap();
    assert_eq!(
        (claims.aud.as_str(), claims.tenants.clone(), claims.ver),
        ("acme", vec!["acme".to_owned()], 4)
    );
    assert_eq!(claims.exp, 1_800_000_600);
    // The whole key when no scope is asked for.
    let (_, body) = issue(&keys, &p.tokens, &request(None, None), &rec, now).unwrap();
    assert_eq!(body["scope"], "license:* billing:read");
    // Not covered, not a scope, empty.
    for s in ["admin:keys:write", "license:read billing:write", "Bad Scope", " "] {
        let e = issue(&keys, &p.tokens, &request(Some(s), None), &rec, now).unwrap_err();
        assert_eq!(e.error, "invalid_scope", "{s:?}");
    }
    let e = issue(&keys, &p.tokens, &request(None, Some("globex")), &rec, now).unwrap_err();
    assert_eq!(e.error, "invalid_target");
    // A key expiring in 90 s gets a 90-second token.
    rec.expires_at = Some(now.plus_seconds(90));
    let (_, body) = issue(&keys, &p.tokens, &request(None, None), &rec, now).unwrap();
    assert_eq!(body["expires_in"], 90);
    rec.expires_at = Some(now);
    assert_eq!(
        issue(&keys, &p.tokens, &request(None, None), &rec, now)
            .unwrap_err()
            .error,
        "invalid_client"
    );
}

#[test]
fn errors_never_quote_the_request_and_parsing_is_strict() {
    let key = "kg_live_0123456789abcdef_secretsecret";
    let h = form(&[]);
    let body = format!("grant_type=client_credentials&{key}=1&{key}=2");
    let e = parse("POST", h.as_slice(), body.as_bytes()).unwrap_err();
    assert!(!e.body().contains(key), "{}", e.body());
    // `%+0` is not a percent escape.
    assert!(
        parse(
            "POST",
            h.as_slice(),
            b"grant_type=client_credentials&client_id=a%+0&client_secret=b"
        )
        .is_err()
    );
    // Basic and a different form client_id.
    let both = form(&[("authorization", &basic("0123456789abcdef", "k"))]);
    assert_eq!(
        err(parse(
            "POST",
            both.as_slice(),
            b"grant_type=client_credentials&client_id=ffffffffffffffff"
        )),
        (400, "invalid_request")
    );
    let keys = TokenKeys::from_secret(SEED).unwrap();
    let p = policy();
    let rec = sample("0123456789abcdef");
    let now = Timestamp::from_millis(1_800_000_000_000);
    let e = issue(&keys, &p.tokens, &request(Some(key), None), &rec, now).unwrap_err();
    assert!(!e.body().contains(key), "{}", e.body());
    // Repeats are one scope; too many is refused before a token too large to use is made.
    let (_, body) = issue(
        &keys,
        &p.tokens,
        &request(Some("license:read license:read"), None),
        &rec,
        now,
    )
    .unwrap();
    assert_eq!(body["scope"], "license:read");
    let mut wide = sample("0123456789abcdef");
    wide.scopes = vec![Grant::parse("**").unwrap()];
    let many: Vec<String> = (0..65).map(|i| format!("s{i}:read")).collect();
    let e = issue(
        &keys,
        &p.tokens,
        &request(Some(&many.join(" ")), None),
        &wide,
        now,
    )
    .unwrap_err();
    assert_eq!(e.error, "invalid_scope");
}
