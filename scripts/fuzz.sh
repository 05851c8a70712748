#!/usr/bin/env bash
# Runs the coverage-guided fuzzers (cargo-fuzz + libFuzzer) for a bounded time each.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     default 60
#
# Stable Rust only: RUSTC_BOOTSTRAP=1 lets the stable toolchain accept the sanitizer flags that
# cargo-fuzz passes. It is set here and nowhere else. Findings land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=$(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' fuzz/Cargo.toml | grep -v -e '^tally-fuzz$' -e '^gen_seeds$')
for t in $targets; do
  work="fuzz/corpus/$t/generated"
  mkdir -p "$work"
  echo "== fuzzing $t for ${secs}s (seeds: fuzz/seeds/$t)"
  RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz "$t" "$work" "fuzz/seeds/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1
done
