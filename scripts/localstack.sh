#!/usr/bin/env bash
# LocalStack (CloudWatch only) on 127.0.0.1:4566, as a plain Python process (no Docker).
#
#   scripts/localstack.sh start    install into .localstack-venv when missing, start, wait until ready
#   scripts/localstack.sh stop     stop the instance this script started (by its recorded pid)
#   scripts/localstack.sh status   exit 0 when LocalStack answers on the port
#
# Versions: localstack-core 4.13.1 is the newest release that runs on Python 3.11 and has the
# CBOR timestamp fix aws-sdk-cloudwatch needs; the pins below are a set of its runtime
# dependencies that work together (found by trial on Python 3.11; newer LocalStack needs Python 3.12).
# Environment: LOCALSTACK_PORT (4566; each port has its own pid file, log and data under
# target/), LOCALSTACK_PYTHON (python3), LOCALSTACK_VENV (.localstack-venv at the repository root).
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${LOCALSTACK_PORT:-4566}"
PYTHON="${LOCALSTACK_PYTHON:-python3}"
VENV="${LOCALSTACK_VENV:-$PWD/.localstack-venv}"
# One state folder (pid file, log, data) per port, so an instance started on another port (a
# test that stops and restarts its own CloudWatch) never touches the shared one on 4566.
if [ "$PORT" = 4566 ]; then STATE="$PWD/target/localstack"; else STATE="$PWD/target/localstack-$PORT"; fi
PIDFILE="$STATE/localstack.pid"
LOG="$STATE/localstack.log"
HEALTH="http://127.0.0.1:$PORT/_localstack/health"

healthy() {
  curl -sf --max-time 2 "$HEALTH" 2>/dev/null | grep -q '"cloudwatch": "\(available\|running\)"'
}

install() {
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import localstack.runtime.main' 2>/dev/null; then
    return
  fi
  echo "localstack.sh: installing LocalStack 4.13.1 into $VENV (about a minute)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    'localstack-core[runtime]==4.13.1' 'cbor2<6' 'pyopenssl<24.3' 'cryptography<44' 'service-identity<24.3'
}

start() {
  if healthy; then
    echo "localstack.sh: LocalStack already answers on 127.0.0.1:$PORT"
    return
  fi
  install
  mkdir -p "$STATE/volume" "$STATE/tmp"
  echo "localstack.sh: starting LocalStack on 127.0.0.1:$PORT (log: $LOG)"
  # TMPDIR: LocalStack keeps its CloudWatch database under $TMPDIR/localstack and deletes that
  # folder when it stops; a private TMPDIR keeps one instance from deleting another's data.
  GATEWAY_LISTEN="127.0.0.1:$PORT" SERVICES=cloudwatch DISABLE_EVENTS=1 \
    LOCALSTACK_VOLUME_DIR="$STATE/volume" TMPDIR="$STATE/tmp" \
    nohup "$VENV/bin/python" -m localstack.runtime.main >"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 120); do
    if healthy; then
      echo "localstack.sh: ready"
      return
    fi
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      echo "localstack.sh: LocalStack exited during start; last log lines:" >&2
      tail -n 30 "$LOG" >&2
      exit 1
    fi
    sleep 0.5
  done
  echo "localstack.sh: LocalStack did not become ready within 60 s; see $LOG" >&2
  exit 1
}

stop() {
  if [ ! -f "$PIDFILE" ]; then
    echo "localstack.sh: no LocalStack started by this script (no $PIDFILE)"
    return
  fi
  local pid
  pid="$(cat "$PIDFILE")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 40); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
  fi
  rm -f "$PIDFILE"
  echo "localstack.sh: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status)
    if healthy; then echo "localstack.sh: running on 127.0.0.1:$PORT"; else echo "localstack.sh: not running on 127.0.0.1:$PORT"; exit 1; fi ;;
  *) echo "usage: scripts/localstack.sh start|stop|status" >&2; exit 2 ;;
esac
