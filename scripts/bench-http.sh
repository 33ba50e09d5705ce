#!/usr/bin/env bash
# HTTP benchmark: wrk against the built worker running in workerd directly (not `wrangler dev`,
# whose proxy dominates), with an in-memory KV service, the registry Durable Object and nginx as
# the origin, all on 127.0.0.1. Beside keygate, the same workerd runs two JavaScript references
# (bench/http/): a plain forwarder (js-forward.js, the floor) and a straightforward validator
# (js-validate.js: Web Crypto SHA-256 of the Bearer key, one KV read, a scope check, forward).
# Cases, one after another in one run, so their ratios are comparable on a noisy machine:
#    1 keygate GET /healthz (no forwarding, no KV)        7 JS validator, valid key (KV read per request)
#    2 nginx directly (the origin alone)                  8 keygate, malformed key (401, no KV read)
#    3 JS forwarder GET /public/x (the floor)             9 keygate, unknown key, cache off (401, KV read)
#    4 keygate GET /public/x (forwarded without a key)   10 JS validator, unknown key (401, KV read)
#    5 keygate valid key, warm record cache              11 keygate GET /internal/x from 8.8.8.8 (403 route IP)
#    6 keygate valid key, record cache off (a second keygate service whose policy has
#      cache_ttl_seconds = 0: one KV read per request)
#   12 keygate valid access token (a third keygate service, with TOKEN_SIGNING_KEY and
#      assertions off: one Ed25519 verification per request, no record lookup)
# The figure that matters is workerd CPU µs per request: the workerd process's user + system
# time (/proc/<pid>/stat) over the case, divided by the requests served. It includes the KV
# service and the registry, for keygate and the references alike. Each case's ratio to the
# floor (case 3) is printed, and the issue's targets are checked (a miss is reported, not fatal).
# Then the cold start: COLD_ROUNDS fresh workerd processes each for keygate (a valid key; the
# public route) and for the JS validator and forwarder (one service each, KV seeded through its
# socket, the registry's storage kept from the main run): time from spawn to listening, and the
# first and second request's latency.
# Every response's status is checked (bench/http/check.lua); any other status or socket error
# fails the run. Installs wrk and nginx with apt-get if missing, builds the worker if build/ is
# empty, and stops everything it started on exit.
# Env: DURATION (10s), THREADS (2), CONNECTIONS (32), ROUNDS (1; cases alternate direction each
# round, the table shows the median per case), WARMUP (2s per case, not measured),
# COLD_ROUNDS (5; 0 skips the cold start), CASES (e.g. "3 4 5": only those, by number), PROFILE=1
# (V8 CPU profiles of the selected cases through the inspector, bench/http/cpu-profile.mjs,
# instead of the measurement),
# KEEP_TMP=1 keeps the temp dir with configs and logs.
set -euo pipefail
source "$(dirname "$0")/toolchain.sh"
cd "$ROOT"

DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
ROUNDS=${ROUNDS:-1}
WARMUP=${WARMUP:-2s}
COLD_ROUNDS=${COLD_ROUNDS:-5}
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
stop_group() { # pid: TERM its process group, then KILL it after 5 s
  local p=$1 i
  kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
  for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
forget_pid() { # pid: stopped already, so the clean-up leaves it alone
  local p kept=()
  for p in "${pids[@]}"; do [ "$p" = "$1" ] || kept+=("$p"); done
  pids=("${kept[@]}")
}
cleanup() {
  local p
  if [ -n "$wrk_pid" ]; then kill -TERM "$wrk_pid" 2>/dev/null || true; wait "$wrk_pid" 2>/dev/null || true; fi
  for p in "${pids[@]}"; do stop_group "$p"; done
  for p in "${ports[@]}"; do
    if ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then log "warning: 127.0.0.1:$p is still listening"; fi
  done
  if [ -n "${KEEP_TMP:-}" ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
  log "FAILED: $*"
  for f in "$TMP"/workerd*.log "$TMP"/nginx/error.log; do
    [ -s "$f" ] && { log "--- tail of $f"; tail -n 20 "$f" >&2; }
  done
  exit 1
}

# Free loopback ports, asked of the kernel at once so they differ.
read -r GW_PORT NC_PORT TK_PORT JSF_PORT JSV_PORT KV_PORT ORIGIN_PORT < <(python3 -c '
import socket
s = [socket.socket() for _ in range(7)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
ports=("$GW_PORT" "$NC_PORT" "$TK_PORT" "$JSF_PORT" "$JSV_PORT" "$KV_PORT" "$ORIGIN_PORT")
GW="http://127.0.0.1:$GW_PORT"           # keygate
NC="http://127.0.0.1:$NC_PORT"           # keygate, record cache off
TK="http://127.0.0.1:$TK_PORT"           # keygate, access tokens
# RFC 8037's example Ed25519 seed: a fixed signing key for the token case.
TOKEN_SEED=nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A
JSF="http://127.0.0.1:$JSF_PORT"         # JS forwarder
JSV="http://127.0.0.1:$JSV_PORT"         # JS validator
KV="http://127.0.0.1:$KV_PORT"           # the KV service itself, to seed and read records
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
      add_header X-Origin-Authorization \$http_authorization;
      default_type text/plain;
      return 200 "$ORIGIN_BODY\n";
    }
  }
}
EOF

# --- workerd: keygate (twice), the two references, KV, the registry -------------------------
# embed paths are relative to the config; copies also shield the run from a concurrent build.
cp build/index.js build/index_bg.wasm bench/http/kv.js bench/http/js-forward.js bench/http/js-validate.js "$TMP/"
mkdir -p "$TMP/do"
# The policy of wrangler.toml, as a Cap'n Proto text literal holding JSON; the second one with
# the isolate record cache off (every lookup reads KV, unknown keys included).
{ read -r POLICY_LITERAL; read -r POLICY_NOCACHE_LITERAL; read -r POLICY_TOKENS_LITERAL; } < <(python3 -c '
import json, tomllib
with open("wrangler.toml", "rb") as f:
    policy = tomllib.load(f)["vars"]["POLICY"]
# a JSON string inside a Cap'"'"'n Proto text literal: json.dumps of ASCII JSON escapes only " and \
lit = lambda p: json.dumps(json.dumps(p, separators=(",", ":")))
nocache = dict(policy, cache_ttl_seconds=0, negative_cache_ttl_seconds=0)
tokens = dict(policy, tokens=dict(policy.get("tokens", {}), assertion=False))
print(lit(policy), lit(nocache), lit(tokens), sep="\n")')

# config FILE SERVICE...: a workerd config serving the named services (keygate, keygate-nocache,
# js-forward, js-validate) on their ports, with KV (and its socket) and, for keygate, the registry.
config() {
  local file=$1; shift
  local services="" sockets="" s
  services+="(name = \"kv\", worker = .kv), (name = \"loopback\", network = (allow = [\"public\", \"local\"])),"
  services+=" (name = \"do-disk\", disk = (path = \"$TMP/do\", writable = true)),"
  sockets+="(name = \"kv\", address = \"127.0.0.1:$KV_PORT\", http = (), service = \"kv\"),"
  for s in "$@"; do
    case $s in
      keygate) services+=" (name = \"keygate\", worker = .keygate),"
        sockets+=" (name = \"keygate\", address = \"127.0.0.1:$GW_PORT\", http = (), service = \"keygate\")," ;;
      keygate-nocache) services+=" (name = \"keygate-nocache\", worker = .keygateNocache),"
        sockets+=" (name = \"keygate-nocache\", address = \"127.0.0.1:$NC_PORT\", http = (), service = \"keygate-nocache\")," ;;
      keygate-tokens) services+=" (name = \"keygate-tokens\", worker = .keygateTokens),"
        sockets+=" (name = \"keygate-tokens\", address = \"127.0.0.1:$TK_PORT\", http = (), service = \"keygate-tokens\")," ;;
      js-forward) services+=" (name = \"js-forward\", worker = .jsForward),"
        sockets+=" (name = \"js-forward\", address = \"127.0.0.1:$JSF_PORT\", http = (), service = \"js-forward\")," ;;
      js-validate) services+=" (name = \"js-validate\", worker = .jsValidate),"
        sockets+=" (name = \"js-validate\", address = \"127.0.0.1:$JSV_PORT\", http = (), service = \"js-validate\")," ;;
    esac
  done
  cat > "$file" <<EOF
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [$services],
  sockets = [$sockets],
);

