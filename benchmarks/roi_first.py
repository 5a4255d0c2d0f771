"""ROI first: how soon the visible region's result is there on the 65,536² demo slide, cold and warm.

The run the widget makes when "Use whole-image context" is ticked, through the engine (no Qt), with the shipped
``slide_xl`` checkpoint at its pixel size, on the demo view (``napari-xt demo``'s ROI), one process, in order:

1. **cold, first look**: context from the ROI alone (``context_scope="roi"``), an empty token cache;
2. **cold, whole-image context**: the same ROI with context from every tissue region of the slide (pass 1
   encodes them all and fills the token cache);
3. **warm, the same ROI** with whole-image context: the cached tokens give the context, only the ROI and its
   neighbours are encoded;
4. **warm, the same ROI again** and **a panned view** (one view to the right), the same.

For each: seconds from the click (the run's start) to the first result written for the ROI and to the end,
regions encoded, and the run's stage timings. The warm runs' labels are checked against the cold whole-image
run's (the same ROI must get the same result whether its context came from the cache or not).

Prints a table and writes results/roi_first.json.

    .venv/bin/python benchmarks/roi_first.py [--side 65536] [--view 3072 2048] [--folder DIR [--warm-only]]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results


def timed_run(pyramid, checkpoint, out: Path, options) -> dict:
    from napari_xt.engine.events import Failed, Finished, PartialResult, Progress
    from napari_xt.engine.runner import run

    start = time.perf_counter()
    first = None
    encoded = 0
    last = None
    for event in run(pyramid, checkpoint, out, options):
        if isinstance(event, PartialResult) and first is None:
            first = time.perf_counter() - start
        if isinstance(event, Progress) and event.phase == "encode":
            encoded = event.done - event.done_before
        last = event
    if isinstance(last, Failed) or not isinstance(last, Finished):
        raise SystemExit(f"the run in {out} did not finish: {last}")
    total = time.perf_counter() - start
    timings = {k: round(v, 2) for k, v in last.timings.items() if isinstance(v, float)}
    return {"first_result_s": first, "total_s": total, "context_regions_encoded": encoded, "timings": timings}


def labels(out: Path):
    import zarr

    return zarr.open_group(str(out), mode="r")["labels/segmentation/0"][:]


def main() -> None:
    import numpy as np

    from napari_xt._napari import checkpoints
    from napari_xt._napari.demo import VIEW_CENTRE
    from napari_xt._napari.sample_data import SAMPLE_SEED
    from napari_xt.data.worlds import synthetic_scene
    from napari_xt.engine.runner import RunOptions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=65_536, help="the demo slide's side (level-0 pixels)")
    parser.add_argument("--view", type=int, nargs=2, default=(3072, 2048), help="the ROI's width and height")
    parser.add_argument("--folder", type=Path, help="where runs and the token cache go (default: a scratch folder)")
    parser.add_argument(
        "--warm-only", action="store_true", help="only the warm runs, with the cache and cold run already in --folder"
    )
    args = parser.parse_args()
    checkpoint = checkpoints.demo_checkpoint("slide", "xl")
    if checkpoint is None:
        raise SystemExit("no shipped slide_xl checkpoint: run scripts/train_demo.sh first")
    world = synthetic_scene("slide", args.side, SAMPLE_SEED)
    pyramid = world.pyramid()
    width, height = args.view
    y, x = (c * args.side / 65_536 for c in VIEW_CENTRE["slide"])
    roi = (y - height / 2, x - width / 2, y + height / 2, x + width / 2)
    panned = (roi[0], roi[1] + width, roi[2], roi[3] + width)
    folder = args.folder or Path(tempfile.mkdtemp(prefix="napari-xt-roi-"))
    cache = folder / "cache"
    if args.warm_only and not (folder / "cold.xt.zarr").exists():
        raise SystemExit(f"--warm-only needs the cache and the cold run of an earlier run in {folder}")
    if not args.warm_only:
        shutil.rmtree(cache, ignore_errors=True)
    common = {"cache_dir": str(cache), "export_polygons": False}
    steps = [
        ("cold, first look (ROI context)", "look", RunOptions(roi=roi, context_scope="roi", **common)),
        ("cold, whole-image context", "cold", RunOptions(roi=roi, context_scope="image", **common)),
        ("warm, the same ROI", "warm", RunOptions(roi=roi, context_scope="image", **common)),
        ("warm, the same ROI again", "again", RunOptions(roi=roi, context_scope="image", **common)),
        ("warm, a panned view", "panned", RunOptions(roi=panned, context_scope="image", **common)),
    ]
    if args.warm_only:
        steps = steps[2:]
    rows = []
    for title, name, options in steps:
        out = folder / f"{name}.xt.zarr"
        shutil.rmtree(out, ignore_errors=True)
        row = {"run": title, "roi": list(options.roi), **timed_run(pyramid, checkpoint, out, options)}
        rows.append(row)
        first = "none" if row["first_result_s"] is None else f"{row['first_result_s']:.1f} s"
        print(
            f"{title:32s} first ROI result {first:>9s}, end {row['total_s']:7.1f} s, "
            f"{row['context_regions_encoded']:6d} regions encoded for context",
            flush=True,
        )
    cold = labels(folder / "cold.xt.zarr")
    same = all(np.array_equal(labels(folder / f"{name}.xt.zarr"), cold) for name in ("warm", "again"))
    print(f"warm ROI labels equal the cold whole-image-context run's: {same}")
    write_results(
        "roi_first",
        {
            "side": args.side,
            "view": [width, height],
            "checkpoint": checkpoint.name,
            "runs": rows,
            "warm_equals_cold": same,
        },
    )


if __name__ == "__main__":
    main()
