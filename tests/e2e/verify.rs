//! `POST /v1/keys/verify` through the real worker: the caller needs `keys:verify`; the answer is
//! the gateway's own decision for the key or token, denial code for denial code, and neither
//! the answer nor the log holds the credential.

use serde_json::{Value, json};

use crate::Ctx;
use crate::harness::Resp;

type Test = (&'static str, fn(&Ctx));

pub const TESTS: &[Test] = &[
    (
        "verify::the_caller_needs_keys_verify",
        the_caller_needs_keys_verify,
    ),
    (
        "verify::same_answer_as_the_gateway_for_each_code",
        same_answer_as_the_gateway,
    ),
    ("verify::scopes_and_tokens", scopes_and_tokens),
];

fn verify(c: &Ctx, caller: &str, body: Value) -> Resp {
    c.call(
        "POST",
        "/v1/keys/verify",
        &[
            ("Authorization", &format!("Bearer {caller}")),
            ("Content-Type", "application/json"),
        ],
        Some(&body.to_string()),
    )
}

fn the_caller_needs_keys_verify(c: &Ctx) {
    let (subject, _) = c.key_with(&["license:read"]);
    let body = json!({"key": subject, "scopes": ["license:read"]});
    let r = c.call("POST", "/v1/keys/verify", &[], Some(&body.to_string()));
    assert_eq!((r.status, r.code()), (401, "missing_key".to_owned()));
    let (no_scope, _) = c.key_with(&["license:read"]);
    let r = verify(c, &no_scope, body.clone());
    assert_eq!((r.status, r.code()), (403, "insufficient_scope".to_owned()));
    let (caller, _) = c.key_with(&["keys:verify"]);
    let r = verify(c, &caller, json!({"key": subject}));
    assert_eq!(
        (r.status, r.code()),
        (422, "invalid_field".to_owned()),
        "{}",
        r.body
    );
    let r = c.call(
        "GET",
        "/v1/keys/verify",
        &[("Authorization", &format!("Bearer {caller}"))],
        None,
    );
    assert_eq!(r.status, 405);
}

/// For each way a key can be refused on a route, the verify API names the same code the route
/// answers with.
fn same_answer_as_the_gateway(c: &Ctx) {
    let (caller, _) = c.key_with(&["keys:verify"]);
    let (good, good_id) = c.key_with(&["license:read"]);
    let (narrow, _) = c.key_with(&["billing:read"]);
    let (revoked, revoked_id) = c.key_with(&["license:read"]);
    c.admin(
        "POST",
        &format!("/admin/keys/{revoked_id}/revoke"),
        Some(json!({})),
    );
    let (disabled, disabled_id) = c.key_with(&["license:read"]);
    c.admin(
        "PATCH",
        &format!("/admin/keys/{disabled_id}"),
        Some(json!({"enabled": false})),
    );
    let (fenced, _) = {
        let (k, rec) =
            c.create(json!({"name": "fenced", "scopes": ["license:read"], "ip_allowlist": ["10.0.0.0/8"]}));
        (k, rec["id"].as_str().unwrap().to_owned())
    };
    let forged = crate::forge_key("live", "00000000000000fe");
    let cases: Vec<(&str, &str, Option<&str>)> = vec![
        (&good, "/licenses/1", None),
        (&narrow, "/licenses/1", None),
        (&revoked, "/licenses/1", None),
        (&disabled, "/licenses/1", None),
        (&fenced, "/licenses/1", Some("192.0.2.1")),
        (&fenced, "/licenses/1", Some("10.1.1.1")),
        (&forged, "/licenses/1", None),
        ("not-a-key", "/licenses/1", None),
        (&good, "/nowhere", None),
        (&good, "/licenses/a%2Fb", None),
    ];
    for (key, path, ip) in cases {
        let mut headers = vec![("Authorization".to_owned(), format!("Bearer {key}"))];
        if let Some(ip) = ip {
            headers.push(("CF-Connecting-IP".to_owned(), ip.to_owned()));
        }
        let hdrs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let gateway = c.call("GET", path, &hdrs, None);
        let mut body = json!({"key": key, "route": {"method": "GET", "path": path}});
        if let Some(ip) = ip {
            body["ip"] = json!(ip);
        }
        let r = verify(c, &caller, body);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let v = r.json();
        if gateway.status == 200 {
            assert_eq!(v["valid"], true, "{path} {ip:?}: {v}");
            assert_eq!(v["code"], Value::Null);
        } else {
            assert_eq!(v["valid"], false, "{path} {ip:?}: {v}");
            assert_eq!(
                v["code"],
                gateway.code(),
                "{path} {ip:?}: gateway {}",
                gateway.body
            );
            assert_eq!(v["status"], gateway.status);
        }
        assert!(!r.body.contains(key) || key == "not-a-key", "the key came back");
    }
    let r = verify(
        c,
        &caller,
        json!({"key": good, "route": {"method": "GET", "path": "/licenses/1"}}),
    );
    let v = r.json();
    assert_eq!(
        (v["key_id"].as_str(), v["environment"].as_str()),
        (Some(good_id.as_str()), Some("live"))
    );
    assert_eq!(v["scopes"], json!(["license:read"]));
    assert!(!c.main.log().contains(&good), "the key reached the log");
}

fn scopes_and_tokens(c: &Ctx) {
    let (caller, _) = c.key_with(&["keys:verify"]);
    let (key, id) = c.key_with(&["license:read"]);
    let r = verify(c, &caller, json!({"key": key, "scopes": ["license:read"]}));
    assert_eq!(r.json()["valid"], true, "{}", r.body);
    let r = verify(c, &caller, json!({"key": key, "scopes": ["license:write"]}));
    assert_eq!(
        (r.json()["valid"].clone(), r.json()["code"].clone()),
        (json!(false), json!("insufficient_scope"))
    );
    // A token from the exchange verifies too, and stops when its key is revoked.
    let form = format!(
        "grant_type=client_credentials&client_id={id}&client_secret={}",
        key.replace('_', "%5F")
    );
    let t = c.call(
        "POST",
        "/oauth/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(&form),
    );
    assert_eq!(t.status, 200, "{}", t.body);
    let token = t.json()["access_token"].as_str().unwrap().to_owned();
    let r = verify(
        c,
        &caller,
        json!({"token": token, "route": {"method": "GET", "path": "/licenses/1"}}),
    );
    assert_eq!(r.json()["valid"], true, "{}", r.body);
    assert_eq!(r.json()["key_id"], id);
    c.admin("POST", &format!("/admin/keys/{id}/revoke"), Some(json!({})));
    let r = verify(c, &caller, json!({"token": token, "scopes": ["license:read"]}));
    assert_eq!(
        (r.json()["valid"].clone(), r.json()["code"].clone()),
        (json!(false), json!("revoked_key")),
        "{}",
        r.body
    );
}
