//! Two isolates: the built worker as two workerd services started directly (no wrangler) by
//! `scripts/two-isolates.mjs`, sharing one KV namespace, one Cache API and A's `Registry`
//! Durable Object namespace (SQLite). Each service is its own isolate with its own record cache,
//! as two Cloudflare isolates are. These tests need none of the shared `wrangler dev` workers:
//! `cargo test --test e2e -- isolates` starts only what they use.
//!
//! Environment:
//! - `KEYGATE_ISOLATES_NO_REGISTRY=1` leaves the Durable Object namespace and the `REGISTRY`
//!   binding out of the config (a build that does not export `Registry`). Without it, a build
//!   that does not export `Registry` FAILS these tests; it never falls back silently.
//! - `KEYGATE_ISOLATES_TRIALS=N` (default 20): trials per action in the revocation test.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use serde_json::{Value, json};

use crate::harness::{Group, Origin, Resp, free_port, random_hex, root, send, start_origin};

/// Revoked, disabled, deleted or narrowed in one isolate: denied in every other one within this.
const BOUND_MS: u128 = 2000;
/// Poll interval of the other isolate.
const POLL: Duration = Duration::from_millis(20);
/// A trial that is still allowed after this is recorded as this and stops waiting.
const GIVE_UP: Duration = Duration::from_secs(20);

const SHARED: &str = "isolates::a_key_issued_in_one_isolate_works_in_the_other";
const REVOCATION: &str = "isolates::revoke_disable_delete_narrow_reach_the_other_isolate_within_2s";

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test(SHARED, || {
            shared_store();
            Ok(())
        }),
        Trial::test(REVOCATION, || {
            revocation_bound();
            Ok(())
        }),
        Trial::test(RECOVERY, || {
            recovers_after_a_wasm_trap();
            Ok(())
        }),
    ]
}

const RECOVERY: &str = "isolates::after_a_wasm_trap_the_next_request_gets_a_fresh_instance";

/// The entry (`scripts/entry.mjs`, replacing worker-build's per-request Proxies) keeps its panic
/// recovery: a request that aborts the wasm instance (`KEYGATE_TEST_PANIC`) fails, and the
/// requests after it are served by a re-instantiated module, twice over. Without the variable,
/// the path is an ordinary unknown path.
fn recovers_after_a_wasm_trap() {
    reproduce(RECOVERY);
    let p = Pair::start_with(crate::shipped_policy_with(json!({})), &["KEYGATE_TEST_PANIC=1"]);
    let (key, id) = p.issue(&p.a, "before-trap");
    assert_forwarded(&p.read(&p.a, &key, "before-trap"), "before the trap");
    for round in 0..2 {
        let r = send("GET", &format!("{}/__keygate/panic", p.a), &[], None);
        assert!(
            r.status >= 500,
            "round {round}: the trap answered {}: {}",
            r.status,
            r.body
        );
        let marker = format!("after-trap-{round}");
        let r = p.read(&p.a, &key, &marker);
        assert_forwarded(&r, &format!("round {round}: the request after the trap"));
        assert_eq!(r.json()["headers"]["x-key-id"], id.as_str(), "{}", r.body);
        let h = send("GET", &format!("{}/healthz", p.a), &[], None);
        assert_eq!(
            h.status, 200,
            "round {round}: /healthz after the trap: {}",
            h.body
        );
        // The admin API (the registry object, re-created after the re-instantiation) works too.
        let r = p.admin(&p.a, "GET", &format!("/admin/keys/{id}"), None);
        assert_eq!(
            r.status, 200,
            "round {round}: admin read after the trap: {}",
            r.body
        );
    }
    assert!(
        p.log().contains("Reinitializing Wasm application"),
        "the entry did not log a re-instantiation:\n{}",
        p.log()
    );
    // The other service never trapped and still serves.
    assert_forwarded(&p.read(&p.b, &key, "other-service"), "the other service");
}

fn registry() -> bool {
    std::env::var("KEYGATE_ISOLATES_NO_REGISTRY").map_or(true, |v| v.is_empty() || v == "0")
}

