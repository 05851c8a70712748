#!/usr/bin/env bash
# Measures the agent's resident memory (VmRSS / VmHWM from /proc/<pid>/status) idle and with
# 1k, 10k and 100k active series (counters; --histograms gives each series a latency
# histogram too). Loopback only; every wait is bounded.
#
#   scripts/agent-rss.sh [--histograms] [--close] [--cloudwatch URL] [--series "0 1000 ..."]
#
# --close        also measure after the period holding the series closed and went through the
#                sink (a 10 s period; the load starts just after a period boundary so that
#                one period holds every series). "peak" is then the close's high-water mark.
# --cloudwatch   publish to CloudWatch at URL (LocalStack: scripts/localstack.sh start) instead
#                of the stdout sink; the close is measured once the publish queue is empty.
# --bin PATH     measure another agent build (default: this tree's release build).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA=""
CLOSE=""
CW=""
SERIES="0 1000 10000 100000"
BIN=""
while [ $# -gt 0 ]; do
  case "$1" in
    --histograms) EXTRA="--histograms" ;;
    --close) CLOSE=1 ;;
    --cloudwatch) CW="${2:?--cloudwatch needs a URL, e.g. http://127.0.0.1:4566}"; shift ;;
    --series) SERIES="${2:?--series needs a list, e.g. \"1000 100000\"}"; shift ;;
    --bin) BIN="${2:?--bin needs a path to a tally-agent binary}"; shift ;;
    *) echo "unknown argument $1 (see the comment at the top of $0)" >&2; exit 2 ;;
  esac
  shift
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -q -p tally-agent --bin tally-agent --example loadgen
BIN="${BIN:-$CARGO_TARGET_DIR/release/tally-agent}"
GEN="$CARGO_TARGET_DIR/release/examples/loadgen"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss() { awk '/^VmRSS/{r=$2} /^VmHWM/{h=$2} END{printf "%.1f MiB (peak %.1f MiB)", r/1024, h/1024}' "/proc/$1/status"; }
# A Prometheus metric from the admin endpoint, summed over its label sets (0 when absent).
metric() {
  curl -s --max-time 2 "http://$1/metrics" \
    | awk -v m="$2" '$1 == m || index($1, m "{") == 1 {v += $2} END{printf "%d\n", v}'
}

measure() {
  local series="$1"
  local ingest admin pid sink open="" closed=""
  ingest="127.0.0.1:$(free_port)"; admin="127.0.0.1:$(free_port)"
  sink=(--sink stdout)
  # The pending queue gets room for a whole period of 200k series (this script raises
  # aggregate.max_series to 200000, twice the default the default bound is sized for).
  [ -n "$CW" ] && sink=(--sink cloudwatch --set "publish.endpoint_url=$CW" --set publish.region=us-east-1
                       --set "namespace=Tally/RssBench$RANDOM" --set publish.max_pending_bytes=536870912)
  local period=()
  [ -n "$CLOSE" ] && period=(--set period_secs=10)
  AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
    "$BIN" run "${sink[@]}" "${period[@]}" --set "ingest.tcp_addr=$ingest" --set "admin.addr=$admin" \
    --set aggregate.max_series=200000 --set log.level=warn >/dev/null 2>&1 &
  pid=$!
  # Stop this agent however the measurement ends (a refused batch makes loadgen fail).
  trap 'kill -KILL "$pid" 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do "$BIN" health --addr "$admin" --timeout-ms 200 >/dev/null 2>&1 && break; sleep 0.1; done
  if [ -n "$CLOSE" ]; then
    # Start one second into a 10 s period, so that the load lands in a single period.
    python3 -c 'import time; t=time.time(); time.sleep((11 - t % 10) % 10)'
  fi
  if [ "$series" -gt 0 ]; then
    timeout 120 "$GEN" "$ingest" "$series" $EXTRA >/dev/null
  else
    sleep 1
  fi
  open="$(rss "$pid")"
  if [ -n "$CLOSE" ]; then
    local done=""
    for _ in $(seq 1 1200); do
      if [ "$(metric "$admin" tally_agent_periods_closed_total)" -ge 1 ] \
         && [ "$(metric "$admin" tally_agent_sink_queue_depth)" -eq 0 ] \
         && { [ -z "$CW" ] || [ "$(( $(metric "$admin" tally_publish_datums_total) \
                + $(metric "$admin" tally_publish_dropped_datums_total) ))" \
                -ge "$(metric "$admin" tally_agent_last_period_datums)" ]; }; then
        done=1; break
      fi
      sleep 0.2
    done
    [ -n "$done" ] || { echo "the period did not close and drain within 240 s" >&2; exit 1; }
    sleep 1
    closed="$(rss "$pid") | $(metric "$admin" tally_agent_last_period_metrics) metrics"
    [ -n "$CW" ] && closed="$closed, $(metric "$admin" tally_publish_datums_total) datums published, $(metric "$admin" tally_publish_dropped_datums_total) dropped"
    closed=" | $closed"
  fi
  local label="$series counter series"
  [ -n "$EXTRA" ] && label="$series counters + $series histograms ($((2 * series)) series)"
  [ "$series" -eq 0 ] && label=idle
  printf "| %s | %s%s |\n" "$label" "$open" "$closed"
  kill -TERM "$pid"; timeout 30 tail --pid="$pid" -f /dev/null || kill -KILL "$pid"
  trap - EXIT
}

if [ -n "$CLOSE" ]; then
  echo "| state | RSS, period open | RSS after the close | closed period |"
  echo "|---|---|---|---|"
else
  echo "| state | RSS |"
  echo "|---|---|"
fi
for n in $SERIES; do measure "$n"; done
