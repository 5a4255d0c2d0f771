#!/usr/bin/env bash
# On a machine with a CUDA GPU, in well under 8 minutes: what only a GPU shows. The gpu tests (mamba-ssm's
# fused scan against our PyTorch scan; they skip without the mamba extra), then benchmarks/gpu.py (Swin-V2-T
# xT regions/s in bf16 and fp32, the whole 29,000 × 25,000 SAR scene end to end with peak GPU memory), which
# writes benchmarks/results/gpu.json.
# Needs a Python with a CUDA build of torch and napari-xt installed (pip install -e '.[mamba]'); PYTHON names
# it (default .venv/bin/python; scripts/setup.sh installs the CPU build, so do not run it here).
# Usage: [PYTHON=…] bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device or a CPU build of torch: see the top of benchmarks/gpu.sh')"
export HF_HUB_OFFLINE=1
start=$(date +%s)
"$PY" -m pytest -q -p no:warnings -m gpu
"$PY" benchmarks/gpu.py
echo "benchmarks/gpu.sh: $(( $(date +%s) - start )) s"
