"""Nested tokenization: cut images into regions and regions into sub-regions, and put them back.

Pure tensor reshapes (no copies of pixels beyond what ``reshape`` needs), exactly invertible.
"""

from __future__ import annotations

import torch


def cut(images: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Cut ``(B, C, H, W)`` into ``(B * rows * cols, C, size, size)`` tiles in row-major order.

    Returns:
        The tiles and ``(rows, cols)``. ``H`` and ``W`` must be multiples of ``size``.
    """
    b, c, h, w = images.shape
    if h % size or w % size:
        raise ValueError(f"image of {h} × {w} pixels cannot be cut into whole tiles of {size}")
    rows, cols = h // size, w // size
    tiles = images.reshape(b, c, rows, size, cols, size).permute(0, 2, 4, 1, 3, 5)
    return tiles.reshape(b * rows * cols, c, size, size), (rows, cols)


def uncut(tiles: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of ``cut``: ``(B * rows * cols, C, h, w)`` back to ``(B, C, rows * h, cols * w)``."""
    rows, cols = grid
    n, c, h, w = tiles.shape
    b = n // (rows * cols)
    if b * rows * cols != n:
        raise ValueError(f"{n} tiles do not make whole {rows} × {cols} grids")
    grid_tiles = tiles.reshape(b, rows, cols, c, h, w).permute(0, 3, 1, 4, 2, 5)
    return grid_tiles.reshape(b, c, rows * h, cols * w)


def grid_positions(rows: int, cols: int, offset: tuple[int, int] = (0, 0), device=None) -> torch.Tensor:
    """Global ``(row, col)`` of each tile of a ``rows × cols`` grid starting at ``offset``, row-major, ``(N, 2)``."""
    r = torch.arange(rows, device=device) + offset[0]
    c = torch.arange(cols, device=device) + offset[1]
    return torch.stack(torch.meshgrid(r, c, indexing="ij"), dim=-1).reshape(-1, 2)
