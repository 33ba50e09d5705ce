#!/usr/bin/env bash
# The size floor of keygate's stack (BENCHMARKS.md, section 6): builds bench/size-floor, the
# smallest worker on the same crates and settings as keygate (workers-rs, serde_json, sha2,
# ed25519-dalek; opt-level "z", LTO, wasm-opt -Oz, the name section stripped) that reads a key
# header, hashes it, reads one KV record, checks a scope and an Ed25519 token, and forwards.
# Prints its raw and gzip -9 sizes beside keygate's own build/index_bg.wasm.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../scripts/toolchain.sh"
ensure_toolchain
wasm_build_env
cd "$HERE"
cp "$ROOT/Cargo.lock" Cargo.lock
export CARGO_TARGET_DIR="$ROOT/target/size-floor"
NO_MINIFY=1 worker-build --release --out-dir "$CARGO_TARGET_DIR/out" >&2
features=()
for f in mutable-globals sign-ext nontrapping-float-to-int bulk-memory multivalue reference-types exception-handling; do
  features+=("--enable-$f")
done
"$WASM_OPT_BIN" "${features[@]}" --strip-debug --strip-producers "$CARGO_TARGET_DIR/out/index_bg.wasm" -o "$CARGO_TARGET_DIR/floor.wasm"
rm -f Cargo.lock
for w in "$CARGO_TARGET_DIR/floor.wasm" "$ROOT/build/index_bg.wasm"; do
  [ -f "$w" ] || continue
  printf '%s: %s bytes raw, %s bytes gzip -9\n' "$w" "$(stat -c %s "$w")" "$(gzip -9 -n -c "$w" | wc -c)"
done
