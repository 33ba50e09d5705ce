//! What reaches the origin, tried as an attacker would: encoded paths, client-chosen targets,
//! loops, keys, look-alike and rewrite headers, spoofed addresses, methods and bodies. Every
//! test checks what the echo origin received (or that it received nothing), not only statuses.
//! Also the admin surface's own fences: bounded bodies and the admin host/IP fence.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Ctx;
use crate::harness::{Resp, send, send_bytes};

type Test = (&'static str, fn(&Ctx));

pub const TESTS: &[Test] = &[
    (
        "attacks::path_encoded_separators_are_refused",
        path_encoded_separators_are_refused,
    ),
    (
        "attacks::headers_repeated_values_holding_secrets_are_stripped",
        headers_repeated_values_holding_secrets_are_stripped,
    ),
    (
        "attacks::path_dot_segments_resolve_before_matching",
        path_dot_segments_resolve_before_matching,
    ),
    (
        "attacks::path_origin_receives_the_matched_path",
        path_origin_receives_the_matched_path,
    ),
    (
        "attacks::path_tenants_cannot_be_crossed",
        path_tenants_cannot_be_crossed,
    ),
    (
        "attacks::path_matrix_parameters_cannot_dodge_a_route",
        path_matrix_parameters_cannot_dodge_a_route,
    ),
    (
        "attacks::path_lookalikes_and_keys_are_refused",
        path_lookalikes_and_keys_are_refused,
    ),
    (
        "attacks::target_host_header_never_chooses_it",
        target_host_header_never_chooses_it,
    ),
    (
        "attacks::target_route_mode_serves_only_its_hostnames",
        target_route_mode_serves_only_its_hostnames,
    ),
    (
        "attacks::target_loop_stops_at_the_first_hop",
        target_loop_stops_at_the_first_hop,
    ),
    (
        "attacks::keys_never_reach_the_origin_on_public_routes",
        keys_never_reach_origin_public,
    ),
    (
        "attacks::keys_never_reach_the_origin_under_default_allow",
        keys_never_reach_origin_default_allow,
    ),
    (
        "attacks::keys_the_admin_token_never_reaches_the_origin",
        keys_the_admin_token_never_reaches_the_origin,
    ),
    (
        "attacks::keys_a_masked_key_is_not_a_key",
        keys_a_masked_key_is_not_a_key,
    ),
    (
        "attacks::keys_never_reach_the_origin_on_protected_routes",
        keys_never_reach_origin_protected,
    ),
    (
        "attacks::headers_x_key_look_alikes_are_stripped",
        headers_x_key_look_alikes_are_stripped,
    ),
    (
        "attacks::headers_rewrite_overrides_are_stripped",
        headers_rewrite_overrides_are_stripped,
    ),
    (
        "attacks::headers_client_address_is_the_checked_one",
        headers_client_address_is_the_checked_one,
    ),
    (
        "attacks::methods_options_matches_like_any_method",
        methods_options_matches_like_any_method,
    ),
    (
        "attacks::methods_cors_preflight_answered_at_the_edge",
        methods_cors_preflight_answered_at_the_edge,
    ),
    (
        "attacks::methods_get_and_head_with_a_body_are_refused",
        methods_get_and_head_with_a_body_are_refused,
    ),
    (
        "admin_surface::chunked_body_is_bounded",
        admin_chunked_body_is_bounded,
    ),
    (
        "admin_surface::fenced_by_host_and_address",
        admin_fenced_by_host_and_address,
    ),
    ("admin_surface::console_is_fenced", console_is_fenced),
];

fn marker() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    format!("m{}", hex::encode(b))
}

/// A request sent byte for byte: the path exactly as written, no client normalisation.
fn raw(base: &str, method: &str, target: &str, headers: &[(&str, &str)]) -> Resp {
    raw_as(base, base.trim_start_matches("http://"), method, target, headers)
}

/// [`raw`], claiming another `Host`.
fn raw_as(base: &str, host: &str, method: &str, target: &str, headers: &[(&str, &str)]) -> Resp {
    send_bytes(
        &format!("{base}{target}"),
        &format!("Host: {host}\r\nContent-Length: 0\r\n"),
        method,
        headers,
        b"",
    )
}

fn headers_of(seen: &Value) -> serde_json::Map<String, Value> {
    seen["headers"].as_object().cloned().unwrap_or_default()
}

/// A listener that counts connections: proof that nothing was sent to it.
struct Trap {
    port: u16,
    hits: Arc<AtomicUsize>,
}

fn trap() -> Trap {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    Trap { port, hits }
}

// ---- 1. paths ------------------------------------------------------------------------------

