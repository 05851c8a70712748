#!/usr/bin/env bash
# End-to-end StatsD load: the release agent (stdout sink, StatsD on UDP) receives packets at
# fixed rates from agent/examples/statsd_loadgen.rs; for each rate it prints the packets sent,
# read by the agent, and dropped by the kernel (and counted), plus the agent's RSS.
# "uncounted" must be 0: every packet is read or counted as dropped. Loopback only; bounded.
#
#   scripts/statsd-load.sh [--rates "50000 100000 200000"] [--seconds 5] [--lines 1]
#                          [--rcvbuf BYTES]
set -euo pipefail
cd "$(dirname "$0")/.."
RATES="50000 100000 200000"
SECS=5
LINES=1
RCVBUF=8388608
while [ $# -gt 0 ]; do
  case "$1" in
    --rates) RATES="${2:?}"; shift ;;
    --seconds) SECS="${2:?}"; shift ;;
    --lines) LINES="${2:?}"; shift ;;
    --rcvbuf) RCVBUF="${2:?}"; shift ;;
    *) echo "unknown argument $1 (see the comment at the top of $0)" >&2; exit 2 ;;
  esac
  shift
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -q -p tally-agent --bin tally-agent --example statsd_loadgen
BIN="$CARGO_TARGET_DIR/release/tally-agent"
GEN="$CARGO_TARGET_DIR/release/examples/statsd_loadgen"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
metric() { curl -s "http://$ADMIN/metrics" | awk -v m="$1" 'index($0, m) == 1 {s += $NF} END {print s + 0}'; }
echo "rmem_max=$(cat /proc/sys/net/core/rmem_max) lines_per_packet=$LINES seconds=$SECS"
printf "%-10s %-12s %-10s %-12s %-14s %-10s %s\n" rate/s sent sent_ms read kernel_drops uncounted rss
for RATE in $RATES; do
  PORT=$(free_port); ADMIN="127.0.0.1:$(free_port)"
  "$BIN" run --sink stdout --set ingest.tcp_addr="127.0.0.1:$(free_port)" --set admin.addr="$ADMIN" \
    --set statsd.enabled=true --set statsd.udp_addr="127.0.0.1:$PORT" \
    --set statsd.receive_buffer_bytes="$RCVBUF" > /dev/null 2>/tmp/statsd-load.$$.log &
  AGENT=$!
  trap 'kill $AGENT 2>/dev/null || true' EXIT
  for _ in $(seq 100); do curl -sf "http://$ADMIN/health" >/dev/null && break; sleep 0.1; done
  OUT=$("$GEN" "127.0.0.1:$PORT" "$RATE" "$SECS" "$LINES")
  SENT=$(echo "$OUT" | sed -n 's/.*sent_packets=\([0-9]*\).*/\1/p')
  MS=$(echo "$OUT" | sed -n "s/.*elapsed_ms=\([0-9]*\).*/\1/p")
  # Wait (at most 30 s) until every packet is read or counted as dropped.
  for _ in $(seq 300); do
    READ=$(metric 'tally_agent_statsd_packets_total{listener="udp",outcome="received"}')
    DROP=$(metric 'tally_agent_statsd_packets_total{listener="udp",outcome="kernel_dropped"}')
    [ $((READ + DROP)) -ge "$SENT" ] && break
    sleep 0.1
  done
  RSS=$(awk '/^VmHWM/{printf "%.1f MiB peak", $2/1024}' "/proc/$AGENT/status")
  printf "%-10s %-12s %-10s %-12s %-14s %-10s %s\n" "$RATE" "$SENT" "$MS" "$READ" "$DROP" $((SENT - READ - DROP)) "$RSS"
  kill -TERM $AGENT; wait $AGENT || true
  trap - EXIT
done
grep -m1 "StatsD receive buffer" /tmp/statsd-load.$$.log || true
rm -f /tmp/statsd-load.$$.log
