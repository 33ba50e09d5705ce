#!/usr/bin/env bash
# HTTP throughput benchmark: wrk against the built worker running in workerd directly (not
# `wrangler dev`, whose proxy dominates), with an in-memory KV service and nginx as the origin,
# all on 127.0.0.1. Six cases in one run, so their ratios are comparable on a noisy machine:
#   1 GET /healthz (no forwarding, no KV: the floor)   4 GET /licenses/1 with a valid key
#   2 nginx directly (the origin alone)                5 GET /licenses/1 with a malformed key (401)
#   3 GET /public/x (forwarded without a key)          6 GET /internal/x from 8.8.8.8 (403 route IP)
# Every response's status is checked (bench/http/check.lua); any other status or socket error
# fails the run. Installs wrk and nginx with apt-get if missing, builds the worker if build/ is
# empty, and stops everything it started on exit.
# Env: DURATION (10s), THREADS (2), CONNECTIONS (32), ROUNDS (1; cases alternate direction each
# round, the table shows the median per case), WARMUP (2s per case, not measured),
# KEEP_TMP=1 keeps the temp dir with configs and logs.
set -euo pipefail
source "$(dirname "$0")/toolchain.sh"
cd "$ROOT"

DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
ROUNDS=${ROUNDS:-1}
WARMUP=${WARMUP:-2s}
COMPAT_DATE=$(sed -n 's/^compatibility_date = "\(.*\)"/\1/p' wrangler.toml)

# --- tools ----------------------------------------------------------------------------------
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if ! command -v wrk >/dev/null || [ ! -x "$NGINX" ]; then
  had_nginx=0; [ -x "$NGINX" ] && had_nginx=1
  log "apt-get install nginx wrk"
  apt_install nginx wrk
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  # Debian starts the system service on install; this benchmark runs its own nginx instead.
  if [ "$had_nginx" = 0 ] && command -v service >/dev/null && service nginx status >/dev/null 2>&1; then
    log "stopping the system nginx service that the install started"
    service nginx stop >&2 || true
  fi
fi
WORKERD="$ROOT/node_modules/@cloudflare/workerd-linux-64/bin/workerd"
[ -x "$WORKERD" ] || WORKERD="$ROOT/node_modules/.bin/workerd"
if [ ! -x "$WORKERD" ]; then ensure_node_modules; fi
[ -x "$WORKERD" ] || { log "no workerd under node_modules (run scripts/build.sh or npm install)"; exit 1; }
if [ ! -f build/index.js ] || [ ! -f build/index_bg.wasm ]; then
  log "build/ is empty: building the worker"
  bash scripts/build.sh
fi

# --- processes and clean-up -----------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/keygate-bench.XXXXXX")
pids=()
ports=()
wrk_pid=
cleanup() {
  local p i
  if [ -n "$wrk_pid" ]; then kill -TERM "$wrk_pid" 2>/dev/null || true; wait "$wrk_pid" 2>/dev/null || true; fi
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  for p in "${ports[@]}"; do
    if ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then log "warning: 127.0.0.1:$p is still listening"; fi
  done
  if [ -n "${KEEP_TMP:-}" ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
  log "FAILED: $*"
  for f in "$TMP"/workerd.log "$TMP"/nginx/error.log; do
    [ -s "$f" ] && { log "--- tail of $f"; tail -n 20 "$f" >&2; }
  done
  exit 1
}

# Two free loopback ports, asked of the kernel at once so they differ.
read -r GW_PORT ORIGIN_PORT < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
ports=("$GW_PORT" "$ORIGIN_PORT")
GW="http://127.0.0.1:$GW_PORT"
ORIGIN="http://127.0.0.1:$ORIGIN_PORT"
ADMIN_TOKEN=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
ORIGIN_BODY="keygate bench origin"

# --- origin: nginx in the foreground, everything under $TMP/nginx ---------------------------
mkdir -p "$TMP/nginx/tmp"
cat > "$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx/tmp/body;
  proxy_temp_path $TMP/nginx/tmp/proxy;
  fastcgi_temp_path $TMP/nginx/tmp/fastcgi;
  uwsgi_temp_path $TMP/nginx/tmp/uwsgi;
  scgi_temp_path $TMP/nginx/tmp/scgi;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$ORIGIN_PORT;
    location / {
      # What the origin received, for the pre-flight checks (nginx omits empty headers).
      add_header X-Origin-Key-Id \$http_x_key_id;
      add_header X-Origin-Api-Key \$http_x_api_key;
      default_type text/plain;
      return 200 "$ORIGIN_BODY\n";
    }
  }
}
EOF