fn path_encoded_separators_are_refused(c: &Ctx) {
    let m = marker();
    for path in [
        "/public/..%2Finternal/x",
        "/public/..%2finternal/x",
        "/public/..%5Cinternal/x",
        "/public/%252e%252e/internal/x",
        "/public/%252E%252E%252Finternal/x",
        "/public/%25252e%25252e/internal/x",
        "/public/..%252Finternal/x",
        "/licenses/..%2F..%2Finternal/x",
        "/public/a%3Bjsessionid=1",
        "/public/a;b",
        "/public/a%00b",
        "/public/a%0Ab",
        "/public/a%7Fb",
        "/public/%zz",
        "/public/%C3",
    ] {
        let r = raw(&c.main.base, "GET", &format!("{path}?{m}"), &[]);
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_path"),
            "{path}: {}",
            r.body
        );
    }
    assert!(
        c.origin.received(&m).is_empty(),
        "an invalid path reached the origin"
    );
}

fn path_dot_segments_resolve_before_matching(c: &Ctx) {
    // The runtime's URL parser resolves plain and %2e dot segments before the worker sees the
    // path; the gateway then matches the resolved path, so `/public/../internal` is /internal.
    let m = marker();
    for path in [
        "/public/../internal/x",
        "/public/%2e%2e/internal/x",
        "/public/.%2E/internal/x",
        "/public/./../internal/x",
    ] {
        let r = raw(
            &c.main.base,
            "GET",
            &format!("{path}?{m}"),
            &[("CF-Connecting-IP", "8.8.8.8")],
        );
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "ip_not_allowed"),
            "{path}: {}",
            r.body
        );
    }
    assert!(c.origin.received(&m).is_empty());
}

fn path_origin_receives_the_matched_path(c: &Ctx) {
    for (sent, seen) in [
        ("//%70ublic//a%20b/caf%C3%A9/%7Ex/", "/public/a%20b/caf%C3%A9/~x/"),
        ("/public/A%2dB/q%25", "/public/A-B/q%25"),
        ("/public", "/public"),
    ] {
        let m = marker();
        let r = raw(&c.main.base, "GET", &format!("{sent}?{m}"), &[]);
        assert_eq!(r.status, 200, "{sent}: {}", r.body);
        assert_eq!(r.echoed()["path"], seen, "{sent}");
        let got = c.origin.received(&m);
        assert_eq!(got.len(), 1, "{sent}");
        assert_eq!(got[0]["path"], seen);
    }
    // Matrix parameters only where the policy allows `;` (the edge worker does).
    let r = raw(&c.edge.base, "GET", "/public/a;v=1", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.echoed()["path"], "/public/a;v=1");
    // ... but never `..;` (Tomcat reads it as `..`).
    let r = raw(
        &c.edge.base,
        "GET",
        "/public/..;/internal/x",
        &[("CF-Connecting-IP", "8.8.8.8")],
    );
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_path"));
    let r = raw(&c.edge.base, "GET", "/public/%2e%2e%2Finternal", &[]);
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_path"));
}

fn path_tenants_cannot_be_crossed(c: &Ctx) {
    let (key, _) = c.create(json!({"name": "t", "scopes": ["org:access"], "tenants": ["acme"]}));
    let auth = format!("Bearer {key}");
    let m = marker();
    let r = raw(
        &c.main.base,
        "GET",
        &format!("/orgs/acme%2F..%2Fglobex/x?{m}"),
        &[("Authorization", &auth)],
    );
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_path"));
    let r = raw(
        &c.main.base,
        "GET",
        &format!("/orgs/acme/../globex/x?{m}"),
        &[("Authorization", &auth)],
    );
    assert_eq!((r.status, r.code().as_str()), (403, "tenant_not_allowed"));
    assert!(c.origin.received(&m).is_empty());
    let r = raw(
        &c.main.base,
        "GET",
        "/orgs/acme/x/../y",
        &[("Authorization", &auth)],
    );
    let seen = r.echoed();
    assert_eq!(seen["path"], "/orgs/acme/y");
    assert_eq!(seen["headers"]["x-key-tenant"], "acme");
}

