#!/usr/bin/env bash
# Builds the Worker into build/ (worker-build: cargo for wasm32, wasm-bindgen, wasm-opt, esbuild),
# and the admin console's static files into build/console/ (esbuild, Preact).
# wrangler.toml's [build] command runs this, so `npx wrangler dev` and `npx wrangler deploy`
# build too; `wrangler dev` re-runs it whenever a file under src/ changes.
#
# Two modes (KEYGATE_BUILD_MODE=dev|release overrides the choice):
#   dev      under `wrangler dev`: the incremental `wasm-dev` profile, no wasm-opt (seconds)
#   release  everything else (deploy, tests, benchmarks): LTO and wasm-opt (about a minute)
# With --env, the environment's policy file is validated and bundled first, so a bad policy fails
# the build, not the first request.
#
# `--env NAME` builds a wrangler environment: policy/NAME.toml is validated and bundled, the
# output goes to build/NAME/ (its `main`), and for `production` the KV namespace ids in the
# config (wrangler.toml, or $KEYGATE_WRANGLER_CONFIG) must not be the shipped placeholder.
set -euo pipefail
source "$(dirname "$0")/toolchain.sh"
if [ -z "${KEYGATE_SKIP_ENSURE:-}" ]; then ensure_toolchain; fi
cd "$ROOT"
# The e2e harness builds once itself, then starts `wrangler dev` with this set.
if [ -n "${KEYGATE_SKIP_BUILD:-}" ] && [ -f build/index.js ] && [ -f build/console/admin/ui/index.html ]; then exit 0; fi

# The admin console: the static files of [assets] (wrangler.toml), in build/console/admin/ui/.
# esbuild (the one worker-build uses, from node_modules) bundles console/src with Preact into one
# minified module and the stylesheet into one file; nothing of it goes into the wasm. Skipped
# when nothing under console/ and no npm package changed since the last console build.
build_console() {
  local out=build/console/admin/ui stamp=build/.console-built
  local esbuild="$ROOT/node_modules/@esbuild/linux-x64/bin/esbuild"
  if [ -f "$stamp" ] && [ -f "$out/index.html" ] &&
    [ -z "$(find console package-lock.json -newer "$stamp" -print -quit 2>/dev/null)" ]; then
    return 0
  fi
  [ -x "$esbuild" ] || { log "no esbuild in node_modules: run bash scripts/test.sh (or npm install) first"; return 1; }
  rm -rf build/console.tmp
  mkdir -p build/console.tmp/admin/ui
  "$esbuild" console/src/main.jsx --bundle --minify --format=esm --target=es2022 \
    --jsx=automatic --jsx-import-source=preact --legal-comments=none --log-level=warning \
    --outfile=build/console.tmp/admin/ui/console.js >&2
  "$esbuild" console/console.css --bundle --minify --log-level=warning \
    --outfile=build/console.tmp/admin/ui/console.css >&2
  cp console/index.html console/favicon.svg build/console.tmp/admin/ui/
  rm -rf build/console
  mv build/console.tmp build/console
  touch "$stamp"
  log "built the console into $out: $(cat "$out"/* | wc -c) bytes, $(cat "$out"/* | gzip -9 | wc -c) gzipped"
}
build_console

env_name=
while [ $# -gt 0 ]; do
  case "$1" in
    --env) env_name=${2:-}; shift 2 ;;
    *) log "unknown argument $1 (use --env NAME)"; exit 2 ;;
  esac
done
out=build
unset KEYGATE_POLICY_JSON
if [ -n "$env_name" ]; then
  case "$env_name" in *[!a-z0-9-]*) log "--env $env_name: use lowercase letters, digits and -"; exit 2 ;; esac
  out=build/$env_name
  config=${KEYGATE_WRANGLER_CONFIG:-wrangler.toml}
  # The placeholder KV id deploys nowhere real: refused for production.
  if [ "$env_name" = production ] && python3 - "$config" <<'PY'
