#!/usr/bin/env bash
# Set up (if needed) and run the static checks: ruff lint and format, the napari manifest (npe2), and a wheel
# build that must carry the top-level napari.yaml. CI runs it before the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
PY=.venv/bin/python
.venv/bin/ruff check src tests benchmarks examples scripts
.venv/bin/ruff format --check src tests benchmarks examples scripts
$PY -m npe2 validate napari-xt
wheel_dir="$(mktemp -d)"
trap 'rm -rf "$wheel_dir"' EXIT
$PY -m build --wheel --no-isolation --outdir "$wheel_dir" . >/dev/null 2>&1
$PY - "$wheel_dir" <<'PYEOF'
import sys, zipfile, pathlib
wheel = next(pathlib.Path(sys.argv[1]).glob("napari_xt-*.whl"))
with zipfile.ZipFile(wheel) as archive:
    assert archive.read("napari_xt/napari.yaml") == pathlib.Path("napari.yaml").read_bytes(), "napari.yaml differs"
    entry_points = next(n for n in archive.namelist() if n.endswith("entry_points.txt"))
    assert "napari-xt = napari_xt:napari.yaml" in archive.read(entry_points).decode(), "no napari.manifest entry"
    assert not [n for n in archive.namelist() if n.endswith(".state.pt")], "training state in the wheel"
print(f"lint: ruff clean, manifest valid, {wheel.name} carries napari.yaml")
PYEOF