const keygate :Workerd.Worker = (
  modules = [
    (name = "index.js", esModule = embed "index.js"),
    (name = "index_bg.wasm", wasm = embed "index_bg.wasm"),
  ],
  compatibilityDate = "$COMPAT_DATE",
  # workerd's default outbound network refuses loopback origins.
  globalOutbound = "loopback",
  bindings = [
    (name = "KEYS", kvNamespace = "kv"),
    (name = "REGISTRY", durableObjectNamespace = "Registry"),
    (name = "ORIGIN", text = "$ORIGIN"),
    (name = "ADMIN_TOKEN", text = "$ADMIN_TOKEN"),
    (name = "POLICY", text = $POLICY_LITERAL),
  ],
  durableObjectNamespaces = [(className = "Registry", uniqueKey = "keygate-bench-Registry", enableSql = true)],
  durableObjectStorage = (localDisk = "do-disk"),
);

# Same code and registry, policy with the isolate record cache off.
const keygateNocache :Workerd.Worker = (
  modules = [
    (name = "index.js", esModule = embed "index.js"),
    (name = "index_bg.wasm", wasm = embed "index_bg.wasm"),
  ],
  compatibilityDate = "$COMPAT_DATE",
  globalOutbound = "loopback",
  bindings = [
    (name = "KEYS", kvNamespace = "kv"),
    (name = "REGISTRY", durableObjectNamespace = (className = "Registry", serviceName = "keygate")),
    (name = "ORIGIN", text = "$ORIGIN"),
    (name = "ADMIN_TOKEN", text = "$ADMIN_TOKEN"),
    (name = "POLICY", text = $POLICY_NOCACHE_LITERAL),
  ],
);

# Same code and registry, with a token signing key; assertions off, so that the forwarded
# request costs one Ed25519 verification and no signature.
const keygateTokens :Workerd.Worker = (
  modules = [
    (name = "index.js", esModule = embed "index.js"),
    (name = "index_bg.wasm", wasm = embed "index_bg.wasm"),
  ],
  compatibilityDate = "$COMPAT_DATE",
  globalOutbound = "loopback",
  bindings = [
    (name = "KEYS", kvNamespace = "kv"),
    (name = "REGISTRY", durableObjectNamespace = (className = "Registry", serviceName = "keygate")),
    (name = "ORIGIN", text = "$ORIGIN"),
    (name = "ADMIN_TOKEN", text = "$ADMIN_TOKEN"),
    (name = "TOKEN_SIGNING_KEY", text = "$TOKEN_SEED"),
    (name = "POLICY", text = $POLICY_TOKENS_LITERAL),
  ],
);

const jsForward :Workerd.Worker = (
  modules = [(name = "js-forward.js", esModule = embed "js-forward.js")],
  compatibilityDate = "$COMPAT_DATE",
  globalOutbound = "loopback",
  bindings = [(name = "ORIGIN", text = "$ORIGIN")],
);

const jsValidate :Workerd.Worker = (
  modules = [(name = "js-validate.js", esModule = embed "js-validate.js")],
  compatibilityDate = "$COMPAT_DATE",
  globalOutbound = "loopback",
  bindings = [
    (name = "KEYS", kvNamespace = "kv"),
    (name = "ORIGIN", text = "$ORIGIN"),
  ],
);

const kv :Workerd.Worker = (
  modules = [(name = "kv.js", esModule = embed "kv.js")],
  compatibilityDate = "$COMPAT_DATE",
);
EOF
}
config "$TMP/config.capnp" keygate keygate-nocache keygate-tokens js-forward js-validate

# Waits until every URL given answers (any HTTP status), or fails after 30 s.
wait_ready() { # pid url...
  local pid=$1; shift
  local u all
  for _ in $(seq 600); do
    kill -0 "$pid" 2>/dev/null || fail "a server exited during start-up"
    all=1
    for u in "$@"; do curl -sS -o /dev/null "$u" 2>/dev/null || { all=0; break; }; done
    [ "$all" = 1 ] && return 0
    sleep 0.05
  done
  fail "not ready after 30 s: $*"
}

