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


# -- decoding with neighbours: halo windows and the context field -------------------------------------------------

NEIGHBOURS = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
"""Offsets of a region's 3 × 3 neighbourhood, row-major; index 4 is the region itself."""
CENTRE = 4


def neighbour_table(rows: int, cols: int, images: int = 1, device=None) -> torch.Tensor:
    """``(images * rows * cols, 9)`` index of each region's neighbours among the regions of ``images`` grids of
    ``rows × cols`` (row-major, as ``cut`` gives them); -1 outside its own grid."""
    r = torch.arange(rows, device=device).view(rows, 1, 1)
    c = torch.arange(cols, device=device).view(1, cols, 1)
    dr = torch.tensor([d[0] for d in NEIGHBOURS], device=device).view(1, 1, 9)
    dc = torch.tensor([d[1] for d in NEIGHBOURS], device=device).view(1, 1, 9)
    nr, nc = r + dr, c + dc
    inside = (nr >= 0) & (nr < rows) & (nc >= 0) & (nc < cols)
    table = torch.where(inside, nr * cols + nc, -1).reshape(rows * cols, 9)
    per_image = torch.arange(images, device=device).view(images, 1, 1) * rows * cols
    return torch.where(table >= 0, table + per_image, -1).reshape(images * rows * cols, 9)


def _spans(m: int, halo: int) -> list[slice]:
    """For neighbour offsets -1, 0, 1 along one axis: the slice of the neighbour's map that goes into a window,
    the window's pieces in order."""
    return [slice(m - halo, m), slice(0, m), slice(0, halo)]


def halo_windows(features: torch.Tensor | list[torch.Tensor], table: torch.Tensor, halo: int) -> torch.Tensor:
    """Each region's feature map with ``halo`` cells of its neighbours' maps around it.

    Args:
        features: ``(M, C, m, m)`` maps of M regions, or a list of M maps ``(C, m, m)`` (the engine's, kept
            region by region: stacking them first would copy every neighbour's whole map, not its strips).
        table: ``(N, 9)`` indices into ``features`` of N regions' neighbourhoods (``NEIGHBOURS``); -1 where a
            neighbour is absent (outside the image, background, not analysed): its cells are zeros, as the
            padding a region decoded alone has.

    Returns:
        ``(N, C, m + 2 halo, m + 2 halo)``.
    """
    if not isinstance(features, torch.Tensor) and not features:
        raise ValueError("halo windows need the maps of at least one region")
    m = features[0].shape[-1]
    if not 0 <= halo <= m:
        raise ValueError(f"a halo of {halo} cells does not fit maps of {m} cells")
    if not isinstance(features, torch.Tensor):
        return _halo_windows_of_maps(features, table, halo)
    if halo == 0:
        return features[table[:, CENTRE]]
    # the window starts as zeros (every absent neighbour); each of its nine pieces copies, from the neighbours
    # present there, only the strips it needs (a batch of a whole image's M maps copies no more than that)
    window = features.new_zeros(table.shape[0], features.shape[1], m + 2 * halo, m + 2 * halo)
    spans = _spans(m, halo)
    places = [slice(0, halo), slice(halo, halo + m), slice(halo + m, m + 2 * halo)]
    for k, (dr, dc) in enumerate(NEIGHBOURS):
        rows = torch.nonzero(table[:, k] >= 0).squeeze(1)
        if len(rows):
            strips = features[:, :, spans[dr + 1], spans[dc + 1]].index_select(0, table[rows, k])
            window[rows, :, places[dr + 1], places[dc + 1]] = strips
    return window


