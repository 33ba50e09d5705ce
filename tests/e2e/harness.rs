//! The end-to-end harness: builds the worker, starts a local echo origin and `wrangler dev`
//! (workerd, local KV in a fresh temporary directory, its own ADMIN_TOKEN) on free loopback
//! ports, and stops every process group it started when dropped, even after failures.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("e2e: cannot find a free loopback port: {e}"))
}

/// A fresh Ed25519 seed for a worker's TOKEN_SIGNING_KEY (base64url, 32 bytes).
pub fn signing_seed() -> String {
    use base64::Engine;
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("randomness");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).expect("randomness");
    hex::encode(buf)
}

/// Builds the worker once (scripts/build.sh), failing loudly if it cannot.
pub fn build_worker() {
    let status = Command::new("bash")
        .arg("scripts/build.sh")
        .current_dir(root())
        .env("KEYGATE_SKIP_ENSURE", "1")
        .status()
        .unwrap_or_else(|e| panic!("e2e: cannot run scripts/build.sh: {e}"));
    assert!(
        status.success() && root().join("build/index.js").exists(),
        "e2e: the worker could not be built (scripts/build.sh exited with {status}); run `bash scripts/test.sh` to install the toolchain first"
    );
}

/// A child process in its own process group; the whole group is stopped on drop.
pub struct Group {
    child: Child,
    name: &'static str,
    log: Option<PathBuf>,
}

impl Group {
    pub fn spawn(name: &'static str, mut cmd: Command, log: Option<PathBuf>) -> Group {
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("e2e: cannot start {name}: {e}"));
        Group { child, name, log }
    }

    pub fn log_tail(&self) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Has the group's leader exited? With its exit status.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn stop(&mut self) {
        let pgid = self.child.id() as i32;
        let signal = |sig: &str| {
            let _ = Command::new("kill")
                .args([sig, "--", &format!("-{pgid}")])
                .stderr(Stdio::null())
                .status();
        };
        signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever is left of the group (workerd children included) goes now.
        signal("-KILL");
        let _ = self.child.wait();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        eprintln!("e2e: stopping {} (process group {})", self.name, self.child.id());
        self.stop();
    }
}

/// The local origin: echoes what it received as JSON.
pub struct Origin {
    pub port: u16,
    _group: Group,
}

impl Origin {
    /// Every request the echo origin received so far (asked directly, not through a worker).
    pub fn log(&self) -> Vec<Value> {
        let r = send(
            "GET",
            &format!("http://127.0.0.1:{}/__echo/log", self.port),
            &[],
            None,
        );
        assert_eq!(r.status, 200, "echo log: {}", r.body);
        r.json().as_array().cloned().unwrap_or_default()
    }

    /// The requests whose path or query contains `marker`.
    pub fn received(&self, marker: &str) -> Vec<Value> {
        self.log()
            .into_iter()
            .filter(|v| {
                v["path"].as_str().unwrap_or_default().contains(marker)
                    || v["query"].as_str().unwrap_or_default().contains(marker)
            })
            .collect()
    }
}

pub fn start_origin() -> Origin {
    start_node("echo origin", &["scripts/echo-origin.mjs", "0"])
}

/// `scripts/bounce-proxy.mjs` on `port`, sending everything to `target_port`.
pub fn start_bounce(port: u16, target_port: u16) -> Origin {
    start_node(
        "bounce proxy",
        &[
            "scripts/bounce-proxy.mjs",
            &port.to_string(),
            &target_port.to_string(),
        ],
    )
}

fn start_node(name: &'static str, args: &[&str]) -> Origin {
    let mut cmd = Command::new("node");
    cmd.args(args).current_dir(root()).stdout(Stdio::piped());
    let mut group = Group::spawn(name, cmd, None);
    let stdout = group.child.stdout.take().expect("origin stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("origin output");
    let port = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("e2e: {name} did not start: {line:?}"));
    Origin { port, _group: group }
}

pub struct Worker {
    pub base: String,
    pub admin_token: String,
    pub persist: PathBuf,
    group: Group,
}

/// What a test worker's `ORIGIN` var is.
#[derive(Clone, Copy)]
pub enum OriginVar {
    /// The local echo origin on this port.
    Port(u16),
    /// Empty (route mode, with a policy that names the hostnames).
    Empty,
}

pub struct WorkerOptions<'a> {
    pub origin: OriginVar,
    /// Replaces the policy of wrangler.toml (JSON text); `{PORT}` stands for the worker's port.
    pub policy: Option<&'a str>,
    /// KV entries written before the worker starts: (key, value).
    pub seed: &'a [(String, String)],
    /// Start with a 31-character token, too short to enable the admin API (it is then disabled).
    pub no_admin_token: bool,
}

/// Starts a worker, retrying on another port when the one picked was taken in the meantime
/// (other processes on the machine pick free ports too).
pub fn start_worker(opts: WorkerOptions<'_>) -> Worker {
    for _ in 0..3 {
        if let Some(w) = try_start_worker(&opts) {
            return w;
        }
        eprintln!("e2e: a port was taken while wrangler dev started; trying other ports");
    }
    panic!("e2e: wrangler dev could not find a free port three times");
}