fn trials_per_action() -> usize {
    std::env::var("KEYGATE_ISOLATES_TRIALS")
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("KEYGATE_ISOLATES_TRIALS={v:?} is not a number"))
        })
        .unwrap_or(20)
}

/// The command that reruns exactly this test with the same settings.
fn reproduce(test: &str) {
    let mut env = String::new();
    for var in ["KEYGATE_ISOLATES_NO_REGISTRY", "KEYGATE_ISOLATES_TRIALS"] {
        if let Ok(v) = std::env::var(var) {
            env.push_str(&format!("{var}={v} "));
        }
    }
    println!("e2e isolates: reproduce with: {env}cargo test --test e2e -- --exact {test}");
}

/// The echo origin and the two gateway services A and B (one workerd process).
pub struct Pair {
    pub a: String,
    pub b: String,
    pub admin_token: String,
    /// The KV service's counters (`GET /kv-stats`, `POST /kv-stats/reset`).
    pub control: String,
    dir: PathBuf,
    /// Stopped (process group) before `dir` is removed.
    group: Option<Group>,
    pub origin: Origin,
}

impl Pair {
    fn start() -> Pair {
        Pair::start_with(crate::shipped_policy_with(json!({})), &[])
    }

    /// With this policy (JSON text) and extra text vars (`NAME=VALUE`) on both services.
    pub fn start_with(policy: String, vars: &[&str]) -> Pair {
        let origin = start_origin();
        for _ in 0..3 {
            if let Some((a, b, admin_token, dir, group, control)) = Pair::try_start(&origin, &policy, vars) {
                return Pair {
                    a,
                    b,
                    admin_token,
                    control,
                    dir,
                    group: Some(group),
                    origin,
                };
            }
            eprintln!("e2e isolates: a port was taken while workerd started; trying other ports");
        }
        panic!("e2e isolates: workerd could not find free ports three times");
    }

