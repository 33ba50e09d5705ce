#!/usr/bin/env bash
# Measures the dev loop: starts `npx wrangler dev` (as scripts/dev.sh does), changes the name that
# GET /healthz reports in src/edge.rs, and times from the save until the server answers with the
# new code. Then restores the file (and times that rebuild too). Usage:
#   bash scripts/measure-dev-loop.sh [rounds, default 3]
set -euo pipefail
source "$(dirname "$0")/toolchain.sh"
cd "$ROOT"
ensure_toolchain
ROUNDS=${1:-3}
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
persist=$(mktemp -d)
file=src/edge.rs
backup=$(mktemp)
cp "$file" "$backup"
pid=
cleanup() {
  cp "$backup" "$file"
  if [ -n "$pid" ]; then kill -TERM -- "-$pid" 2>/dev/null || true; sleep 1; kill -KILL -- "-$pid" 2>/dev/null || true; fi
  rm -rf "$persist" "$backup"
}
trap cleanup EXIT INT TERM
KEYGATE_BUILD_MODE=dev bash scripts/build.sh
setsid npx wrangler dev --ip 127.0.0.1 --port "$PORT" --persist-to "$persist" \
  --var ORIGIN:http://127.0.0.1:9 --show-interactive-dev-session=false >"$persist/log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.5; done
wait_for() { # name -> seconds until /healthz reports it
  local start=$1 name=$2
  for _ in $(seq 1 1200); do
    if curl -s "http://127.0.0.1:$PORT/healthz" | grep -q "\"name\":\"$name\""; then
      awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $start}"; return 0
    fi
    sleep 0.1
  done
  echo "timeout"; return 1
}
for round in $(seq 1 "$ROUNDS"); do
  name="keygate-dev$round"
  sed -i "s/\"name\": \"keygate\", \"version\"/\"name\": \"$name\", \"version\"/" "$file"
  grep -q "$name" "$file" || { log "could not edit $file"; exit 1; }
  start=$(date +%s.%N)
  changed=$(wait_for "$start" "$name")
  cp "$backup" "$file"
  start=$(date +%s.%N)
  restored=$(wait_for "$start" keygate)
  echo "round $round: save to serving ${changed} s (change), ${restored} s (restore)"
done
