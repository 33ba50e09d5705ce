//! The size budget of the deployed wasm (issue 14): at most 400,000 bytes raw and 150,000 bytes
//! gzipped (`gzip -9 -n`). Size is deterministic for a given source and toolchain, so this is a
//! test, not a benchmark. It builds the release worker first (`scripts/build.sh`, which returns
//! at once when `build/` is up to date), and fails if that build fails: it never skips.
//!
//! The budget is NOT met (BENCHMARKS.md has the figures and what takes the space), so the
//! budget test is `#[ignore]`d until it is; run it with
//! `cargo test --test wasm_size -- --ignored --nocapture`. Meanwhile a ceiling a few percent
//! above today's size runs in the test command, so the wasm cannot grow unnoticed: raising it
//! is a decision recorded in a commit, not an accident.
// Tests may unwrap and index: a failure here is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

const MAX_RAW: u64 = 400_000;
const MAX_GZIP: u64 = 150_000;
/// Today's size (1,120,673 raw, 478,695 gzip -9 on 2026-11-23, after the glue changes dropped
/// `url`) plus a few percent.
const CEILING_RAW: u64 = 1_160_000;
const CEILING_GZIP: u64 = 497_000;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the release worker (as deployed: LTO, wasm-opt, names stripped) and returns its wasm.
fn release_wasm() -> Vec<u8> {
    let status = Command::new("bash")
        .arg("scripts/build.sh")
        .current_dir(root())
        .env("KEYGATE_BUILD_MODE", "release")
        .env("KEYGATE_SKIP_ENSURE", "1")
        .env_remove("KEYGATE_SKIP_BUILD")
        .env_remove("KEYGATE_WASM_NAMES")
        .status()
        .unwrap_or_else(|e| panic!("cannot run scripts/build.sh: {e}"));
    assert!(
        status.success(),
        "scripts/build.sh failed ({status}); run `bash scripts/test.sh` to install the toolchain first"
    );
    std::fs::read(root().join("build/index_bg.wasm")).expect("build/index_bg.wasm after a successful build")
}

/// `gzip -9 -n` of `bytes`: its length.
fn gzip_len(bytes: &[u8]) -> u64 {
    let mut child = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    let mut stdin = child.stdin.take().unwrap();
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "gzip failed");
    out.stdout.len() as u64
}

/// (raw, gzip -9) bytes of the release wasm, printed.
fn release_sizes() -> (u64, u64) {
    let wasm = release_wasm();
    let raw = wasm.len() as u64;
    let gz = gzip_len(&wasm);
    eprintln!("build/index_bg.wasm: {raw} bytes raw, {gz} bytes gzip -9");
    (raw, gz)
}

#[test]
#[ignore = "issue 14's budget (400,000 raw / 150,000 gzip) is not met: about 1,121 KB raw / 479 KB gzip, see BENCHMARKS.md"]
fn release_wasm_is_within_the_size_budget() {
    let (raw, gz) = release_sizes();
    assert!(
        raw <= MAX_RAW && gz <= MAX_GZIP,
        "build/index_bg.wasm is {raw} bytes raw (budget {MAX_RAW}) and {gz} bytes gzipped (budget {MAX_GZIP})"
    );
}

#[test]
fn release_wasm_stays_under_its_ceiling() {
    let (raw, gz) = release_sizes();
    assert!(
        raw <= CEILING_RAW && gz <= CEILING_GZIP,
        "build/index_bg.wasm grew to {raw} bytes raw (ceiling {CEILING_RAW}) and {gz} bytes gzipped (ceiling {CEILING_GZIP})"
    );
}
