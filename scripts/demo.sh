#!/usr/bin/env bash
# Set up (if needed) and run the main job: open the demo scene in napari and, when there is no display,
# save a screenshot (napari-xt-demo.png, or the path given with --screenshot).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/napari-xt demo "$@"
