"""Keeping encodings: per-run feature keeping (pass 1 → pass 2) and the region token cache across runs.

``FeatureKeeper`` holds each region's multi-scale features from pass 1 until pass 2 decodes it: in memory up to
a budget, then as float16 files in a scratch folder up to a disk budget; beyond both, pass 2 encodes again.

``TokenCache`` stores the pooled region tokens of pass 1 on disk, keyed by (image signature, level, resample,
region size, encoder weights hash), so that another ROI or another threshold on the same image reuses them.
It has a size cap (oldest entries go first) and is safe to delete at any time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import zarr


def default_cache_dir() -> Path:
    base = os.environ.get("NAPARI_XT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "napari-xt")
    return Path(base).expanduser()


class FeatureKeeper:
    """Features of regions between the two passes, in memory and then on disk, within budgets."""

    def __init__(self, memory_budget: int, disk_budget: int, scratch: Path | None = None):
        self.memory_budget, self.disk_budget = memory_budget, disk_budget
        self.memory: dict[int, list] = {}
        self.on_disk: dict[int, list[tuple[str, tuple, str]]] = {}
        self.memory_used = self.disk_used = 0
        self.scratch = Path(tempfile.mkdtemp(prefix="napari-xt-features-", dir=scratch)) if disk_budget > 0 else None

    def put(self, index: int, features: list) -> bool:
        """Keep ``features`` (CPU tensors) of region ``index``; False when both budgets are spent."""
        import torch

        size = sum(f.numel() * f.element_size() for f in features)
        if self.memory_used + size <= self.memory_budget:
            self.memory[index] = features
            self.memory_used += size
            return True
        half_size = sum(f.numel() * 2 for f in features)
        if self.scratch is not None and self.disk_used + half_size <= self.disk_budget:
            files = []
            for level, feature in enumerate(features):
                path = self.scratch / f"{index}_{level}.npy"
                np.save(path, feature.to(torch.float16).numpy())
                files.append((str(path), tuple(feature.shape), str(feature.dtype)))
            self.on_disk[index] = files
            self.disk_used += half_size
            return True
        return False

    def has(self, index: int) -> bool:
        return index in self.memory or index in self.on_disk

    def pop(self, index: int) -> list | None:
        import torch

        if index in self.memory:
            features = self.memory.pop(index)
            self.memory_used -= sum(f.numel() * f.element_size() for f in features)
            return features
        if index in self.on_disk:
            features = []
            for path, _, dtype in self.on_disk.pop(index):
                features.append(torch.from_numpy(np.load(path)).to(getattr(torch, dtype.split(".")[-1])))
                os.remove(path)
            return features
        return None

    def close(self) -> None:
        self.memory.clear()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


class TokenCache:
    """Region tokens ``(rows, cols, T, W)`` float16 of one (image, level, grid, weights), stored in zarr."""

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
            except (KeyError, ValueError, OSError):
                pass
            shutil.rmtree(self.path, ignore_errors=True)
        group = zarr.open_group(str(self.path), mode="w")
        chunk = (min(64, grid_shape[0]), min(64, grid_shape[1]), tokens, width)
        group.create_array("tokens", shape=(*grid_shape, tokens, width), chunks=chunk, dtype="float16", fill_value=0)
        group.create_array("present", shape=grid_shape, chunks=chunk[:2], dtype="bool", fill_value=False)
        self.group = group

    @staticmethod
    def key(image_signature: str, level: int, resample: float, region_size: int, weights: str) -> str:
        text = json.dumps([image_signature, level, round(resample, 6), region_size, weights])
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def lookup(self, rows: range, cols: range) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and presence flags of the window ``rows × cols``."""
        window = (slice(rows.start, rows.stop), slice(cols.start, cols.stop))
        return np.asarray(self.group["tokens"][window]), np.asarray(self.group["present"][window])

    def store(self, positions: np.ndarray, tokens: np.ndarray) -> None:
        for (row, col), value in zip(positions, tokens):
            self.group["tokens"][row, col] = value
        present = self.group["present"]
        for row, col in positions:
            present[row, col] = True

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


def weights_hash(model) -> str:
    """sha256 over the model's tensors (for models not loaded from a checkpoint file)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
