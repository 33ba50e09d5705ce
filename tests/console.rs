//! The admin console (`/admin/ui`) in a real browser: the built worker under `wrangler dev`
//! (started by the e2e harness, with the real local echo origin), its security headers checked
//! over HTTP, then `tests/console/flows.mjs` driving Debian's headless Chromium through the two
//! flows with playwright-core and axe-core. What the browser did is then checked against the
//! worker and the origin. Screenshots go to `target/console-screenshots/`.
//!
//! The worker runs wrangler.toml's policy as the e2e suite does (`shipped_policy_with` in
//! `tests/e2e/main.rs`): usage flushed every second, so the key detail shows a request the test
//! just made, and the failed-authentication limiter off.
// Tests may unwrap and index: a failure here is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "e2e/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::path::Path;
use std::process::Command;

use harness::{OriginVar, Resp, WorkerOptions, send, start_origin, start_worker};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";

fn assert_console_headers(r: &Resp, what: &str) {
    assert_eq!(
        r.header("content-security-policy"),
        Some(keygate::console::CONTENT_SECURITY_POLICY),
        "{what}"
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{what}");
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{what}");
    assert_eq!(r.header("x-frame-options"), Some("DENY"), "{what}");
}

/// wrangler.toml's policy with usage flushed every second and the failed-auth limiter off.
fn console_policy() -> String {
    let text = std::fs::read_to_string(harness::root().join("wrangler.toml")).expect("wrangler.toml");
    let doc: toml::Value = toml::from_str(&text).expect("wrangler.toml parses");
    let mut policy = serde_json::to_value(&doc["vars"]["POLICY"]).expect("policy as JSON");
    policy["limits"]["failed_auth"] = json!({"enabled": false});
    policy["usage"] = json!({"flush_seconds": 1});
    policy.to_string()
}

#[test]
fn console_flows_in_a_real_browser() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: `bash scripts/test.sh` installs it (apt-get install chromium)"
    );
    harness::build_worker();
    let origin = start_origin();
    let policy = console_policy();
    let worker = start_worker(WorkerOptions {
        origin: OriginVar::Port(origin.port),
        policy: Some(&policy),
        seed: &[],
        no_admin_token: false,
    });
    let base = &worker.base;

    // Served from the assets, with the console's headers, and nothing but GET and HEAD.
    let page = send("GET", &format!("{base}/admin/ui"), &[], None);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.header("content-type")
            .unwrap_or_default()
            .starts_with("text/html")
    );
    assert!(
        page.body
            .contains(r#"<script type="module" src="/admin/ui/console.js">"#)
    );
    assert!(
        !page.body.contains("<script>") && !page.body.contains("style="),
        "nothing inline"
    );
    assert_console_headers(&page, "/admin/ui");
    let script = send("GET", &format!("{base}/admin/ui/console.js"), &[], None);
    assert_eq!(script.status, 200);
    assert!(
        script
            .header("content-type")
            .unwrap_or_default()
            .contains("javascript")
    );
    assert_console_headers(&script, "console.js");
    // The shell loads nothing from elsewhere (the browser flows check every request made).
    assert!(!page.body.contains("http:") && !page.body.contains("https:"));
    let missing = send("GET", &format!("{base}/admin/ui/nope.js"), &[], None);
    assert_eq!((missing.status, missing.code().as_str()), (404, "not_found"));
    assert_console_headers(&missing, "a missing file");
    let post = send("POST", &format!("{base}/admin/ui"), &[], Some("x"));
    assert_eq!((post.status, post.header("allow")), (405, Some("GET, HEAD")));

    let shots = harness::root().join("target/console-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let node = harness::root().join("node_modules/.bin/node");
    let out = Command::new(if node.exists() {
        node.as_os_str()
    } else {
        "node".as_ref()
    })
    .arg("tests/console/flows.mjs")
    .current_dir(harness::root())
    .env("KEYGATE_BASE", base)
    .env("KEYGATE_ADMIN_TOKEN", &worker.admin_token)
    .env("KEYGATE_SCREENSHOTS", &shots)
    .env("KEYGATE_CHROMIUM", CHROMIUM)
    .output()
    .expect("node tests/console/flows.mjs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "the browser flows failed (screenshots in {}):\n{stderr}\nworker log:\n{}",
        shots.display(),
        worker.log()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no summary from the flows ({e}): {stdout}"));

    // What the browser did, as the worker and the origin saw it.
    let id = summary["created_id"].as_str().unwrap();
    let auth = format!("Bearer {}", worker.admin_token);
    let key = send(
        "GET",
        &format!("{base}/admin/keys/{id}"),
        &[("Authorization", &auth)],
        None,
    )
    .json();
    assert_eq!(key["status"], "revoked", "{key}");
    assert_eq!(key["revoke_reason"], "browser test");
    assert_eq!(key["scopes"], serde_json::json!(["license:read"]));
    assert_eq!(key["metadata"], serde_json::json!({"team": "console"}));
    assert!(key["expires_at"].is_string(), "the 1d preset set an expiry");
    // The wizard's limits, and the top-up: a metered key on the `standard` tier.
    assert_eq!(key["rate_tier"], "standard", "{key}");
    assert_eq!(
        key["refill"],
        json!({"amount": 100, "interval": "month", "day": 1})
    );
    assert!(key["credits_remaining"].is_u64(), "metered: {key}");
    assert!(
        key["last_used_at"].is_string(),
        "the allowed request was recorded: {key}"
    );
    let usage = send(
        "GET",
        &format!("{base}/admin/keys/{id}/usage"),
        &[("Authorization", &auth)],
        None,
    )
    .json();
    assert_eq!(usage["allowed"], 1, "{usage}");
    assert_eq!(
        summary["version_after_top_up"].as_u64(),
        key["version"].as_u64().map(|v| v - 1),
        "each change of the balance was a version, and the revoke one more: {key}"
    );
    let forwarded: Vec<Value> = origin
        .log()
        .into_iter()
        .filter(|r| r["headers"]["x-key-id"] == id)
        .collect();
    assert_eq!(forwarded.len(), 1, "the origin got the one allowed request");
    let edited = summary["edited_id"].as_str().unwrap();
    let edited = send(
        "GET",
        &format!("{base}/admin/keys/{edited}"),
        &[("Authorization", &auth)],
        None,
    )
    .json();
    assert!(edited["name"].as_str().unwrap().ends_with(" theirs"), "{edited}");

    let files = summary["screenshots"].as_array().unwrap();
    assert!(files.len() >= 17, "{files:?}");
    for f in files {
        let bytes = std::fs::read(shots.join(f.as_str().unwrap())).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{f} is a PNG");
    }
    eprintln!(
        "console: screenshots in {}: {}\nconsole: first load {} bytes, {} gzipped: {}",
        shots.display(),
        files
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        summary["size"]["raw"],
        summary["size"]["gzip"],
        summary["size"]["files"]
    );
}
