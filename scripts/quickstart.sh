#!/usr/bin/env bash
# Build and run the tally quickstart: the tally agent, the instrumented example shop and a load
# generator. The agent prints per-route request counts, error rates and p50/p99 latencies each
# period, or publishes to CloudWatch when AWS credentials or AWS_ENDPOINT_URL are configured.
#
#   scripts/quickstart.sh                  # 60 s, a report every 10 s
#   scripts/quickstart.sh --duration 5m    # longer; Ctrl-C stops earlier
#   scripts/quickstart.sh --help           # every option
set -euo pipefail
cd "$(dirname "$0")/.."
echo "quickstart: building tally-agent and the examples (release; the first build takes a few minutes)" >&2
cargo build --release --quiet -p tally-agent -p tally-examples --bins
target_dir="${CARGO_TARGET_DIR:-target}"
exec "$target_dir/release/quickstart" --agent-bin "$target_dir/release/tally-agent" "$@"
