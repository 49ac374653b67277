# Sourced by the other scripts: where Raindrop's caches live and how SpiderMonkey is built.
# The SpiderMonkey archive is built once per machine (about 20 minutes) and reused from then on.
RAINDROP_CACHE="${RAINDROP_CACHE:-$HOME/.cache/raindrop}"
MOZJS_SYS_VERSION="153.6.0-2"   # keep in step with the mozjs version pinned in Cargo.toml
MOZJS_ARCHIVE_PATH="$RAINDROP_CACHE/mozjs/$MOZJS_SYS_VERSION/libmozjs-x86_64-unknown-linux-gnu.tar.gz"
export RAINDROP_CACHE
export CC=clang-19 CXX=clang++-19 LIBCLANG_PATH=/usr/lib/llvm-19/lib
export RAINDROP_POUCHDB_SERVER="${RAINDROP_POUCHDB_SERVER:-$RAINDROP_CACHE/node/node_modules/.bin/pouchdb-server}"
if [ -f "$MOZJS_ARCHIVE_PATH" ]; then
  export MOZJS_ARCHIVE="$MOZJS_ARCHIVE_PATH"
  unset MOZJS_CREATE_ARCHIVE
fi
