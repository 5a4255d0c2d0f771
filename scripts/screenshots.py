"""The README's pictures, made by the demo's own code under Xvfb (no display needed):

- ``docs/demo.png`` and ``docs/demo-slide.png``: the viewer with Run xT after a run on the visible region of the
  50,000² SAR scene and of the 65,536² slide;
- ``docs/live-run.png``: a strip of the canvas while a SAR run goes (at about a quarter, half and all of its
  regions), the results streaming in.

    .venv/bin/python scripts/screenshots.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _pump(seconds: float) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def shoot(scene: str, strip: bool) -> None:
    from qtpy.QtWidgets import QApplication

    from napari_xt._napari import checkpoints
    from napari_xt._napari.demo import show_demo_world

    viewer, widget, _world = show_demo_world(scene)
    widget.set_checkpoint(checkpoints.demo_checkpoint(scene, "xl"))
    widget.region.value = "visible region"
    _pump(2.0)
    frames, wanted = [], [0.25, 0.5]
    widget.start()
    while widget.running:
        QApplication.processEvents()
        time.sleep(0.01)
        bar = widget._progress
        if strip and wanted and bar is not None and bar.total and bar.n / bar.total >= wanted[0]:
            wanted.pop(0)
            _pump(0.6)  # the refresh under way is drawn
            frames.append(viewer.screenshot(canvas_only=True))
    _pump(2.0)
    name = "demo.png" if scene == "sar" else f"demo-{scene}.png"
    viewer.screenshot(str(DOCS / name), canvas_only=False)
    print(f"wrote docs/{name}: {widget.status.text()}")
    if strip:
        frames.append(viewer.screenshot(canvas_only=True))
        height = min(frame.shape[0] for frame in frames)
        gap = np.full((height, 8, frames[0].shape[2]), 255, np.uint8)
        parts = [part for frame in frames for part in (frame[:height], gap)][:-1]
        from PIL import Image

        Image.fromarray(np.concatenate(parts, axis=1)).save(DOCS / "live-run.png", optimize=True)
        print(f"wrote docs/live-run.png: {len(frames)} moments of the run")
    widget.stop()
    viewer.close()


def main() -> None:
    os.environ["NAPARI_XT_CACHE"] = tempfile.mkdtemp(prefix="napari-xt-shots-")  # fresh runs, not replays
    os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="napari-xt-config-")  # the widgets' defaults
    from napari_xt._napari.headless import display_available

    with display_available():
        shoot("sar", strip=True)
        shoot("slide", strip=False)


if __name__ == "__main__":
    sys.exit(main())
