"""The read side of a run directory: its spec, finished regions and detections, without the write side's lock.

Viewers (the napari layers, a reopened run) read a run that may still be being written: a region's detection
lines count only once its ``done`` flag is set, which the writer sets last.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zarr

from napari_xt.engine.detections import DetectionTable

PARTS_COLUMNS = 7  # row, col, y, x, label, score, size


def run_attributes(path: str | Path) -> dict:
    """The ``napari_xt`` attributes of a run directory, or ``{}`` when ``path`` holds none (read without zarr,
    so that a damaged directory never raises here)."""
    meta = Path(path) / "zarr.json"
    try:
        return json.loads(meta.read_text()).get("attributes", {}).get("napari_xt", {}) or {}
    except (OSError, ValueError, AttributeError):
        return {}


def parse_parts(text: str, done: np.ndarray) -> np.ndarray:
    """Rows ``(N, 7)`` of a ``parts.csv`` whose regions are marked ``done`` (a torn last line is skipped)."""
    lines = [line for line in text.splitlines() if line.count(",") == PARTS_COLUMNS - 1]
    if not lines:
        return np.zeros((0, PARTS_COLUMNS))
    rows = np.array([[float(v) for v in line.split(",")] for line in lines])
    return rows[done[rows[:, 0].astype(int), rows[:, 1].astype(int)]]


def table_of_parts(rows: np.ndarray) -> DetectionTable:
    if rows.size == 0:
        return DetectionTable.empty()
    return DetectionTable(rows[:, 2], rows[:, 3], rows[:, 4].astype(np.int64), rows[:, 5], rows[:, 6])


class RunReader:
    """Read a run directory (finished or under way)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.group = zarr.open_group(str(self.path), mode="r")

    @property
    def spec(self) -> dict:
        return dict(self.group.attrs["napari_xt"])

    @property
    def has_probabilities(self) -> bool:
        return "probabilities" in self.group

    def done_mask(self) -> np.ndarray:
        return np.asarray(self.group["regions/done"][:])

    def detections(self) -> DetectionTable:
        """The merged table of a finished run, or what its finished regions have produced so far."""
        if "detections/y" in self.group:
            d = self.group["detections"]
            return DetectionTable(*(np.asarray(d[c][:]) for c in ("y", "x", "label", "score", "size")))
        parts = self.path / "detections" / "parts.csv"
        if not parts.exists():
            return DetectionTable.empty()
        return table_of_parts(parse_parts(parts.read_text(), self.done_mask()))
