"""Read regions of a pyramid level as model input: padded at image edges, resampled when asked."""

from __future__ import annotations

import numpy as np

from napari_xt.engine.grid import RegionGrid
from napari_xt.io import ImageReadError, Pyramid


def read_region(pyramid: Pyramid, grid: RegionGrid, row: int, col: int, out: np.ndarray | None = None) -> np.ndarray:
    """Region ``(row, col)`` as float32 ``(C, R, R)``; pixels beyond the image are NaN (the model sees 0).

    ``out``: a float32 ``(C, R, R)`` array to fill instead of a new one (the stored pixels are converted and
    put in place in one pass).
    """
    y0, x0, y1, x1 = grid.level_box(row, col)
    try:
        block = pyramid.read(grid.level, y0, y1, x0, x1)
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
    if out is None:
        out = np.empty((block.shape[2], r, r), dtype=np.float32)
    if grid.resample != 1.0:
        import torch

        ay0, ax0, ay1, ax1 = grid.analysis_box(row, col)
        tensor = torch.from_numpy(np.asarray(block, dtype=np.float32)).permute(2, 0, 1)[None]
        block = torch.nn.functional.interpolate(tensor, size=(ay1 - ay0, ax1 - ax0), mode="area")[0].numpy()
    else:
        block = block.transpose(2, 0, 1)
    height, width = block.shape[1:]
    out[:, :height, :width] = block
    out[:, height:, :] = np.nan
    out[:, :height, width:] = np.nan
    return out


def read_batch(pyramid: Pyramid, grid: RegionGrid, positions: np.ndarray) -> np.ndarray:
    """Regions at global ``positions`` ``(B, 2)`` as ``(B, C, R, R)`` float32."""
    r = grid.region_size
    batch = np.empty((len(positions), pyramid.n_channels, r, r), dtype=np.float32)
    for i, (row, col) in enumerate(positions):
        read_region(pyramid, grid, int(row), int(col), batch[i])
    return batch
