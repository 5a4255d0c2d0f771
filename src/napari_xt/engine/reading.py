"""Read regions of a pyramid level as model input: padded at image edges, resampled when asked."""

from __future__ import annotations

import numpy as np

from napari_xt.engine.grid import RegionGrid
from napari_xt.io import ImageReadError, Pyramid


def read_region(pyramid: Pyramid, grid: RegionGrid, row: int, col: int) -> np.ndarray:
    """Region ``(row, col)`` as float32 ``(C, R, R)``; pixels beyond the image are NaN (the model sees 0)."""
    import torch

    level = pyramid.levels[grid.level]
    y0, x0, y1, x1 = grid.level_box(row, col)
    try:
        block = np.asarray(level[y0:y1, x0:x1].compute(scheduler="synchronous"), dtype=np.float32)
    except ImageReadError:
        raise
    except Exception as error:  # a codec, tifffile or zarr failed on this part of the file
        raise ImageReadError(
            pyramid.source,
            f"pixels of level {grid.level} at y {y0}–{y1}, x {x0}–{x1} cannot be read "
            f"({type(error).__name__}: {str(error)[:200]})",
            "the file may be truncated or corrupt; regions finished before this one are kept",
        ) from error
    r = grid.region_size
    if grid.resample != 1.0:
        ay0, ax0, ay1, ax1 = grid.analysis_box(row, col)
        tensor = torch.from_numpy(block).permute(2, 0, 1)[None]
        block = torch.nn.functional.interpolate(tensor, size=(ay1 - ay0, ax1 - ax0), mode="area")[0].numpy()
    else:
        block = block.transpose(2, 0, 1)
    if block.shape[1:] == (r, r):
        return np.ascontiguousarray(block)
    padded = np.full((block.shape[0], r, r), np.nan, dtype=np.float32)
    padded[:, : block.shape[1], : block.shape[2]] = block
    return padded


def read_batch(pyramid: Pyramid, grid: RegionGrid, positions: np.ndarray) -> np.ndarray:
    """Regions at global ``positions`` ``(B, 2)`` as ``(B, C, R, R)`` float32."""
    return np.stack([read_region(pyramid, grid, int(r), int(c)) for r, c in positions])
