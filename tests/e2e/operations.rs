//! Operating the gateway: request ids on every response and in every problem, one structured
//! log line per denial, error and admin write, read back from the worker's own log.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Worker, send};
use crate::{Ctx, forge_key};

type Test = (&'static str, fn(&Ctx));

pub const TESTS: &[Test] = &[
    (
        "operations::request_ids_on_every_response",
        request_ids_on_every_response,
    ),
    (
        "operations::denials_and_errors_are_logged",
        denials_and_errors_are_logged,
    ),
    (
        "operations::admin_writes_and_denied_attempts_are_logged",
        admin_lines,
    ),
];

fn ray() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    format!("{}-TST", hex::encode(b))
}

/// The log lines of one request, waiting briefly for wrangler to flush them.
fn lines_of(w: &Worker, request_id: &str, at_least: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<Value> = w
            .json_logs()
            .into_iter()
            .filter(|l| l["request_id"] == request_id)
            .collect();
        if found.len() >= at_least || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn assert_request_line(l: &Value, method: &str, path: &str, ip: Option<&str>) {
    for field in ["level", "event", "request_id", "method", "path", "client_ip"] {
        assert!(l.get(field).is_some(), "{field} missing: {l}");
    }
    assert_eq!(l["method"], method, "{l}");
    assert_eq!(l["path"], path, "{l}");
    assert_eq!(l["client_ip"], ip.map_or(Value::Null, |i| json!(i)), "{l}");
}

fn request_ids_on_every_response(c: &Ctx) {
    // Generated when there is no cf-ray: 16 hex digits, different each time.
    let a = c.call("GET", "/healthz", &[], None);
    let b = c.call("GET", "/healthz", &[], None);
    let id = a.header("x-request-id").expect("healthz has X-Request-Id");
    assert!(
        id.len() == 16 && id.bytes().all(|x| x.is_ascii_hexdigit()),
        "{id}"
    );
    assert_ne!(Some(id), b.header("x-request-id"));
    // cf-ray is the id when present, on denials (header and body alike) ...
    let r = ray();
    let d = c.call("GET", "/nowhere", &[("cf-ray", &r)], None);
    assert_eq!(d.code(), "no_route");
    assert_eq!(d.header("x-request-id"), Some(r.as_str()));
    assert_eq!(d.json()["request_id"], r.as_str());
    // ... on admin answers ...
    let r = ray();
    let auth = format!("Bearer {}", c.main.admin_token);
    let a = c.call(
        "GET",
        "/admin/keys",
        &[("cf-ray", &r), ("Authorization", &auth)],
        None,
    );
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-request-id"), Some(r.as_str()));
    // ... and on forwarded responses, where the origin gets the same id (not the client's).
    let r = ray();
    let f = c.call(
        "GET",
        "/public/rid",
        &[("cf-ray", &r), ("X-Request-Id", "spoofed")],
        None,
    );
    assert_eq!(f.header("x-request-id"), Some(r.as_str()));
    assert_eq!(f.echoed()["headers"]["x-request-id"], r.as_str());
}

fn denials_and_errors_are_logged(c: &Ctx) {
    // A 401 with a key id (well-formed, unknown): every field, the key id but never the key.
    let forged = forge_key("live", "00000000deadbeef");
    let r = ray();
    let resp = c.call(
        "GET",
        "/licenses/7",
        &[
            ("cf-ray", &r),
            ("X-API-Key", &forged),
            ("CF-Connecting-IP", "198.51.100.23"),
        ],
        None,
    );
    assert_eq!(resp.code(), "invalid_key");
    let lines = lines_of(&c.main, &r, 1);
    assert_eq!(lines.len(), 1, "exactly one line per denial: {lines:?}");
    let l = &lines[0];
    assert_request_line(l, "GET", "/licenses/7", Some("198.51.100.23"));
    assert_eq!(l["event"], "denied");
    assert_eq!(l["level"], "warn");
    assert_eq!(l["code"], "invalid_key");
    assert_eq!(l["status"], 401);
    assert_eq!(
        l["route"], 1,
        "the GET /licenses/* route is the second in wrangler.toml"
    );
    assert_eq!(l["key_id"], "00000000deadbeef");
    // A 403 on a route before any key: the route index, no key id.
    let r = ray();
    c.call(
        "GET",
        "/internal/x",
        &[("cf-ray", &r), ("CF-Connecting-IP", "8.8.8.8")],
        None,
    );
    let l = &lines_of(&c.main, &r, 1)[0];
    assert_eq!(
        (l["code"].as_str(), l["status"].as_u64()),
        (Some("ip_not_allowed"), Some(403))
    );
    assert!(l["route"].is_number() && l["key_id"].is_null(), "{l}");
    // An error names its reason: the invalid policy of the bad-policy worker.
    let r = ray();
    let resp = send(
        "GET",
        &format!("{}/x", c.bad_policy.base),
        &[("cf-ray", &r)],
        None,
    );
    assert_eq!(resp.status, 500);
    let l = &lines_of(&c.bad_policy, &r, 1)[0];
    assert_eq!(
        (l["event"].as_str(), l["level"].as_str()),
        (Some("error"), Some("error"))
    );
    assert_eq!(l["code"], "policy_invalid");
    assert!(l["reason"].as_str().unwrap().contains("ip_allowlist"), "{l}");
    // The loop of the no_admin worker: an error line with its reason.
    let r = ray();
    send(
        "GET",
        &format!("{}/public/l", c.no_admin.base),
        &[("cf-ray", &r)],
        None,
    );
    let l = lines_of(&c.no_admin, &r, 1);
    assert!(
        l.iter()
            .any(|l| l["code"] == "loop_detected" && l["reason"].is_string()),
        "{l:?}"
    );
    // No key ever reaches the log, even one sent in the path.
    let (key, _) = c.key_with(&["license:read"]);
    let r = ray();
    c.call(
        "GET",
        &format!("/nowhere/{key}"),
        &[("cf-ray", &r), ("X-API-Key", &key)],
        None,
    );
    let l = &lines_of(&c.main, &r, 1)[0];
    assert!(!l.to_string().contains(&key[8..40]), "{l}");
}

fn admin_lines(c: &Ctx) {
    let r = ray();
    let auth = format!("Bearer {}", c.main.admin_token);
    let body = json!({"name": "logged", "scopes": ["license:read"]}).to_string();
    let resp = c.call(
        "POST",
        "/admin/keys",
        &[
            ("cf-ray", &r),
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(&body),
    );
    assert_eq!(resp.status, 201);
    let id = resp.json()["record"]["id"].as_str().unwrap().to_owned();
    let l = &lines_of(&c.main, &r, 1)[0];
    assert_request_line(l, "POST", "/admin/keys", Some("127.0.0.1"));
    assert_eq!(l["event"], "admin");
    assert_eq!(l["action"], "key.create");
    assert_eq!(l["actor"], "admin_token");
    assert_eq!(l["key_id"], id.as_str());
    assert!(!l.to_string().contains(&c.main.admin_token));

    // A denied attempt: an admin key trying to mint a wider key. Logged (denied line with the
    // actor, and the audit event's line) and audited.
    let (admin_key, admin_rec) =
        c.create(json!({"name": "narrow admin", "scopes": ["admin:keys:write", "license:read"]}));
    let admin_id = admin_rec["id"].as_str().unwrap().to_owned();
    let r = ray();
    let wide = json!({"name": "wide", "scopes": ["admin:**"]}).to_string();
    let bearer = format!("Bearer {admin_key}");
    let resp = c.call(
        "POST",
        "/admin/keys",
        &[
            ("cf-ray", &r),
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        Some(&wide),
    );
    assert_eq!(resp.code(), "scope_escalation");
    let lines = lines_of(&c.main, &r, 2);
    let denied = lines
        .iter()
        .find(|l| l["event"] == "denied")
        .expect("denied line");
    assert_eq!(denied["code"], "scope_escalation");
    assert_eq!(denied["status"], 403);
    assert_eq!(denied["actor"], admin_id.as_str());
    let audited = lines.iter().find(|l| l["event"] == "admin").expect("audit line");
    assert_eq!(audited["action"], "admin.denied");
    assert_eq!(audited["code"], "scope_escalation");
    // In the audit log, for the operator.
    let events = c.admin("GET", "/admin/audit?limit=20", None).json();
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "admin.denied"
                && e["actor"] == admin_id.as_str()
                && e["code"] == "scope_escalation"),
        "{events}"
    );
    // A bad credential is a denied attempt too.
    let r = ray();
    let resp = c.call(
        "GET",
        "/admin/keys",
        &[("cf-ray", &r), ("Authorization", "Bearer not-the-token")],
        None,
    );
    assert_eq!(resp.code(), "invalid_admin_credential");
    let lines = lines_of(&c.main, &r, 2);
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "denied" && l["code"] == "invalid_admin_credential"),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l["action"] == "admin.denied"), "{lines:?}");
    assert!(!lines.iter().any(|l| l.to_string().contains("not-the-token")));

    // A forged key-shaped credential naming a real key: recorded as unverified, and not copied
    // into that key's own history.
    let forged = forge_key("live", &admin_id);
    let bearer = format!("Bearer {forged}");
    let resp = c.call(
        "POST",
        &format!("/admin/keys/{id}/revoke"),
        &[("Authorization", &bearer)],
        None,
    );
    assert_eq!(resp.code(), "invalid_admin_credential");
    let all = c.admin("GET", "/admin/audit?limit=20", None).json();
    let unverified = format!("unverified:{admin_id}");
    assert!(
        all["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == unverified.as_str()),
        "{all}"
    );
    let own = c.admin("GET", &format!("/admin/audit?key_id={id}"), None).json();
    assert!(
        !own["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "admin.denied"),
        "{own}"
    );
    // Problem bodies never echo a key, even one sent where a field name or value goes.
    let (key, _) = c.key_with(&["license:read"]);
    for body in [json!({"enabled": key}), json!({ key.clone(): 1 })] {
        let r = c.admin("PATCH", &format!("/admin/keys/{id}"), Some(body));
        assert_eq!(r.status, 422);
        assert!(!r.body.contains(&key[25..57]), "{}", r.body);
    }
    let r = c.admin("GET", &format!("/admin/keys?{key}=1"), None);
    assert_eq!(r.code(), "invalid_query");
    assert!(!r.body.contains(&key[25..57]), "{}", r.body);
}
