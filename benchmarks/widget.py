"""Widget benchmark: what a user feels while xT runs in napari.

Opens the demo world (50,000² SAR or 65,536² slide, generated lazily) as ``napari-xt demo`` does, shows it,
runs the shipped ``xl`` checkpoint on the visible region through the dock widget, and measures with a 10 ms
QTimer on the main thread: how long the click took (creating the result layers and drawing them once), the
longest gap between two ticks and the 99th percentile from the click's return until the run has finished and
its last results are shown, how many times the live layers were refreshed and their longest single step, and the
run's regions per second. Needs a display; without one it starts Xvfb like the demo.

Prints a table and writes results/widget.json.

    .venv/bin/python benchmarks/widget.py [--scene sar|slide ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import main_thread_ticks, write_results


def measure(scene_kind: str) -> dict:
    import numpy as np
    import zarr
    from qtpy.QtWidgets import QApplication

    from napari_xt._napari import checkpoints
    from napari_xt._napari.demo import show_demo_world

    checkpoint = checkpoints.demo_checkpoint(scene_kind, "xl")
    if checkpoint is None:
        raise SystemExit(f"no shipped {scene_kind} checkpoint: run scripts/train_demo.sh first")
    viewer, widget, _world = show_demo_world(scene_kind)
    widget.set_checkpoint(checkpoint)
    widget.region.value = "visible region"
    for _ in range(40):  # the scene is drawn before the click
        QApplication.processEvents()
        time.sleep(0.02)

    ticks, timer = main_thread_ticks()
    clicked = time.perf_counter()
    widget.start()
    click_s = time.perf_counter() - clicked
    ticks.clear()
    started = time.perf_counter()
    while widget.running:
        QApplication.processEvents()
        time.sleep(0.002)
    wall_s = time.perf_counter() - started
    timer.stop()
    gaps = np.diff(ticks) if len(ticks) > 1 else np.zeros(1)
    steps = widget.live.step_times  # (step, start, end) of every refresh step
    stalls = [
        (float(gaps[i]), any(a < ticks[i + 1] and b > ticks[i] for name, a, b in steps if name != "repaint"))
        for i in np.flatnonzero(gaps > 0.08)
    ]
    done = int(zarr.open_group(str(widget.run_dir))["regions/done"][:].sum())
    result = {
        "scene": scene_kind,
        "checkpoint": Path(checkpoint).name,
        "status": widget.status.text(),
        "click_s": round(click_s, 3),
        "run_s": round(wall_s, 2),
        "regions": done,
        "regions_per_s": round(done / wall_s, 2) if wall_s else None,
        "refreshes": sum(step == "repaint" for step, _, _ in steps),
        "longest_step_ms": {
            name: round(max((b - a for step, a, b in steps if step == name), default=0.0) * 1000, 1)
            for name in ("points", "labels", "probabilities")
        },
        # where the long gaps come from: those with one of our refresh steps inside, and the others (repaints)
        "stalls_over_80ms_with_refresh": [round(g * 1000) for g, hit in stalls if hit],
        "stalls_over_80ms_without": [round(g * 1000) for g, hit in stalls if not hit],
        "max_gap_ms": round(float(gaps.max()) * 1000, 1),
        "p99_gap_ms": round(float(np.percentile(gaps, 99)) * 1000, 1),
        "ticks": len(ticks),
    }
    widget.stop()
    viewer.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", nargs="+", default=["sar", "slide"], choices=["sar", "slide"])
    args = parser.parse_args()
    # a private cache: runs and token caches from earlier calls would make the run a replay
    os.environ["NAPARI_XT_CACHE"] = tempfile.mkdtemp(prefix="napari-xt-bench-")

    from napari_xt._napari.headless import display_available

    rows = []
    with display_available():
        for kind in args.scene:
            rows.append(measure(kind))
    print("| scene | click | run | regions | regions/s | refreshes | longest step | longest stall | p99 gap |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['scene']} ({r['checkpoint']}) | {r['click_s']:.2f} s | {r['run_s']:.1f} s | {r['regions']} | "
            f"{r['regions_per_s']} | {r['refreshes']} | "
            + ", ".join(f"{k} {v:.0f} ms" for k, v in r["longest_step_ms"].items() if v)
            + " | "
            f"{r['max_gap_ms']:.0f} ms | {r['p99_gap_ms']:.0f} ms |"
        )
        print(
            f"  stalls over 80 ms with a refresh step inside: {r['stalls_over_80ms_with_refresh']}, "
            f"without: {r['stalls_over_80ms_without']}"
        )
    write_results("widget", {"runs": rows})


if __name__ == "__main__":
    main()
