//! Bundles a policy file into the Worker at build time. `scripts/build.sh --env NAME` validates
//! `policy/NAME.toml` with the native `keygate-policy` tool, writes it as JSON, and points
//! `KEYGATE_POLICY_JSON` at it; this copies it to `OUT_DIR/policy.json`, which `src/bundled.rs`
//! includes. Without it, the bundled policy is `null` and the `POLICY` var is used.
//!
//! It also packs `src/openapi.json` for `src/openapi.rs`: insignificant whitespace removed, then
//! deflated (about 139 KB of text becomes about 15 KB in the wasm; issue 14).
use std::path::PathBuf;

/// JSON without the whitespace between tokens; strings (escapes included) are kept byte for
/// byte, and nothing is reordered.
fn minify_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

fn pack_openapi(out_dir: &std::path::Path) {
    println!("cargo:rerun-if-changed=src/openapi.json");
    let text = match std::fs::read_to_string("src/openapi.json") {
        Ok(t) => t,
        Err(e) => {
            println!("cargo:warning=cannot read src/openapi.json: {e}");
            std::process::exit(1);
        }
    };
    let packed = miniz_oxide::deflate::compress_to_vec(minify_json(&text).as_bytes(), 10);
    if let Err(e) = std::fs::write(out_dir.join("openapi.json.deflate"), packed) {
        println!("cargo:warning=cannot write openapi.json.deflate: {e}");
        std::process::exit(1);
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=KEYGATE_POLICY_JSON");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    pack_openapi(&out_dir);
    let out = out_dir.join("policy.json");
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