    /// (A's base URL, B's, the admin token, the config directory, the process group), or None
    /// when a port was taken in the meantime.
    #[allow(clippy::type_complexity)]
    fn try_start(
        origin: &Origin,
        policy_json: &str,
        vars: &[&str],
    ) -> Option<(String, String, String, PathBuf, Group, String)> {
        let (port_a, port_b, port_control) = (free_port(), free_port(), free_port());
        let dir = std::env::temp_dir().join(format!("keygate-isolates-{}", random_hex(6)));
        std::fs::create_dir_all(&dir).expect("isolates dir");
        let policy = dir.join("policy.json");
        std::fs::write(&policy, policy_json).expect("policy file");
        let admin_token = random_hex(24);
        let log = dir.join("workerd.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut args = vec![
            "scripts/two-isolates.mjs".to_owned(),
            "--port-a".into(),
            port_a.to_string(),
            "--port-b".into(),
            port_b.to_string(),
            "--origin".into(),
            format!("http://127.0.0.1:{}", origin.port),
            "--admin-token".into(),
            admin_token.clone(),
            "--policy".into(),
            policy.display().to_string(),
            "--dir".into(),
            dir.display().to_string(),
            "--port-control".into(),
            port_control.to_string(),
        ];
        for v in vars {
            args.push("--var".into());
            args.push((*v).to_owned());
        }
        if !registry() {
            args.push("--no-registry".into());
            println!(
                "e2e isolates: KEYGATE_ISOLATES_NO_REGISTRY is set: no Registry Durable Object, no REGISTRY binding"
            );
        }
        println!(
            "e2e isolates: services: (cd {} && node {}) (echo origin: node scripts/echo-origin.mjs {})",
            root().display(),
            args.join(" "),
            origin.port
        );
        let mut cmd = Command::new("node");
        cmd.args(&args)
            .current_dir(root())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file);
        let mut group = Group::spawn("two isolates (workerd)", cmd, Some(log.clone()));
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.lines().any(|l| l.starts_with("ready ")) {
                break;
            }
            if let Some(status) = group.exited() {
                let tail = group.log_tail();
                drop(group);
                let _ = std::fs::remove_dir_all(&dir);
                if tail.contains("Address already in use") {
                    return None;
                }
                if status.code() == Some(3) {
                    panic!(
                        "e2e isolates: the build exports no Durable Object class `Registry`, which the \
                         REGISTRY binding needs (set KEYGATE_ISOLATES_NO_REGISTRY=1 only for a build \
                         from before the Registry):\n{tail}"
                    );
                }
                panic!(
                    "e2e isolates: scripts/two-isolates.mjs exited ({status}) before it was ready:\n{tail}"
                );
            }
            if Instant::now() > deadline {
                let tail = group.log_tail();
                drop(group);
                let _ = std::fs::remove_dir_all(&dir);
                panic!("e2e isolates: the two services were not ready within 90 s:\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Some((
            format!("http://127.0.0.1:{port_a}"),
            format!("http://127.0.0.1:{port_b}"),
            admin_token,
            dir,
            group,
            format!("http://127.0.0.1:{port_control}"),
        ))
    }

    pub fn admin(&self, base: &str, method: &str, path: &str, body: Option<Value>) -> Resp {
        let auth = format!("Bearer {}", self.admin_token);
        let body = body.map(|b| b.to_string());
        let mut headers = vec![("Authorization", auth.as_str())];
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        send(method, &format!("{base}{path}"), &headers, body.as_deref())
    }

    /// Issues a key with `license:read` through `base`'s admin API: (key, id).
    fn issue(&self, base: &str, name: &str) -> (String, String) {
        let r = self.admin(
            base,
            "POST",
            "/admin/keys",
            Some(json!({"name": name, "scopes": ["license:read"]})),
        );
        assert_eq!(r.status, 201, "create through {base}: {}", r.body);
        let v = r.json();
        (
            v["key"].as_str().expect("key").to_owned(),
            v["record"]["id"].as_str().expect("id").to_owned(),
        )
    }

    pub fn read(&self, base: &str, key: &str, marker: &str) -> Resp {
        send(
            "GET",
            &format!("{base}/licenses/{marker}"),
            &[("X-API-Key", key)],
            None,
        )
    }

    fn log(&self) -> String {
        self.group.as_ref().map(Group::log_tail).unwrap_or_default()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("e2e isolates: workerd log tail:\n{}", self.log());
        }
        drop(self.group.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn assert_forwarded(r: &Resp, what: &str) {
    assert_eq!(r.status, 200, "{what}: {}", r.body);
    assert_eq!(
        r.header("x-origin"),
        Some("echo"),
        "{what}: not forwarded: {}",
        r.body
    );
}

/// The services share KV: a key issued through either one authenticates through the other, and
/// each admin API sees the other's records.
fn shared_store() {
    reproduce(SHARED);
    let p = Pair::start();
    for (from, to, name) in [(&p.a, &p.b, "issued-in-a"), (&p.b, &p.a, "issued-in-b")] {
        let (key, id) = p.issue(from, name);
        let r = p.read(to, &key, name);
        assert_forwarded(&r, &format!("{name}, read through the other service"));
        assert_eq!(r.json()["headers"]["x-key-id"], id.as_str(), "{}", r.body);
        assert!(
            !p.origin.received(name).is_empty(),
            "the echo origin did not record {name}"
        );
        let r = p.admin(to, "GET", &format!("/admin/keys/{id}"), None);
        assert_eq!(r.status, 200, "{name} through the other admin API: {}", r.body);
        assert_eq!(r.json()["name"], name, "{}", r.body);
    }
}

#[derive(Clone, Copy)]
enum Action {
    Revoke,
    Disable,
    Delete,
    /// A PATCH that takes away the scope the warm-up used.
    Narrow,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Revoke => "revoke",
            Action::Disable => "disable",
            Action::Delete => "delete",
            Action::Narrow => "narrow",
        }
    }

    /// The status the other isolate must end up answering.
    fn status(self) -> u16 {
        match self {
            Action::Narrow => 403,
            _ => 401,
        }
    }

    /// The 401 code the other isolate must end up answering.
    fn code(self) -> &'static str {
        match self {
            Action::Revoke => "revoked_key",
            Action::Disable => "disabled_key",
            Action::Delete => "invalid_key",
            Action::Narrow => "insufficient_scope",
        }
    }

    fn apply(self, p: &Pair, id: &str) -> Resp {
        let (method, path, body, ok) = match self {
            Action::Revoke => (
                "POST",
                format!("/admin/keys/{id}/revoke"),
                Some(json!({"reason": "isolates test"})),
                200,
            ),
            Action::Disable => (
                "PATCH",
                format!("/admin/keys/{id}"),
                Some(json!({"enabled": false})),
                200,
            ),
            Action::Delete => ("DELETE", format!("/admin/keys/{id}"), None, 204),
            Action::Narrow => (
                "PATCH",
                format!("/admin/keys/{id}"),
                Some(json!({"scopes": ["other:read"]})),
                200,
            ),
        };
        let r = p.admin(&p.a, method, &path, body);
        assert_eq!(r.status, ok, "{} {id} through A: {}", self.name(), r.body);
        r
    }
}