setsid "$NGINX" -p "$TMP/nginx/" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log" </dev/null >"$TMP/nginx/stdout.log" 2>&1 &
pids+=($!)
NGINX_PID=$!
inspector=()
if [ -n "${PROFILE:-}" ]; then
  INSPECTOR_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  ports+=("$INSPECTOR_PORT")
  inspector=(--inspector-addr "127.0.0.1:$INSPECTOR_PORT")
fi
setsid "$WORKERD" serve "${inspector[@]}" "$TMP/config.capnp" </dev/null >"$TMP/workerd.log" 2>&1 &
pids+=($!)
WORKERD_PID=$!
wait_ready "$NGINX_PID" "$ORIGIN/"
wait_ready "$WORKERD_PID" "$GW/healthz" "$NC/healthz" "$TK/healthz" "$JSF/" "$JSV/" "$KV/"

# --- keys and records, then one request per case with its status and what reached the origin
created=$(curl -fsS -X POST "$GW/admin/keys" -H "Authorization: Bearer $ADMIN_TOKEN" \
  -H 'Content-Type: application/json' -d '{"name": "bench-http", "scopes": ["license:read"]}') ||
  fail "POST /admin/keys: $(tail -n 5 "$TMP/workerd.log")"
read -r KEY KEY_ID < <(printf '%s' "$created" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["key"], d["record"]["id"])')
# Same shape, wrong checksum: parsed and CRC-checked, then 401 malformed_key with no KV read.
last=${KEY: -1}; [ "$last" = 0 ] && swap=1 || swap=0
BAD_KEY="${KEY%?}$swap"
# Well formed (valid checksum) but never issued: a lookup, then 401 (and for the JS validator,
# simply a key whose hash is not in KV).
UNKNOWN_KEY=$(python3 -c '
import secrets, sys, zlib
body = "%s_live_%s_%s" % (sys.argv[1], secrets.token_hex(8), secrets.token_hex(32))
print("%s_%08x" % (body, zlib.crc32(body.encode())))' "$(cut -d_ -f1 <<<"$KEY")")
# The JS validator's record: its own format, under the SHA-256 hex of the same key.
KEY_SHA=$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)
JS_RECORD="{\"id\":\"$KEY_ID\",\"scopes\":[\"license:read\"]}"
seed_js_record() { curl -fsS -o /dev/null -X PUT --data-binary "$JS_RECORD" "$KV/jsval%3A$KEY_SHA"; }
seed_js_record || fail "seeding the JS validator's record"
# keygate's record as the registry replicated it to KV (the registry's flush may lag a moment).
for _ in $(seq 100); do
  curl -fsS -o "$TMP/keygate-record.json" "$KV/key%3A$KEY_ID" 2>/dev/null && break
  sleep 0.1
done
[ -s "$TMP/keygate-record.json" ] || fail "keygate's record never reached KV"
# An access token for the key (client credentials, HTTP Basic), from the token service.
ACCESS_TOKEN=$(curl -fsS -u "$KEY_ID:$KEY" -d grant_type=client_credentials -d scope=license:read "$TK/oauth/token" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])') || fail "POST /oauth/token"

names=(healthz origin js_forward public auth_warm auth_kv js_validate malformed unknown_kv js_unknown route_ip token)
labels=(
  "keygate GET /healthz (no forwarding, no KV)"
  "nginx directly (the origin alone)"
  "JS forwarder GET /public/x (the floor)"
  "keygate GET /public/x (forwarded, no key)"
  "keygate valid key, warm record cache (forwarded)"
  "keygate valid key, record cache off: KV read per request"
  "JS validator valid key: SHA-256 + KV read (forwarded)"
  "keygate malformed key (401, no KV read)"
  "keygate unknown key, cache off (401 after a KV read)"
  "JS validator unknown key (401 after a KV read)"
  "keygate GET /internal/x from 8.8.8.8 (403 route IP)"
  "keygate valid access token (Ed25519 verification, forwarded)"
)
urls=("$GW/healthz" "$ORIGIN/x" "$JSF/public/x" "$GW/public/x" "$GW/licenses/1" "$NC/licenses/1"
  "$JSV/licenses/1" "$GW/licenses/1" "$NC/licenses/1" "$JSV/licenses/1" "$GW/internal/x" "$TK/licenses/1")
