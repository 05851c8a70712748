#!/usr/bin/env bash
# Creates (or refreshes) .tools-venv at the repository root with the pinned offline checkers
# that agent/tests/deployment_files.rs runs: hadolint, checkov, cfn-lint, parliament, botocore.
#
# Idempotent: when the venv exists and was built from the current scripts/tools-requirements.txt
# (a stamp holds its checksum), it does nothing. Needs python3 (3.11 here) and PyPI.
#
#   scripts/tools-venv.sh            # create or refresh
#   scripts/tools-venv.sh --force    # rebuild from scratch
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.tools-venv"
reqs="$root/scripts/tools-requirements.txt"
stamp="$venv/.tally-requirements.sha256"
python="${PYTHON:-python3}"

if [[ "${1:-}" == "--force" ]]; then
    rm -rf "$venv"
elif [[ $# -gt 0 ]]; then
    echo "usage: $0 [--force]" >&2
    exit 2
fi

want="$(sha256sum "$reqs" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/hadolint" ]]; then
    echo "tools-venv: $venv is up to date"
    exit 0
fi

if ! command -v "$python" >/dev/null; then
    echo "tools-venv: $python not found; install Python 3.11 or set PYTHON=/path/to/python3" >&2
    exit 1
fi

echo "tools-venv: installing the deployment checkers into $venv (about two minutes)"
rm -f "$stamp"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$reqs"

# Fail here, not later in a test, when a tool does not start.
"$venv/bin/hadolint" --version >/dev/null
"$venv/bin/checkov" --version >/dev/null
"$venv/bin/cfn-lint" --version >/dev/null
"$venv/bin/parliament" --help >/dev/null
"$venv/bin/python" -c 'import botocore.session, botocore.validate'

echo "$want" > "$stamp"
echo "tools-venv: ready ($venv)"
