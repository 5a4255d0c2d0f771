"""The demo behind ``napari-xt demo``: open a demo world in napari, run xT with the shipped checkpoint on the
visible region through the dock widget, and (without a display, or when asked) save a screenshot."""

from __future__ import annotations

import os
import time
from pathlib import Path

from napari_xt.data.worlds import synthetic_scene

VIEW_WIDTH = {"sar": 4096.0, "slide": 3072.0}  # level-0 pixels across the canvas
VIEW_CENTRE = {"sar": (25544.0, 24697.0), "slide": (32610.0, 33860.0)}
"""Level-0 centres of the demo views, found from the worlds' ground truth and checked with a run of the shipped
``*_xl`` checkpoints: a coast with open-sea and near-shore vessels (64 and 45 in view; the model finds 52 and
60); stroma, invasive margin and tumour with clusters of both kinds (14 and 44; found 24 and 43)."""


def show_demo_world(scene: str = "sar"):
    """A viewer showing the demo world (50,000² SAR or 65,536² slide) on a view with every class of the world,
    with the Run xT widget docked; returns ``(viewer, widget, world)``. Needs a display (or Xvfb)."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_xt._napari._napari_compat import main_window
    from napari_xt._napari.sample_data import SAMPLE_SEED, world_layer_data
    from napari_xt._napari.widget import XTWidget, camera

    world = synthetic_scene(scene, 50_000 if scene == "sar" else 65_536, SAMPLE_SEED)
    data, kwargs, _ = world_layer_data(scene, world.height, SAMPLE_SEED, f"xT synthetic {scene}")
    viewer = napari.Viewer(show=True, title="napari-xt demo")
    window = main_window(viewer)
    if window is not None:
        window.resize(1500, 950)
    viewer.add_image(data, **kwargs)
    widget = XTWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Run xT", area="right")
    QApplication.processEvents()
    y, x = VIEW_CENTRE[scene]
    s0 = world.pixel_size
    camera(viewer).center = (y * s0, x * s0)
    camera(viewer).zoom = max(viewer.canvas.size[1], 400) / (VIEW_WIDTH[scene] * s0)
    return viewer, widget, world


def run_demo(scene: str = "sar", screenshot: Path | None = None, run: bool = True, timeout_s: float = 900) -> int:
    """Open the demo scene; run xT on the visible region; with ``screenshot`` (or no display) save a PNG."""
    from napari_xt._napari.headless import display_available

    headless = screenshot is not None or not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    screenshot = screenshot or (Path("napari-xt-demo.png") if headless else None)
    with display_available():
        import napari
        from qtpy.QtWidgets import QApplication

        from napari_xt._napari import checkpoints

        viewer, widget, _world = show_demo_world(scene)
        checkpoint = checkpoints.demo_checkpoint(scene, "xl")
        if run and checkpoint is None:
            print("napari-xt demo: no shipped checkpoint found; showing the scene only")
        if run and checkpoint is not None:
            widget.set_checkpoint(checkpoint)
            widget.region.value = "visible region"
            started = time.monotonic()
            widget.start()
            while widget.running and time.monotonic() - started < timeout_s:
                QApplication.processEvents()
                time.sleep(0.02)
            print(f"napari-xt demo: {widget.status.text()}")
        if not headless:
            napari.run()
            return 0
        for _ in range(40):  # let napari load the visible tiles
            QApplication.processEvents()
            time.sleep(0.05)
        viewer.screenshot(str(screenshot), canvas_only=False)
        print(f"napari-xt demo: screenshot saved to {screenshot}")
        widget.stop()
        viewer.close()
    return 0
