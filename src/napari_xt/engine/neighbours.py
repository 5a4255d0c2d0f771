"""Decoding with neighbours: which regions a batch needs besides its own, and where their features wait.

A region is decoded with its 3 × 3 neighbourhood (the model's halo of neighbours' features and the context
field across region borders), so its result is a function of its own and its neighbours' pixels. Which
neighbours count is fixed by the image and the run's scope, never by what happens to be in memory: a
neighbour is *present* when it is a foreground region of the run's neighbour grid (the context grid with a
context encoder; the ROI with a ring of one region around it without). Absent neighbours decode as the image
edge does.

``FeaturePool`` is the short-term memory of pass 2: features of recently used regions (kept from pass 1,
loaded from disk or encoded ahead for the next row), least recently used first out, within a byte budget.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from napari_xt.engine.cache import feature_bytes
from napari_xt.model.tokenization import NEIGHBOURS

OFFSETS = np.array(NEIGHBOURS, dtype=np.int64)


def key(row: int, col: int) -> int:
    """One integer per grid position (the keeper's and the pool's key)."""
    return (int(row) << 32) | int(col)


class Present:
    """The regions that count as neighbours: global positions ``(N, 2)``."""

    def __init__(self, positions: np.ndarray):
        self.keys = {key(r, c) for r, c in positions}

    def __contains__(self, position) -> bool:
        return key(*position) in self.keys


def neighbourhood(batch: np.ndarray, present: Present) -> tuple[np.ndarray, np.ndarray]:
    """The regions a batch is decoded with and their table.

    Returns:
        ``local`` ``(M, 2)``: the batch's positions first, in order, then their present neighbours (each once);
        ``table`` ``(N, 9)`` int64: each batch region's neighbourhood as indices into ``local``, -1 if absent.
    """
    batch = np.asarray(batch, dtype=np.int64).reshape(-1, 2)
    index = {key(r, c): i for i, (r, c) in enumerate(batch)}
    local = [tuple(p) for p in batch]
    table = np.full((len(batch), len(OFFSETS)), -1, dtype=np.int64)
    for i, (r, c) in enumerate(batch):
        for k, (dr, dc) in enumerate(OFFSETS):
            position = (int(r + dr), int(c + dc))
            k_id = key(*position)
            if k_id in index:
                table[i, k] = index[k_id]
            elif (dr or dc) and position in present:
                index[k_id] = len(local)
                local.append(position)
                table[i, k] = index[k_id]
    return np.array(local, dtype=np.int64).reshape(-1, 2), table


class FeaturePool:
    """Features of recently used regions in memory, least recently used out first beyond ``budget`` bytes."""

    def __init__(self, budget: int):
        self.budget = budget
        self.items: OrderedDict[int, list] = OrderedDict()
        self.used = 0

    def get(self, k: int) -> list | None:
        features = self.items.get(k)
        if features is not None:
            self.items.move_to_end(k)
        return features

    def put(self, k: int, features: list) -> None:
        self.drop(k)
        self.items[k] = features
        self.used += feature_bytes(features)
        while self.used > self.budget and len(self.items) > 1:
            _, old = self.items.popitem(last=False)
            self.used -= feature_bytes(old)

    def drop(self, k: int) -> None:
        old = self.items.pop(k, None)
        if old is not None:
            self.used -= feature_bytes(old)
