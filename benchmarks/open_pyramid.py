"""How long opening an image takes, and how much memory it adds, as the image grows to 200,000².

Opening reads metadata only, so both should stay flat. Prints a table and writes results/open_pyramid.json.

    .venv/bin/python benchmarks/open_pyramid.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results

from napari_xt.io import open_pyramid

SIDES = (10_000, 50_000, 100_000, 200_000)


def main() -> None:
    open_pyramid(np.zeros((8, 8), np.uint8))  # imports and first-use costs outside the measurement
    process = psutil.Process()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for side in SIDES:
            for kind in ("zarr array", "OME-Zarr-like group"):
                path = Path(folder) / f"{side}_{kind.split()[0]}.zarr"
                if kind == "zarr array":
                    zarr.create_array(str(path), shape=(side, side), chunks=(1024, 1024), dtype="uint8")
                else:
                    group = zarr.open_group(str(path), mode="w")
                    for level in range(8):
                        n = side // 2**level
                        group.create_array(str(level), shape=(n, n, 3), chunks=(1024, 1024, 3), dtype="uint8")
                before, start = process.memory_info().rss, time.perf_counter()
                pyramid = open_pyramid(path)
                seconds = time.perf_counter() - start
                extra_mb = (process.memory_info().rss - before) / 1e6
                rows.append(
                    {
                        "side": side,
                        "kind": kind,
                        "levels": len(pyramid.levels),
                        "seconds": seconds,
                        "extra_mb": extra_mb,
                    }
                )
                timing = f"open {seconds * 1e3:7.1f} ms  +{extra_mb:5.1f} MB"
                print(f"{side:>8}² {kind:<20} levels {len(pyramid.levels)}  {timing}")
    write_results("open_pyramid", {"rows": rows, "targets": {"seconds": 1.0, "extra_mb": 50}})


if __name__ == "__main__":
    main()
