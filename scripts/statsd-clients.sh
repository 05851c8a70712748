#!/usr/bin/env bash
# Installs the real StatsD clients the agent's StatsD tests use, pinned, into ignored folders:
#   agent/tests/statsd_clients/node_modules  hot-shots, aws-embedded-metrics (package.json + lock), npm ci
#   agent/tests/statsd_clients/.venv         datadog, aws-embedded-metrics (requirements.txt), venv
#   examples/node-express/node_modules       express, hot-shots (the example service), npm ci
# Needs node >= 18 with npm, and python3 with venv. Does nothing when all three are present.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/agent/tests/statsd_clients"
if [ ! -d node_modules/hot-shots ] || [ ! -d node_modules/aws-embedded-metrics ]; then
  npm ci --no-audit --no-fund
fi
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import datadog, aws_embedded_metrics" 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet -r requirements.txt
fi
cd "$root/examples/node-express"
if [ ! -d node_modules/express ] || [ ! -d node_modules/hot-shots ]; then
  npm ci --no-audit --no-fund
fi
