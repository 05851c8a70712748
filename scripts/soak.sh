#!/usr/bin/env bash
# Bounded soak: the example shop under load from loadgen, with the tally agent publishing to
# LocalStack's CloudWatch. Samples RSS and CPU of the agent and the shop every few seconds, and
# at the end checks that the RequestCount in CloudWatch equals the requests loadgen got answers
# for (every answered request is recorded once by tally-tower).
#
#   scripts/soak.sh                      # 3 minutes at 200 requests/s
#   SOAK_DURATION=120 SOAK_RATE=400 scripts/soak.sh
#
# Environment: SOAK_DURATION (seconds, default 180), SOAK_RATE (requests/s, default 200),
# SOAK_CONCURRENCY (default 8), SOAK_SAMPLE_SECS (default 5), LOCALSTACK_PORT (default 4566:
# the shared instance, started with scripts/localstack.sh when it does not answer),
# LOCALSTACK_VENV (as scripts/localstack.sh). Exit status 0 when the totals match.
# Output: a Markdown table of the samples and a summary, also written to target/soak/.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${SOAK_DURATION:-180}"
RATE="${SOAK_RATE:-200}"
CONCURRENCY="${SOAK_CONCURRENCY:-8}"
EVERY="${SOAK_SAMPLE_SECS:-5}"
LS_PORT="${LOCALSTACK_PORT:-4566}"
VENV="${LOCALSTACK_VENV:-$PWD/.localstack-venv}"
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
OUT="$TARGET/soak"
ENDPOINT="http://127.0.0.1:$LS_PORT"
NS="TallySoak/$(date +%s)-$$"
ENVIRONMENT="soak$$"
mkdir -p "$OUT"

if [ "$DURATION" -gt 3600 ]; then
  echo "soak.sh: SOAK_DURATION=$DURATION is over an hour; this soak is meant to be bounded (minutes)" >&2
  exit 2
fi

