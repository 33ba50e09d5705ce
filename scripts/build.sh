#!/usr/bin/env bash
# Builds the Worker into build/ (worker-build: cargo for wasm32, wasm-bindgen, wasm-opt, esbuild).
# wrangler.toml's [build] command runs this, so `npx wrangler dev` builds too.
set -euo pipefail
source "$(dirname "$0")/toolchain.sh"
if [ -z "${KEYGATE_SKIP_ENSURE:-}" ]; then ensure_toolchain; fi
wasm_build_env
cd "$ROOT"
# wrangler dev runs this on start; the run and test scripts have built already.
if [ -n "${KEYGATE_SKIP_BUILD:-}" ] && [ -f build/index.js ]; then exit 0; fi
# Up to date: nothing that goes into the wasm is newer than it (wasm-opt alone takes ~25 s).
if [ -z "${KEYGATE_FORCE_BUILD:-}" ] && [ -f build/index.js ] && [ -f build/index_bg.wasm ] &&
  [ -z "$(find src Cargo.toml Cargo.lock scripts/build.sh -newer build/index_bg.wasm -print -quit)" ]; then
  log "build/ is up to date"
  exit 0
fi
worker-build --release >&2
ls -l build/index_bg.wasm >&2 2>/dev/null || true