hdrs=("X-Bench: 1" "X-Bench: 1" "X-Bench: 1" "X-Bench: 1" "Authorization: Bearer $KEY"
  "Authorization: Bearer $KEY" "Authorization: Bearer $KEY" "Authorization: Bearer $BAD_KEY"
  "Authorization: Bearer $UNKNOWN_KEY" "Authorization: Bearer $UNKNOWN_KEY" "CF-Connecting-IP: 8.8.8.8"
  "Authorization: Bearer $ACCESS_TOKEN")
expect=(200 200 200 200 200 200 200 401 401 401 403 200)
services=(keygate - js-forward keygate keygate keygate-nocache js-validate keygate keygate-nocache js-validate keygate keygate-tokens)
FLOOR=2 # js_forward

check() { # case index
  local i=$1 out status body
  out=$(curl -sS -D "$TMP/headers" -o "$TMP/body" -w '%{http_code}' -H "${hdrs[$i]}" "${urls[$i]}") ||
    fail "case $((i + 1)): curl failed"
  status=$out; body=$(cat "$TMP/body")
  [ "$status" = "${expect[$i]}" ] || fail "case $((i + 1)) ${labels[$i]}: status $status, expected ${expect[$i]}: $body"
  case ${names[$i]} in
    origin | js_forward | public)
      [ "$body" = "$ORIGIN_BODY" ] || fail "case $((i + 1)): body is not the origin's: $body"
      ! grep -qi '^x-origin-key-id:' "$TMP/headers" || fail "case $((i + 1)): origin saw X-Key-Id" ;;
    auth_warm | auth_kv | js_validate | token)
      [ "$body" = "$ORIGIN_BODY" ] || fail "case $((i + 1)): body is not the origin's: $body"
      grep -qi "^x-origin-key-id: $KEY_ID" "$TMP/headers" || fail "case $((i + 1)): origin did not get X-Key-Id $KEY_ID"
      ! grep -qi '^x-origin-authorization:' "$TMP/headers" || fail "case $((i + 1)): the key reached the origin" ;;
    malformed) grep -q '"malformed_key"' <<<"$body" || fail "case $((i + 1)): not malformed_key: $body" ;;
    unknown_kv | js_unknown) grep -q '"invalid_key"' <<<"$body" || fail "case $((i + 1)): not invalid_key: $body" ;;
    route_ip) grep -q '"ip_not_allowed"' <<<"$body" || fail "case $((i + 1)): not ip_not_allowed: $body" ;;
  esac
}
for i in "${!names[@]}"; do check "$i"; done
log "pre-flight: all ${#names[@]} cases answer as expected"

selected=("${!names[@]}")
if [ -n "${CASES:-}" ]; then
  selected=()
  for c in $CASES; do selected+=($((c - 1))); done
fi

# --- PROFILE=1: V8 CPU profiles of the selected cases instead of the measurement -------------
# The inspector costs CPU itself, so a profiling run prints no benchmark table. Wasm functions
# are named only in a build that keeps its name section: KEYGATE_WASM_NAMES=1 KEYGATE_FORCE_BUILD=1
# bash scripts/build.sh first.
if [ -n "${PROFILE:-}" ]; then
  NODE="$ROOT/node_modules/.bin/node"
  [ -x "$NODE" ] || NODE=node
  secs=${DURATION%s}
  for i in "${selected[@]}"; do
    [ "${services[$i]}" != - ] || continue
    log "profiling case $((i + 1)) ${names[$i]} (${services[$i]}) for ${secs} s under wrk"
    "$NODE" "$ROOT/bench/http/cpu-profile.mjs" "http://127.0.0.1:$INSPECTOR_PORT" "${services[$i]}" "$secs" "$TMP/case$((i + 1)).cpuprofile" > "$TMP/profile.out" &
    prof_pid=$!
    sleep 0.5
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$((secs + 1))s" -H "${hdrs[$i]}" "${urls[$i]}" > /dev/null 2>&1 || true
    wait "$prof_pid" || fail "profiling case $((i + 1))"
    echo; echo "### case $((i + 1)): ${labels[$i]}"; echo
    cat "$TMP/profile.out"
  done
  exit 0
