"""Keeping encodings: per-run feature keeping (pass 1 → pass 2) and the region token cache across runs.

``FeatureKeeper`` holds each region's multi-scale features from pass 1 until pass 2 decodes it: in memory up to
a budget, then in the same dtype in one scratch file up to a disk budget; beyond both, pass 2 encodes again.

``TokenCache`` stores the pooled region tokens of pass 1 on disk, keyed by (image content signature, level,
resample, region size, weights hash), so that another ROI on the same pixels reuses them. It has a size cap
(least recently used entries go first), drops corrupt entries instead of failing, and is safe to delete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import zarr

from napari_xt.engine.grid import bounding_window, set_cells

logger = logging.getLogger(__name__)

_ALIGN = 64  # bytes: where each tensor of a kept region's file starts


def default_cache_dir() -> Path:
    base = os.environ.get("NAPARI_XT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "napari-xt")
    return Path(base).expanduser()


def feature_bytes(features: list) -> int:
    """Bytes of one region's multi-scale features (a list of tensors)."""
    return sum(f.numel() * f.element_size() for f in features)


class FeatureKeeper:
    """Features of regions between the two passes, in memory and then on disk, within budgets.

    On disk, all regions' tensors lie in one scratch file, in slots of their size that are used again once
    their region is dropped: creating, writing, reading and removing a file per region cost 4.4 ms for 1.2 MB
    of features on the dev VM, writing and reading a slot of an open file 1.4 ms.
    Features spilled to disk keep their dtype, so a region's result never depends on where its features waited.
    """

    PREFIX = "napari-xt-features-"

    def __init__(self, memory_budget: int, disk_budget: int, scratch: Path | None = None):
        self.memory_budget, self.disk_budget = memory_budget, disk_budget
        self.memory: dict[int, list] = {}
        self.on_disk: dict[int, tuple[int, int, int, list]] = {}  # index → (offset, slot bytes, size, layout)
        self.memory_used = self.disk_used = 0
        self.scratch = self.file = None
        self.file_end = 0  # bytes of the scratch file in slots
        self.free: dict[int, list[int]] = {}  # slot bytes → offsets of free slots of that size
        if disk_budget > 0:
            self.scratch = Path(tempfile.mkdtemp(prefix=f"{self.PREFIX}{os.getpid()}-", dir=scratch))

    @classmethod
    def clean_stale(cls, folder: Path) -> None:
        """Remove scratch folders left in ``folder`` by runs whose process is gone (killed, crashed)."""
        for entry in Path(folder).glob(f"{cls.PREFIX}*"):
            pid = entry.name[len(cls.PREFIX) :].split("-", 1)[0]
            if entry.is_dir() and (not pid.isdigit() or not _process_alive(int(pid))):
                shutil.rmtree(entry, ignore_errors=True)

    def put(self, index: int, features: list, in_memory: bool = True) -> bool:
        """Keep ``features`` (CPU tensors) of region ``index``, in memory if ``in_memory`` and there is room, else
        on disk; False when both budgets are spent (or the disk is full). On disk, a region's tensors' bytes lie
        as they are (any dtype) in one slot of the scratch file; their layout stays in memory."""
        size = feature_bytes(features)
        if in_memory and self.memory_used + size <= self.memory_budget:
            self.memory[index] = features
            self.memory_used += size
            return True
        if self.scratch is None or self.disk_used + size > self.disk_budget:
            return False
        buffers, layout, end = [], [], 0  # layout: (dtype, shape, offset in the slot) of each tensor
        for feature in features:
            feature = feature.contiguous()
            layout.append((feature.dtype, tuple(feature.shape), end))
            buffers.append(_bytes_of(feature))
            end += buffers[-1].nbytes
            if end % _ALIGN:  # the next tensor starts aligned
                buffers.append(bytes(-end % _ALIGN))
                end += len(buffers[-1])
        offset = self._slot(end)
        try:
            self.file.seek(offset)
            for buffer in buffers:
                self.file.write(buffer)
        except OSError as error:  # the scratch disk is full (or gone): keep no more there
            logger.warning(
                "napari-xt: cannot write kept features to %s (%s); encoding again instead", self.scratch, error
            )
            self.free.setdefault(end, []).append(offset)
            self.disk_budget = self.disk_used
            return False
        self.on_disk[index] = (offset, end, size, layout)
        self.disk_used += size
        return True

    def _slot(self, size: int) -> int:
        """The offset of a free slot of ``size`` bytes in the scratch file (opened the first time)."""
        if self.file is None:
            self.file = open(self.scratch / "features.bin", "w+b")  # noqa: SIM115 (open until ``close``)
        if self.free.get(size):
            return self.free[size].pop()
        self.file_end += size
        return self.file_end - size

    def has(self, index: int) -> bool:
        return index in self.memory or index in self.on_disk

    def in_memory(self, index: int) -> bool:
        return index in self.memory

    def get(self, index: int) -> list | None:
        """The features of region ``index`` (they stay kept), or None."""
        import torch

        if index in self.memory:
            return self.memory[index]
        if index in self.on_disk:
            offset, slot, _, layout = self.on_disk[index]
            data = bytearray(slot)
            self.file.seek(offset)
            if self.file.readinto(data) != slot:
                raise OSError(f"kept features of a region were cut short in {self.scratch}: was it deleted?")
            return [
                torch.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=start).reshape(shape)
                if math.prod(shape)
                else torch.empty(shape, dtype=dtype)
                for dtype, shape, start in layout
            ]
        return None

    def drop(self, index: int) -> None:
        """Let region ``index``'s features go (its disk slot is used again)."""
        if index in self.memory:
            features = self.memory.pop(index)
            self.memory_used -= feature_bytes(features)
        if index in self.on_disk:
            offset, slot, size, _ = self.on_disk.pop(index)
            self.free.setdefault(slot, []).append(offset)
            self.disk_used -= size

    def pop(self, index: int) -> list | None:
        features = self.get(index)
        self.drop(index)
        return features

    def close(self) -> None:
        self.memory.clear()
        self.on_disk.clear()
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _bytes_of(tensor) -> np.ndarray:
    """A contiguous CPU tensor's buffer as bytes (no copy)."""
    import torch

    return tensor.reshape(-1).view(torch.uint8).numpy()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TokenCache:
    """Region tokens ``(rows, cols, T, W)`` float16 of one (image, level, grid, weights), stored in zarr.

    Entries are named ``<image signature>-<rest of the key>.zarr``, so one image's entries can be forgotten.
    """

    def __init__(self, root: Path, key: str, grid_shape: tuple[int, int], tokens: int, width: int):
        self.root = root
        self.path = root / f"{key}.zarr"
        root.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            try:
                group = zarr.open_group(str(self.path), mode="r+")
                if tuple(group["tokens"].shape) == (*grid_shape, tokens, width):
                    self.group = group
                    os.utime(self.path)  # most recently used
                    return
            except Exception as error:  # unreadable metadata of any kind: drop the entry and start again
                logger.warning("napari-xt: dropping a corrupt token cache entry %s (%s)", self.path, error)
            shutil.rmtree(self.path, ignore_errors=True)
        group = zarr.open_group(str(self.path), mode="w")
        chunk = (min(64, grid_shape[0]), min(64, grid_shape[1]), tokens, width)
        group.create_array("tokens", shape=(*grid_shape, tokens, width), chunks=chunk, dtype="float16", fill_value=0)
        group.create_array("present", shape=grid_shape, chunks=chunk[:2], dtype="bool", fill_value=False)
        self.group = group

    @staticmethod
    def key(image_signature: str, level: int, resample: float, region_size: int, weights: str) -> str:
        rest = hashlib.sha256(json.dumps([level, round(resample, 6), region_size, weights]).encode()).hexdigest()
        return f"{_entry_prefix(image_signature)}-{rest[:16]}"

    @staticmethod
    def forget(root: Path, image_signature: str) -> None:
        """Delete every cache entry of the image with this signature."""
        for entry in Path(root).glob(f"{_entry_prefix(image_signature)}-*.zarr"):
            shutil.rmtree(entry, ignore_errors=True)

    def lookup(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Presence flags ``(N,)`` and tokens ``(N, T, W)`` of the regions at global ``positions``; None when the
        entry turns out to be corrupt (it is then dropped, with a warning, and the tokens are recomputed)."""
        if not len(positions):
            return np.zeros(0, bool), np.zeros((0, *self.group["tokens"].shape[2:]), np.float16)
        window = bounding_window(positions)
        try:
            present = np.asarray(self.group["present"][window])
            tokens = np.asarray(self.group["tokens"][window])
        except Exception as error:  # a damaged chunk: never fatal, the tokens are computed again
            logger.warning("napari-xt: dropping a corrupt token cache entry %s (%s)", self.path, error)
            shutil.rmtree(self.path, ignore_errors=True)
            return None
        local = positions - [window[0].start, window[1].start]
        return present[local[:, 0], local[:, 1]], tokens[local[:, 0], local[:, 1]]

    def store(self, positions: np.ndarray, tokens: np.ndarray) -> None:
        """Store the tokens of regions at ``positions`` in one dense write of their bounding window."""
        set_cells(self.group["tokens"], positions, tokens)
        set_cells(self.group["present"], positions, True)  # after the tokens: present only once stored

    @staticmethod
    def context_tag(positions: np.ndarray, device_type: str, precision: str) -> str:
        """Names the context of one set of context regions (``positions``, in order) computed one way: the
        entry's key already names the image, grid and weights."""
        digest = hashlib.sha256(np.ascontiguousarray(positions, dtype=np.int64).tobytes())
        digest.update(json.dumps([device_type, precision]).encode())
        return digest.hexdigest()[:16]

    def context(self, tag: str, shape: tuple[int, ...]) -> np.ndarray | None:
        """The context ``shape`` ``(N, T, W)`` stored under ``tag`` by an earlier run, or None (never stored,
        written only in part, another shape, or unreadable: then it is computed again)."""
        name = f"context-{tag}"
        try:
            if name not in self.group:
                return None
            array = self.group[name]
            if not array.attrs.get("complete") or tuple(array.shape) != tuple(shape):
                return None
            return np.asarray(array[...])
        except Exception as error:  # a damaged chunk: never fatal, the context is computed again
            logger.warning("napari-xt: ignoring an unreadable cached context in %s (%s)", self.path, error)
            return None

    def store_context(self, tag: str, context: np.ndarray) -> None:
        """Keep a run's context (computed from this entry's tokens); marked complete only once written."""
        array = self.group.create_array(
            f"context-{tag}", shape=context.shape, chunks=context.shape, dtype=context.dtype, overwrite=True
        )
        array[...] = context
        array.attrs["complete"] = True

    @staticmethod
    def enforce_cap(root: Path, max_bytes: int) -> None:
        """Delete the least recently used entries until the cache holds at most ``max_bytes``."""
        if not root.exists():
            return
        entries = []
        for entry in root.glob("*.zarr"):
            size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
            entries.append((entry.stat().st_mtime, size, entry))
        total = sum(size for _, size, _ in entries)
        for _, size, entry in sorted(entries):
            if total <= max_bytes:
                break
            shutil.rmtree(entry, ignore_errors=True)
            total -= size


def _entry_prefix(image_signature: str) -> str:
    return hashlib.sha256(image_signature.encode()).hexdigest()[:16]


def weights_hash(model) -> str:
    """sha256 over the model's tensors (for models not loaded from a checkpoint file)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
