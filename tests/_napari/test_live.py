"""LiveRun: a refresh is cut into steps on separate turns of the event loop, and the canvas repaints once, after
the last of them."""

import time

import numpy as np
import pytest

from napari_xt._napari.live import LiveRun
from napari_xt.engine.detections import DetectionTable

pytestmark = pytest.mark.gui

SPEC = {
    "image_shape": [512, 512],
    "pixel_size": None,
    "unit": None,
    "layer_scale": [1.0, 1.0],
    "layer_translate": [0.0, 0.0],
    "region_level0": [64, 64],
    "segmentation_classes": ["background", "land"],
    "detection_classes": ["vessel"],
    "colours": {"land": "#00ff00", "vessel": "#ff0000"},
    "rois": [[0, 0, 512, 512]],
}


def _table(n: int, seed: int = 0) -> DetectionTable:
    rng = np.random.default_rng(seed)
    return DetectionTable(
        rng.uniform(0, 512, n).astype(np.float32),
        rng.uniform(0, 512, n).astype(np.float32),
        np.zeros(n, np.int16),
        rng.uniform(0.6, 1.0, n).astype(np.float32),
        np.full(n, 8.0, np.float32),
    )


@pytest.fixture
def live(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((512, 512), np.float32), name="scene")
    return LiveRun(viewer, tmp_path / "run.xt.zarr", SPEC, threshold=0.5)


def _canvas(live):
    return live.viewer.window._qt_viewer.canvas.native


def test_a_refresh_runs_in_steps_with_the_interface_answering_between_them(live, qtbot):
    from qtpy.QtCore import QEvent, QObject, QTimer

    class Paints(QObject):
        def eventFilter(self, obj, event):
            if event.type() == QEvent.Type.Paint:
                painted.append(time.perf_counter())
            return False

    qtbot.wait(200)  # the first draw of the new layers is over
    painted = []
    paints = Paints()
    _canvas(live).installEventFilter(paints)
    ticks = []
    probe = QTimer()
    probe.setInterval(0)
    probe.timeout.connect(lambda: ticks.append(time.perf_counter()))
    probe.start()
    live.add_detections(_table(300))
    live.refresh()
    assert len(live.layers["points"].data) == 0  # nothing done in the call itself
    assert not _canvas(live).updatesEnabled()  # the canvas waits for the whole refresh
    qtbot.waitUntil(lambda: not live.refreshing, timeout=5_000)
    probe.stop()
    assert len(live.layers["points"].data) == 300
    assert _canvas(live).updatesEnabled()
    steps = {name: (a, b) for name, a, b in live.step_times}
    assert list(steps) == ["points", "labels", "probabilities", "repaint", "drawn"]
    # the event loop turned between the detections and the labels, and again before the repaint was let through
    assert any(steps["points"][1] <= t <= steps["labels"][0] for t in ticks)
    assert any(steps["labels"][1] <= t <= steps["repaint"][0] for t in ticks)
    qtbot.waitUntil(lambda: len(painted) > 0, timeout=2_000)
    assert min(painted) > steps["repaint"][0]  # no repaint before the whole refresh was done
    _canvas(live).removeEventFilter(paints)


def test_the_repaint_counts_towards_the_main_thread_share_of_refreshing(live, qtbot):
    """A slow repaint (software OpenGL, many points) spaces the refreshes out as a slow update does."""
    from qtpy.QtCore import QEvent, QObject

    class SlowPaints(QObject):
        def eventFilter(self, obj, event):
            if event.type() == QEvent.Type.Paint:
                time.sleep(0.15)
            return False

    qtbot.wait(200)
    slow = SlowPaints()
    _canvas(live).installEventFilter(slow)
    live.add_detections(_table(10))
    live.refresh()
    qtbot.waitUntil(lambda: not live.refreshing, timeout=5_000)
    _canvas(live).removeEventFilter(slow)
    time.sleep(0.5)  # more than the shortest interval (0.4 s), less than 0.15 s / 20%
    assert not live.refresh_due()
    qtbot.waitUntil(live.refresh_due, timeout=3_000)  # spaced, not stopped


def test_detections_that_arrive_during_a_refresh_are_shown_by_one_more(live, qtbot):
    live.add_detections(_table(100, seed=1))
    live.refresh()
    qtbot.waitUntil(lambda: len(live.step_times) >= 1)  # its detections step is done
    live.add_detections(_table(50, seed=2))
    live.refresh()  # under way: one more follows
    assert live.refreshing
    qtbot.waitUntil(lambda: not live.refreshing, timeout=5_000)
    assert len(live.layers["points"].data) == 150
    assert [name for name, _, _ in live.step_times].count("repaint") == 2


def test_removing_the_layers_mid_refresh_lets_the_canvas_repaint_again(live, qtbot):
    live.add_detections(_table(10))
    live.refresh()
    assert not _canvas(live).updatesEnabled()
    live.remove()
    assert _canvas(live).updatesEnabled() and not live.refreshing
    assert not any(layer in live.viewer.layers for layer in live.layers.values())
    qtbot.wait(50)
    assert len(live.step_times) == 0  # the pending steps were dropped
