"""Our context-encoder options against the official xT building blocks, trained the same way and scored on the
same held-out synthetic scene: which defaults to keep.

Each variant starts from the same seed and trains the demo SAR model (convnext_atto regions of 128², a 2-layer
Hyper context) on the same crops for ``--steps`` steps, then is evaluated on a held-out 2,048² scene (mIoU of
the segmentation, F1 of the detections). Variants:

- ``ours``: pre-norm layers, non-causal attention, regions in Hilbert order, positions in region units;
- ``official``: the official xT layer (RMSNorm, gated MLP), causal, every token in raster order, MAE positions;
- ``official_hilbert``: as ``official`` with the Hilbert order, to separate the order from the layer.

Usage: ``python benchmarks/context_options.py --steps 300 --json benchmarks/results/context_options.json``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "ours": {},
    "official": {"layer": "llama", "causal": True, "order": "token_raster", "positions": "mae", "mlp_ratio": 4.0},
    "official_hilbert": {"layer": "llama", "causal": True, "positions": "mae", "mlp_ratio": 4.0},
}


def run(name: str, options: dict, steps: int, workdir: Path) -> dict:
    import torch

    from napari_xt.model import preset_config
    from napari_xt.train.data import synthetic_source
    from napari_xt.train.evaluate import evaluate
    from napari_xt.train.trainer import TrainSettings, model_for_data, train

    torch.manual_seed(0)
    config = preset_config(
        "demo_sar_xl",
        region_size=128,
        region_encoder={"input_size": 128},
        context_encoder={"kind": "hyper", **options},
    )
    sources = [synthetic_source("sar", 8192, seed, 0).materialise() for seed in (0, 1)]
    model, _ = model_for_data(config, sources, name)
    settings = TrainSettings(steps=steps, crop_regions=6, batch=2, seed=0, log_every=10**9, save_every=10**9)
    started = time.perf_counter()
    train(model, sources, workdir / f"{name}.safetensors", settings, resume=False)
    seconds = time.perf_counter() - started
    report = evaluate(model, synthetic_source("sar", 2048, 2000, 0))
    return {
        "variant": name,
        "options": options,
        "steps": steps,
        "train_s": round(seconds, 1),
        "miou": report.get("miou"),
        "detection_f1": report["detection"]["all"]["f1"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in VARIANTS.items():
            if args.only and name not in args.only:
                continue
            row = run(name, options, args.steps, Path(tmp))
            rows.append(row)
            print(
                f"{name:18s} mIoU {row['miou']:.3f}  detection F1 {row['detection_f1']:.3f}  ({row['train_s']} s)",
                flush=True,
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
