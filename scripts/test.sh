#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
#
#   scripts/test.sh
#
# 1. installs what the tests need when missing (LocalStack in .localstack-venv, the deployment
#    checkers in .tools-venv, the StatsD test clients and the Node example via scripts/statsd-clients.sh) and starts LocalStack on 127.0.0.1:4566 unless one is running;
# 2. formatting, lints and docs: cargo fmt --check, cargo clippy -D warnings on every target,
#    cargo doc with warnings denied;
# 3. cargo test on the whole workspace with every feature (unit, property, integration and
#    end-to-end tests; the agent runs as a real process, CloudWatch is LocalStack);
# 4. stops LocalStack again if this script started it.
# Any failure fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

started_localstack=0
cleanup() {
  if [ "$started_localstack" = 1 ]; then scripts/localstack.sh stop || true; fi
}
trap cleanup EXIT

if ! scripts/localstack.sh status >/dev/null 2>&1; then
  scripts/localstack.sh start
  started_localstack=1
fi
scripts/tools-venv.sh
scripts/statsd-clients.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
echo "== cargo doc (broken links and doc warnings fail)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features --locked
echo "== cargo test"
cargo test --workspace --all-features --locked
echo "== all tests passed"
