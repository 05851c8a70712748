#!/usr/bin/env bash
# HTTP middleware benchmark: requests/s of a hello-world axum server, bare and behind tally,
# axum-prometheus and tower-http's TraceLayer, measured in one run with the configurations
# alternating over several rounds (the order rotates each round). The server is pinned to
# one core and wrk to another, so they do not compete for a CPU.
#
#   scripts/bench-middleware.sh [--rounds 5] [--seconds 10] [--connections 32]
#
# Needs wrk (`apt-get install -y wrk`), taskset (util-linux) and python3. Prints a markdown
# table: median requests/s per configuration, its ratio to bare, and the median of the
# per-round ratios (each configuration against bare in the same round).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=5 seconds=10 connections=32 warmup=2
server_cpu=0 load_cpu=1 port=18080
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    --server-cpu) server_cpu="$2"; shift 2 ;;
    --load-cpu) load_cpu="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
for tool in wrk taskset python3; do
  command -v "$tool" >/dev/null || { echo "bench-middleware: $tool is missing (wrk: apt-get install -y wrk)" >&2; exit 1; }
done

cargo build --release --quiet -p tally-benches --bin http-server
server="${CARGO_TARGET_DIR:-target}/release/http-server"
modes=(bare tally prometheus trace)
results="$(mktemp)"
server_pid=""
cleanup() { [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null || true; rm -f "$results"; }
trap cleanup EXIT INT TERM

wait_for_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench-middleware: the server did not listen on port $port within 10 s" >&2
  return 1
}

echo "# $(nproc) CPUs; server on CPU $server_cpu, wrk -t1 -c$connections on CPU $load_cpu; ${seconds}s per measurement, $rounds rounds" >&2
for round in $(seq 1 "$rounds"); do
  for i in "${!modes[@]}"; do
    mode="${modes[$(( (i + round - 1) % ${#modes[@]} ))]}"
    taskset -c "$server_cpu" "$server" --mode "$mode" --addr "127.0.0.1:$port" 2>/dev/null &
    server_pid=$!
    wait_for_port
    taskset -c "$load_cpu" wrk -t1 -c"$connections" -d"${warmup}s" "http://127.0.0.1:$port/" >/dev/null
    out="$(taskset -c "$load_cpu" wrk -t1 -c"$connections" -d"${seconds}s" --latency "http://127.0.0.1:$port/")"
    kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
    rps="$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")"
    p50="$(awk '$1 == "50%" {print $2}' <<<"$out")"
    p99="$(awk '$1 == "99%" {print $2}' <<<"$out")"
    errors="$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')"
    echo "$round $mode $rps $p50 $p99" >>"$results"
    echo "round $round  $mode  $rps req/s  p50 $p50  p99 $p99 $errors" >&2
  done
done

python3 - "$results" <<'PY'
import statistics, sys
def micros(text):
    for unit, scale in (("us", 1), ("ms", 1e3), ("s", 1e6)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    raise ValueError(f"unexpected wrk latency {text!r}")
rows = [line.split() for line in open(sys.argv[1])]
by_mode, by_round = {}, {}
for rnd, mode, rps, p50, p99 in rows:
    by_mode.setdefault(mode, []).append((float(rps), p50, p99))
    by_round.setdefault(rnd, {})[mode] = float(rps)
bare = statistics.median(r[0] for r in by_mode["bare"])
names = {"bare": "bare axum", "tally": "tally-tower", "prometheus": "axum-prometheus 0.8",
         "trace": "tower-http TraceLayer"}
print("| configuration | median req/s | min - max req/s | vs bare (medians) | vs bare (median of per-round ratios) | median p50 / p99 latency |")
print("| --- | ---: | ---: | ---: | ---: | --- |")
for mode in ["bare", "tally", "prometheus", "trace"]:
    rs = [r[0] for r in by_mode[mode]]
    ratios = [by_round[k][mode] / by_round[k]["bare"] for k in by_round]
    p50 = statistics.median(micros(r[1]) for r in by_mode[mode])
    p99 = statistics.median(micros(r[2]) for r in by_mode[mode])
    print(f"| {names[mode]} | {statistics.median(rs):,.0f} | {min(rs):,.0f} - {max(rs):,.0f} | "
          f"{statistics.median(rs) / bare:.3f} | {statistics.median(ratios):.3f} | {p50:.0f} us / {p99:.0f} us |")
PY
