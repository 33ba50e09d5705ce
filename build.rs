//! Bundles a policy file into the Worker at build time. `scripts/build.sh --env NAME` validates
//! `policy/NAME.toml` with the native `keygate-policy` tool, writes it as JSON, and points
//! `KEYGATE_POLICY_JSON` at it; this copies it to `OUT_DIR/policy.json`, which `src/bundled.rs`
//! includes. Without it, the bundled policy is `null` and the `POLICY` var is used.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=KEYGATE_POLICY_JSON");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("policy.json");
    let text = match std::env::var("KEYGATE_POLICY_JSON") {
        Ok(path) if !path.is_empty() => {
            println!("cargo:rerun-if-changed={path}");
            match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    println!("cargo:warning=cannot read KEYGATE_POLICY_JSON={path}: {e}");
                    std::process::exit(1);
                }
            }
        }
        _ => "null".to_owned(),
    };
    if let Err(e) = std::fs::write(&out, text) {
        println!("cargo:warning=cannot write {}: {e}", out.display());
        std::process::exit(1);
    }
}
