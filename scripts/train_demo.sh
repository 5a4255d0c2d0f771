#!/usr/bin/env bash
# Train the shipped demo checkpoints on this machine's CPU with the recorded commands, then evaluate each on
# held-out synthetic scenes (the README's table comes from the JSON written here). Usage:
#   bash scripts/train_demo.sh [NAME...]      NAME in sar_xl sar_none slide_xl slide_none sar_mamba sar_hyper
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} HF_HUB_OFFLINE=1
OUT=src/napari_xt/checkpoints
STEPS=${STEPS:-1200}
mkdir -p "$OUT"
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(sar_xl sar_none slide_xl slide_none sar_mamba sar_hyper)
for name in "${names[@]}"; do
  kind=${name%%_*}
  context=${name#*_}
  start=$(date +%s)
  .venv/bin/napari-xt train --data "synthetic:$kind" --scene-size 8192 --scenes 2 --scene-seed 0 \
    --preset "demo_${kind}_xl" --context "$context" --region-size 128 --crop-regions 6 --batch 2 --steps "$STEPS" \
    --seed 0 --out "$OUT/$name.safetensors"
  echo "$name trained in $(( $(date +%s) - start )) s"
  .venv/bin/napari-xt eval --checkpoint "$OUT/$name.safetensors" --data "synthetic:$kind" --scene-size 6144 \
    --scene-seed 1000 --out "$OUT/$name.eval.json" >/dev/null
  .venv/bin/napari-xt eval --checkpoint "$OUT/$name.safetensors" --data "synthetic:$kind" --scene-size 2048 \
    --scene-seed 2000 --out "$OUT/$name.eval-small.json" >/dev/null
done
