#!/usr/bin/env bash
# Set up napari-xt on a fresh Debian/Ubuntu machine: system libraries for headless Qt (Xvfb), a venv in .venv,
# the CPU torch pin, and the package with its test extras. Safe to run again: it skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
VENV=${VENV:-$ROOT/.venv}

SYSTEM_PACKAGES=(xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-cursor0 libxcb-image0
  libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xkb1 libxkbcommon-x11-0 libxkbcommon0 libegl1 libgl1
  libglx-mesa0 libgl1-mesa-dri libdbus-1-3 libfontconfig1 libfreetype6)

missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# CPU-only torch here (an unpinned torch pulls gigabytes of CUDA wheels); PIP_CONSTRAINT also binds the
# build environments pip creates.
export PIP_CONSTRAINT="$ROOT/scripts/constraints-cpu.txt"
export PIP_DISABLE_PIP_VERSION_CHECK=1
stamp="$VENV/.napari-xt-installed"
want="$(cat pyproject.toml scripts/constraints-cpu.txt scripts/torchvision_cpu_shim.py | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: $VENV is up to date"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[pyqt6,distributed,geo,testing,demo]"

# The registry's torchvision is a CUDA build; next to the CPU torch its compiled ops do not load and its import
# fails. Only then, install the set-up shim (scripts/torchvision_cpu_shim.py) into this venv: a lazy import hook
# that defines the missing op schemas. The package itself never patches torchvision.
site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
rm -f "$site/torchvision_cpu_shim.pth" "$site/_torchvision_cpu_shim.py"
if ! "$VENV/bin/python" -c "import torchvision" 2>/dev/null; then
  cp scripts/torchvision_cpu_shim.py "$site/_torchvision_cpu_shim.py"
  echo "import _torchvision_cpu_shim; _torchvision_cpu_shim.install()" > "$site/torchvision_cpu_shim.pth"
  "$VENV/bin/python" -c "import timm" || { echo "setup: torchvision still does not import" >&2; exit 1; }
  echo "setup: torchvision's compiled ops do not load next to this CPU torch; installed the set-up shim"
fi
echo "$want" > "$stamp"
echo "setup: done ($("$VENV/bin/python" -c 'import torch, napari; print("torch", torch.__version__, "napari", napari.__version__)'))"
