#!/usr/bin/env bash
# The main job: Raindrop's pipeline on the embedded store (the default database in
# ~/.local/share/raindrop, or RAINDROP_DB), over the original project's test mail in
# fixtures/mail/: it imports the messages, runs the bundled extensions in js-extensions/ to
# stability, and shows the result.
# Running it again adds nothing and writes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
cargo build --release --locked --bin raindrop
raindrop=target/release/raindrop
# The corpus' own identities (whose sent mail makes contacts), unless a config is given.
export RAINDROP_CONFIG="${RAINDROP_CONFIG:-fixtures/corpus-config.toml}"
"$raindrop" ext list
"$raindrop" import fixtures/mail
"$raindrop" process "$@"
"$raindrop" status
echo
echo "a few derived documents (raindrop db dump --schema SCHEMA shows them all):"
for schema in rd.msg.body rd.conv.summary rd.contact rd.mailing-list rd.msg.grouping-tag rd.grouping.summary; do
  "$raindrop" db dump --schema "$schema" | head -n 1 | cut -c 1-300
done
