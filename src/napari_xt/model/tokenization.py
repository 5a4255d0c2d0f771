"""Nested tokenization: cut images into regions and regions into sub-regions, and put them back; and the order
in which the context encoder reads the regions.

Cutting is pure tensor reshapes (no copies of pixels beyond what ``reshape`` needs), exactly invertible.

Region order: a sequence model sees the image as a line of regions. Read row by row, a region's neighbour above
is a whole row away, so a window of a few dozen regions reaches less and less of the rows above and below as
images get wider (a 100,000-pixel slide has 390 regions of 256 per row). Read along a Hilbert curve of the
regions' global grid positions, consecutive regions are always 2-D neighbours and a stretch of the sequence is a
compact patch, the same in a training crop and in a whole slide.
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


HILBERT_BITS = 16  # grid positions up to 65,536 regions per side


def hilbert_index(positions: torch.Tensor, bits: int = HILBERT_BITS) -> torch.Tensor:
    """Index along the Hilbert curve of ``2**bits × 2**bits`` cells of integer ``(row, col)`` positions ``(..., 2)``.

    Consecutive indices are 4-neighbours on the grid. The index depends on the global position only, so the
    regions of any crop or ROI come in the order they have in the whole image.
    """
    positions = positions.long()
    if positions.numel() and (positions.min() < 0 or positions.max() >= 2**bits):
        raise ValueError(f"grid positions must lie in [0, {2**bits}) for the Hilbert order")
    y, x = positions[..., 0].clone(), positions[..., 1].clone()
    index = torch.zeros_like(x)
    side = 2**bits
    s = side // 2
    while s > 0:
        rx = (x & s) > 0
        ry = (y & s) > 0
        index += s * s * ((3 * rx.long()) ^ ry.long())
        # rotate the quadrant so that the curve inside it starts and ends where the next level expects
        flip = ~ry & rx
        x = torch.where(flip, side - 1 - x, x)
        y = torch.where(flip, side - 1 - y, y)
        x, y = torch.where(~ry, y, x), torch.where(~ry, x, y)
        s //= 2
    return index


def serial_order(positions: torch.Tensor, order: str) -> torch.Tensor | None:
    """Permutation ``(B, M)`` that puts regions at ``positions`` ``(B, M, 2)`` in reading order (None: as given)."""
    if order == "raster":
        return None
    if order == "hilbert":
        return torch.argsort(hilbert_index(positions), dim=-1, stable=True)
    raise ValueError(f"unknown region order {order!r} (hilbert or raster)")