fi

# --- wrk ------------------------------------------------------------------------------------
results="$TMP/results.tsv"
: > "$results"
# CPU time (clock ticks, user + system, every thread) workerd has used so far. Cases run one
# at a time, so the difference over a case is that case's cost, the KV service's included.
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
  log "  case $((i + 1)) ${names[$i]}: $requests requests in $d, $(awk -v t="$ticks" -v c="$CLK_TCK" -v r="$requests" 'BEGIN { printf "%.0f", t / c * 1e6 / r }') µs CPU/request"
}

log "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
load1=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load1" 'BEGIN { exit !(l > 0.7) }'; then
  log "warning: the 1-minute load average is $load1; another job is using the CPUs and the figures will be low"
fi
log "warm-up: $WARMUP per case"
for i in "${selected[@]}"; do run_wrk "$i" "$WARMUP" 0; done
for round in $(seq "$ROUNDS"); do
  log "round $round of $ROUNDS: $DURATION per case, wrk -t$THREADS -c$CONNECTIONS"
  order=("${selected[@]}")
  if [ $((round % 2)) = 0 ]; then
    order=(); for ((k = ${#selected[@]} - 1; k >= 0; k--)); do order+=("${selected[$k]}"); done
  fi
  for i in "${order[@]}"; do run_wrk "$i" "$DURATION" "$round"; done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
stop_group "$WORKERD_PID"
forget_pid "$WORKERD_PID"

# --- cold start -----------------------------------------------------------------------------
# A fresh workerd serving one worker (plus KV and, for keygate, the registry, whose storage on
# disk is the main run's): spawn -> every socket answers; KV seeded; then the first request
# (the isolate's first: keygate parses its policy, asks the registry for the feed, reads the
# record from KV) and a second one for comparison: a valid key (keygate, the JS validator) and
# the public route (keygate, the JS forwarder), each forwarded with a 200.
cold="$TMP/cold.tsv"
: > "$cold"
if [ "$COLD_ROUNDS" -gt 0 ]; then
  config "$TMP/cold-keygate.capnp" keygate
  config "$TMP/cold-js.capnp" js-validate
  config "$TMP/cold-js-forward.capnp" js-forward
  log "cold start: $COLD_ROUNDS fresh workerd processes for each of keygate (valid key, public route), the JS validator and the JS forwarder"
  for round in $(seq "$COLD_ROUNDS"); do
    for which in keygate keygate-public js js-forward; do
      case $which in
        keygate) url="$GW/licenses/1"; cfg=keygate ;;
        keygate-public) url="$GW/public/x"; cfg=keygate ;;
        js) url="$JSV/licenses/1"; cfg=js ;;
        js-forward) url="$JSF/public/x"; cfg=js-forward ;;
      esac
      started=$(date +%s%N)
      setsid "$WORKERD" serve "$TMP/cold-$cfg.capnp" </dev/null >"$TMP/workerd-cold.log" 2>&1 &
      pid=$!
      pids+=("$pid")
      # Listening: the KV socket answers (the service itself is not touched before the seed).
      for _ in $(seq 3000); do
        kill -0 "$pid" 2>/dev/null || fail "cold workerd exited during start-up"
        curl -sS -o /dev/null "$KV/" 2>/dev/null && break
        sleep 0.01
      done
      listening=$(( ($(date +%s%N) - started) / 1000 ))
      seed_js_record
      curl -fsS -o /dev/null -X PUT --data-binary "@$TMP/keygate-record.json" "$KV/key%3A$KEY_ID"
      first=$(curl -sS -o "$TMP/body" -w '%{http_code} %{time_total}' -H "Authorization: Bearer $KEY" "$url")
      [ "${first%% *}" = 200 ] || fail "cold $which: first request answered ${first%% *}: $(cat "$TMP/body")"
      second=$(curl -sS -o /dev/null -w '%{http_code} %{time_total}' -H "Authorization: Bearer $KEY" "$url")
      [ "${second%% *}" = 200 ] || fail "cold $which: second request answered ${second%% *}"
      printf '%s\t%s\t%s\t%s\n' "$which" "$listening" "${first#* }" "${second#* }" >> "$cold"
      stop_group "$pid"
      forget_pid "$pid"
    done
  done
