"""Decoding with neighbours: which regions a batch needs besides its own, and where their features wait.

A region is decoded with its 3 × 3 neighbourhood (the model's halo of neighbours' features and the context
field across region borders), so its result is a function of its own and its neighbours' pixels. Which
neighbours count is fixed by the image and the run's scope, never by what happens to be in memory: a
neighbour is *present* when it is a foreground region of the run's neighbour grid (the context grid with a
context encoder; the ROI with a ring of one region around it without). Absent neighbours decode as the image
edge does.

``FeaturePool`` is the short-term memory of pass 2: features of recently used regions that the keeper does not
hold in memory (loaded from its disk, or encoded ahead for the next row), least recently used first out, in
what the keeper's memory budget leaves free, so that the two together stay within that one budget.
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
    """Features of recently used regions beside a ``cache.FeatureKeeper``'s memory, least recently used out
    first. Its budget is what the keeper's memory budget leaves free (the sums and features the keeper holds in
    memory come first); the region put last always stays, whatever its size."""

    def __init__(self, keeper):
        self.keeper = keeper
        self.items: OrderedDict[int, list] = OrderedDict()
        self.used = 0

    @property
    def budget(self) -> int:
        return max(0, self.keeper.memory_budget - self.keeper.memory_used)

    def get(self, k: int) -> list | None:
        features = self.items.get(k)
        if features is not None:
            self.items.move_to_end(k)
        return features

    def put(self, k: int, features: list) -> None:
        self.drop(k)
        self.items[k] = features
        self.used += feature_bytes(features)
        self.fit()

    def fit(self) -> None:
        """Let the least recently used go until the pool is within its budget (after the keeper has grown)."""
        while self.used > self.budget and len(self.items) > 1:
            _, old = self.items.popitem(last=False)
            self.used -= feature_bytes(old)

    def drop(self, k: int) -> None:
        old = self.items.pop(k, None)
        if old is not None:
            self.used -= feature_bytes(old)


STRIP = 8
"""Columns of regions in one of pass 2's strips (``strip_order``)."""