fn path_matrix_parameters_cannot_dodge_a_route(c: &Ctx) {
    // The edge worker allows `;` and forwards unmatched paths (default allow): a route is still
    // matched on the segment without its parameters, as Tomcat and Spring read it.
    let m = marker();
    for (path, code) in [
        ("/licenses;x/1", "missing_key"),
        ("/licenses;jsessionid=1/1", "missing_key"),
        ("/licenses/1;v=2", "missing_key"),
    ] {
        let r = raw(&c.edge.base, "GET", &format!("{path}?{m}"), &[]);
        assert_eq!((r.status, r.code().as_str()), (401, code), "{path}: {}", r.body);
    }
    let r = raw(
        &c.edge.base,
        "GET",
        &format!("/internal;/x?{m}"),
        &[("CF-Connecting-IP", "8.8.8.8")],
    );
    assert_eq!((r.status, r.code().as_str()), (403, "ip_not_allowed"));
    assert!(c.origin.received(&m).is_empty());
    // With a key, the origin gets the parameters it needs, and the route's principal.
    let r = edge_admin(
        c,
        "POST",
        "/admin/keys",
        json!({"name": "m", "scopes": ["license:read"]}),
    );
    let key = r.json()["key"].as_str().unwrap().to_owned();
    let r = raw(&c.edge.base, "GET", "/licenses;x/1", &[("X-API-Key", &key)]);
    let seen = r.echoed();
    assert_eq!(seen["path"], "/licenses;x/1");
    assert!(seen["headers"]["x-key-id"].is_string());
}

fn path_lookalikes_and_keys_are_refused(c: &Ctx) {
    let m = marker();
    for path in [
        "/public/%EF%BC%8E%EF%BC%8E/internal/x",
        "/public/a%EF%BC%8Fb",
        "/public/a%E2%88%95b",
        "/public/..%20/x",
        "/public/.../x",
        "/public/a%E2%80%AEb",
        "/public/a%E2%80%8Bb",
    ] {
        let r = raw(&c.main.base, "GET", &format!("{path}?{m}"), &[]);
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_path"),
            "{path}: {}",
            r.body
        );
    }
    let (key, _) = c.key_with(&["license:read"]);
    for path in [
        format!("/public/{key}"),
        format!("/public/x{}", key.replace('_', "%5F")),
    ] {
        let r = raw(&c.main.base, "GET", &format!("{path}?{m}"), &[]);
        assert_eq!((r.status, r.code().as_str()), (400, "key_in_path"), "{path}");
        assert!(!r.body.contains(&key[8..40]));
    }
    assert!(c.origin.received(&m).is_empty());
    let logs = c.main.json_logs();
    assert!(
        !logs.iter().any(|l| l.to_string().contains(&key[25..57])),
        "a key reached a log line"
    );
}

// ---- 2. the forward target ----------------------------------------------------------------

