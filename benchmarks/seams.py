"""Seams at region borders, before and after decoding with neighbours, with the scores they come with.

Each shipped demo checkpoint runs through the engine on its held-out synthetic scene (as ``napari-xt eval``
does: whole-image context, the scene's analysis level), and its label map gets the seam score of
``napari_xt.train.metrics.seam_score``: how much more often labels change across region borders than across
lines inside regions (1: no seams). The ground truth's own score is given beside it, for reference. mIoU and
detection F1 come from the same run. ``--before REV`` runs the same evaluation with the code and the
checkpoints of another commit (a git worktree), side by side in this process's run; ``--before-weights now``
gives the old code today's checkpoints instead.

Usage: ``python benchmarks/seams.py [--before a27b7b7] [--blend off] [--size 6144] [--checkpoints sar_xl ...]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["sar_none", "sar_xl", "sar_mamba", "sar_hyper", "slide_none", "slide_xl"]

EVALUATE = """
import json, sys, time
from napari_xt.train.data import synthetic_source
from napari_xt.train.evaluate import evaluate
checkpoint, kind, size, seed, level, run_dir, blend = sys.argv[1:8]
started = time.perf_counter()
model = checkpoint
if blend == "off":  # the same weights, each region cropped from its own window
    from napari_xt.model import load_checkpoint
    model, _ = load_checkpoint(checkpoint)
    model.config.heads.decoder_blend = False
report = evaluate(model, synthetic_source(kind, int(size), int(seed), int(level)), run_dir=run_dir)
report["seconds"] = round(time.perf_counter() - started, 1)
print(json.dumps(report))
"""


def evaluate_with(
    code: Path, checkpoint: Path, kind: str, size: int, seed: int, level: int, run_dir: Path, blend: str = "on"
) -> dict:
    """``evaluate`` run by the package under ``code`` (its ``src``) in a fresh process; ``blend`` "off": today's
    code with blending turned off (``heads.decoder_blend``)."""
    env = {**os.environ, "PYTHONPATH": str(code / "src")}
    where = [str(checkpoint), kind, str(size), str(seed), str(level), str(run_dir), blend]
    command = [sys.executable, "-c", EVALUATE, *where]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def seams_of(run_dir: Path, kind: str, size: int, seed: int, level: int) -> dict:
    import numpy as np
    import zarr

    from napari_xt.train.data import synthetic_source
    from napari_xt.train.metrics import seam_score
    from napari_xt.train.targets import IGNORE

    group = zarr.open_group(str(run_dir), mode="r")
    region = int(group.attrs["napari_xt"]["region_size"])
    predicted = np.asarray(group["labels/segmentation/0"][:])
    source = synthetic_source(kind, size, seed, level)
    truth = source.labels(0, 0, *predicted.shape)
    valid = np.isfinite(np.asarray(source.pyramid.levels[level], dtype=np.float32)).all(axis=-1)
    valid = valid[: predicted.shape[0], : predicted.shape[1]] & (truth != IGNORE)
    ours, reference = seam_score(predicted, region, valid), seam_score(truth, region, valid)
    return {
        "seam_ratio": round(ours["ratio"], 2),
        "border_changes": round(ours["border"], 5),
        "inside_changes": round(ours["inside"], 5),
        "truth_seam_ratio": round(reference["ratio"], 2),
    }


def main() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import write_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", nargs="+", default=NAMES)
    parser.add_argument("--size", type=int, default=6144, help="held-out scene size (level 0 pixels)")
    parser.add_argument("--seed", type=int, default=1000, help="held-out scene seed (the demo table's)")
    parser.add_argument("--level", type=int, default=1)
    parser.add_argument("--before", help="a commit to compare with (run from a git worktree)")
    parser.add_argument("--before-weights", choices=("theirs", "now"), default="theirs")
    parser.add_argument("--blend", choices=("on", "off"), default="on", help="off: today's code without blending")
    parser.add_argument("--name", default="seams")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="napari-xt-seams-") as scratch:
        codes = {"now": ROOT}
        if args.before:
            worktree = Path(scratch) / "before"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.before],
                check=True,
                capture_output=True,
            )
            codes = {"before": worktree, **codes}
        rows = []
        try:
            for name in args.checkpoints:
                kind = name.split("_")[0]
                for label, code in codes.items():
                    run_dir = Path(scratch) / f"{label}-{name}.xt.zarr"
                    weights = code if label == "now" or args.before_weights == "theirs" else ROOT
                    checkpoint = weights / "src" / "napari_xt" / "checkpoints" / f"{name}.safetensors"
                    blend = args.blend if label == "now" else "on"
                    report = evaluate_with(code, checkpoint, kind, args.size, args.seed, args.level, run_dir, blend)
                    row = {
                        "checkpoint": name,
                        "code": label,
                        "blend": blend,
                        "miou": report.get("miou"),
                        "detection_f1": round(report["detection"]["all"]["f1"], 3),
                        "context_f1": round(report["context_metric"]["f1"], 3) if "context_metric" in report else None,
                        "seconds": report["seconds"],
                        **seams_of(run_dir, kind, args.size, args.seed, args.level),
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            if args.before:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], capture_output=True
                )
    write_results(
        args.name,
        {
            "size": args.size,
            "seed": args.seed,
            "level": args.level,
            "rows": rows,
            "started": time.strftime("%Y-%m-%d %H:%M"),
        },
    )


if __name__ == "__main__":
    main()
