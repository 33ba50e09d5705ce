#!/usr/bin/env bash
# Runs every test: native unit and property tests, then the end-to-end suite against the real
# built worker under workerd (wrangler dev, local KV, local origin), which also runs
# schemathesis against the live admin API, and the admin console's flows in headless Chromium
# (tests/console.rs). Installs whatever is missing first.
set -euo pipefail
source "$(dirname "$0")/toolchain.sh"
cd "$ROOT"
ensure_toolchain
ensure_chromium
bash scripts/schemathesis.sh --install-only
cargo test --all-targets "$@"