/// One trial: ms from A's admin response to B's first denial (None: still allowed after
/// GIVE_UP).
fn trial(p: &Pair, action: Action, n: usize) -> Option<u128> {
    let marker = format!("iso-{}-{n}-{}", action.name(), random_hex(4));
    let (key, id) = p.issue(&p.a, &marker);
    // Warm B: the record is now in B's isolate cache.
    for round in 0..2 {
        assert_forwarded(
            &p.read(&p.b, &key, &marker),
            &format!("{marker}: warm-up {round} through B"),
        );
    }
    action.apply(p, &id);
    let t0 = Instant::now();
    loop {
        let tick = Instant::now();
        let r = p.read(&p.b, &key, &marker);
        match r.status {
            200 => {}
            s if s == action.status() => {
                let ms = t0.elapsed().as_millis();
                assert_eq!(r.code(), action.code(), "{marker}: B's denial");
                return Some(ms);
            }
            other => panic!("{marker}: B answered {other} while waiting for 401: {}", r.body),
        }
        if t0.elapsed() > GIVE_UP {
            return None;
        }
        std::thread::sleep(POLL.saturating_sub(tick.elapsed()));
    }
}

fn revocation_bound() {
    reproduce(REVOCATION);
    let n = trials_per_action();
    assert!(n > 0, "KEYGATE_ISOLATES_TRIALS must be at least 1");
    let p = Pair::start();
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for action in [Action::Revoke, Action::Disable, Action::Delete, Action::Narrow] {
        let mut ms: Vec<u128> = Vec::with_capacity(n);
        for i in 0..n {
            let t = trial(&p, action, i);
            let v = t.unwrap_or(GIVE_UP.as_millis());
            println!(
                "e2e isolates: {} trial {i}: {}",
                action.name(),
                t.map_or(format!("still allowed after {v} ms"), |v| format!(
                    "denied after {v} ms"
                ))
            );
            if t.is_none_or(|v| v > BOUND_MS) {
                failures.push(format!("{} trial {i}: {v} ms", action.name()));
            }
            ms.push(v);
        }
        ms.sort_unstable();
        let median = if n % 2 == 1 {
            ms[n / 2]
        } else {
            (ms[n / 2 - 1] + ms[n / 2]) / 2
        };
        report.push(format!(
            "{:<8} n={n} median={median} ms max={} ms min={} ms",
            action.name(),
            ms[n - 1],
            ms[0]
        ));
    }
    println!(
        "e2e isolates: from A's admin response to B's first 401 (poll every {} ms, registry {}):\n  {}",
        POLL.as_millis(),
        if registry() { "bound" } else { "left out" },
        report.join("\n  ")
    );
    assert!(
        failures.is_empty(),
        "denied in the other isolate later than {BOUND_MS} ms:\n  {}\n{}",
        failures.join("\n  "),
        report.join("\n")
    );
}
