"""Detection tables in level-0 pixels, and the merge that reports an object on a region border once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLUMNS = ("y", "x", "label", "score", "size")


@dataclass
class DetectionTable:
    """Point detections: centre ``(y, x)`` in level-0 pixels, class index, score in [0, 1], size in level-0 px."""

    y: np.ndarray
    x: np.ndarray
    label: np.ndarray
    score: np.ndarray
    size: np.ndarray

    @classmethod
    def empty(cls) -> DetectionTable:
        return cls(*(np.zeros(0, dtype=np.float64) for _ in range(2)), np.zeros(0, np.int64), np.zeros(0), np.zeros(0))

    @classmethod
    def concatenate(cls, tables: list[DetectionTable]) -> DetectionTable:
        if not tables:
            return cls.empty()
        return cls(*(np.concatenate([getattr(t, c) for t in tables]) for c in COLUMNS))

    def __len__(self) -> int:
        return len(self.y)

    def select(self, keep: np.ndarray) -> DetectionTable:
        return DetectionTable(*(getattr(self, c)[keep] for c in COLUMNS))

    def above(self, threshold: float) -> DetectionTable:
        return self.select(self.score >= threshold)

    def sorted(self) -> DetectionTable:
        """Deterministic order: by y, then x."""
        return self.select(np.lexsort((self.x, self.y)))


def merge_duplicates(table: DetectionTable, min_distance: float = 4.0, size_fraction: float = 0.5) -> DetectionTable:
    """Keep one detection per object: greedily by score, drop detections closer to a kept one than
    ``max(min_distance, size_fraction × its size)`` level-0 pixels.

    Regions are decoded independently, so an object cut by a region border can fire in both regions; this
    reports it once. Detections of different classes count as one object (the higher score wins).
    """
    if len(table) < 2:
        return table
    from scipy.spatial import cKDTree

    order = np.argsort(-table.score, kind="stable")
    points = np.stack([table.y, table.x], axis=1)
    tree = cKDTree(points)
    radius = np.maximum(min_distance, size_fraction * table.size)
    removed = np.zeros(len(table), dtype=bool)
    keep = []
    for index in order:
        if removed[index]:
            continue
        keep.append(index)
        for other in tree.query_ball_point(points[index], radius[index]):
            if other != index:
                removed[other] = True
    return table.select(np.sort(np.asarray(keep)))