import sys, tomllib
cfg = tomllib.load(open(sys.argv[1], "rb"))
ids = [ns.get("id", "") for ns in cfg.get("env", {}).get("production", {}).get("kv_namespaces", [])]
sys.exit(0 if (not ids or any(set(i) <= {"0"} for i in ids)) else 1)
PY
  then
    log "production: [[env.production.kv_namespaces]] still has the placeholder id (or none)."
    log "  Create it with: npx wrangler kv namespace create KEYS --env production, and put its id in $config"
    exit 1
  fi
  policy_file=policy/$env_name.toml
  [ -f "$policy_file" ] || { log "--env $env_name needs $policy_file"; exit 1; }
  mkdir -p target/keygate-policy
  # Validated natively with the Worker's own code: a bad policy fails here, not at the first request.
  cargo run --quiet --features cli --bin keygate-policy -- check "$policy_file" --out "target/keygate-policy/$env_name.json" >&2
  export KEYGATE_POLICY_JSON="$ROOT/target/keygate-policy/$env_name.json"
fi
wasm_build_env

# Is an ancestor of this process `wrangler dev`?
under_wrangler_dev() {
  local pid=$$ args
  for _ in 1 2 3 4 5 6; do
    pid=$(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ')
    if [ -z "$pid" ] || [ "$pid" -le 1 ]; then return 1; fi
    args=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || true)
    case "$args" in *wrangler*" dev"*) return 0 ;; esac
  done
  return 1
}
mode=${KEYGATE_BUILD_MODE:-}
if [ -z "$mode" ]; then
  if under_wrangler_dev; then mode=dev; else mode=release; fi
fi
case "$mode" in dev | release) ;; *) log "KEYGATE_BUILD_MODE must be dev or release"; exit 2 ;; esac

# Up to date: built in this mode, and nothing that goes into the wasm is newer than it.
if [ -z "${KEYGATE_FORCE_BUILD:-}" ] && [ -f "$out/index.js" ] && [ -f "$out/index_bg.wasm" ] &&
  [ "$(cat "$out/.mode" 2>/dev/null)" = "$mode" ] &&
  [ -z "$(find src build.rs Cargo.toml Cargo.lock scripts/build.sh scripts/entry.mjs policy -newer "$out/index_bg.wasm" -print -quit 2>/dev/null)" ]; then
  log "$out/ is up to date ($mode)"
  exit 0
fi
started=$(date +%s.%N)
# NO_MINIFY: scripts/entry.mjs matches worker-build's entry shim as written, replaces it with a
# plain module handler (no per-request Proxy objects), and minifies the bundle itself.
if [ "$mode" = dev ]; then
  NO_MINIFY=1 worker-build --profile wasm-dev --no-opt --out-dir "$out" >&2
  node scripts/entry.mjs "$out/index.js" >&2
else
  NO_MINIFY=1 worker-build --release --out-dir "$out" >&2
  node scripts/entry.mjs "$out/index.js" >&2
  # worker-build keeps the wasm name section (about 180 KB: every function's name); the
  # deployed worker does without it (issue 14). KEYGATE_WASM_NAMES=1 keeps it, for readable
  # wasm stack traces. The feature list is worker-build's own, so nothing newer is emitted.
  if [ -z "${KEYGATE_WASM_NAMES:-}" ]; then
    features=()
    for f in mutable-globals sign-ext nontrapping-float-to-int bulk-memory multivalue reference-types exception-handling; do
      features+=("--enable-$f")
    done
    "$WASM_OPT_BIN" "${features[@]}" --strip-debug --strip-producers "$out/index_bg.wasm" -o "$out/index_bg.wasm.stripped" >&2
    mv "$out/index_bg.wasm.stripped" "$out/index_bg.wasm"
  fi
fi
echo "$mode" > "$out/.mode"
log "built $out ($mode) in $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $started}") s: $(stat -c %s "$out/index_bg.wasm") bytes of wasm"
