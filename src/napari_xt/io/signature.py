"""Content signatures: an identity that changes whenever an image's pixels change, cheap to compute.

A run directory and the token cache are keyed by it, so a result is never reused for other pixels:

- in-memory arrays: a hash of their bytes (dask's ``tokenize``, which hashes numpy buffers with the fastest
  hash installed); dask arrays: their graph name, which dask derives from their sources and operations (hashing
  their pixels would read the whole image; a store rewritten in place under the same graph is not noticed, so
  files are best opened by path, which signs what is on disk);
- zarr stores: every file's relative path, size and mtime, plus the bytes of a sample of chunk files;
- TIFF files: size and mtime, every level's tile offsets and byte counts, plus a sample of tile bytes, so a
  file replaced by another of the same size and mtime (``cp -p``, ``rsync -a``, tar) still gets a new identity.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

SAMPLED_BLOCKS = 16
"""Chunk files (zarr) or tiles (TIFF) whose bytes are hashed, spread evenly over the image."""

SAMPLE_BYTES = 1 << 16
"""At most this many bytes of each sampled block are hashed."""


def digest(*parts: object) -> str:
    """A short hex identity of ``parts`` (their ``repr``)."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=12).hexdigest()


def array_signature(array) -> str:
    """Identity of an in-memory numpy array (its bytes) or a dask array (its graph name)."""
    from dask.base import tokenize

    if isinstance(array, np.ndarray):
        return digest("ndarray", array.shape, str(array.dtype), tokenize(np.ascontiguousarray(array)))
    return digest("dask", array.shape, str(array.dtype), getattr(array, "name", None) or tokenize(array))


def _evenly(items: list, n: int) -> list:
    if len(items) <= n:
        return items
    step = (len(items) - 1) / (n - 1)
    return [items[round(i * step)] for i in range(n)]


def _head(path: str | Path, offset: int = 0, size: int = SAMPLE_BYTES) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(size)


def directory_signature(root: str | Path) -> str:
    """Identity of a directory store (zarr): every file's path, size and mtime, and a sample of their bytes."""
    root = Path(root)
    listing = []
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file():
                    stat = entry.stat()
                    listing.append((os.path.relpath(entry.path, root), stat.st_size, stat.st_mtime_ns))
    listing.sort()
    hasher = hashlib.blake2b(digest_size=12)
    hasher.update(repr((str(root.resolve()), listing)).encode())
    for name, _, _ in _evenly(listing, SAMPLED_BLOCKS):
        hasher.update(_head(root / name))
    return hasher.hexdigest()


def tiff_signature(path: str | Path, pages: list) -> str:
    """Identity of a TIFF file from the pages of its levels (``tifffile`` pages, open on ``path``)."""
    path = Path(path)
    stat = os.stat(path)
    hasher = hashlib.blake2b(digest_size=12)
    hasher.update(repr((str(path.resolve()), stat.st_size, stat.st_mtime_ns)).encode())
    blocks = []
    for page in pages:
        offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        counts = np.asarray(page.databytecounts, dtype=np.int64)
        hasher.update(offsets.tobytes())
        hasher.update(counts.tobytes())
        blocks.extend(zip(offsets.tolist(), counts.tolist()))
    with open(path, "rb") as handle:
        for offset, count in _evenly(blocks, SAMPLED_BLOCKS):
            handle.seek(offset)
            hasher.update(handle.read(min(count, SAMPLE_BYTES)))
    return hasher.hexdigest()
