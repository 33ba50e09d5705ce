#!/usr/bin/env bash
# Fuzzes the canonical path invariant (fuzz/fuzz_targets/canonical_path.rs) with cargo-fuzz on
# rustup's nightly toolchain. Usage: bash scripts/fuzz.sh [seconds, default 600]
set -euo pipefail
source "$(dirname "$0")/toolchain.sh"
cd "$ROOT"
SECONDS_TO_RUN=${1:-600}
command -v cargo-fuzz >/dev/null || { log "cargo install cargo-fuzz (once)"; timeout 900 cargo install cargo-fuzz --version 0.13.2 >&2; }
rustup toolchain list | grep -q '^nightly' || timeout 300 rustup toolchain install nightly --profile minimal >&2
mkdir -p fuzz/corpus/canonical_path
# Seeds: the attack paths of the e2e suite.
for p in '/public/..%2Finternal/x' '/public/%252e%252e/internal' '/a/..;/b' '/o/acme%2F..%2Fglobex/x' '//%70ublic//a%20b/' '/100%25'; do
  printf '%s' "$p" > "fuzz/corpus/canonical_path/seed-$(printf '%s' "$p" | sha256sum | cut -c1-12)"
done
cargo +nightly fuzz run canonical_path fuzz/corpus/canonical_path -- -max_total_time="$SECONDS_TO_RUN" -max_len=256 2>&1 | tee /tmp/keygate-fuzz.log | tail -25