# --- gateway: keygate and the KV service in one workerd ------------------------------------
# embed paths are relative to the config; copies also shield the run from a concurrent build.
cp build/index.js build/index_bg.wasm bench/http/kv.js "$TMP/"
POLICY_LITERAL=$(python3 -c '
import json, tomllib
with open("wrangler.toml", "rb") as f:
    policy = tomllib.load(f)["vars"]["POLICY"]
# a JSON string inside a Cap'"'"'n Proto text literal: json.dumps of ASCII JSON escapes only " and \
print(json.dumps(json.dumps(policy, separators=(",", ":"))))')
cat > "$TMP/config.capnp" <<EOF
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "keygate", worker = .keygate),
    (name = "kv", worker = .kv),
    # workerd's default outbound network refuses loopback origins.
    (name = "loopback", network = (allow = ["public", "local"])),
  ],
  sockets = [(name = "http", address = "127.0.0.1:$GW_PORT", http = (), service = "keygate")],
);

const keygate :Workerd.Worker = (
  modules = [
    (name = "index.js", esModule = embed "index.js"),
    (name = "index_bg.wasm", wasm = embed "index_bg.wasm"),
  ],
  compatibilityDate = "$COMPAT_DATE",
  globalOutbound = "loopback",
  bindings = [
    (name = "KEYS", kvNamespace = "kv"),
    (name = "ORIGIN", text = "$ORIGIN"),
    (name = "ADMIN_TOKEN", text = "$ADMIN_TOKEN"),
    (name = "POLICY", text = $POLICY_LITERAL),
  ],
);

const kv :Workerd.Worker = (
  modules = [(name = "kv.js", esModule = embed "kv.js")],
  compatibilityDate = "$COMPAT_DATE",
);
EOF

setsid "$NGINX" -p "$TMP/nginx/" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log" </dev/null >"$TMP/nginx/stdout.log" 2>&1 &
pids+=($!)
setsid "$WORKERD" serve "$TMP/config.capnp" </dev/null >"$TMP/workerd.log" 2>&1 &
pids+=($!)
WORKERD_PID=$!

ready=0
for _ in $(seq 150); do
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || fail "a server exited during start-up"; done
  if curl -fsS -o /dev/null "$GW/healthz" 2>/dev/null && curl -fsS -o /dev/null "$ORIGIN/" 2>/dev/null; then
    ready=1; break
  fi
  sleep 0.2
done
[ "$ready" = 1 ] || fail "workerd or nginx not ready after 30 s"

# --- a key, then one request per case with its status and what reached the origin ----------
created=$(curl -fsS -X POST "$GW/admin/keys" -H "Authorization: Bearer $ADMIN_TOKEN" \
  -H 'Content-Type: application/json' -d '{"name": "bench-http", "scopes": ["license:read"]}') ||
  fail "POST /admin/keys"
read -r KEY KEY_ID < <(printf '%s' "$created" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["key"], d["record"]["id"])')
# Same shape, wrong checksum: parsed and CRC-checked, then 401 malformed_key with no KV read.
last=${KEY: -1}; [ "$last" = 0 ] && swap=1 || swap=0
BAD_KEY="${KEY%?}$swap"

names=(healthz origin public auth malformed route_ip)
labels=("GET /healthz (floor: no forwarding, no KV)" "nginx directly (the origin alone)"
  "GET /public/x (forwarded, no key)" "GET /licenses/1 + valid key (forwarded)"
  "GET /licenses/1 + malformed key (401)" "GET /internal/x from 8.8.8.8 (403 route IP)")
urls=("$GW/healthz" "$ORIGIN/x" "$GW/public/x" "$GW/licenses/1" "$GW/licenses/1" "$GW/internal/x")
hdrs=("X-Bench: 1" "X-Bench: 1" "X-Bench: 1" "X-API-Key: $KEY" "X-API-Key: $BAD_KEY" "CF-Connecting-IP: 8.8.8.8")
expect=(200 200 200 200 401 403)

check() { # case index
  local i=$1 out status body
  out=$(curl -sS -D "$TMP/headers" -o "$TMP/body" -w '%{http_code}' -H "${hdrs[$i]}" "${urls[$i]}") ||
    fail "case $((i + 1)): curl failed"
  status=$out; body=$(cat "$TMP/body")
  [ "$status" = "${expect[$i]}" ] || fail "case $((i + 1)) ${labels[$i]}: status $status, expected ${expect[$i]}: $body"
  case ${names[$i]} in
    origin | public)
      [ "$body" = "$ORIGIN_BODY" ] || fail "case $((i + 1)): body is not the origin's: $body"
      ! grep -qi '^x-origin-key-id:' "$TMP/headers" || fail "case $((i + 1)): origin saw X-Key-Id" ;;
    auth)
      [ "$body" = "$ORIGIN_BODY" ] || fail "case 4: body is not the origin's: $body"
      grep -qi "^x-origin-key-id: $KEY_ID" "$TMP/headers" || fail "case 4: origin did not get X-Key-Id $KEY_ID"
      ! grep -qi '^x-origin-api-key:' "$TMP/headers" || fail "case 4: the key reached the origin" ;;
    malformed) grep -q '"malformed_key"' <<<"$body" || fail "case 5: not malformed_key: $body" ;;
    route_ip) grep -q '"ip_not_allowed"' <<<"$body" || fail "case 6: not ip_not_allowed: $body" ;;
  esac
}
for i in "${!names[@]}"; do check "$i"; done
log "pre-flight: all six cases answer as expected"

