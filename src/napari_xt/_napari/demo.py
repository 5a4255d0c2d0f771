"""The demo behind ``napari-xt demo``: open a synthetic scene, zoom to something worth seeing, screenshot."""

from __future__ import annotations

import os
from pathlib import Path

from napari_xt.data.synthetic import SarScene, SlideScene


def _focus(scene) -> tuple[float, float, float]:
    """Level-0 centre ``(y, x)`` of the first object near the scene's middle, and a view width in pixels."""
    h, w = scene.height, scene.width
    objects = scene.objects((h // 2 - 4096, w // 2 - 4096, h // 2 + 4096, w // 2 + 4096))
    if len(objects):
        return float(objects.y[0]), float(objects.x[0]), 2400.0
    return h / 2, w / 2, 2400.0


def run_demo(scene: str = "slide", screenshot: Path | None = None) -> int:
    """Open the demo scene in napari; with ``screenshot`` (or no display) save a PNG and close."""
    from napari_xt._napari.headless import display_available

    headless = screenshot is not None or not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    screenshot = screenshot or (Path("napari-xt-demo.png") if headless else None)
    with display_available():
        import napari

        from napari_xt._napari.layers import image_layer_data

        model = SlideScene() if scene == "slide" else SarScene()
        data, kwargs, _ = image_layer_data(model.pyramid(), name=f"xT synthetic {model.name}")
        viewer = napari.Viewer(show=True, title="napari-xt demo")
        layer = viewer.add_image(data, **kwargs)
        y, x, width = _focus(model)
        s0 = model.pixel_size
        viewer.camera.center = (y * s0, x * s0)
        viewer.camera.zoom = _zoom_for(viewer, width * s0)
        if not headless:
            napari.run()
            return 0
        _wait_for_data(viewer, layer)
        viewer.screenshot(str(screenshot), canvas_only=False)
        print(f"napari-xt demo: screenshot saved to {screenshot}")
        viewer.close()
    return 0


def _zoom_for(viewer, width_world: float) -> float:
    """Camera zoom (screen pixels per world unit) that fits ``width_world`` across the canvas."""
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()
    canvas_width = viewer.canvas.size[1]
    return max(canvas_width, 400) / width_world


def _wait_for_data(viewer, layer, timeout_s: float = 60.0) -> None:
    """Let napari load the visible tiles of a multiscale layer before a screenshot."""
    import time

    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        QApplication.processEvents()
        if getattr(layer, "loaded", True):
            break
        time.sleep(0.05)
    for _ in range(5):
        QApplication.processEvents()
        time.sleep(0.05)
