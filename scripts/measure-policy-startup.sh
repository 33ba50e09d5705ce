#!/usr/bin/env bash
# Measures what loading a large policy costs inside workerd: builds two release workers that
# differ only in their bundled policy (500 routes vs 1 route), then, for each, restarts
# `wrangler dev` ROUNDS times and times the first request after start (which parses and
# validates the policy) and the median of five warm requests. Usage:
#   bash scripts/measure-policy-startup.sh [rounds, default 5]
set -euo pipefail
source "$(dirname "$0")/toolchain.sh"
cd "$ROOT"
ensure_toolchain
ROUNDS=${1:-5}
config=.test-startup.toml
cleanup() { rm -rf policy/test-startup-big.toml policy/test-startup-small.toml "$config" build/test-startup-*; }
trap cleanup EXIT INT TERM
python3 - "$config" <<'PY'
import sys
lines = ['default = "deny"']
for i in range(500):
    lines.append(f'[[routes]]\nmethods = ["GET"]\npath = "/service-{i}/items/{{item}}/*"\n'
                 f'scopes = ["service-{i}:read", "item.{{item}}.read"]\nip_allowlist = ["10.{i % 256}.0.0/16"]')
open("policy/test-startup-big.toml", "w").write("\n".join(lines) + "\n")
open("policy/test-startup-small.toml", "w").write(
    'default = "deny"\n[[routes]]\nmethods = ["GET"]\npath = "/service-0/items/{item}/*"\nscopes = ["service-0:read"]\n')
base = open("wrangler.toml").read().replace('id = "00000000000000000000000000000000"', 'id = "0123456789abcdef0123456789abcdef"')
for n in ["startup-big", "startup-small"]:
    base += (f'\n[env.test-{n}]\nname = "kg-{n}"\nmain = "build/test-{n}/index.js"\n'
             f'build = {{ command = "bash scripts/build.sh --env test-{n}" }}\n'
             f'[[env.test-{n}.kv_namespaces]]\nbinding = "KEYS"\nid = "0123456789abcdef0123456789abcdef"\n'
             f'[env.test-{n}.vars]\nORIGIN = "http://127.0.0.1:9"\n')
open(sys.argv[1], "w").write(base)
PY
for n in startup-big startup-small; do
  KEYGATE_BUILD_MODE=release KEYGATE_SKIP_ENSURE=1 npx wrangler deploy --dry-run --env "test-$n" \
    --config "$config" --outdir "$(mktemp -d)" 2>&1 | grep -E "valid, |built " >&2
done
python3 - "$config" "$ROUNDS" <<'PY'
import os, signal, socket, statistics, subprocess, sys, tempfile, time
config, rounds = sys.argv[1], int(sys.argv[2])
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
def get(port, path):
    t = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    while s.recv(65536):
        pass
    s.close()
    return (time.perf_counter() - t) * 1000
def once(env):
    port = free_port()
    proc = subprocess.Popen(
        ["npx", "wrangler", "dev", "--env", env, "--config", config, "--ip", "127.0.0.1", "--port", str(port),
         "--show-interactive-dev-session=false", "--persist-to", tempfile.mkdtemp()],
        env=dict(os.environ, KEYGATE_SKIP_BUILD="1"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close(); break
            except OSError:
                time.sleep(0.2)
        time.sleep(3)  # wrangler has started workerd; no request has reached the worker yet
        first = get(port, "/nowhere")
        warm = statistics.median(get(port, "/nowhere") for _ in range(5))
        return first, warm
    finally:
        os.killpg(proc.pid, signal.SIGKILL); proc.wait()
for env in ["test-startup-big", "test-startup-small"]:
    runs = [once(env) for _ in range(rounds)]
    firsts = [r[0] for r in runs]
    print(f"{env}: first request after start median {statistics.median(firsts):.1f} ms "
          f"(each: {', '.join(f'{f:.1f}' for f in firsts)}); warm median {statistics.median(r[1] for r in runs):.1f} ms")
PY
