//! `keygate-policy check FILE.toml [--out FILE.json]`: validates a policy file with the same code
//! the Worker runs, and writes it as compact JSON for bundling. Exits non-zero, naming the
//! problem, when the policy is invalid, so a bad policy fails the build. Prints the route count
//! and the time the parse and validation took.
use std::process::ExitCode;
use std::time::Instant;

fn run(args: &[String]) -> Result<String, String> {
    let (file, out) = match args {
        [cmd, file] if cmd == "check" => (file, None),
        [cmd, file, flag, out] if cmd == "check" && flag == "--out" => (file, Some(out)),
        _ => return Err("usage: keygate-policy check FILE.toml [--out FILE.json]".into()),
    };
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    let doc: toml::Value = toml::from_str(&text).map_err(|e| format!("{file}: not TOML: {e}"))?;
    let json = serde_json::to_value(&doc).map_err(|e| format!("{file}: {e}"))?;
    let started = Instant::now();
    let policy =
        keygate::policy::Policy::from_json(&json).map_err(|e| format!("{file}: invalid policy: {e}"))?;
    let took = started.elapsed();
    if let Some(out) = out {
        std::fs::write(out, json.to_string()).map_err(|e| format!("{out}: {e}"))?;
    }
    Ok(format!(
        "{file}: valid, {} routes, parsed and validated in {:.2} ms",
        policy.routes.len(),
        took.as_secs_f64() * 1000.0
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(msg) => {
            eprintln!("[keygate-policy] {msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("[keygate-policy] {e}");
            ExitCode::FAILURE
        }
    }
}