fi

# --- report ---------------------------------------------------------------------------------
printf '%s\n' "${labels[@]}" > "$TMP/labels"
WASM_SIZE=$(stat -c %s "$TMP/index_bg.wasm")
WASM_GZ=$(gzip -9 -n -c "$TMP/index_bg.wasm" | wc -c)
BENCH_HEADER="keygate HTTP benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs \
($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)), \
workerd $("$WORKERD" --version 2>/dev/null | cut -d' ' -f2), $("$NGINX" -v 2>&1 | sed 's/.*version: //'), \
wrk -t$THREADS -c$CONNECTIONS -d$DURATION per case, load average before $load1, after $LOAD_AFTER, \
wasm $WASM_SIZE bytes ($WASM_GZ gzip -9)" \
  CLK_TCK=$CLK_TCK FLOOR=$FLOOR python3 - "$results" "$TMP/labels" "$cold" <<'EOF'
import os, statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines()]
labels = open(sys.argv[2]).read().splitlines()
cold = [line.split("\t") for line in open(sys.argv[3]).read().splitlines()]
tck = int(os.environ["CLK_TCK"])
floor = int(os.environ["FLOOR"])
by_case = {}
for _, i, req, dur, p50, p99, ticks in rows:
    req = int(req)
    by_case.setdefault(int(i), []).append(
        (req / (int(dur) / 1e6), int(p50) / 1000, int(p99) / 1000, int(ticks) / tck * 1e6 / req))
# The median of each figure over the rounds (one round: the figures themselves).
med = {i: [statistics.median(v[k] for v in vals) for k in range(4)] for i, vals in by_case.items()}
rounds = len(next(iter(by_case.values())))
cpu = {i: med[i][3] for i in med}
print()
print(os.environ["BENCH_HEADER"] + (f", {rounds} rounds, medians" if rounds > 1 else ""))
print()
print("| # | case | req/s | p50 ms | p99 ms | workerd CPU µs/req | × floor (CPU) |")
print("|---|---|---:|---:|---:|---:|---:|")
for i in sorted(med):
    rps, p50, p99, c = med[i]
    if i == 1:  # nginx alone does not touch workerd
        cpu_s = ratio = "-"
    else:
        cpu_s = f"{c:.0f}"
        ratio = f"{c / cpu[floor]:.2f}" if floor in cpu else "-"
    print(f"| {i + 1} | {labels[i]} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {cpu_s} | {ratio} |")
print()
print("| target (issue 14) | measured | limit | met |")
print("|---|---:|---:|---|")
for a, b, limit, what in [
    (3, floor, 1.25, "public forward / JS forwarder (CPU)"),
    (4, floor, 1.40, "valid key, warm cache / JS forwarder (CPU)"),
    (5, 6, 1.00, "valid key, KV read per request / JS validator (CPU)"),
    (7, 9, 1.20, "keygate 401 (malformed key) / JS validator 401 (CPU)"),
    (8, 9, 1.20, "keygate 401 (unknown key, KV read) / JS validator 401 (CPU)"),
]:
    if a in cpu and b in cpu:
        r = cpu[a] / cpu[b]
        print(f"| {what} | {r:.3f} | ≤ {limit:.2f} | {'yes' if r <= limit else '**no**'} |")
if cold:
    print()
    print("Cold start (a fresh workerd per row; medians, ms):")
    print()
    print("| worker | runs | spawn → listening | first request | second request |")
    print("|---|---:|---:|---:|---:|")
    for which, name in [("keygate", "keygate (wasm), valid key"), ("js", "JS validator, valid key"),
                        ("keygate-public", "keygate (wasm), public route"), ("js-forward", "JS forwarder, public route")]:
        rs = [r for r in cold if r[0] == which]
        if rs:
            listen = statistics.median(int(r[1]) / 1000 for r in rs)
            first = statistics.median(float(r[2]) * 1000 for r in rs)
            second = statistics.median(float(r[3]) * 1000 for r in rs)
            print(f"| {name} | {len(rs)} | {listen:.0f} | {first:.1f} | {second:.1f} |")
EOF
