"""The layers of one run in a viewer, kept up to date while the run goes on (main thread only).

They are created before the run starts (napari's layer creation and the first draw of a new layer are the
slowest things the interface does; the click on Run pays for them once), then only refreshed: the labels and
probabilities re-read their visible tiles from the run directory, and the detections are updated in one batch
per refresh. Refreshes are spaced so that they take a small share of the main thread, the repaint they cause
included, however many detections accumulate.

A refresh is cut into steps, one per turn of the event loop (detections, labels, probabilities, then the
repaint, then a last step that times it), and the canvas does not repaint until the last data step is done.
Qt delivers a repaint that a step asks for before any timer or input that is already late, so a refresh run in
one piece and the repaint behind it would block the interface for their sum; cut this way, the interface gets a
turn between the steps and the longest block is the longest single step or the repaint.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import numpy as np
from qtpy.QtCore import QTimer

from napari_xt._napari._napari_compat import canvas_widget, refreshes_held
from napari_xt._napari.run_layers import detections_table, layer_data, points_properties
from napari_xt.engine.detections import DetectionTable

MIN_REFRESH_INTERVAL_S = 0.4
MAX_MAIN_THREAD_SHARE = 0.2  # refreshing may take at most this share of the main thread's time


class LiveRun:
    """Labels, detections, ROI and (optionally) probability layers of the run writing ``run_dir``.

    Args:
        viewer: the napari viewer.
        run_dir: the run directory (it may not exist yet).
        spec: the run's display spec (``engine.runner.display_spec`` plus ``rois``).
        threshold: detection score threshold for display.
        probabilities: also show the class probabilities.
        region_grid: also draw the borders of the analysed regions in the ROI layer.
    """

    def __init__(
        self,
        viewer,
        run_dir: Path,
        spec: dict,
        threshold: float,
        probabilities: bool = False,
        region_grid: bool = False,
    ):
        self.viewer, self.run_dir, self.spec, self.threshold = viewer, Path(run_dir), spec, threshold
        self._parts: list[DetectionTable] = []
        self._table = DetectionTable.empty()
        self._last_refresh = 0.0
        self._refresh_cost = 0.0
        self._cost = 0.0  # of the refresh under way, so far
        self._step_ended = 0.0  # perf_counter at the end of the last step
        self._steps: list[str] = []  # what the refresh under way has left to do
        self._again = False  # asked for while one was under way: one more after it
        self._step_timer = QTimer()
        self._step_timer.setSingleShot(True)
        self._step_timer.setInterval(0)  # a timer, not a posted call: late timers and input run before it
        self._step_timer.timeout.connect(self._step)
        self._canvas = canvas_widget(viewer)
        # (step, perf_counter at its start, at its end) of the latest refresh steps, for benchmarks
        self.step_times: deque[tuple[str, float, float]] = deque(maxlen=100_000)
        builders = layer_data(run_dir, spec, self._table, threshold, probabilities, region_grid)
        self.layers = {
            role: getattr(viewer, f"add_{kind}")(data, **kwargs) for role, (data, kwargs, kind) in builders.items()
        }

    # -- during the run ---------------------------------------------------------------------------------------

    def add_detections(self, table: DetectionTable | None) -> None:
        if table is not None and len(table):
            self._parts.append(table)

    def refresh_due(self) -> bool:
        """True when enough time has passed since the last refresh (more, the longer refreshes take)."""
        interval = max(MIN_REFRESH_INTERVAL_S, self._refresh_cost / MAX_MAIN_THREAD_SHARE)
        return time.monotonic() - self._last_refresh >= interval

    @property
    def refreshing(self) -> bool:
        """True while a refresh is under way (its last steps have not run yet)."""
        return bool(self._steps)

    def refresh(self) -> None:
        """Show what the run has written so far: start a refresh (steps on the next turns of the event loop),
        or ask for one more when one is under way (new detections may have missed its detections step)."""
        if self._steps:
            self._again = True
            return
        self._steps = ["points", "labels", "probabilities", "repaint", "drawn"]
        self._cost = 0.0
        self._hold_repaints(True)
        self._step_timer.start()

    def finish(self) -> None:
        """The run has ended: show the merged detections (duplicates across region borders removed)."""
        self._parts = []
        self._table = detections_table(self.run_dir)
        self.refresh()

    def _step(self) -> None:
        """One step of the refresh under way, then the next one on a later turn."""
        if not self._steps:
            return
        step = self._steps.pop(0)
        started = time.perf_counter()
        try:
            if step == "points":
                if self._parts:
                    self._table = DetectionTable.concatenate([self._table, *self._parts])
                    self._parts = []
                self._show_points()
            elif step == "repaint":
                self._hold_repaints(False)  # the canvas repaints once, with everything new
            elif step == "drawn":
                # Qt has painted before this timer could fire: count the time since the last step as the
                # repaint's (it may include other events; refreshing then spaces a little more, never less)
                self._cost += started - self._step_ended
            else:
                layer = self._layer(step)
                if layer is not None:
                    layer.refresh()
        finally:
            ended = self._step_ended = time.perf_counter()
            self.step_times.append((step, started, ended))
            self._cost += ended - started
            if self._steps:
                self._step_timer.start()
            else:
                self._last_refresh = time.monotonic()
                self._refresh_cost = self._cost
                if self._again:
                    self._again = False
                    self.refresh()

    def _hold_repaints(self, hold: bool) -> None:
        if self._canvas is None:
            return
        try:
            self._canvas.setUpdatesEnabled(not hold)  # enabling again asks for one repaint
        except RuntimeError:  # the viewer has closed and taken its canvas with it
            self._canvas = None

    # -- display settings ---------------------------------------------------------------------------------

    @property
    def detections(self) -> DetectionTable:
        return DetectionTable.concatenate([self._table, *self._parts]) if self._parts else self._table

    def set_threshold(self, threshold: float) -> None:
        """Filter the shown detections by score (nothing is recomputed)."""
        self.threshold = threshold
        points = self._layer("points")
        if points is not None and len(points.data):
            points.shown = np.asarray(points.features["score"]) >= threshold

    def remove(self) -> None:
        self._step_timer.stop()
        self._steps, self._again = [], False
        self._hold_repaints(False)
        for layer in self.layers.values():
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)

    # -- internals ----------------------------------------------------------------------------------------

    def _layer(self, role: str):
        layer = self.layers.get(role)
        return layer if layer is not None and layer in self.viewer.layers else None

    def _show_points(self) -> None:
        """Replace the detections in one batch: every property is set with the layer's events and refreshes
        held, then the layer is refreshed once (napari refreshes the layer, its thumbnail included, in each
        setter)."""
        points = self._layer("points")
        if points is None:
            return
        props = points_properties(self._table, self.spec, self.threshold)
        with points.events.blocker_all(), refreshes_held(points):
            points.data = props["data"]
            points.features = props["features"]
            if len(self._table):
                points.face_color = props["face_color"]
                points.border_color = props["border_color"]
                points.size = props["size"]
                points.shown = props["shown"]
        points.refresh()
