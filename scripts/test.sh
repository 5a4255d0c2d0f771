#!/usr/bin/env bash
# Set up (if needed) and run the default test suite (GUI tests included, under Xvfb; slow and gpu tests are
# excluded or skip cleanly). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec .venv/bin/python -m pytest "$@"