fn target_host_header_never_chooses_it(c: &Ctx) {
    let t = trap();
    for host in [
        format!("127.0.0.1:{}", t.port),
        "evil.example".to_owned(),
        format!("localhost:{}", t.port),
    ] {
        let m = marker();
        let r = raw_as(&c.main.base, &host, "GET", &format!("/public/x?{m}"), &[]);
        assert_eq!(r.status, 200, "Host {host}: {}", r.body);
        assert_eq!(r.echoed()["query"], m.as_str(), "the configured origin answered");
        assert_eq!(c.origin.received(&m).len(), 1);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(t.hits.load(Ordering::SeqCst), 0, "the Host header chose a target");
}

fn target_route_mode_serves_only_its_hostnames(c: &Ctx) {
    let t = trap();
    let base = &c.route_mode.base;
    let port = base.rsplit(':').next().unwrap().to_owned();
    let m = marker();
    for host in [
        format!("127.0.0.1:{}", t.port),
        format!("localhost:{}", t.port),
        "evil.example".to_owned(),
        "127.0.0.1".to_owned(),
        format!("evil.example:{port}"),
    ] {
        let r = raw_as(base, &host, "GET", &format!("/public/x?{m}"), &[]);
        assert_eq!(
            (r.status, r.code().as_str()),
            (421, "misdirected_request"),
            "Host {host}"
        );
    }
    // Its own hostname passes the check and is forwarded to the request's own URL, which here
    // is the worker itself: the forward comes back and is stopped as a loop. (On Cloudflare the
    // subrequest to the zone goes to its origin.)
    let r = send("GET", &format!("{base}/public/x?{m}"), &[], None);
    assert_eq!(
        (r.status, r.code().as_str()),
        (508, "loop_detected"),
        "{}",
        r.body
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        t.hits.load(Ordering::SeqCst),
        0,
        "route mode forwarded to a host it does not serve"
    );
    assert!(c.origin.received(&m).is_empty());
}

fn target_loop_stops_at_the_first_hop(c: &Ctx) {
    // This worker's ORIGIN is the bounce proxy, which sends every request straight back to the
    // same worker (an origin misconfigured to route through the gateway): a real loop, stopped
    // when the request first comes back.
    let started = Instant::now();
    let r = send("GET", &format!("{}/public/y", c.no_admin.base), &[], None);
    assert_eq!(
        (r.status, r.code().as_str()),
        (508, "loop_detected"),
        "{}",
        r.body
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the loop took {:?}",
        started.elapsed()
    );
    // A client that sends the hop header itself gets the same answer, and nothing is forwarded.
    let m = marker();
    let r = c.call(
        "GET",
        &format!("/public/y?{m}"),
        &[("Keygate-Hop", "keygate")],
        None,
    );
    assert_eq!((r.status, r.code().as_str()), (508, "loop_detected"));
    assert!(c.origin.received(&m).is_empty());
    // Another gateway's hop is kept, with ours appended.
    let r = c.call("GET", "/public/y", &[("Keygate-Hop", "upstream-edge")], None);
    assert_eq!(r.echoed()["headers"]["keygate-hop"], "upstream-edge, keygate");
}

// ---- 3. keys -------------------------------------------------------------------------------

fn assert_no_key(seen: &Value, key: &str) {
    let text = seen.to_string();
    let secret = key.split('_').nth(3).unwrap();
    assert!(!text.contains(secret), "the key reached the origin: {text}");
    assert!(!text.to_ascii_lowercase().contains(&secret.to_ascii_lowercase()));
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn key_carriers(key: &str) -> Vec<(Vec<(String, String)>, String)> {
    let h = |k: &str, v: String| vec![(k.to_owned(), v)];
    vec![
        (h("Authorization", format!("Bearer {key}")), String::new()),
        (
            h("Authorization", format!("bearer {}", key.to_uppercase())),
            String::new(),
        ),
        (h("X-API-Key", key.to_owned()), String::new()),
        (h("X_API_Key", key.to_owned()), String::new()),
        (h("Cookie", format!("session=1; apikey={key}")), String::new()),
        (h("X-Anything", format!("token {key}")), String::new()),
        (
            h("Cookie", format!("s={}", key.replace('_', "%5F"))),
            String::new(),
        ),
        (h(key, "1".to_owned()), String::new()),
        (
            h(
                "Authorization",
                format!("Basic {}", base64_of(&format!("{key}:"))),
            ),
            String::new(),
        ),
        (vec![], format!("api_key={key}")),
        (vec![], format!("token=x&k={}", key.replace('_', "%5F"))),
        (vec![], format!("t={}%zz", key.replace('_', "%5F"))),
        (vec![], format!("t={}%ff", key.replace('_', "%5F"))),
        (vec![], format!("t={}", key.replace('_', "%255F"))),
        (vec![], format!("{}%zz=1", key.replace('_', "%5F"))),
    ]
}

fn keys_never_reach_origin_public(c: &Ctx) {
    let (key, _) = c.key_with(&["license:read"]);
    for (headers, query) in key_carriers(&key) {
        let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let r = c.call("GET", &format!("/public/k?{query}"), &hs, None);
        assert_eq!(r.status, 200, "{hs:?} {query}: {}", r.body);
        assert_no_key(&r.echoed(), &key);
    }
    // Something that is not our key passes: the origin's own Basic auth, say.
    let r = c.call(
        "GET",
        "/public/k",
        &[("Authorization", "Basic Zm9vOmJhcg==")],
        None,
    );
    assert_eq!(r.echoed()["headers"]["authorization"], "Basic Zm9vOmJhcg==");
}

/// An admin call to the edge worker, from inside its admin fence.
fn edge_admin(c: &Ctx, method: &str, path: &str, body: Value) -> Resp {
    let port = c.edge.base.rsplit(':').next().unwrap();
    let auth = format!("Bearer {}", c.edge.admin_token);
    let body = body.to_string();
    send_bytes(
        &format!("{}{path}", c.edge.base),
        &format!(
            "Host: admin.localhost:{port}\r\nContent-Length: {}\r\nContent-Type: application/json\r\n",
            body.len()
        ),
        method,
        &[("Authorization", &auth), ("CF-Connecting-IP", "10.9.9.9")],
        body.as_bytes(),
    )
}

fn keys_never_reach_origin_default_allow(c: &Ctx) {
    let r = edge_admin(
        c,
        "POST",
        "/admin/keys",
        json!({"name": "k", "scopes": ["license:read"]}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let key = r.json()["key"].as_str().unwrap().to_owned();
    for (headers, query) in key_carriers(&key) {
        let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let r = send(
            "GET",
            &format!("{}/unrouted/path?{query}", c.edge.base),
            &hs,
            None,
        );
        assert_eq!(r.status, 200, "{hs:?} {query}: {}", r.body);
        assert_no_key(&r.echoed(), &key);
    }
}

fn keys_the_admin_token_never_reaches_the_origin(c: &Ctx) {
    let token = c.main.admin_token.clone();
    let bearer = format!("Bearer {token}");
    let header = format!("x{token}y");
    let m = marker();
    for (headers, query) in [
        (vec![("Authorization", bearer.as_str())], String::new()),
        (vec![("X-Admin", header.as_str())], String::new()),
        (vec![], format!("t={token}")),
    ] {
        let r = c.call("GET", &format!("/public/t?{m}&{query}"), &headers, None);
        assert_eq!(r.status, 200, "{headers:?} {query}: {}", r.body);
        assert!(
            !r.echoed().to_string().contains(&token),
            "the admin token reached the origin"
        );
    }
    let r = raw(&c.main.base, "GET", &format!("/public/x-{token}?{m}"), &[]);
    assert_eq!((r.status, r.code().as_str()), (400, "key_in_path"));
    assert!(!r.body.contains(&token));
    let logs = c.main.json_logs();
    assert!(
        !logs.iter().any(|l| l.to_string().contains(&token)),
        "the admin token reached a log line"
    );
}

fn keys_a_masked_key_is_not_a_key(c: &Ctx) {
    // A dashboard's masked key (the public id, no secret) is ordinary data and passes.
    let masked = "kg_live_015190271c439e7d";
    let cookie = format!("session=1; masked={masked}_****");
    let r = c.call(
        "GET",
        &format!("/public/{masked}?k={masked}"),
        &[("Cookie", &cookie)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = r.echoed();
    assert_eq!(seen["headers"]["cookie"], cookie.as_str());
    assert_eq!(seen["query"], format!("k={masked}"));
}

fn keys_never_reach_origin_protected(c: &Ctx) {
    let (key, _) = c.key_with(&["license:read"]);
    let bearer = format!("Bearer {key}");
    let cookie = format!("k={key}");
    let r = c.call(
        "GET",
        &format!("/licenses/1?copy={key}"),
        &[
            ("Authorization", &bearer),
            ("X-API-Key", &key),
            ("Cookie", &cookie),
        ],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_no_key(&r.echoed(), &key);
}

// ---- 4. headers ----------------------------------------------------------------------------

/// A key or the admin token in one of several repeated headers (`Set-Cookie`, which the runtime
/// lists value by value, and an ordinary header sent twice) never reaches the origin, while the
/// other values do.
fn headers_repeated_values_holding_secrets_are_stripped(c: &Ctx) {
    let (key, _) = c.key_with(&["license:read"]);
    let token_cookie = format!("adm={}", c.main.admin_token);
    let key_cookie = format!("leak={key}");
    let hs = [
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", key_cookie.as_str()),
        ("Set-Cookie", token_cookie.as_str()),
        ("X-Note", "plain"),
        ("X-Note", key.as_str()),
    ];
    let r = raw(&c.main.base, "GET", "/public/repeated-secrets", &hs);
    let echoed = r.echoed();
    let text = echoed.to_string();
    assert!(!text.contains(&key), "a key reached the origin: {text}");
    assert!(
        !text.contains(&c.main.admin_token),
        "the admin token reached the origin: {text}"
    );
    let h = headers_of(&echoed);
    assert!(
        h.get("set-cookie").is_some_and(|v| v.as_str() == Some("a=1")),
        "{h:?}"
    );
}

fn headers_x_key_look_alikes_are_stripped(c: &Ctx) {
    let spoofs = [
        ("X_Key_Scopes", "admin:**"),
        ("X-Key.Tenant", "globex"),
        ("x-key-id", "0000000000000000"),
        ("X-KEY-ENVIRONMENT", "live"),
        ("X_KEY.Client_Ip", "10.0.0.1"),
        ("X-Key-Assertion", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."),
    ];
    let r = c.call("GET", "/public/h", &spoofs, None);
    let h = headers_of(&r.echoed());
    let norm = |k: &str| k.to_ascii_lowercase().replace(['_', '.'], "-");
    assert!(
        h.keys().all(|k| !norm(k).starts_with("x-key-")),
        "public route: {h:?}"
    );

    let (key, id) = c.create(json!({"name": "h", "scopes": ["org:access"], "tenants": ["acme"]}));
    let id = id["id"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {key}");
    let mut hs = spoofs.to_vec();
    hs.push(("Authorization", &bearer));
    hs.push(("CF-Connecting-IP", "198.51.100.7"));
    let r = c.call("GET", "/orgs/acme/x", &hs, None);
    let h = headers_of(&r.echoed());
    let ours: Vec<&String> = h.keys().filter(|k| norm(k).starts_with("x-key-")).collect();
    assert_eq!(
        ours,
        [
            "x-key-assertion",
            "x-key-client-ip",
            "x-key-environment",
            "x-key-id",
            "x-key-scopes",
            "x-key-tenant"
        ],
        "{h:?}"
    );
    assert_eq!(h["x-key-scopes"], "org:access");
    assert_eq!(h["x-key-tenant"], "acme");
    assert_eq!(h["x-key-id"], id.as_str());
    assert_eq!(h["x-key-client-ip"], "198.51.100.7");
    assert!(
        h["x-key-assertion"]
            .as_str()
            .is_some_and(|a| a.starts_with("eyJhbGciOiJFZERTQSIs")),
        "the gateway's own assertion, not the client's: {h:?}"
    );
}

fn headers_rewrite_overrides_are_stripped(c: &Ctx) {
    let (key, _) = c.key_with(&["license:read"]);
    let bearer = format!("Bearer {key}");
    let overrides = [
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-HTTP-Method", "DELETE"),
        ("X-Method-Override", "DELETE"),
        ("X_HTTP_Method_Override", "DELETE"),
        ("X-Original-URL", "/admin/delete-everything"),
        ("X-Rewrite-URL", "/admin/delete-everything"),
        ("X.Original.URL", "/admin/delete-everything"),
        ("X-Original-Method", "DELETE"),
        ("X-Forwarded-Host", "delete-everything.example"),
        ("X-Forwarded-Prefix", "/admin/delete-everything"),
    ];
    let mut hs = overrides.to_vec();
    hs.push(("Authorization", &bearer));
    let r = c.call("GET", "/licenses/1", &hs, None);
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = r.echoed();
    assert_eq!(seen["method"], "GET");
    let text = seen.to_string();
    assert!(
        !text.contains("DELETE") && !text.contains("delete-everything"),
        "{text}"
    );
    // The policy can name more (the edge worker strips X-Internal-Debug in any spelling).
    let r = send(
        "GET",
        &format!("{}/public/x", c.edge.base),
        &[
            ("X-Internal-Debug", "1"),
            ("x_internal.debug", "1"),
            ("X-Other", "kept"),
        ],
        None,
    );
    let h = headers_of(&r.echoed());
    assert_eq!(h["x-other"], "kept");
    assert!(
        h.keys().all(|k| !k
            .to_ascii_lowercase()
            .replace(['_', '.'], "-")
            .contains("internal-debug")),
        "{h:?}"
    );
}

fn headers_client_address_is_the_checked_one(c: &Ctx) {
    let spoofed = [
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Real-IP", "6.6.6.6"),
        ("Forwarded", "for=6.6.6.6"),
        ("True-Client-IP", "6.6.6.6"),
        ("X_Forwarded_For", "6.6.6.6"),
    ];
    let mut hs = spoofed.to_vec();
    hs.push(("CF-Connecting-IP", "198.51.100.7"));
    let r = c.call("GET", "/public/ip", &hs, None);
    let h = headers_of(&r.echoed());
    assert_eq!(h["x-forwarded-for"], "198.51.100.7");
    assert_eq!(h["x-real-ip"], "198.51.100.7");
    assert_eq!(h["forwarded"], "for=198.51.100.7");
    assert!(
        !r.body.contains("6.6.6.6"),
        "a spoofed address reached the origin: {h:?}"
    );
    // An invalid CF-Connecting-IP is no address: nothing claims one.
    let mut hs = spoofed.to_vec();
    hs.push(("CF-Connecting-IP", "1.2.3.4, 5.6.7.8"));
    let r = c.call("GET", "/public/ip", &hs, None);
    let h = headers_of(&r.echoed());
    assert!(!r.body.contains("6.6.6.6"), "{h:?}");
    assert!(
        h.get("x-forwarded-for").is_none() && h.get("forwarded").is_none(),
        "{h:?}"
    );
}

// ---- 5. methods and bodies -----------------------------------------------------------------

fn methods_options_matches_like_any_method(c: &Ctx) {
    // A read-only key may GET /licenses/*, and no route there lists OPTIONS.
    let (key, _) = c.key_with(&["license:read"]);
    let bearer = format!("Bearer {key}");
    let m = marker();
    let r = c.call(
        "OPTIONS",
        &format!("/licenses/1?{m}"),
        &[("Authorization", &bearer)],
        Some("{\"x\":1}"),
    );
    assert_eq!((r.status, r.code().as_str()), (404, "no_route"), "{}", r.body);
    assert!(c.origin.received(&m).is_empty());
    // Routes without `methods` take OPTIONS like any method (public here).
    let r = c.call("OPTIONS", "/public/o", &[], None);
    assert_eq!(r.echoed()["method"], "OPTIONS");
}

fn methods_cors_preflight_answered_at_the_edge(c: &Ctx) {
    let app = "https://app.example.com";
    let m = marker();
    let r = c.call(
        "OPTIONS",
        &format!("/licenses/1?{m}"),
        &[
            ("Origin", app),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "authorization"),
        ],
        None,
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(r.header("access-control-allow-origin"), Some(app));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET"));
    let allowed = r
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    // Another origin is refused; a method without a CORS route is an ordinary OPTIONS.
    let r = c.call(
        "OPTIONS",
        &format!("/licenses/1?{m}"),
        &[
            ("Origin", "https://evil.example"),
            ("Access-Control-Request-Method", "GET"),
        ],
        None,
    );
    assert_eq!((r.status, r.code().as_str()), (403, "cors_origin_not_allowed"));
    assert!(r.header("access-control-allow-origin").is_none());
    let r = c.call(
        "OPTIONS",
        &format!("/licenses/1?{m}"),
        &[("Origin", app), ("Access-Control-Request-Method", "DELETE")],
        None,
    );
    assert_eq!((r.status, r.code().as_str()), (404, "no_route"));
    assert!(c.origin.received(&m).is_empty(), "a preflight was forwarded");
    // The actual requests carry the CORS answer, denials included, so a browser can read them.
    let (key, _) = c.key_with(&["license:read"]);
    let bearer = format!("Bearer {key}");
    let r = c.call(
        "GET",
        "/licenses/1",
        &[("Origin", app), ("Authorization", &bearer)],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some(app));
    let r = c.call("GET", "/licenses/1", &[("Origin", app)], None);
    assert_eq!((r.status, r.code().as_str()), (401, "missing_key"));
    assert_eq!(r.header("access-control-allow-origin"), Some(app));
    let r = c.call(
        "GET",
        "/licenses/1",
        &[("Origin", "https://evil.example"), ("Authorization", &bearer)],
        None,
    );
    assert!(r.header("access-control-allow-origin").is_none());
}

fn methods_get_and_head_with_a_body_are_refused(c: &Ctx) {
    let m = marker();
    let url = format!("{}/public/b?{m}", c.main.base);
    let host = c.main.base.trim_start_matches("http://");
    for method in ["GET", "HEAD"] {
        let r = send_bytes(
            &url,
            &format!("Host: {host}\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n"),
            method,
            &[],
            b"hello",
        );
        assert_eq!(r.status, 400, "{method}: {}", r.body);
        if method == "GET" {
            assert_eq!(r.code(), "body_not_allowed");
        }
    }
    assert!(c.origin.received(&m).is_empty());
    // workerd drops a chunked body on GET before the worker sees it (no Transfer-Encoding, no
    // body): what is forwarded is a plain GET, without the headers that described the body.
    let m2 = marker();
    let r = send_bytes(
        &format!("{}/public/b?{m2}", c.main.base),
        &format!("Host: {host}\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n"),
        "GET",
        &[],
        b"5\r\nhello\r\n0\r\n\r\n",
    );
    let seen = r.echoed();
    assert_eq!(seen["body"], "");
    let h = headers_of(&seen);
    assert!(
        h.get("content-type").is_none() && h.get("transfer-encoding").is_none(),
        "{h:?}"
    );
    // Without a body they pass.
    assert_eq!(c.call("GET", "/public/b", &[], None).status, 200);
}

// ---- the admin surface ---------------------------------------------------------------------

fn admin_chunked_body_is_bounded(c: &Ctx) {
    let url = format!("{}/admin/keys", c.main.base);
    let host = c.main.base.trim_start_matches("http://");
    let auth = format!("Bearer {}", c.main.admin_token);
    // 80 KiB in 1 KiB chunks, no Content-Length: refused once past 64 KiB.
    let mut body = Vec::new();
    for _ in 0..80 {
        body.extend_from_slice(b"400\r\n");
        body.extend_from_slice(&[b' '; 1024]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let r = send_bytes(
        &url,
        &format!("Host: {host}\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n"),
        "POST",
        &[("Authorization", &auth)],
        &body,
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (413, "payload_too_large"),
        "{}",
        r.body
    );
    // A small chunked body is read whole.
    let json = br#"{"name": "chunked", "scopes": ["license:read"]}"#;
    let mut body = format!("{:x}\r\n", json.len()).into_bytes();
    body.extend_from_slice(json);
    body.extend_from_slice(b"\r\n0\r\n\r\n");
    let r = send_bytes(
        &url,
        &format!("Host: {host}\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n"),
        "POST",
        &[("Authorization", &auth)],
        &body,
    );
    assert_eq!(r.status, 201, "{}", r.body);
}

fn admin_fenced_by_host_and_address(c: &Ctx) {
    let auth = format!("Bearer {}", c.edge.admin_token);
    let port = c.edge.base.rsplit(':').next().unwrap();
    let call = |host: &str, ip: Option<&str>| {
        let mut hs = vec![("Authorization", auth.as_str())];
        if let Some(ip) = ip {
            hs.push(("CF-Connecting-IP", ip));
        }
        raw_as(&c.edge.base, host, "GET", "/admin/keys", &hs)
    };
    let inside = call(&format!("admin.localhost:{port}"), Some("10.1.2.3"));
    assert_eq!(inside.status, 200, "{}", inside.body);
    let unknown = call(&format!("admin.localhost:{port}"), None);
    let nowhere = raw(&c.main.base, "GET", "/nothing-here", &[]);
    for (what, r) in [
        (
            "another address",
            call(&format!("admin.localhost:{port}"), Some("8.8.8.8")),
        ),
        ("no address", unknown),
        (
            "another host",
            call(&format!("127.0.0.1:{port}"), Some("10.1.2.3")),
        ),
    ] {
        assert_eq!(
            (r.status, r.code().as_str()),
            (404, "no_route"),
            "{what}: {}",
            r.body
        );
        // Exactly the answer of a path that does not exist: no hint of an admin API.
        assert_eq!(r.json()["detail"], nowhere.json()["detail"], "{what}");
        assert!(r.header("cache-control").is_none(), "{what}");
    }
    // The admin hostname serves the admin API and console only: nothing is forwarded there, so
    // no origin page shares the console's origin (and its sessionStorage).
    let host = format!("admin.localhost:{port}");
    let before = c.origin.received("/public/on-admin-host").len();
    let r = raw_as(
        &c.edge.base,
        &host,
        "GET",
        "/public/on-admin-host",
        &[("CF-Connecting-IP", "10.1.2.3")],
    );
    assert_eq!((r.status, r.code().as_str()), (404, "no_route"), "{}", r.body);
    assert_eq!(c.origin.received("/public/on-admin-host").len(), before);
    let r = raw_as(&c.edge.base, &host, "GET", "/healthz", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    for path in ["/.well-known/jwks.json", "/oauth/token", "/v1/keys/verify"] {
        let r = raw_as(
            &c.edge.base,
            &host,
            "GET",
            path,
            &[("CF-Connecting-IP", "10.1.2.3")],
        );
        assert_eq!(
            (r.status, r.code().as_str()),
            (404, "no_route"),
            "{path}: {}",
            r.body
        );
    }
    let r = raw_as(
        &c.edge.base,
        &format!("127.0.0.1:{port}"),
        "GET",
        "/public/elsewhere",
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

/// The console's files (Workers static assets) sit behind the same fence as the admin API: the
/// worker runs first for every path, so no spelling of the path reaches the assets from outside.
fn console_is_fenced(c: &Ctx) {
    let port = c.edge.base.rsplit(':').next().unwrap();
    let inside_host = format!("admin.localhost:{port}");
    let nowhere = raw(&c.main.base, "GET", "/nothing-here", &[]);
    for path in [
        "/admin/ui",
        "/admin/ui/",
        "/admin/ui/console.js",
        "/%61dmin/ui/console.js",
    ] {
        let inside = raw_as(
            &c.edge.base,
            &inside_host,
            "GET",
            path,
            &[("CF-Connecting-IP", "10.1.2.3")],
        );
        assert_eq!(inside.status, 200, "{path} inside the fence: {}", inside.body);
        assert_eq!(
            inside.header("content-security-policy"),
            Some(keygate::console::CONTENT_SECURITY_POLICY),
            "{path}"
        );
        for (what, host, ip) in [
            ("another address", inside_host.as_str(), "8.8.8.8"),
            ("another host", "127.0.0.1", "10.1.2.3"),
        ] {
            let r = raw_as(&c.edge.base, host, "GET", path, &[("CF-Connecting-IP", ip)]);
            assert_eq!(
                (r.status, r.code().as_str()),
                (404, "no_route"),
                "{path}, {what}: {}",
                r.body
            );
            assert_eq!(r.json()["detail"], nowhere.json()["detail"], "{path}, {what}");
        }
    }
}
