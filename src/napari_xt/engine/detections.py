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

    rank = np.empty(len(table), dtype=np.int64)
    rank[np.argsort(-table.score, kind="stable")] = np.arange(len(table))
    radius = np.maximum(min_distance, size_fraction * table.size)
    points = np.stack([table.y, table.x], axis=1)
    # only detections within the largest radius of each other can interact: a few pairs along region borders,
    # however many detections the image has (a slide can have millions)
    pairs = cKDTree(points).query_pairs(float(radius.max()), output_type="ndarray")
    if len(pairs) == 0:
        return table
    first, second = pairs[:, 0], pairs[:, 1]
    swap = rank[first] > rank[second]
    higher, lower = np.where(swap, second, first), np.where(swap, first, second)
    close = np.hypot(*(points[higher] - points[lower]).T) <= radius[higher]
    higher, lower = higher[close], lower[close]
    # greedy by score: a detection that is kept removes the lower-scored ones within its radius; pairs in the
    # order of their higher detection, so whether that one was kept is settled before its pairs are read
    by_rank = np.argsort(rank[higher], kind="stable")
    removed = np.zeros(len(table), dtype=bool)
    for h, low in zip(higher[by_rank].tolist(), lower[by_rank].tolist(), strict=True):
        if not removed[h]:
            removed[low] = True
    return table.select(np.flatnonzero(~removed))
