#!/usr/bin/env bash
# Installs the real StatsD clients the agent's StatsD tests use, pinned, into ignored folders:
#   agent/tests/statsd_clients/node_modules  hot-shots (package.json + package-lock.json), npm ci
#   agent/tests/statsd_clients/.venv         datadog (requirements.txt), python3 -m venv
# Needs node >= 18 with npm, and python3 with venv. Does nothing when both are present.
set -euo pipefail
cd "$(dirname "$0")/../agent/tests/statsd_clients"
if [ ! -d node_modules/hot-shots ]; then
  npm ci --no-audit --no-fund
fi
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import datadog' 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet -r requirements.txt
fi
