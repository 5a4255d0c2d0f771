"""The layers of one run in a viewer, kept up to date while the run goes on (main thread only).

They are created before the run starts (napari's layer creation and the first draw of a new layer are the
slowest things the interface does; the click on Run pays for them once), then only refreshed: the labels and
probabilities re-read their visible tiles from the run directory, and the detections are updated in one batch
per refresh. Refreshes are spaced so that they take a small share of the main thread, however many detections
accumulate.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

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

    def refresh(self) -> None:
        """Show what the run has written so far."""
        started = time.perf_counter()
        if self._parts:
            self._table = DetectionTable.concatenate([self._table, *self._parts])
            self._parts = []
            self._show_points()
        for role in ("labels", "probabilities"):
            layer = self._layer(role)
            if layer is not None:
                layer.refresh()
        self._last_refresh = time.monotonic()
        self._refresh_cost = time.perf_counter() - started

    def finish(self) -> None:
        """The run has ended: show the merged detections (duplicates across region borders removed)."""
        self._parts = []
        self._table = detections_table(self.run_dir)
        self._show_points()
        self.refresh()

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
        for layer in self.layers.values():
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)

    # -- internals ----------------------------------------------------------------------------------------

    def _layer(self, role: str):
        layer = self.layers.get(role)
        return layer if layer is not None and layer in self.viewer.layers else None

    def _show_points(self) -> None:
        """Replace the detections in one batch: every property is set with the layer's events held, then the
        layer is refreshed once (setting them one by one redraws the layer five times)."""
        points = self._layer("points")
        if points is None:
            return
        props = points_properties(self._table, self.spec, self.threshold)
        with points.events.blocker_all():
            points.data = props["data"]
            points.features = props["features"]
            if len(self._table):
                points.face_color = props["face_color"]
                points.size = props["size"]
                points.shown = props["shown"]
        points.refresh()