# --- wrk ------------------------------------------------------------------------------------
results="$TMP/results.tsv"
: > "$results"
# CPU time (clock ticks, user + system) workerd has used so far: its one JS thread is the
# bottleneck, so CPU per request is a second measure, steadier than req/s on a shared machine.
workerd_ticks() { awk '{ print $14 + $15 }' "/proc/$WORKERD_PID/stat"; }
CLK_TCK=$(getconf CLK_TCK)

run_wrk() { # case index, duration, round (0 = warm-up)
  local i=$1 d=$2 round=$3 out line ticks_before ticks
  ticks_before=$(workerd_ticks)
  # In the background so that a signal interrupts `wait` and the clean-up runs at once.
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$d" --latency -H "${hdrs[$i]}" \
    -s "$ROOT/bench/http/check.lua" "${urls[$i]}" -- "${expect[$i]}" >"$TMP/wrk.out" 2>&1 &
  wrk_pid=$!
  wait "$wrk_pid" || fail "wrk case $((i + 1)): $(cat "$TMP/wrk.out")"
  wrk_pid=
  ticks=$(( $(workerd_ticks) - ticks_before ))
  out=$(cat "$TMP/wrk.out")
  line=$(grep '^KEYGATE_RESULT ' <<<"$out") || fail "wrk case $((i + 1)) printed no result: $out"
  local requests duration_us p50_us p99_us unexpected first_unexpected connect read write timeout
  eval "${line#KEYGATE_RESULT }"
  if [ "$unexpected" != 0 ]; then
    fail "case $((i + 1)) ${labels[$i]}: $unexpected responses were not ${expect[$i]} (first: $first_unexpected)"
  fi
  if [ $((connect + read + write + timeout)) != 0 ]; then
    fail "case $((i + 1)): socket errors connect=$connect read=$read write=$write timeout=$timeout"
  fi
  if [ "$round" != 0 ]; then
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$i" "$requests" "$duration_us" "$p50_us" "$p99_us" "$ticks" >> "$results"
  fi
  log "  case $((i + 1)) ${names[$i]}: $requests requests in $d"
}

log "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
load1=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load1" 'BEGIN { exit !(l > 0.7) }'; then
  log "warning: the 1-minute load average is $load1; another job is using the CPUs and the figures will be low"
fi
log "warm-up: $WARMUP per case"
for i in "${!names[@]}"; do run_wrk "$i" "$WARMUP" 0; done
for round in $(seq "$ROUNDS"); do
  log "round $round of $ROUNDS: $DURATION per case, wrk -t$THREADS -c$CONNECTIONS"
  if [ $((round % 2)) = 1 ]; then order=(0 1 2 3 4 5); else order=(5 4 3 2 1 0); fi
  for i in "${order[@]}"; do run_wrk "$i" "$DURATION" "$round"; done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report ---------------------------------------------------------------------------------
printf '%s\n' "${labels[@]}" > "$TMP/labels"
BENCH_HEADER="keygate HTTP benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, \
workerd $("$WORKERD" --version 2>/dev/null | cut -d' ' -f2), $("$NGINX" -v 2>&1 | sed 's/.*version: //'), \
wrk -t$THREADS -c$CONNECTIONS -d$DURATION per case, load average before $load1, after $LOAD_AFTER" \
  CLK_TCK=$CLK_TCK python3 - "$results" "$TMP/labels" <<'EOF'
import os, statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines()]
labels = open(sys.argv[2]).read().splitlines()
tck = int(os.environ["CLK_TCK"])
by_case = {}
for _, i, req, dur, p50, p99, ticks in rows:
    req = int(req)
    by_case.setdefault(int(i), []).append(
        (req / (int(dur) / 1e6), int(p50) / 1000, int(p99) / 1000, int(ticks) / tck * 1e6 / req))
# The median of each figure over the rounds (one round: the figures themselves).
med = {i: [statistics.median(v[k] for v in vals) for k in range(4)] for i, vals in by_case.items()}
rounds = len(by_case[0])
print()
print(os.environ["BENCH_HEADER"] + (f", {rounds} rounds, medians" if rounds > 1 else ""))
print()
print("| # | case | req/s | p50 ms | p99 ms | workerd CPU µs/req |")
print("|---|---|---:|---:|---:|---:|")
for i in sorted(med):
    rps, p50, p99, cpu = med[i]
    cpu_s = "-" if i == 1 else f"{cpu:.0f}"  # case 2 does not touch workerd
    print(f"| {i + 1} | {labels[i]} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {cpu_s} |")
r = {i: med[i][0] for i in med}
print()
print("| ratio | req/s of | value |")
print("|---|---|---:|")
for a, b, what in [
    (3, 2, "authenticated forward / public forward"),
    (2, 1, "public forward through keygate / nginx alone"),
    (2, 0, "public forward / healthz"),
    (3, 0, "authenticated forward / healthz"),
    (4, 0, "401 malformed key / healthz"),
    (5, 0, "403 route IP / healthz"),
]:
    print(f"| {a + 1}/{b + 1} | {what} | {r[a] / r[b]:.2f} |")
EOF