free_port() { "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

LOCALSTACK_PORT="$LS_PORT" LOCALSTACK_VENV="$VENV" scripts/localstack.sh start >&2
echo "soak.sh: building tally-agent and the examples (release)" >&2
cargo build --release --quiet -p tally-agent -p tally-examples --bins

INGEST="127.0.0.1:$(free_port)"
ADMIN="127.0.0.1:$(free_port)"
SHOP="127.0.0.1:$(free_port)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
  "$TARGET/release/tally-agent" run --sink cloudwatch \
  --set "namespace=$NS" --set period_secs=10 \
  --set "publish.endpoint_url=$ENDPOINT" --set publish.region=us-east-1 \
  --set "ingest.tcp_addr=$INGEST" --set "admin.addr=$ADMIN" --set log.format=json \
  >"$OUT/agent.out" 2>"$OUT/agent.log" &
agent=$!; pids+=("$agent")
for _ in $(seq 1 100); do
  "$TARGET/release/tally-agent" health --addr "$ADMIN" --timeout-ms 500 >/dev/null 2>&1 && break
  kill -0 "$agent" 2>/dev/null || { echo "soak.sh: the agent exited; see $OUT/agent.log" >&2; exit 1; }
  sleep 0.1
done

ENVIRONMENT="$ENVIRONMENT" TALLY_AGENT_ADDR="$INGEST" \
  "$TARGET/release/shop" --addr "$SHOP" >"$OUT/shop.log" 2>&1 &
shop=$!; pids+=("$shop")
# Readiness probes that get an answer are requests too: the shop records them.
probes=0
for _ in $(seq 1 100); do
  if curl -sf --max-time 1 "http://$SHOP/health" >/dev/null; then probes=$((probes + 1)); break; fi
  sleep 0.1
done

"$TARGET/release/loadgen" --target "$SHOP" --rate "$RATE" --concurrency "$CONCURRENCY" \
  --duration "${DURATION}s" >"$OUT/loadgen.out" 2>"$OUT/loadgen.log" &
load=$!; pids+=("$load")

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
hz=$(getconf CLK_TCK)
table="$OUT/samples.md"
{
  echo "| t (s) | agent RSS (KiB) | agent CPU (%) | shop RSS (KiB) | shop CPU (%) | agent queue (bytes) |"
  echo "|---:|---:|---:|---:|---:|---:|"
} >"$table"
start=$(date +%s)
a_prev=$(ticks "$agent"); s_prev=$(ticks "$shop"); t_prev=$(date +%s.%N)
# Bounded: at most DURATION/EVERY + 2 samples, and it stops when loadgen ends.
for _ in $(seq 1 $((DURATION / EVERY + 2))); do
  sleep "$EVERY"
  kill -0 "$load" 2>/dev/null || break
  now=$(date +%s.%N)
  a_now=$(ticks "$agent"); s_now=$(ticks "$shop")
  queue=$(curl -sf --max-time 2 "http://$ADMIN/metrics" | awk '$1=="tally_publish_queue_bytes" {print $2}')
  awk -v t="$(( $(date +%s) - start ))" -v ar="$(rss "$agent")" -v sr="$(rss "$shop")" \
      -v ad="$((a_now - a_prev))" -v sd="$((s_now - s_prev))" -v dt="$(echo "$now - $t_prev" | bc)" \
      -v hz="$hz" -v q="${queue:-?}" \
      'BEGIN { printf "| %d | %d | %.1f | %d | %.1f | %s |\n", t, ar, 100*ad/hz/dt, sr, 100*sd/hz/dt, q }' >>"$table"
  a_prev=$a_now; s_prev=$s_now; t_prev=$now
done
wait "$load"
report=$(cat "$OUT/loadgen.out")
answered=$(echo "$report" | awk '{print $1}')

# Stop the shop (its SDK flushes on shutdown), then the agent (it publishes what it holds).
kill -TERM "$shop"; wait "$shop" || true
kill -TERM "$agent"; agent_status=0; wait "$agent" || agent_status=$?
dropped=$(grep 'tally-agent stopped' "$OUT/agent.log" | sed -n 's/.*"dropped_samples":\([0-9][0-9]*\).*/\1/p')
expected=$((answered + probes))

# RequestCount of this run over every dimension set. LocalStack matches dimensions as a
# superset (SQL LIKE), so one query with ServiceName + Environment sums every Route / Method /
# StatusClass series of this run's unique namespace (no rollups are configured, so nothing is
# counted twice). Real CloudWatch matches exact sets: there, configure a rollup instead.
published=$("$VENV/bin/python" - "$ENDPOINT" "$NS" "$ENVIRONMENT" <<'EOF'
import sys, datetime, boto3
endpoint, ns, env = sys.argv[1:4]
cw = boto3.client("cloudwatch", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
now = datetime.datetime.now(datetime.timezone.utc)
points = cw.get_metric_statistics(
    Namespace=ns, MetricName="RequestCount",
    Dimensions=[{"Name": "ServiceName", "Value": "example-shop"},
                {"Name": "Environment", "Value": env}],
    StartTime=now - datetime.timedelta(hours=2), EndTime=now + datetime.timedelta(minutes=10),
    Period=7200, Statistics=["Sum"])["Datapoints"]
print(int(sum(p["Sum"] for p in points)))
EOF
)
series=$("$VENV/bin/python" - "$ENDPOINT" "$NS" <<'EOF'
import sys, boto3
endpoint, ns = sys.argv[1:3]
cw = boto3.client("cloudwatch", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
print(sum(len(p["Metrics"]) for p in cw.get_paginator("list_metrics").paginate(Namespace=ns)))
EOF
)

summary="$OUT/summary.md"
{
  echo "Command: \`SOAK_DURATION=$DURATION SOAK_RATE=$RATE scripts/soak.sh\`"
  echo
  echo "loadgen: $report"
  echo
  echo "| check | value |"
  echo "|---|---:|"
  echo "| requests answered (loadgen) | $answered |"
  echo "| + readiness probes answered (soak.sh) | $probes |"
  echo "| = requests the shop served | $expected |"
  echo "| RequestCount Sum in CloudWatch (LocalStack) | $published |"
  echo "| agent exit status | $agent_status |"
  echo "| metric series published (ListMetrics) | $series |"
  echo "| samples the agent dropped (its exit summary) | ${dropped:-?} |"
} >"$summary"
cat "$table"; echo; cat "$summary"
if [ "$expected" != "$published" ]; then
  echo "soak.sh: MISMATCH: the shop served $expected requests, CloudWatch holds $published" >&2
  exit 1
fi
echo "soak.sh: totals match ($published requests)"
