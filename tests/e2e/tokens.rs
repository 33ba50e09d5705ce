//! Access tokens through the real worker: the client-credentials exchange at `/oauth/token` and
//! its RFC 6749 §5.2 errors, the token on gateway routes (and what the origin receives: never
//! the token, always a signed `X-Key-Assertion`), the revocation feed ending tokens, tampered
//! tokens over HTTP, and interop with an independent JOSE library (`scripts/verify-jwt.mjs`,
//! jose) against the worker's JWKS.

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::harness::{Resp, random_hex, root};
use crate::{Ctx, forge_key};

type Test = (&'static str, fn(&Ctx));
/// A token request that must fail: what it is, its headers, its form body.
type Case<'a> = (&'a str, Vec<(&'a str, String)>, String);

pub const TESTS: &[Test] = &[
    ("tokens::exchange_with_basic_and_form_fields", exchange),
    ("tokens::exchange_errors_are_rfc6749", exchange_errors),
    ("tokens::token_on_a_route", token_on_a_route),
    (
        "tokens::token_is_never_an_admin_or_client_credential",
        never_a_credential,
    ),
    ("tokens::revoke_ends_tokens_within_2s", revoke_ends_tokens),
    ("tokens::disable_ends_tokens_within_2s", disable_ends_tokens),
    (
        "tokens::delete_and_narrowing_end_tokens_within_2s",
        delete_and_narrow_end_tokens,
    ),
    ("tokens::token_never_outlives_its_key", never_outlives_key),
    ("tokens::tampered_tokens_are_refused", tampered),
    ("tokens::interop_with_jose", interop),
    (
        "tokens::own_tokens_never_reach_the_origin_on_public_routes",
        own_tokens_stay_on_public_routes,
    ),
];

const ACCESS_TYP: &str = "at+jwt";
const ASSERTION_TYP: &str = "keygate-assertion+jwt";
/// The default issuer (and audience) of the shipped policy: `urn:keygate:{realm}`.
const ISSUER: &str = "urn:keygate:keygate";
const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");
const GRANT: &str = "grant_type=client_credentials";

// ---- helpers ------------------------------------------------------------------------------------

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

/// `POST /oauth/token` with a form body.
fn token_req(c: &Ctx, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut h = vec![FORM];
    h.extend_from_slice(headers);
    c.call("POST", "/oauth/token", &h, Some(body))
}

/// A key with `fields` over `{"name": "tokens"}`: (key, id).
fn key(c: &Ctx, fields: Value) -> (String, String) {
    let mut body = json!({"name": "tokens"});
    body.as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    let (k, rec) = c.create(body);
    (k, rec["id"].as_str().unwrap().to_owned())
}

/// A successful token response: 200, never cached, the RFC 6749 §5.1 fields.
fn token_ok(r: &Resp, what: &str) -> Value {
    assert_eq!(r.status, 200, "{what}: {}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"), "{what}");
    assert_eq!(r.header("pragma"), Some("no-cache"), "{what}");
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{what}: {:?}",
        r.header("content-type")
    );
    let v = r.json();
    assert_eq!(v["token_type"], "Bearer", "{what}");
    assert!(v["access_token"].is_string(), "{what}: {}", r.body);
    assert!(v["scope"].is_string(), "{what}: {}", r.body);
    let ttl = v["expires_in"].as_i64().unwrap_or(0);
    assert!((1..=600).contains(&ttl), "{what}: expires_in {ttl}");
    v
}

/// Exchange a key for a token with HTTP Basic, `params` (`&scope=...`) appended.
fn issue(c: &Ctx, key: &str, id: &str, params: &str) -> (String, Value) {
    let r = token_req(
        c,
        &[("Authorization", &basic(id, key))],
        &format!("{GRANT}{params}"),
    );
    let v = token_ok(&r, &format!("exchange{params}"));
    (v["access_token"].as_str().unwrap().to_owned(), v)
}

/// An RFC 6749 §5.2 error: the status, `error`, a description, JSON, never cached, a Basic
/// challenge on 401, and no key in it.
fn oauth_error(r: &Resp, status: u16, error: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{what}: {:?} {}",
        r.header("content-type"),
        r.body
    );
    let v = r.json();
    assert_eq!(v["error"], error, "{what}: {}", r.body);
    assert!(
        v["error_description"].as_str().is_some_and(|d| !d.is_empty()),
        "{what}: {}",
        r.body
    );
    assert_eq!(r.header("cache-control"), Some("no-store"), "{what}");
    if status == 401 {
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"keygate\""),
            "{what}"
        );
    }
    assert!(!r.body.contains("kg_live_"), "{what}: a key in {}", r.body);
}

fn bearer(c: &Ctx, method: &str, path: &str, token: &str, extra: &[(&str, &str)]) -> Resp {
    let auth = format!("Bearer {token}");
    let mut h = vec![("Authorization", auth.as_str())];
    h.extend_from_slice(extra);
    c.call(method, path, &h, None)
}

/// A denial on a gateway route: status, problem code, and (on 401) the Bearer challenge.
fn denied(r: &Resp, status: u16, code: &str, what: &str) {
    assert_eq!(
        (r.status, r.code().as_str()),
        (status, code),
        "{what}: {}",
        r.body
    );
    if status == 401 {
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"keygate\", error=\"invalid_token\""),
            "{what}"
        );
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn segment(seg: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(seg).expect("base64url")).expect("JSON")
}

