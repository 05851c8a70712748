#!/usr/bin/env bash
# Measures the agent's resident memory (VmRSS / VmHWM from /proc/<pid>/status) idle and with
# 1k, 10k and 100k active series (counters; add --histograms to give each series a latency
# histogram too). Loopback only; every wait is bounded.
#
#   scripts/agent-rss.sh [--histograms]
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA="${1:-}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -q -p tally-agent --bin tally-agent --example loadgen
BIN="$CARGO_TARGET_DIR/release/tally-agent"
GEN="$CARGO_TARGET_DIR/release/examples/loadgen"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss() { awk '/^VmRSS/{r=$2} /^VmHWM/{h=$2} END{printf "%.1f MiB (peak %.1f MiB)", r/1024, h/1024}' "/proc/$1/status"; }

measure() {
  local series="$1"
  local ingest admin pid
  ingest="127.0.0.1:$(free_port)"; admin="127.0.0.1:$(free_port)"
  "$BIN" run --sink stdout --set "ingest.tcp_addr=$ingest" --set "admin.addr=$admin" \
    --set aggregate.max_series=200000 --set log.level=warn >/dev/null 2>&1 &
  pid=$!
  # Stop this agent however the measurement ends (a refused batch makes loadgen fail).
  trap 'kill -KILL "$pid" 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do "$BIN" health --addr "$admin" --timeout-ms 200 >/dev/null 2>&1 && break; sleep 0.1; done
  if [ "$series" -gt 0 ]; then
    timeout 120 "$GEN" "$ingest" "$series" $EXTRA >/dev/null
  else
    sleep 1
  fi
  printf "| %s | %s |\n" "$( [ "$series" -eq 0 ] && echo idle || echo "$series series" )" "$(rss "$pid")"
  kill -TERM "$pid"; timeout 30 tail --pid="$pid" -f /dev/null || kill -KILL "$pid"
  trap - EXIT
}

echo "| state | RSS |"
echo "|---|---|"
for n in 0 1000 10000 100000; do measure "$n"; done