def strip_order(positions: np.ndarray, width: int = STRIP) -> np.ndarray:
    """``positions`` ``(N, 2)`` in pass 2's order: strips of ``width`` columns, left to right, each row-major.

    A region's features are needed by the batches of three strip rows, so a batch shares its neighbours with
    the batch before it and a blended region is complete two batches after its own, however wide the image:
    row-major over a whole row, both waits would grow with the image's width."""
    positions = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    return positions[np.lexsort((positions[:, 1], positions[:, 0], positions[:, 1] // width))]


def decode_set(targets: np.ndarray, present: Present, blends: bool) -> np.ndarray:
    """The regions pass 2 decodes, in ``strip_order``: the ``targets`` it writes and, when outputs are blended,
    their present neighbours too (a region's blend needs its neighbours' windows: those of an ROI's ring, or of
    regions a resumed run has already written, are decoded again and not written)."""
    targets = np.asarray(targets, dtype=np.int64).reshape(-1, 2)
    if not blends:
        return strip_order(targets)
    keys = {key(r, c) for r, c in targets}
    extra = {
        (int(r + dr), int(c + dc))
        for r, c in targets
        for dr, dc in OFFSETS
        if (r + dr, c + dc) in present and key(r + dr, c + dc) not in keys
    }
    return strip_order(np.concatenate([targets, np.array(sorted(extra), dtype=np.int64).reshape(-1, 2)]))


class Blender:
    """Blends pass 2's decoded windows into region outputs (``tokenization.window_share``) as they come.

    A target region is complete once its own window and those of all its present neighbours have been added:
    in ``strip_order``, two batches after its own, or a strip later for a strip's last column. Until then its
    sums wait in the run's ``FeatureKeeper`` beside the features (memory within its budget, then disk; those
    waiting long go to disk at once), so that waiting regions cost no more memory than their features do.
    """

    SUMS = 1 << 62  # the keeper's keys for sums, apart from the features' ``key(row, col)``

    NEAR = 2
    """Sums complete within this many batches wait in the keeper's memory when it has room; the others (a
    strip's last column waits for the next strip) go to its disk, so that they leave the memory to the pool."""

    def __init__(self, targets: np.ndarray, present: Present, halos: dict[str, int], keeper, batches=None):
        """``halos``: cells beyond the region in each output's windows (``XTModel.output_halos``), by the outputs'
        first name (``segmentation``, ``detection``); ``keeper``: a ``cache.FeatureKeeper`` (where the sums wait);
        ``batches``: the positions of each ``add`` to come, in order, if known (then each target's sums wait
        where its wait suits)."""
        self.halos, self.keeper = halos, keeper
        self.step = 0  # the ``add`` calls so far
        step_of = {key(r, c): step for step, batch in enumerate(batches or ()) for r, c in batch}
        self.completes: dict[int, int] = {}  # target → the ``add`` that completes it (when the batches are known)
        self.waiting = {}  # target → windows still to come
        self.patterns: dict[int, tuple[bool, ...]] = {}  # target → which of its neighbourhood is present
        for r, c in np.asarray(targets).reshape(-1, 2):
            pattern = tuple(bool((dr == 0 and dc == 0) or (r + dr, c + dc) in present) for dr, dc in OFFSETS)
            self.waiting[key(r, c)] = sum(pattern)
            self.patterns[key(r, c)] = pattern
            if step_of:
                self.completes[key(r, c)] = max(step_of.get(key(r + dr, c + dc), -1) for dr, dc in OFFSETS)
        self.started: set[int] = set()  # targets with sums waiting
        self.held: dict[int, list] = {}  # sums the keeper had no room for
        self.groups: list[tuple[list[str], list[int], int, list]] = []  # (names, channels, halo, layouts): ``_grouped``
        self.weight_sums: dict[tuple, object] = {}  # (halo, size, pattern) → what the blend divides by

    def add(self, positions: np.ndarray, windows: dict) -> tuple[np.ndarray, dict | None]:
        """Add the windows (``XTModel.decode_neighbourhoods`` uncropped) of regions at ``positions`` ``(B, 2)``;
        returns the targets now complete ``(N, 2)`` and their blended outputs (as ``XTModel.blend`` gives, N rows)."""
        import torch

        grouped = self._grouped(_flatten(windows))
        updates: dict[int, list] = {}  # target → (window, offset index) of its shares, in the neighbourhood's order
        for k, (dr, dc) in enumerate(OFFSETS):
            for i, (r, c) in enumerate(positions):
                target = key(r - dr, c - dc)
                if target in self.waiting:
                    updates.setdefault(target, []).append((i, k))
        complete, outputs = [], [[] for _ in self.groups]
        for target, shares in updates.items():
            sums = self._take(target, grouped)
            for total, values, (*_, layouts) in zip(sums, grouped, self.groups):
                for i, k in shares:  # weighted and added in one pass, no temporary the size of a window
                    (source_rows, source_cols), (rows, cols), weight = layouts[k]
                    total[:, rows, cols].addcmul_(values[i, :, source_rows, source_cols], weight)
            self.waiting[target] -= len(shares)
            if self.waiting[target] > 0:
                self._keep(target, sums)
                continue
            del self.waiting[target]
            self.started.discard(target)
            complete.append(target)
            pattern = self.patterns.pop(target)
            for total, (_, _, halo, _), blended in zip(sums, self.groups, outputs):
                blended.append(total.div_(self._weight_sum(halo, total, pattern)))
        self.step += 1
        if not complete:
            return np.zeros((0, 2), dtype=np.int64), None
        done = np.array([(t >> 32, t & 0xFFFFFFFF) for t in complete], dtype=np.int64)
        flat = {}
        for (names, channels, _, _), blended in zip(self.groups, outputs):
            flat.update(zip(names, torch.stack(blended).split(channels, dim=1)))
        return done, _unflatten(flat)

    @property
    def pending(self) -> int:
        """Targets with sums waiting for their neighbours."""
        return len(self.started)

    def _grouped(self, flat: dict) -> list:
        """The windows of outputs with the same halo and window size, one tensor per group (their channels side
        by side: the detection heads blend as one), so that a share is one operation for all of them. The groups
        and their ``tokenization.share_layout`` per neighbourhood offset are made at the first batch."""
        import torch

        from napari_xt.model.tokenization import share_layout

        if not self.groups:
            by_shape: dict[tuple, list[str]] = {}
            for name, values in flat.items():
                halo = self.halos[name.split("/", 1)[0]]
                by_shape.setdefault((halo, values.shape[-1], values.dtype, values.device), []).append(name)
            for (halo, window, dtype, device), names in by_shape.items():
                layouts = [
                    (source, place, weight.to(dtype))
                    for source, place, weight in (share_layout(window - 2 * halo, halo, o, device) for o in NEIGHBOURS)
                ]
                self.groups.append((names, [flat[name].shape[1] for name in names], halo, layouts))
        return [
            torch.cat([flat[name] for name in names], 1) if len(names) > 1 else flat[names[0]]
            for names, *_ in self.groups
        ]

    def _weight_sum(self, halo: int, total, pattern: tuple[bool, ...]):
        """What the target's weighted sum of one group divides by: fixed by which neighbours are present, so it
        is computed once per pattern, never summed nor kept beside the sums."""
        from napari_xt.model.tokenization import blend_weight_sum

        cache_key = (halo, total.shape[-1], pattern)
        if cache_key not in self.weight_sums:
            weight = blend_weight_sum(total.shape[-1], halo, pattern, total.device)
            self.weight_sums[cache_key] = weight.to(total.dtype)
        return self.weight_sums[cache_key]

    def _take(self, target: int, grouped: list) -> list:
        """The target's weighted sums, one per group (new ones: zeros), out of where they waited."""
        if target not in self.started:
            self.started.add(target)
            sums = []
            for values, (_, _, halo, _) in zip(grouped, self.groups):
                size = values.shape[-1] - 2 * halo
                sums.append(values.new_zeros(values.shape[1], size, size))
            return sums
        sums = self.held.pop(target, None)
        if sums is None:
            sums = self.keeper.pop(self.SUMS | target)
        return sums

    def _keep(self, target: int, sums: list) -> None:
        near = self.completes.get(target, self.step) - self.step <= self.NEAR
        if not self.keeper.put(self.SUMS | target, sums, in_memory=near):
            self.held[target] = sums


def _flatten(outputs: dict, prefix: str = "") -> dict:
    flat = {}
    for name, value in outputs.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{name}/"))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def _unflatten(flat: dict) -> dict:
    nested: dict = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        place = nested
        for parent in parents:
            place = place.setdefault(parent, {})
        place[leaf] = value
    return nested