/// A compact JWS's header and payload, unverified.
fn parts(token: &str) -> (Value, Value) {
    let s: Vec<&str> = token.split('.').collect();
    assert_eq!(s.len(), 3, "{token}");
    (segment(s[0]), segment(s[1]))
}

fn jwks(c: &Ctx) -> Value {
    let r = c.call("GET", "/.well-known/jwks.json", &[], None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Checks a token against the JWKS with ed25519-dalek (not the worker's code): `alg`, `typ`, a
/// `kid` of the set, the signature. Returns the payload.
fn verify_native(jwks: &Value, token: &str, typ: &str) -> Value {
    let (h, p) = parts(token);
    assert_eq!(h["alg"], "EdDSA", "{h}");
    assert_eq!(h["typ"], typ, "{h}");
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == h["kid"])
        .unwrap_or_else(|| panic!("kid {} not in the JWKS {jwks}", h["kid"]));
    let x: [u8; 32] = URL_SAFE_NO_PAD
        .decode(jwk["x"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig).unwrap()).unwrap();
    VerifyingKey::from_bytes(&x)
        .unwrap()
        .verify_strict(input.as_bytes(), &sig)
        .expect("the signature verifies against the JWKS");
    p
}

/// The one request the origin received whose path holds `marker`.
fn received_once(c: &Ctx, marker: &str) -> Value {
    let got = c.origin.received(marker);
    assert_eq!(got.len(), 1, "{marker}: the origin received {got:?}");
    got.into_iter().next().unwrap()
}

/// The origin received nothing that holds any of `secrets` (headers, path, query or body).
fn origin_never_saw(c: &Ctx, secrets: &[&str]) {
    for req in c.origin.log() {
        let text = req.to_string();
        for s in secrets {
            assert!(!text.contains(s), "the origin received {s:?} in {req}");
        }
    }
}

/// From now, the token on `GET path` every 50 ms: the first answer that is not 200 comes
/// within 2 s and is 401 `code`. Returns how long it took.
fn denied_within_2s(c: &Ctx, token: &str, path: &str, code: &str, what: &str) -> Duration {
    let t0 = Instant::now();
    loop {
        let tick = Instant::now();
        let r = bearer(c, "GET", path, token, &[]);
        if r.status != 200 {
            let took = t0.elapsed();
            denied(&r, 401, code, what);
            assert!(took <= Duration::from_secs(2), "{what}: denied after {took:?}");
            return took;
        }
        assert!(
            t0.elapsed() <= Duration::from_secs(2),
            "{what}: the token still works {:?} after the admin answered",
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50).saturating_sub(tick.elapsed()));
    }
}

/// `node scripts/verify-jwt.mjs <jwks> <token> [typ]`: (exit success, stdout, stderr).
fn verify_jwt(jwks: &str, token: &str, typ: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new("node");
    cmd.arg("scripts/verify-jwt.mjs").arg(jwks).arg(token);
    if let Some(t) = typ {
        cmd.arg(t);
    }
    let out = cmd
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run node scripts/verify-jwt.mjs: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn random_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).unwrap();
    seed
}

/// Forgeries of `token` (a license:read access token), each with what it is: a payload claim
/// changed under the original signature, `alg: none` (empty and original signature), a
/// different Ed25519 key under the gateway's kid, and HS256 keyed with the JWKS public key.
/// Every payload but the first two grants `license:write` as well.
fn forgeries(token: &str, jwks: &Value) -> Vec<(&'static str, String)> {
    let s: Vec<&str> = token.split('.').collect();
    let (h, p) = parts(token);
    let kid = h["kid"].as_str().unwrap().to_owned();
    let mut elevated = p.clone();
    elevated["scope"] = json!("license:read license:write");
    let elevated = b64(elevated.to_string().as_bytes());
    let mut later = p.clone();
    later["exp"] = json!(p["exp"].as_i64().unwrap() + 86_400);
    let later = b64(later.to_string().as_bytes());
    let header = |alg: &str| {
        b64(json!({"alg": alg, "typ": ACCESS_TYP, "kid": kid})
            .to_string()
            .as_bytes())
    };
    let other = SigningKey::from_bytes(&random_seed());
    let by_other = {
        let input = format!("{}.{elevated}", s[0]);
        format!("{input}.{}", b64(&other.sign(input.as_bytes()).to_bytes()))
    };
    let x = jwks["keys"][0]["x"].as_str().unwrap();
    let hs256 = |secret: &[u8]| {
        let input = format!("{}.{elevated}", header("HS256"));
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", b64(&mac.finalize().into_bytes()))
    };
    vec![
        ("scope claim flipped", format!("{}.{elevated}.{}", s[0], s[2])),
        ("exp claim extended", format!("{}.{later}.{}", s[0], s[2])),
        (
            "alg none, original signature",
            format!("{}.{elevated}.{}", header("none"), s[2]),
        ),
        (
            "alg none, empty signature",
            format!("{}.{elevated}.", header("none")),
        ),
        ("another Ed25519 key under our kid", by_other),
        (
            "HS256 keyed with the JWKS public key bytes",
            hs256(&URL_SAFE_NO_PAD.decode(x).unwrap()),
        ),
        ("HS256 keyed with the JWKS x string", hs256(x.as_bytes())),
    ]
}

// ---- the exchange -------------------------------------------------------------------------------

