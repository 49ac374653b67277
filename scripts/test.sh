#!/usr/bin/env bash
# The test command: sets everything up, then runs every test (unit and end-to-end, on the real
# SpiderMonkey, against real PouchDB Server and Dovecot processes the tests start themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
. scripts/env.sh
cargo test --release --locked "$@"