fn try_start_worker(opts: &WorkerOptions<'_>) -> Option<Worker> {
    let port = free_port();
    let persist = std::env::temp_dir().join(format!("keygate-e2e-{}", random_hex(6)));
    std::fs::create_dir_all(&persist).expect("persist dir");
    for (k, v) in opts.seed {
        wrangler_kv(&persist, &["put", k, v]);
    }
    let admin_token = if opts.no_admin_token {
        "0123456789abcdef0123456789abcde".to_owned()
    } else {
        random_hex(24)
    };
    let log = persist.join("wrangler.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let mut cmd = Command::new("npx");
    cmd.args([
        "wrangler",
        "dev",
        "--ip",
        "127.0.0.1",
        "--port",
        &port.to_string(),
    ])
    .arg("--persist-to")
    .arg(&persist)
    .args([
        "--var",
        &match opts.origin {
            OriginVar::Port(p) => format!("ORIGIN:http://127.0.0.1:{p}"),
            OriginVar::Empty => "ORIGIN:".to_owned(),
        },
    ])
    .args(["--var", &format!("ADMIN_TOKEN:{admin_token}")])
    .args(["--var", &format!("TOKEN_SIGNING_KEY:{}", signing_seed())])
    // As `scripts/dev.sh` sets it: local dev shows Server-Timing.
    .args(["--var", "SERVER_TIMING:1"])
    .args(["--show-interactive-dev-session=false", "--log-level", "log"]);
    if let Some(p) = opts.policy {
        cmd.args([
            "--var",
            &format!("POLICY:{}", p.replace("{PORT}", &port.to_string())),
        ]);
    }
    cmd.current_dir(root())
        .env("KEYGATE_SKIP_BUILD", "1")
        .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
        .env("WRANGLER_SEND_METRICS", "false")
        .env("CI", "true")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log"))
        .stderr(log_file);
    let mut group = Group::spawn("wrangler dev", cmd, Some(log.clone()));
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Some(status)) = group.child.try_wait() {
            if group.log_tail().contains("Address already in use") {
                let _ = std::fs::remove_dir_all(&persist);
                return None;
            }
            panic!(
                "e2e: wrangler dev exited ({status}) before it was ready:\n{}",
                group.log_tail()
            );
        }
        // Any HTTP answer means workerd is serving (the bad-policy worker answers 500).
        if agent().get(&format!("{base}/healthz")).call().is_ok() {
            break;
        }
        if Instant::now() > deadline {
            let tail = group.log_tail();
            group.stop();
            panic!("e2e: wrangler dev did not answer /healthz within 120 s:\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Some(Worker {
        base,
        admin_token,
        persist,
        group,
    })
}

impl Worker {
    pub fn log(&self) -> String {
        self.group.log_tail()
    }

    /// The JSON log lines the worker wrote so far (wrangler wraps them in colour codes).
    pub fn json_logs(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.persist.join("wrangler.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let start = l.find("{\"")?;
                let end = l.rfind('}')?;
                serde_json::from_str::<Value>(l.get(start..=end)?).ok()
            })
            .filter(|v| v.get("event").is_some())
            .collect()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.persist);
    }
}

/// `wrangler kv key <args> --binding KEYS --local --persist-to DIR`; returns stdout.
pub fn wrangler_kv(persist: &Path, args: &[&str]) -> String {
    let out = Command::new("npx")
        .args(["wrangler", "kv", "key"])
        .args(args)
        .args(["--binding", "KEYS", "--local", "--persist-to"])
        .arg(persist)
        .current_dir(root())
        .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
        .env("WRANGLER_SEND_METRICS", "false")
        .env("KEYGATE_SKIP_BUILD", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("e2e: cannot run wrangler kv: {e}"));
    assert!(
        out.status.success(),
        "wrangler kv {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Does any file under `dir` contain `needle`?
pub fn dir_contains(dir: &Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            dir_contains(&p, needle)
        } else {
            let mut buf = Vec::new();
            std::fs::File::open(&p)
                .and_then(|mut f| f.read_to_end(&mut buf))
                .is_ok()
                && buf.windows(needle.len()).any(|w| w == needle)
        }
    })
}

/// Is anything still listening on this port?
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

// ---- HTTP ---------------------------------------------------------------------------------------

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The problem code of a denial, checking the problem+json shape on the way.
    pub fn code(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "body: {}",
            self.body
        );
        let v = self.json();
        for k in ["type", "title", "detail", "code"] {
            assert!(v[k].is_string(), "problem lacks {k}: {}", self.body);
        }
        assert_eq!(v["status"], self.status, "problem status: {}", self.body);
        v["code"].as_str().unwrap_or_default().to_owned()
    }

    /// What the echo origin received (only for forwarded requests).
    pub fn echoed(&self) -> Value {
        assert_eq!(
            self.header("x-origin"),
            Some("echo"),
            "not forwarded: {} {}",
            self.status,
            self.body
        );
        self.json()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// A request over a plain socket, for methods the HTTP client refuses to send (`PROPFIND`).
pub fn send_raw(method: &str, url: &str, headers: &[(&str, &str)]) -> Resp {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, _) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host_line = format!("Host: {host}\r\nContent-Length: 0\r\n");
    send_bytes(url, &host_line, method, headers, b"")
}

/// A request over a plain socket with the path exactly as given (no client normalisation),
/// `head` holding the Host line and any framing headers (Content-Length, Transfer-Encoding),
/// then `headers`, then `body` as raw bytes.
pub fn send_bytes(url: &str, head: &str, method: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    use std::io::Write;
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = std::net::TcpStream::connect(host).unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\n{head}Connection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).expect("write");
    stream.write_all(body).expect("write body");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, mut body) = text
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_owned(), b.to_owned()))
        .expect("response head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        let mut out = String::new();
        let mut rest = body.as_str();
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        body = out;
    }
    Resp {
        status,
        headers,
        body,
    }
}

pub fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Resp {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(body.unwrap_or_default().to_owned()).expect("request");
    let mut resp = agent().run(req).unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    Resp {
        status,
        headers,
        body,
    }
}
