#!/usr/bin/env bash
# Runs the worker locally: installs/builds what is missing, creates .dev.vars with a random
# ADMIN_TOKEN on first run, starts the local echo origin, and serves the worker with
# `wrangler dev` on 127.0.0.1 with KV persisted under .wrangler/state.
# Env: PORT (default 8787), ORIGIN_PORT (default 8788), ORIGIN (default: the local echo origin).
set -euo pipefail
source "$(dirname "$0")/toolchain.sh"
cd "$ROOT"
ensure_toolchain
PORT=${PORT:-8787}
ORIGIN_PORT=${ORIGIN_PORT:-8788}

if [ ! -f .dev.vars ]; then
  umask 077
  printf 'ADMIN_TOKEN=%s\n' "$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')" > .dev.vars
  log "created .dev.vars with a random ADMIN_TOKEN"
fi
if ! grep -q '^TOKEN_SIGNING_KEY=' .dev.vars; then
  # An Ed25519 seed (32 random bytes, base64url) for the access tokens of POST /oauth/token.
  printf 'TOKEN_SIGNING_KEY=%s\n' "$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')" >> .dev.vars
  log "added a random TOKEN_SIGNING_KEY to .dev.vars"
fi
if ! grep -q '^SERVER_TIMING=' .dev.vars; then
  # Forwarded responses carry Server-Timing (gateway and origin time, where the record came
  # from) in local dev; deployed environments leave it off.
  printf 'SERVER_TIMING=1\n' >> .dev.vars
fi
ADMIN_TOKEN=$(sed -n 's/^ADMIN_TOKEN=//p' .dev.vars)

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

if [ -z "${ORIGIN:-}" ]; then
  setsid node scripts/echo-origin.mjs "$ORIGIN_PORT" >&2 &
  pids+=($!)
  ORIGIN="http://127.0.0.1:$ORIGIN_PORT"
fi

# A dev build (incremental, no wasm-opt). wrangler dev runs the same [build] command on start
# (up to date then) and again whenever a file under src/ or policy/ changes, so a saved change is
# served within seconds; `npx wrangler dev` behaves the same.
KEYGATE_BUILD_MODE=dev bash scripts/build.sh
cat <<MSG

keygate is starting on http://127.0.0.1:$PORT (origin: $ORIGIN; KV persisted in .wrangler/state)
  curl http://127.0.0.1:$PORT/healthz
  curl -X POST http://127.0.0.1:$PORT/admin/keys -H "Authorization: Bearer $ADMIN_TOKEN" \\
       -H 'Content-Type: application/json' -d '{"name":"my key","scopes":["license:read"]}'
  curl http://127.0.0.1:$PORT/licenses/42 -H "Authorization: Bearer <key from above>"
The admin console: http://127.0.0.1:$PORT/admin/ui (sign in with the ADMIN_TOKEN in .dev.vars).
The admin token is in .dev.vars. Stop with Ctrl-C.

MSG
setsid npx wrangler dev --ip 127.0.0.1 --port "$PORT" --var "ORIGIN:$ORIGIN" &
pids+=($!)
wait "${pids[-1]}"