def _halo_windows_of_maps(maps: list[torch.Tensor], table: torch.Tensor, halo: int) -> torch.Tensor:
    """``halo_windows`` of a list of maps ``(C, m, m)``: each piece copied straight from its neighbour's map."""
    if halo == 0:
        return torch.stack([maps[i] for i in table[:, CENTRE].tolist()])
    channels, m = maps[0].shape[0], maps[0].shape[-1]
    window = maps[0].new_zeros(table.shape[0], channels, m + 2 * halo, m + 2 * halo)
    spans = _spans(m, halo)
    places = [slice(0, halo), slice(halo, halo + m), slice(halo + m, m + 2 * halo)]
    for n, row in enumerate(table.tolist()):
        for i, (dr, dc) in zip(row, NEIGHBOURS):
            if i >= 0:
                window[n, :, places[dr + 1], places[dc + 1]] = maps[i][:, spans[dr + 1], spans[dc + 1]]
    return window


def context_neighbourhoods(tokens: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Each region's context tokens with its neighbours', on their token grid: ``(N, W, 3t, 3t)``.

    ``tokens``: ``(M, t * t, W)``; ``table`` as for ``halo_windows``. Absent neighbours are filled as the image's
    token grid padded by replication is (so the field is flat towards the image's edge and every window near
    the edge samples the same field), never with zeros, which the model has not seen as context: an absent
    side neighbour repeats the region's edge tokens; an absent corner repeats the edge of the side neighbour
    beside it in the same row (or, absent that, in the same column; absent both, the region's corner).
    """
    m, n_tokens, width = tokens.shape
    t = round(n_tokens**0.5)
    grids = tokens.transpose(1, 2).reshape(m, width, t, t)
    out = torch.nn.functional.pad(grids[table[:, CENTRE]], (t, t, t, t), mode="replicate")
    for k, (dr, dc) in enumerate(NEIGHBOURS):
        present = table[:, k] >= 0
        if k == CENTRE or not bool(present.any()):
            continue
        r0, c0 = (dr + 1) * t, (dc + 1) * t
        # in the field's dtype: under CPU autocast the replicate pad above runs in float32 whatever the tokens
        out[present, :, r0 : r0 + t, c0 : c0 + t] = grids[table[present, k]].to(out.dtype)
    for k, (dr, dc) in enumerate(NEIGHBOURS):
        if not (dr and dc):
            continue
        r0, c0 = (dr + 1) * t, (dc + 1) * t
        absent = table[:, k] < 0
        beside_in_row = absent & (table[:, NEIGHBOURS.index((0, dc))] >= 0)
        beside_in_column = absent & ~beside_in_row & (table[:, NEIGHBOURS.index((dr, 0))] >= 0)
        if bool(beside_in_row.any()):  # the row neighbour's top (or bottom) row, repeated outwards
            edge = t if dr < 0 else 2 * t - 1
            row = out[beside_in_row, :, edge : edge + 1, c0 : c0 + t]
            out[beside_in_row, :, r0 : r0 + t, c0 : c0 + t] = row.expand(-1, -1, t, -1)
        if bool(beside_in_column.any()):
            edge = t if dc < 0 else 2 * t - 1
            column = out[beside_in_column, :, r0 : r0 + t, edge : edge + 1]
            out[beside_in_column, :, r0 : r0 + t, c0 : c0 + t] = column.expand(-1, -1, -1, t)
    return out


# -- blending: every pixel near a border is the weighted mean of the windows that cover it ------------------------


def blend_weights(size: int, halo: int, device=None) -> torch.Tensor:
    """Weights ``(size + 2 halo,)`` of a decoder window's outputs along one axis when windows are blended.

    They rise linearly from the window's edge and reach 1 at ``halo`` cells into the region, so that across a
    border a region's window and its neighbour's weigh ``1/2`` each at the border and sum to 1 through the
    ``2 halo`` cells they share: the blended map is continuous and, between present neighbours, a plain weighted
    mean (the 2-D weight is the product of one per axis).
    """
    n = size + 2 * halo
    u = torch.arange(n, dtype=torch.float32, device=device) + 0.5
    return torch.clamp(torch.minimum(u, n - u) / (2 * halo), max=1.0)


def _share_spans(size: int, halo: int, d: int) -> tuple[slice, slice]:
    """Along one axis, for a neighbour at offset ``d`` (-1, 0, 1): the part of the neighbour's window that lies
    over the region, and where it lies in the region."""
    if d == 0:
        return slice(halo, halo + size), slice(0, size)
    if d > 0:  # the neighbour after: its window's first ``halo`` cells cover the region's last
        return slice(0, halo), slice(size - halo, size)
    return slice(size + halo, size + 2 * halo), slice(0, halo)


def window_share(windows: torch.Tensor, offset: tuple[int, int], halo: int):
    """What windows of regions at ``offset`` ``(dr, dc)`` from a region give to it in a blend.

    ``windows``: ``(N, C, s + 2 halo, s + 2 halo)`` (at any stride: ``halo`` and ``s`` in its cells).

    Returns:
        ``(rows, cols)``, the slices of the region they cover, the weighted values ``(N, C, h, w)`` there and
        their weights ``(h, w)``.
    """
    source, place, weight = share_layout(windows.shape[-1] - 2 * halo, halo, offset, windows.device)
    return place, windows[..., source[0], source[1]] * weight.to(windows.dtype), weight


def share_layout(size: int, halo: int, offset: tuple[int, int], device=None):
    """Where the window of a region at ``offset`` gives to the region in a blend: the slices ``(rows, cols)`` of
    the window that lie over the region, the slices of the region they cover, and their weights ``(h, w)``."""
    (source_rows, rows), (source_cols, cols) = (_share_spans(size, halo, d) for d in offset)
    return (source_rows, source_cols), (rows, cols), _share_weight(size, halo, offset, device)


def _share_weight(size: int, halo: int, offset: tuple[int, int], device=None) -> torch.Tensor:
    """The weights ``(h, w)`` of the part of a window at ``offset`` that lies over the region."""
    weights = blend_weights(size, halo, device)
    source_rows, source_cols = (_share_spans(size, halo, d)[0] for d in offset)
    return weights[source_rows, None] * weights[None, source_cols]


def blend_weight_sum(size: int, halo: int, present: tuple[bool, ...], device=None) -> torch.Tensor:
    """The sum ``(size, size)`` of the blend weights over a region from the windows of its neighbourhood where
    ``present`` (one flag per ``NEIGHBOURS`` offset): what a blend divides by."""
    total = torch.zeros(size, size, device=device)
    for here, offset in zip(present, NEIGHBOURS):
        if here:
            _, (rows, cols), weight = share_layout(size, halo, offset, device)
            total[rows, cols] += weight
    return total


def blend_windows(windows: torch.Tensor, table: torch.Tensor, halo: int) -> torch.Tensor:
    """N regions' outputs blended from their neighbourhoods' windows.

    Args:
        windows: ``(M, C, s + 2 halo, s + 2 halo)`` decoder windows (uncropped outputs) of M regions.
        table: ``(N, 9)`` indices into ``windows`` of each region's neighbourhood (``NEIGHBOURS``), -1: absent
            (not decoded: its window does not count, and the others' weights are renormalised).
        halo: cells of the windows beyond the region each side.

    Returns:
        ``(N, C, s, s)``; with ``halo`` 0, the regions' own windows.
    """
    if halo == 0:
        return windows[table[:, CENTRE]]
    size = windows.shape[-1] - 2 * halo
    n = table.shape[0]
    total = windows.new_zeros(n, windows.shape[1], size, size)
    weight_sum = windows.new_zeros(n, 1, size, size)
    for k, offset in enumerate(NEIGHBOURS):
        present = table[:, k] >= 0
        if not bool(present.any()):
            continue
        (rows, cols), values, weight = window_share(windows[table[present, k]], offset, halo)
        total[present, :, rows, cols] += values
        weight_sum[present, :, rows, cols] += weight.to(windows.dtype)
    return total / weight_sum
