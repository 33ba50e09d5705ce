//! Deployability, checked with the real wrangler: `wrangler deploy --dry-run` for each shipped
//! environment (every binding present, the registry Durable Object included, the policy file bundled, the placeholder KV id refused
//! for production), a policy that fails validation failing the build, and a 500-route policy
//! that deploys and is served by a real worker.
// Tests may unwrap and index: a failure here is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn unique(tag: &str) -> String {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).unwrap();
    format!("test-{tag}-{}", hex::encode(b))
}

/// Files the test writes into the repository (a config, a policy), removed when dropped.
struct Scratch(Vec<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn wrangler(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("npx");
    cmd.arg("wrangler")
        .args(args)
        .current_dir(root())
        .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
        .env("WRANGLER_SEND_METRICS", "false")
        .env("KEYGATE_BUILD_MODE", "dev")
        .env("KEYGATE_SKIP_ENSURE", "1")
        .env_remove("KEYGATE_SKIP_BUILD")
        .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("npx wrangler")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One build at a time: builds share cargo's target directory, and worker-build reads the wasm
/// cargo just wrote, so two builds with different bundled policies must not interleave.
static BUILDS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn dry_run(env: &str, config: &str, extra_env: &[(&str, &str)]) -> (bool, String) {
    let _one_at_a_time = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    let outdir = std::env::temp_dir().join(unique("dry"));
    let o = wrangler(
        &[
            "deploy",
            "--dry-run",
            "--env",
            env,
            "--config",
            config,
            "--outdir",
            outdir.to_str().unwrap(),
        ],
        extra_env,
    );
    let _ = std::fs::remove_dir_all(&outdir);
    (o.status.success(), text(&o))
}

/// The shipped wrangler.toml with the placeholder KV ids replaced, as a scratch config.
fn config_with_real_ids(extra: &str) -> (String, Scratch) {
    let name = format!(".{}.toml", unique("wrangler"));
    let shipped = std::fs::read_to_string(root().join("wrangler.toml")).unwrap();
    let replaced = shipped.replace(
        "id = \"00000000000000000000000000000000\"",
        "id = \"0123456789abcdef0123456789abcdef\"",
    );
    let path = root().join(&name);
    std::fs::write(&path, format!("{replaced}\n{extra}")).unwrap();
    (name, Scratch(vec![path]))
}

fn assert_bindings(out: &str, origin: &str) {
    assert!(out.contains("env.KEYS ("), "no KEYS binding:\n{out}");
    assert!(out.contains("KV Namespace"), "{out}");
    assert!(
        out.contains("env.REGISTRY (Registry)") && out.contains("Durable Object"),
        "no REGISTRY Durable Object binding:\n{out}"
    );
    // The admin console's static files (each environment repeats [assets]: none is inherited).
    assert!(
        out.contains("env.ASSETS") && out.contains("Assets"),
        "no ASSETS binding:\n{out}"
    );
    assert!(
        out.contains(&format!("env.ORIGIN (\"{origin}\")")),
        "ORIGIN:\n{out}"
    );
}

#[test]
fn staging_deploys_with_every_binding_and_its_own_policy() {
    let (ok, out) = dry_run("staging", "wrangler.toml", &[]);
    assert!(ok, "staging dry run failed:\n{out}");
    assert_bindings(&out, "https://staging-origin.example.com");
    assert!(
        out.contains("built build/staging"),
        "the staging build ran:\n{out}"
    );
    // Its policy file was bundled: the realm of policy/staging.toml is inside the wasm.
    let wasm = std::fs::read(root().join("build/staging/index_bg.wasm")).unwrap();
    assert!(
        wasm.windows(15).any(|w| w == b"keygate-staging"),
        "policy/staging.toml not bundled"
    );
}

#[test]
fn production_refuses_the_placeholder_then_deploys_with_every_binding() {
    let (ok, out) = dry_run("production", "wrangler.toml", &[]);
    assert!(!ok, "production deployed with the placeholder KV id:\n{out}");
    assert!(out.contains("still has the placeholder id"), "{out}");
    let (config, _scratch) = config_with_real_ids("");
    let (ok, out) = dry_run("production", &config, &[("KEYGATE_WRANGLER_CONFIG", &config)]);
    assert!(ok, "production dry run failed:\n{out}");
    assert_bindings(&out, "");
    // On a route in front of the origin, not on workers.dev.
    let cfg: toml::Value = toml::from_str(&std::fs::read_to_string(root().join(&config)).unwrap()).unwrap();
    let prod = &cfg["env"]["production"];
    assert_eq!(prod["workers_dev"].as_bool(), Some(false));
    assert!(prod["routes"][0]["zone_name"].is_str());
    assert_eq!(prod["observability"]["enabled"].as_bool(), Some(true));
}

fn env_section(name: &str) -> String {
    format!(
        "[env.{name}]\nname = \"keygate-{name}\"\nmain = \"build/{name}/index.js\"\nbuild = {{ command = \"bash scripts/build.sh --env {name}\" }}\n\
         [[env.{name}.kv_namespaces]]\nbinding = \"KEYS\"\nid = \"0123456789abcdef0123456789abcdef\"\n\
         [env.{name}.vars]\nORIGIN = \"http://127.0.0.1:9\"\n"
    )
}

#[test]
fn an_invalid_policy_fails_the_build() {
    let name = unique("bad");
    let policy = root().join(format!("policy/{name}.toml"));
    std::fs::write(
        &policy,
        "[[routes]]\npath = \"/x\"\nip_allowlist = [\"10.0.0.1/8\"]\n",
    )
    .unwrap();
    let (config, mut scratch) = config_with_real_ids(&env_section(&name));
    scratch.0.push(policy);
    scratch.0.push(root().join(format!("build/{name}")));
    let (ok, out) = dry_run(&name, &config, &[]);
    assert!(!ok, "an invalid policy deployed:\n{out}");
    assert!(
        out.contains("invalid policy") && out.contains("10.0.0.0/8"),
        "{out}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split(' ').nth(1)?.parse().ok()?;
    Some((status, buf))
}

#[test]
fn a_500_route_policy_deploys_and_loads() {
    let name = unique("big");
    let mut policy = String::from("default = \"deny\"\n");
    for i in 0..500 {
        policy.push_str(&format!(
            "[[routes]]\nmethods = [\"GET\"]\npath = \"/service-{i}/items/{{item}}/*\"\nscopes = [\"service-{i}:read\", \"item.{{item}}.read\"]\nip_allowlist = [\"10.{}.0.0/16\"]\n",
            i % 256
        ));
    }
    assert!(
        policy.len() > 5 * 1024 * 10,
        "far over the 5 KB var limit: {}",
        policy.len()
    );
    let policy_path = root().join(format!("policy/{name}.toml"));
    std::fs::write(&policy_path, &policy).unwrap();
    let (config, mut scratch) = config_with_real_ids(&env_section(&name));
    scratch.0.push(policy_path);
    scratch.0.push(root().join(format!("build/{name}")));
    let (ok, out) = dry_run(&name, &config, &[]);
    assert!(ok, "the 500-route policy did not deploy:\n{out}");
    assert!(out.contains("valid, 500 routes"), "{out}");
    eprintln!(
        "{}",
        out.lines()
            .find(|l| l.contains("valid, 500 routes"))
            .unwrap_or_default()
    );

    // Served by a real worker (workerd) from what the build produced: the last route answers.
    let port = free_port();
    let persist = std::env::temp_dir().join(unique("persist"));
    let mut child = Command::new("npx");
    child
        .args([
            "wrangler",
            "dev",
            "--env",
            &name,
            "--config",
            &config,
            "--ip",
            "127.0.0.1",
        ])
        .args([
            "--port",
            &port.to_string(),
            "--show-interactive-dev-session=false",
        ])
        .arg("--persist-to")
        .arg(&persist)
        .current_dir(root())
        .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
        .env("WRANGLER_SEND_METRICS", "false")
        .env("KEYGATE_SKIP_BUILD", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    use std::os::unix::process::CommandExt;
    child.process_group(0);
    let mut child = child.spawn().unwrap();
    let pgid = child.id();
    let stop = || {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .status();
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let result = loop {
        if let Some(r) = get(port, "/service-499/items/a/b") {
            break Some(r);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    // The first request loads the policy; time a fresh one after it for comparison.
    let warm = Instant::now();
    let again = get(port, "/service-498/items/a/b");
    let warm = warm.elapsed();
    stop();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&persist);
    let (status, body) = result.expect("the worker with 500 routes never answered");
    assert_eq!(
        status, 403,
        "route 499 matched, and its IP allowlist applies: {body}"
    );
    assert!(body.contains("ip_not_allowed"), "{body}");
    assert_eq!(again.map(|r| r.0), Some(403));
    eprintln!("a warm request to route 498 took {warm:?}");
}