fn exchange(c: &Ctx) {
    let (k, id) = key(
        c,
        json!({"scopes": ["license:read", "license:write"], "tenants": ["acme", "globex"]}),
    );
    let set = jwks(c);
    // HTTP Basic.
    let (token, v) = issue(c, &k, &id, "");
    assert_eq!(v["scope"], "license:read license:write");
    assert!(!v.to_string().contains(&k), "the key echoed: {v}");
    let (h, p) = parts(&token);
    assert_eq!(h["typ"], ACCESS_TYP);
    assert_eq!(h["alg"], "EdDSA");
    assert_eq!(h["kid"], set["keys"][0]["kid"]);
    assert_eq!(h.as_object().unwrap().len(), 3, "only alg, typ, kid: {h}");
    let claims = verify_native(&set, &token, ACCESS_TYP);
    assert_eq!(claims, p);
    assert_eq!(p["sub"], id.as_str());
    assert_eq!(p["client_id"], id.as_str());
    assert_eq!(p["iss"], ISSUER);
    assert_eq!(p["aud"], ISSUER, "no audience asked: the policy's");
    assert_eq!(p["scope"], "license:read license:write");
    assert_eq!(p["environment"], "live");
    assert_eq!(p["tenants"], json!(["acme", "globex"]));
    assert_eq!(p["ver"], 1);
    assert_eq!(
        p["exp"].as_i64().unwrap() - p["iat"].as_i64().unwrap(),
        v["expires_in"].as_i64().unwrap()
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((p["iat"].as_i64().unwrap() - now).abs() <= 5, "iat {p}");
    let jti = p["jti"].as_str().unwrap();
    assert!(
        jti.len() == 16 && jti.bytes().all(|b| b.is_ascii_hexdigit()),
        "{jti}"
    );

    // Form fields, narrowed to one scope; a fresh jti each time.
    let r = token_req(
        c,
        &[],
        &format!("{GRANT}&client_id={id}&client_secret={k}&scope=license%3Aread"),
    );
    let v = token_ok(&r, "form fields");
    assert_eq!(v["scope"], "license:read");
    let p2 = verify_native(&set, v["access_token"].as_str().unwrap(), ACCESS_TYP);
    assert_eq!(
        (p2["sub"].as_str(), p2["scope"].as_str()),
        (Some(id.as_str()), Some("license:read"))
    );
    assert_ne!(p2["jti"], p["jti"]);

    // An audience (or resource) names one of the key's tenants, and narrows the token to it.
    let (_, v) = issue(c, &k, &id, "&audience=acme");
    let p = parts(v["access_token"].as_str().unwrap()).1;
    assert_eq!(
        (p["aud"].clone(), p["tenants"].clone()),
        (json!("acme"), json!(["acme"]))
    );
    let (_, v) = issue(c, &k, &id, "&resource=globex&scope=license:write");
    let p = parts(v["access_token"].as_str().unwrap()).1;
    assert_eq!(
        (p["aud"].clone(), p["tenants"].clone(), p["scope"].clone()),
        (json!("globex"), json!(["globex"]), json!("license:write"))
    );
    // Basic credentials are form-encoded before base64 (RFC 6749 §2.3.1): `%5F` is `_`.
    let encoded = k.replace('_', "%5F");
    let r = token_req(c, &[("Authorization", &basic(&id, &encoded))], GRANT);
    token_ok(&r, "Basic with a form-encoded secret");
}

fn exchange_errors(c: &Ctx) {
    let (k, id) = key(c, json!({"scopes": ["license:read"], "tenants": ["acme"]}));
    let (other_k, other_id) = key(c, json!({"scopes": ["license:read"]}));
    let auth = basic(&id, &k);
    let basic_h = [("Authorization", auth.as_str())];
    let (token, _) = issue(c, &k, &id, "");

    // invalid_request (400): the request itself.
    let get = c.call("GET", "/oauth/token", &basic_h, None);
    oauth_error(&get, 405, "invalid_request", "GET");
    let r = c.call(
        "POST",
        "/oauth/token",
        &[basic_h[0], ("Content-Type", "application/json")],
        Some(&json!({"grant_type": "client_credentials"}).to_string()),
    );
    oauth_error(&r, 400, "invalid_request", "JSON content type");
    let r = c.call("POST", "/oauth/token", &basic_h, Some(GRANT));
    oauth_error(&r, 400, "invalid_request", "no content type");
    for (body, what) in [
        ("scope=license:read".to_owned(), "no grant_type"),
        (format!("{GRANT}&{GRANT}"), "grant_type repeated"),
        (
            format!("{GRANT}&scope=license:read&scope=license:read"),
            "scope repeated",
        ),
        (
            format!("{GRANT}&audience=acme&resource=acme"),
            "audience and resource",
        ),
        (format!("{GRANT}&scope=%zz"), "bad form encoding"),
        (format!("{GRANT}&pad={}", "a".repeat(9000)), "body over 8 KiB"),
    ] {
        oauth_error(&token_req(c, &basic_h, &body), 400, "invalid_request", what);
    }
    let r = token_req(c, &basic_h, &format!("{GRANT}&client_id={id}&client_secret={k}"));
    oauth_error(&r, 400, "invalid_request", "Basic and form fields at once");
    let r = token_req(c, &[], &format!("{GRANT}&client_id={id}"));
    oauth_error(&r, 400, "invalid_request", "client_id without client_secret");
    let r = token_req(c, &[], &format!("{GRANT}&client_secret={k}"));
    oauth_error(&r, 400, "invalid_request", "client_secret without client_id");

    // unsupported_grant_type (400).
    for g in [
        "password",
        "authorization_code",
        "refresh_token",
        "CLIENT_CREDENTIALS",
    ] {
        let r = token_req(c, &basic_h, &format!("grant_type={g}"));
        oauth_error(&r, 400, "unsupported_grant_type", g);
    }

    // invalid_client (401, Basic challenge): whatever is wrong with the client.
    let (revoked_k, revoked_id) = key(c, json!({"scopes": ["license:read"]}));
    assert_eq!(
        c.admin(
            "POST",
            &format!("/admin/keys/{revoked_id}/revoke"),
            Some(json!({}))
        )
        .status,
        200
    );
    let (disabled_k, disabled_id) = key(c, json!({"scopes": ["license:read"]}));
    assert_eq!(
        c.admin(
            "PATCH",
            &format!("/admin/keys/{disabled_id}"),
            Some(json!({"enabled": false}))
        )
        .status,
        200
    );
    let (ip_k, ip_id) = key(
        c,
        json!({"scopes": ["license:read"], "ip_allowlist": ["198.51.100.0/24"]}),
    );
    let unknown_id = random_hex(8);
    let cases: Vec<Case> = vec![
        ("no credentials", vec![], GRANT.to_owned()),
        (
            "wrong secret for the id",
            vec![("Authorization", basic(&id, &forge_key("live", &id)))],
            GRANT.to_owned(),
        ),
        (
            "unknown key",
            vec![(
                "Authorization",
                basic(&unknown_id, &forge_key("live", &unknown_id)),
            )],
            GRANT.to_owned(),
        ),
        (
            "another key's id (Basic)",
            vec![("Authorization", basic(&other_id, &k))],
            GRANT.to_owned(),
        ),
        (
            "another key's id (form)",
            vec![],
            format!("{GRANT}&client_id={id}&client_secret={other_k}"),
        ),
        (
            "a token as client_secret (Basic)",
            vec![("Authorization", basic(&id, &token))],
            GRANT.to_owned(),
        ),
        (
            "a token as client_secret (form)",
            vec![],
            format!("{GRANT}&client_id={id}&client_secret={token}"),
        ),
        (
            "a Bearer token",
            vec![("Authorization", format!("Bearer {token}"))],
            GRANT.to_owned(),
        ),
        (
            "a Bearer key",
            vec![("Authorization", format!("Bearer {k}"))],
            GRANT.to_owned(),
        ),
        (
            "Basic that does not decode",
            vec![("Authorization", "Basic !!!".to_owned())],
            GRANT.to_owned(),
        ),
        (
            "revoked key",
            vec![("Authorization", basic(&revoked_id, &revoked_k))],
            GRANT.to_owned(),
        ),
        (
            "disabled key",
            vec![("Authorization", basic(&disabled_id, &disabled_k))],
            GRANT.to_owned(),
        ),
        (
            "key from an address outside its allowlist",
            vec![
                ("Authorization", basic(&ip_id, &ip_k)),
                ("CF-Connecting-IP", "203.0.113.9".to_owned()),
            ],
            GRANT.to_owned(),
        ),
        (
            "key with an allowlist, no client address",
            vec![("Authorization", basic(&ip_id, &ip_k))],
            GRANT.to_owned(),
        ),
    ];
    for (what, headers, body) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = token_req(c, &h, body);
        oauth_error(&r, 401, "invalid_client", what);
        assert!(!r.body.contains(token.as_str()), "{what}: the token echoed");
    }
    // The allowlisted key from inside its allowlist, for contrast; the token carries the list.
    let ip_auth = basic(&ip_id, &ip_k);
    let r = token_req(
        c,
        &[("Authorization", &ip_auth), ("CF-Connecting-IP", "198.51.100.7")],
        GRANT,
    );
    let v = token_ok(&r, "allowlisted key from inside");
    assert_eq!(
        parts(v["access_token"].as_str().unwrap()).1["ip_allowlist"],
        json!(["198.51.100.0/24"])
    );

    // invalid_scope (400): not held, not a scope, empty.
    for (scope, what) in [
        ("license:write", "a scope the key does not hold"),
        ("license:read%20license:write", "one held, one not"),
        ("bad!scope", "not a scope"),
        ("", "empty"),
        ("%20", "blank"),
    ] {
        let r = token_req(c, &basic_h, &format!("{GRANT}&scope={scope}"));
        oauth_error(&r, 400, "invalid_scope", what);
    }
    // invalid_target (400): an audience that is not a tenant of the key.
    for param in ["audience=globex", "resource=globex", "audience=Acme"] {
        let r = token_req(c, &basic_h, &format!("{GRANT}&{param}"));
        oauth_error(&r, 400, "invalid_target", param);
    }
    let r = token_req(
        c,
        &[("Authorization", &basic(&other_id, &other_k))],
        &format!("{GRANT}&audience=acme"),
    );
    oauth_error(&r, 400, "invalid_target", "audience for a key with no tenants");

    // The token endpoint is the gateway's own: nothing of it ever reaches the origin.
    assert!(
        c.origin.received("/oauth/token").is_empty(),
        "the origin saw /oauth/token"
    );
    origin_never_saw(c, &[&k, &token, &revoked_k, &ip_k]);
    // Last, so that the checks above run whatever this says.
    assert_eq!(
        get.header("allow"),
        Some("POST"),
        "RFC 9110 §15.5.6: a 405 must list the allowed methods"
    );
}

