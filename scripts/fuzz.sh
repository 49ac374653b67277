#!/usr/bin/env bash
# Fuzzes the mail parser (raindrop.mail.parse) and the JSON-lines reader with cargo fuzz
# (libFuzzer), each for a bounded time. Not part of CI: run it by hand after changing either.
#
#   scripts/fuzz.sh [seconds per target (default 300)] [target…]
#
# Crashes land in fuzz/artifacts/<target>/; the corpora grow in fuzz/corpus/<target>/ (both
# ignored by git). The mail corpus is seeded with the sample mail.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo fuzz passes nightly-only flags (sanitizers, coverage); the stable toolchain of this
# machine takes them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
secs=${1:-300}
shift || true
targets=("${@:-mail_parse json_lines}")
mkdir -p fuzz/corpus/mail_parse fuzz/corpus/json_lines
find fixtures/mail -type f -size -200k -exec cp -n {} fuzz/corpus/mail_parse/ \; 2>/dev/null || true
printf '{"rd_key":["test",1],"rd_schema_id":"rd.test.a","v":1}\n\n{"a":[1,2.5,null,"\\u00e9"]}\n' > fuzz/corpus/json_lines/seed
for target in ${targets[@]}; do
  echo "fuzz: $target for ${secs}s"
  cargo fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" -- -max_total_time="$secs" -rss_limit_mb=4096 -max_len=1048576
done
