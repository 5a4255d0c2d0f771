"""Engine benchmark: memory as the image grows, throughput against the bare region encoder, time spent waiting
on reads.

1. Peak RSS of whole-image runs on lazily generated SAR scenes from 4,096² to 65,536² (analysed at level 2 so
   the largest stays within minutes on a CPU: 16 → 4,096 regions of 256²). Each size runs in a fresh process.
2. Engine regions/s ÷ bare region-encoder regions/s on the same regions in the same process. The image is a
   zarr file on disk (the engine reads it as users' files are read); the bare encoder gets the pixels already
   in memory. Also against the bare whole model (encoder + decoder, no engine): the engine's own overhead.
3. The share of the engine's wall time the model waited on reading.

Prints tables and writes results/engine.json.

    .venv/bin/python benchmarks/engine.py [--quick]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import in_fresh_process, write_results

SIDES = (4096, 8192, 16384, 32768, 65536)
LEVEL = 2


def _model():
    import torch

    from napari_xt.model import create_model

    torch.manual_seed(0)
    return create_model("demo_sar_xl").eval()


def _rss_job(side: int, polygons: bool, queue) -> None:
    import psutil

    from napari_xt.data.synthetic import SarScene
    from napari_xt.engine.runner import RunOptions, run_to_end

    model = _model()
    scene = SarScene(height=side, width=side, seed=0)
    baseline = psutil.Process().memory_info().rss
    folder = tempfile.mkdtemp(prefix="napari-xt-bench-")
    start = time.perf_counter()
    last = run_to_end(
        scene.pyramid(),
        model,
        Path(folder) / "run.xt.zarr",
        RunOptions(level=LEVEL, cache_dir="", background="none", export_polygons=polygons),
    )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    regions = (side // 4 // 256) ** 2
    shutil.rmtree(folder, ignore_errors=True)
    queue.put(
        {
            "side": side,
            "regions": regions,
            "seconds": seconds,
            "peak_rss_mb": peak / 1e6,
            "baseline_rss_mb": baseline / 1e6,
            "status": type(last).__name__,
            "timings": last.timings,
        }
    )


def _throughput(n_side: int) -> dict:
    import numpy as np
    import torch
    import zarr

    from napari_xt.data.synthetic import SarScene
    from napari_xt.engine.runner import RunOptions, run_to_end
    from napari_xt.io import open_pyramid

    model = _model()
    scene = SarScene(height=n_side * 256, width=n_side * 256, seed=0)
    level0 = np.asarray(scene.pyramid().levels[0]).astype(np.float32)
    folder = tempfile.mkdtemp(prefix="napari-xt-bench-")
    zarr.create_array(f"{folder}/scene.zarr", data=level0[..., 0], chunks=(512, 512))
    pyramid = open_pyramid(f"{folder}/scene.zarr")
    regions = torch.from_numpy(level0.transpose(2, 0, 1).copy())[None]
    from napari_xt.model.tokenization import cut, neighbour_table

    tiles, _ = cut(regions, 256)
    batch = 8
    with torch.inference_mode():
        model.encode(model.normalise(tiles[:batch]))  # warm up
        start = time.perf_counter()
        for i in range(0, len(tiles), batch):
            model.encode(model.normalise(tiles[i : i + batch]))
        bare = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(0, len(tiles), batch):  # the whole model without the engine (context per batch, each
            features = model.encode(model.normalise(tiles[i : i + batch]))  # batch a row of neighbours)
            model.decode_all(features, model.region_tokens(features), neighbour_table(1, len(features[0])))
        bare_model = time.perf_counter() - start
    folder = tempfile.mkdtemp(prefix="napari-xt-bench-")
    start = time.perf_counter()
    last = run_to_end(
        pyramid,
        model,
        Path(folder) / "run.xt.zarr",
        RunOptions(level=0, cache_dir="", background="none", batch_size=batch),
    )
    engine = time.perf_counter() - start
    shutil.rmtree(folder, ignore_errors=True)
    n = len(tiles)
    return {
        "regions": n,
        "bare_regions_per_s": n / bare,
        "engine_regions_per_s": n / engine,
        "ratio": bare / engine,
        "bare_model_regions_per_s": n / bare_model,
        "ratio_to_model": bare_model / engine,
        "read_wait_share": last.timings["read_wait"] / last.timings["total"],
        "timings": last.timings,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes up to 16,384² and a smaller throughput run")
    parser.add_argument("--sides", type=int, nargs="+", help=f"image sides of the memory runs (default {SIDES})")
    parser.add_argument("--no-polygons", action="store_true", help="memory runs without the polygon export")
    parser.add_argument("--memory-only", action="store_true", help="skip the throughput run")
    args = parser.parse_args()
    sides = args.sides or (SIDES[:3] if args.quick else SIDES)
    polygons = not args.no_polygons
    print(f"whole-image runs at level {LEVEL}, demo_sar_xl, regions of 256², polygons {'on' if polygons else 'off'}")
    print(f"{'image':>10}{'regions':>9}{'seconds':>10}{'peak RSS MB':>13}")
    rows = []
    for side in sides:
        row = in_fresh_process(_rss_job, side, polygons)
        rows.append(row)
        print(f"{side:>9}²{row['regions']:>9}{row['seconds']:>10.1f}{row['peak_rss_mb']:>13.0f}")
    peaks = [r["peak_rss_mb"] for r in rows]
    growth = max(peaks) / min(peaks) - 1
    print(f"peak RSS growth from smallest to largest: {growth * 100:.1f}% (aim: within 25%)")
    if args.memory_only:
        write_results("engine_memory", {"memory": rows, "rss_growth": growth, "polygons": polygons})
        return
    throughput = _throughput(6 if args.quick else 12)
    print(
        f"\nengine {throughput['engine_regions_per_s']:.1f} regions/s vs bare encoder "
        f"{throughput['bare_regions_per_s']:.1f} regions/s: ratio {throughput['ratio']:.2f} (aim ≥ 0.85)"
    )
    print(
        f"engine vs the bare model (encoder + decoder, no engine) {throughput['bare_model_regions_per_s']:.1f} "
        f"regions/s: ratio {throughput['ratio_to_model']:.2f}"
    )
    print(f"share of wall time waiting on reads: {throughput['read_wait_share'] * 100:.1f}%")
    print(f"engine timings: {throughput['timings']}")
    write_results("engine", {"memory": rows, "rss_growth": growth, "throughput": throughput})


if __name__ == "__main__":
    main()