// ---- the token on a route -----------------------------------------------------------------------

fn token_on_a_route(c: &Ctx) {
    let (k, id) = key(
        c,
        json!({
            "scopes": ["license:read", "license:write", "org:access"],
            "tenants": ["acme", "globex"],
            "metadata": {"plan": "gold", "owner": "e2e"},
            "ip_allowlist": ["198.51.100.0/24"],
        }),
    );
    let inside = ("CF-Connecting-IP", "198.51.100.7");
    let auth = basic(&id, &k);
    let r = token_req(c, &[("Authorization", &auth), inside], GRANT);
    let token = token_ok(&r, "full token")["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let sig = token.rsplit('.').next().unwrap().to_owned();
    let set = jwks(c);

    // Forwarded, with the principal and a signed assertion; client X-Key-* headers stripped.
    let marker = format!("tok-route-{}", random_hex(4));
    let path = format!("/licenses/{marker}");
    let r = bearer(
        c,
        "GET",
        &path,
        &token,
        &[
            inside,
            ("X-Key-Id", "0000000000000000"),
            ("X-Key-Assertion", "forged.by.client"),
            ("X-Key-Scopes", "**"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.echoed();
    let got = received_once(c, &marker);
    let headers = got["headers"].as_object().unwrap();
    assert!(headers.get("authorization").is_none(), "{got}");
    for (name, value) in headers {
        let value = value.as_str().unwrap_or_default();
        for secret in [token.as_str(), sig.as_str(), k.as_str()] {
            assert!(
                !value.contains(secret),
                "the origin got a secret in {name}: {value}"
            );
        }
    }
    assert_eq!(headers["x-key-id"], id.as_str(), "{got}");
    assert_eq!(headers["x-key-scopes"], "license:read,license:write,org:access");
    assert_eq!(headers["x-key-environment"], "live");
    let assertion = headers["x-key-assertion"].as_str().unwrap();
    assert_ne!(assertion, "forged.by.client");
    let a = verify_native(&set, assertion, ASSERTION_TYP);
    assert_eq!(a["sub"], id.as_str());
    assert_eq!(a["client_id"], id.as_str());
    assert_eq!(
        (a["iss"].as_str(), a["aud"].as_str()),
        (Some(ISSUER), Some(ISSUER))
    );
    assert_eq!(a["htm"], "GET");
    assert_eq!(a["htu"], got["path"]);
    assert_eq!(a["htu"], path.as_str());
    assert_eq!(a["scope"], "license:read license:write org:access");
    assert_eq!(a["ip_allowlist"], json!(["198.51.100.0/24"]));
    assert_eq!(a["exp"].as_i64().unwrap() - a["iat"].as_i64().unwrap(), 60);
    assert_ne!(a["jti"], parts(&token).1["jti"]);

    // The key's IP allowlist holds for its token.
    let r = bearer(c, "GET", &path, &token, &[("CF-Connecting-IP", "203.0.113.9")]);
    denied(
        &r,
        403,
        "ip_not_allowed",
        "token from outside the key's allowlist",
    );
    let r = bearer(c, "GET", &path, &token, &[]);
    denied(&r, 403, "ip_not_allowed", "token without a client address");

    // Tenants: the route's tenant must be one the token carries.
    let marker_t = format!("tok-tenant-{}", random_hex(4));
    let r = bearer(c, "GET", &format!("/orgs/acme/{marker_t}"), &token, &[inside]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.echoed()["headers"]["x-key-tenant"], "acme");
    let (acme_only, _) = {
        let r = token_req(
            c,
            &[("Authorization", &auth), inside],
            &format!("{GRANT}&audience=acme"),
        );
        let v = token_ok(&r, "audience acme");
        (v["access_token"].as_str().unwrap().to_owned(), v)
    };
    let r = bearer(
        c,
        "GET",
        &format!("/orgs/globex/{marker_t}"),
        &acme_only,
        &[inside],
    );
    denied(&r, 403, "tenant_not_allowed", "acme-only token on globex");
    let r = bearer(
        c,
        "GET",
        &format!("/orgs/acme/{marker_t}-2"),
        &acme_only,
        &[inside],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let got = received_once(c, &format!("{marker_t}-2"));
    let a = verify_native(
        &set,
        got["headers"]["x-key-assertion"].as_str().unwrap(),
        ASSERTION_TYP,
    );
    assert_eq!(a["tenants"], json!(["acme"]));

    // A narrowed token: license:read only, from a key that also holds license:write.
    let r = token_req(
        c,
        &[("Authorization", &auth), inside],
        &format!("{GRANT}&scope=license:read"),
    );
    let narrow = token_ok(&r, "narrowed")["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let marker_n = format!("tok-narrow-{}", random_hex(4));
    let r = bearer(c, "GET", &format!("/licenses/{marker_n}-get"), &narrow, &[inside]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        received_once(c, &format!("{marker_n}-get"))["headers"]["x-key-scopes"],
        "license:read"
    );
    let r = bearer(
        c,
        "POST",
        &format!("/licenses/{marker_n}-post"),
        &narrow,
        &[inside],
    );
    denied(
        &r,
        403,
        "insufficient_scope",
        "narrowed token on a license:write route",
    );
    assert_eq!(r.json()["required_scopes"], json!(["license:write"]));
    assert!(c.origin.received(&format!("{marker_n}-post")).is_empty());
    // The key itself may: the narrowing is the token's.
    let r = c.call(
        "POST",
        &format!("/licenses/{marker_n}-key"),
        &[("X-API-Key", &k), inside],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // As may the full token.
    let r = bearer(
        c,
        "POST",
        &format!("/licenses/{marker_n}-full"),
        &token,
        &[inside],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        verify_native(
            &set,
            received_once(c, &format!("{marker_n}-full"))["headers"]["x-key-assertion"]
                .as_str()
                .unwrap(),
            ASSERTION_TYP
        )["htm"],
        "POST"
    );
    origin_never_saw(c, &[&token, &narrow, &acme_only, &k]);
}

fn never_a_credential(c: &Ctx) {
    let (k, id) = key(
        c,
        json!({"scopes": ["admin:keys:read", "admin:keys:write", "license:read"]}),
    );
    // The key is an admin credential; its token, whatever its scope, is not.
    let r = c.admin_as(&k, "GET", "/admin/keys?limit=1", None, None);
    assert_eq!(r.status, 200, "the key as admin credential: {}", r.body);
    let (token, v) = issue(c, &k, &id, "");
    assert!(v["scope"].as_str().unwrap().contains("admin:keys:write"));
    for (method, path, body) in [
        ("GET", "/admin/keys?limit=1".to_owned(), None),
        ("GET", format!("/admin/keys/{id}"), None),
        (
            "POST",
            "/admin/keys".to_owned(),
            Some(json!({"name": "from a token", "scopes": ["license:read"]})),
        ),
        ("POST", format!("/admin/keys/{id}/revoke"), Some(json!({}))),
    ] {
        let r = c.admin_as(&token, method, &path, body.clone(), None);
        assert_eq!(
            (r.status, r.code().as_str()),
            (401, "invalid_admin_credential"),
            "token as admin credential: {method} {path}: {}",
            r.body
        );
        let r = c.call(
            method,
            &path,
            &[("X-API-Key", &token), ("Content-Type", "application/json")],
            body.map(|b| b.to_string()).as_deref(),
        );
        assert_eq!(r.status, 401, "token in X-API-Key: {method} {path}: {}", r.body);
    }
    // Nothing was written: the key is still live and still the only one named so.
    let rec = c.admin("GET", &format!("/admin/keys/{id}"), None).json();
    assert_eq!(rec["status"], "active", "{rec}");
    // Not at the token endpoint either: tokens are not exchanged for tokens.
    for (what, headers, body) in [
        (
            "Bearer",
            vec![("Authorization", format!("Bearer {token}"))],
            GRANT.to_owned(),
        ),
        (
            "Basic",
            vec![("Authorization", basic(&id, &token))],
            GRANT.to_owned(),
        ),
        (
            "form",
            vec![],
            format!("{GRANT}&client_id={id}&client_secret={token}"),
        ),
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        oauth_error(&token_req(c, &h, &body), 401, "invalid_client", what);
    }
    // The token still works where it should.
    let marker = format!("tok-admin-{}", random_hex(4));
    assert_eq!(
        bearer(c, "GET", &format!("/licenses/{marker}"), &token, &[]).status,
        200
    );
}

// ---- revocation ---------------------------------------------------------------------------------

/// A live token on a marked path: issue it, use it (200), and return (key, id, token, path).
fn live_token(c: &Ctx, name: &str) -> (String, String, String, String) {
    let (k, id) = key(c, json!({"scopes": ["license:read", "license:write"]}));
    let (token, _) = issue(c, &k, &id, "");
    let path = format!("/licenses/tok-{name}-{}", random_hex(4));
    for _ in 0..2 {
        let r = bearer(c, "GET", &path, &token, &[]);
        assert_eq!(r.status, 200, "{name}: before: {}", r.body);
    }
    (k, id, token, path)
}

/// After the denial, the token stays denied (also once caches and the feed have turned over).
fn stays_denied(c: &Ctx, token: &str, path: &str, code: &str, what: &str) {
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(1200));
        denied(&bearer(c, "GET", path, token, &[]), 401, code, what);
    }
}

fn revoke_ends_tokens(c: &Ctx) {
    let (k, id, token, path) = live_token(c, "revoke");
    let r = c.admin(
        "POST",
        &format!("/admin/keys/{id}/revoke"),
        Some(json!({"reason": "e2e"})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let took = denied_within_2s(c, &token, &path, "revoked_key", "revoked key's token");
    println!("tokens: revoked key's token denied after {} ms", took.as_millis());
    stays_denied(c, &token, &path, "revoked_key", "revoked key's token");
    oauth_error(
        &token_req(c, &[("Authorization", &basic(&id, &k))], GRANT),
        401,
        "invalid_client",
        "exchange after revoke",
    );
}

fn disable_ends_tokens(c: &Ctx) {
    let (_, id, token, path) = live_token(c, "disable");
    let key_path = format!("/admin/keys/{id}");
    let r = c.admin("PATCH", &key_path, Some(json!({"enabled": false})));
    assert_eq!(r.status, 200, "{}", r.body);
    // The token's key changed after it was issued: the token is no longer the key's.
    let took = denied_within_2s(c, &token, &path, "invalid_token", "disabled key's token");
    println!(
        "tokens: disabled key's token denied after {} ms",
        took.as_millis()
    );
    // Enabling the key again does not bring back a token issued before the disable.
    let r = c.admin("PATCH", &key_path, Some(json!({"enabled": true})));
    assert_eq!(r.status, 200, "{}", r.body);
    stays_denied(c, &token, &path, "invalid_token", "token from before the disable");
}

fn delete_and_narrow_end_tokens(c: &Ctx) {
    let (_, id, token, path) = live_token(c, "delete");
    let r = c.admin("DELETE", &format!("/admin/keys/{id}"), None);
    assert_eq!(r.status, 204, "{}", r.body);
    let took = denied_within_2s(c, &token, &path, "invalid_key", "deleted key's token");
    println!("tokens: deleted key's token denied after {} ms", took.as_millis());

    let (k, id, token, path) = live_token(c, "narrow");
    let r = c.admin(
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"scopes": ["license:write"]})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let took = denied_within_2s(c, &token, &path, "invalid_token", "narrowed key's token");
    println!(
        "tokens: narrowed key's token denied after {} ms",
        took.as_millis()
    );
    // The key no longer holds license:read: a new token cannot ask for it.
    let r = token_req(
        c,
        &[("Authorization", &basic(&id, &k))],
        &format!("{GRANT}&scope=license:read"),
    );
    oauth_error(&r, 400, "invalid_scope", "license:read after narrowing");
}

fn never_outlives_key(c: &Ctx) {
    let (k, id) = key(c, json!({"scopes": ["license:read"], "expires_in": 4}));
    let (token, v) = issue(c, &k, &id, "");
    let ttl = v["expires_in"].as_i64().unwrap();
    assert!(ttl <= 4, "a token outlives its key by {} s", ttl - 4);
    let path = format!("/licenses/tok-expiry-{}", random_hex(4));
    assert_eq!(bearer(c, "GET", &path, &token, &[]).status, 200);
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let r = bearer(c, "GET", &path, &token, &[]);
        if r.status != 200 {
            denied(&r, 401, "expired_token", "token past its key's expiry");
            break;
        }
        assert!(Instant::now() < deadline, "the token works after its key expired");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The token's exp is the key's expiry rounded down to the second: the key itself may last
    // up to a second longer, never less.
    let deadline = Instant::now() + Duration::from_millis(1500);
    loop {
        let r = c.call("GET", &path, &[("X-API-Key", &k)], None);
        if r.status != 200 {
            denied(&r, 401, "expired_key", "the key itself");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the key works over a second after its token expired"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    oauth_error(
        &token_req(c, &[("Authorization", &basic(&id, &k))], GRANT),
        401,
        "invalid_client",
        "exchange with an expired key",
    );
}

// ---- tampering ----------------------------------------------------------------------------------

fn tampered(c: &Ctx) {
    let (k, id) = key(c, json!({"scopes": ["license:read"]}));
    let (token, _) = issue(c, &k, &id, "");
    let set = jwks(c);
    let marker = format!("tok-tamper-{}", random_hex(4));
    // The genuine token reads; none of the forgeries writes (or reads).
    assert_eq!(
        bearer(c, "GET", &format!("/licenses/{marker}-genuine"), &token, &[]).status,
        200
    );
    for (what, forged) in forgeries(&token, &set) {
        for method in ["POST", "GET"] {
            let r = bearer(c, method, &format!("/licenses/{marker}"), &forged, &[]);
            assert_eq!(r.status, 401, "{what} ({method}): {}", r.body);
            let code = r.code();
            // An empty signature segment is not a JWT's shape: refused as a malformed key.
            let expected = if what == "alg none, empty signature" {
                "malformed_key"
            } else {
                "invalid_token"
            };
            assert_eq!(code, expected, "{what} ({method})");
        }
    }
    // An assertion is signed by the gateway too, but is not an access token (typ).
    let r = bearer(c, "GET", &format!("/licenses/{marker}-a"), &token, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let assertion = received_once(c, &format!("{marker}-a"))["headers"]["x-key-assertion"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = bearer(c, "GET", &format!("/licenses/{marker}"), &assertion, &[]);
    denied(&r, 401, "invalid_token", "an X-Key-Assertion as a bearer token");
    // Truncated signature, and the token with a stray character.
    let truncated = &token[..token.len() - 2];
    denied(
        &bearer(c, "GET", &format!("/licenses/{marker}"), truncated, &[]),
        401,
        "invalid_token",
        "truncated signature",
    );
    assert!(
        c.origin.received(&marker).iter().all(|r| {
            let p = r["path"].as_str().unwrap_or_default();
            p.ends_with("-genuine") || p.ends_with("-a")
        }),
        "a forgery reached the origin"
    );
}

// ---- interop ------------------------------------------------------------------------------------

fn interop(c: &Ctx) {
    let r = c.call("GET", "/.well-known/jwks.json", &[], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("public, max-age=300"));
    let set = r.json();
    let keys = set["keys"].as_array().unwrap();
    assert!(!keys.is_empty(), "{set}");
    for jwk in keys {
        assert_eq!(
            (
                jwk["kty"].as_str(),
                jwk["crv"].as_str(),
                jwk["alg"].as_str(),
                jwk["use"].as_str()
            ),
            (Some("OKP"), Some("Ed25519"), Some("EdDSA"), Some("sig")),
            "{jwk}"
        );
        assert_eq!(jwk["x"].as_str().unwrap().len(), 43, "{jwk}");
        assert!(jwk.get("d").is_none(), "the JWKS publishes a private key: {jwk}");
    }
    let file = std::env::temp_dir().join(format!("keygate-jwks-{}.json", random_hex(6)));
    std::fs::write(&file, &r.body).unwrap();
    let jwks_file = file.to_string_lossy().into_owned();

    let (k, id) = key(
        c,
        json!({"scopes": ["license:read", "license:write"], "metadata": {"plan": "gold", "seats": 5}}),
    );
    let (token, _) = issue(c, &k, &id, "");

    // (a) An access token verifies with jose, from the file and from the JSON itself.
    for jwks in [jwks_file.as_str(), r.body.as_str()] {
        let (ok, out, err) = verify_jwt(jwks, &token, None);
        assert!(ok, "jose refused the access token: {err}");
        let p: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(p["sub"], id.as_str());
        assert_eq!(p["scope"], "license:read license:write");
        assert_eq!(p, parts(&token).1, "jose's payload is the token's");
    }
    let (ok, out, err) = verify_jwt(&jwks_file, &token, Some(ACCESS_TYP));
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(out.trim()).unwrap()["sub"],
        id.as_str()
    );

    // (b) The assertions the origin received verify with jose: from a key (with its metadata)
    // and from a token.
    let marker = format!("tok-jose-{}", random_hex(4));
    let key_path = format!("/licenses/{marker}-key");
    let r = c.call("POST", &key_path, &[("X-API-Key", &k)], Some("{}"));
    assert_eq!(r.status, 200, "{}", r.body);
    let token_path = format!("/licenses/{marker}-token");
    let r = bearer(c, "GET", &token_path, &token, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    for (path, method) in [(&key_path, "POST"), (&token_path, "GET")] {
        let got = received_once(c, path);
        let assertion = got["headers"]["x-key-assertion"].as_str().unwrap();
        let (ok, out, err) = verify_jwt(&jwks_file, assertion, Some(ASSERTION_TYP));
        assert!(ok, "jose refused the assertion of {method} {path}: {err}");
        let a: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(a["sub"], id.as_str(), "{a}");
        assert_eq!(a["htm"], method, "{a}");
        assert_eq!(a["htu"], path.as_str(), "{a}");
        assert_eq!(a["htu"], got["path"], "{a}");
        if method == "POST" {
            assert_eq!(a["metadata"], json!({"plan": "gold", "seats": 5}), "{a}");
        } else {
            // A token is decided from its claims alone, which hold no metadata.
            println!("tokens: a token's assertion carries metadata {}", a["metadata"]);
        }
        // The typ is checked: an assertion is not an access token.
        let (ok, _, _) = verify_jwt(&jwks_file, assertion, None);
        assert!(!ok, "jose accepted an assertion as an access token");
    }
    let (ok, _, _) = verify_jwt(&jwks_file, &token, Some(ASSERTION_TYP));
    assert!(!ok, "jose accepted an access token as an assertion");

    // (c) Tampered tokens do not verify (and the script says why, exiting 1).
    for (what, forged) in forgeries(&token, &set) {
        let (ok, out, err) = verify_jwt(&jwks_file, &forged, None);
        assert!(!ok, "jose accepted: {what}: {out}");
        assert!(out.trim().is_empty(), "{what}: printed a payload: {out}");
        assert!(err.contains("not verified"), "{what}: {err}");
    }
    // A token from another gateway (another key set) does not verify against this one's.
    let other = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
        "kid": set["keys"][0]["kid"], "x": b64(SigningKey::from_bytes(&random_seed()).verifying_key().as_bytes())}]});
    let (ok, _, _) = verify_jwt(&other.to_string(), &token, None);
    assert!(!ok, "jose verified the token against another public key");
    let _ = std::fs::remove_file(&file);
}

/// A public route takes no credential, so none is removed as one; the gateway's own access
/// tokens are stripped from every header and query parameter anyway (a browser app that sends
/// its token on every call must not hand it to the origin). Another issuer's JWT passes.
fn own_tokens_stay_on_public_routes(c: &Ctx) {
    let (k, id) = key(c, json!({"scopes": ["license:read"]}));
    let r = token_req(c, &[("Authorization", &basic(&id, &k))], GRANT);
    let token = token_ok(&r, "token")["access_token"].as_str().unwrap().to_owned();
    let foreign = "eyJhbGciOiJFUzI1NiIsImtpZCI6Im90aGVyIn0.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
    let marker = format!("tok-public-{}", random_hex(4));
    let r = c.call(
        "GET",
        &format!("/public/{marker}?access_token={token}&a=1&id_token={foreign}"),
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("X-API-Key", &token),
            ("X-Forwarded-Token", &format!("v1;{token}")),
            ("X-Other-Idp", &format!("Bearer {foreign}")),
        ],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let got = received_once(c, &marker);
    assert!(
        !got.to_string().contains(&token),
        "the origin received the token: {got}"
    );
    assert_eq!(got["query"], format!("a=1&id_token={foreign}"), "{got}");
    assert_eq!(
        got["headers"]["x-other-idp"],
        format!("Bearer {foreign}"),
        "{got}"
    );
    for h in ["authorization", "x-api-key", "x-forwarded-token"] {
        assert!(got["headers"].get(h).is_none(), "{h} reached the origin: {got}");
    }
    // Disguised copies go too, and a cookie list keeps its other cookies.
    let marker = format!("tok-disguised-{}", random_hex(4));
    let basic = format!("Basic {}", STANDARD.encode(format!("user:{token}")));
    let r = c.call(
        "GET",
        &format!("/public/{marker}?t={}&b=2", token.replace('.', "%2E")),
        &[
            ("Authorization", &basic),
            ("X-Glued", &format!("tok_{token}.")),
            ("X-Wrapped", &STANDARD.encode(&token)),
            ("Cookie", &format!("session=abc; at={token}; theme=dark")),
        ],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let got = received_once(c, &marker);
    let sig = token.rsplit('.').next().unwrap();
    assert!(
        !got.to_string().contains(sig),
        "a disguised token reached the origin: {got}"
    );
    assert_eq!(got["query"], "b=2", "{got}");
    assert_eq!(got["headers"]["cookie"], "session=abc; theme=dark", "{got}");
    // In a path it is refused outright, as a key is.
    let r = c.call("GET", &format!("/public/{token}"), &[], None);
    assert_eq!((r.status, r.code().as_str()), (400, "key_in_path"), "{}", r.body);
}
