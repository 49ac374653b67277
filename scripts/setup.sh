#!/usr/bin/env bash
# Installs what Raindrop needs on a Debian machine and builds SpiderMonkey once into a cache
# outside the clone. Safe to run again: each step is skipped when already done.
#
#   scripts/setup.sh          build prerequisites (clang-19, libclang-19-dev, …) and SpiderMonkey
#   scripts/setup.sh --test   also what the tests drive: PouchDB Server (npm), Dovecot and
#                             Chromium (Debian; headless, for the mail page's browser test)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

packages=(clang-19 libclang-19-dev llvm-19 python3 make m4 pkg-config ca-certificates curl git)
if [ "$want_test" = 1 ]; then
  packages+=(dovecot-imapd chromium)
  command -v npm >/dev/null || packages+=(nodejs npm)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: no Rust toolchain found; install one (rustup, Rust >= 1.82) and run again" >&2
  exit 1
fi

# SpiderMonkey: build from source once (about 20 minutes on 2 cores), keep the archive.
if [ ! -f "$MOZJS_ARCHIVE_PATH" ]; then
  echo "setup: building SpiderMonkey once (about 20 minutes); the archive goes to $MOZJS_ARCHIVE_PATH"
  unset MOZJS_ARCHIVE
  build_dir="$RAINDROP_CACHE/mozjs-build"
  MOZJS_CREATE_ARCHIVE=1 MOZJS_FROM_SOURCE=1 CARGO_TARGET_DIR="$build_dir" \
    cargo build --release --locked -p mozjs_sys
  mkdir -p "$(dirname "$MOZJS_ARCHIVE_PATH")"
  cp "$build_dir/libmozjs-x86_64-unknown-linux-gnu.tar.gz" "$MOZJS_ARCHIVE_PATH"
  rm -rf "$build_dir"
fi

if [ "$want_test" = 1 ] && [ ! -x "$RAINDROP_POUCHDB_SERVER" ]; then
  echo "setup: installing pouchdb-server into $RAINDROP_CACHE/node"
  mkdir -p "$RAINDROP_CACHE/node"
  npm install --prefix "$RAINDROP_CACHE/node" --no-audit --no-fund --loglevel=error pouchdb-server@4 >/dev/null
fi
echo "setup: ready"
