#!/usr/bin/env bash
# Shared by the project's scripts: locate (or install) every tool the wasm build needs.
# Sourced, not run. Every network step is time-boxed; every install is skipped when done.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export ROOT
export CLOUDFLARE_CF_FETCH_ENABLED=false WRANGLER_SEND_METRICS=false
export PATH="$HOME/.cargo/bin:$PATH"

WORKER_BUILD_VERSION=0.8.7
# The wasm-bindgen CLI must match the library version pinned in Cargo.toml exactly.
WASM_BINDGEN_VERSION=$(sed -n 's/^wasm-bindgen = "=\(.*\)"/\1/p' "$ROOT/Cargo.toml")
WASM_TARGET=wasm32-unknown-unknown

log() { printf '[keygate] %s\n' "$*" >&2; }

# Prints the rustup toolchain name that can build wasm32 ("" = the default one).
wasm_toolchain() {
  if [ -f "$ROOT/.tools/wasm-toolchain" ]; then cat "$ROOT/.tools/wasm-toolchain"; fi
}

apt_install() {
  if [ "$(id -u)" != 0 ]; then log "need root for apt-get install $*"; return 1; fi
  if [ ! -f "$ROOT/.tools/apt-updated" ]; then
    timeout 300 apt-get update -q >&2 && mkdir -p "$ROOT/.tools" && touch "$ROOT/.tools/apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q "$@" >&2
}

# Normal path: rustup target add. Fallback (no Rust release host): Debian's rustc-web and its
# source, with std built once for wasm32 and installed into that toolchain's sysroot.
ensure_wasm_std() {
  mkdir -p "$ROOT/.tools"
  if [ -z "${KEYGATE_OFFLINE_STD:-}" ]; then
    if rustup target list --installed 2>/dev/null | grep -qx "$WASM_TARGET"; then
      echo "" > "$ROOT/.tools/wasm-toolchain"; return 0
    fi
    log "rustup target add $WASM_TARGET (time-boxed to 90 s)"
    if timeout 90 rustup target add "$WASM_TARGET" >&2; then
      echo "" > "$ROOT/.tools/wasm-toolchain"; return 0
    fi
    log "rustup could not fetch the wasm32 std; building it offline from Debian's rustc-web"
  fi
  local libdir
  dpkg -s rustc-web cargo-web rust-web-src rust-web-clippy lld-19 >/dev/null 2>&1 ||
    apt_install rustc-web cargo-web rust-web-src rust-web-clippy lld-19
  libdir=$(/usr/bin/rustc --target "$WASM_TARGET" --print target-libdir)
  if ! ls "$libdir"/libstd-*.rlib >/dev/null 2>&1; then
    local tmp; tmp=$(mktemp -d)
    mkdir -p "$tmp/src"
    printf '[package]\nname = "stdbuild"\nversion = "0.0.0"\nedition = "2021"\n[lib]\npath = "src/lib.rs"\n' > "$tmp/Cargo.toml"
    echo '#![no_std]' > "$tmp/src/lib.rs"
    log "building the wasm32 std with -Z build-std (about 80 s)"
    # Debian's cargo with Debian's rustc (not rustup's proxy on PATH), so build-std finds the
    # library sources of rust-web-src under /usr/lib/rustlib/src.
    (cd "$tmp" && env -u RUSTUP_TOOLCHAIN RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Cembed-bitcode=yes" \
      CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld-19 \
      /usr/bin/cargo build --release --target "$WASM_TARGET" -Z build-std=std,panic_abort >&2) ||
      { log "building the wasm32 std failed"; rm -rf "$tmp"; return 1; }
    mkdir -p "$libdir"
    find "$tmp/target/$WASM_TARGET/release/deps" -name '*.rlib' ! -name 'libstdbuild-*' -exec cp {} "$libdir"/ \;
    rm -rf "$tmp"
    ls "$libdir"/libstd-*.rlib >/dev/null 2>&1 || { log "no wasm32 std in $libdir"; return 1; }
  fi
  [ -e /usr/local/bin/rust-lld ] || ln -sf /usr/lib/llvm-19/bin/lld /usr/local/bin/rust-lld
  rustup toolchain list | grep -q '^system' || rustup toolchain link system /usr
  echo system > "$ROOT/.tools/wasm-toolchain"
}

ensure_cargo_tool() { # crate version binary
  local crate=$1 version=$2 bin=$3
  if command -v "$bin" >/dev/null && "$bin" --version 2>/dev/null | grep -q "$version"; then return 0; fi
  log "cargo install $crate $version (a few minutes, once per machine)"
  timeout 1800 cargo install "$crate" --version "$version" >&2
}

ensure_node_modules() {
  if [ ! -x "$ROOT/node_modules/.bin/wrangler" ] || [ "$ROOT/package-lock.json" -nt "$ROOT/node_modules/.package-lock.json" ]; then
    log "npm install (wrangler, workerd, node 22, binaryen; versions pinned by package-lock.json)"
    # Not `npm ci`: npm 11 writes locks without the other platforms' optional workerd packages
    # and then refuses them in `npm ci`; `npm install` follows the same lock.
    (cd "$ROOT" && timeout 600 npm install --no-audit --no-fund >&2)
  fi
}

# The browser of the console's tests (tests/console.rs): Debian's Chromium, driven by
# playwright-core (`npx playwright install` cannot download a browser here).
ensure_chromium() {
  [ -x /usr/bin/chromium ] && return 0
  log "apt-get install chromium (for the console's browser tests)"
  apt_install chromium
}

# Everything the build and the local worker need; fast when already done.
ensure_toolchain() {
  ensure_wasm_std
  ensure_cargo_tool wasm-bindgen-cli "$WASM_BINDGEN_VERSION" wasm-bindgen
  ensure_cargo_tool worker-build "$WORKER_BUILD_VERSION" worker-build
  ensure_node_modules
}

# Environment for worker-build: the helpers it would otherwise download.
wasm_build_env() {
  local tc; tc=$(wasm_toolchain)
  if [ -n "$tc" ]; then export RUSTUP_TOOLCHAIN="$tc"; fi
  WASM_BINDGEN_BIN=$(command -v wasm-bindgen); export WASM_BINDGEN_BIN
  export WASM_OPT_BIN="$ROOT/node_modules/.bin/wasm-opt"
  export ESBUILD_BIN="$ROOT/node_modules/@esbuild/linux-x64/bin/esbuild"
  export PATH="$ROOT/node_modules/.bin:$PATH"
}
