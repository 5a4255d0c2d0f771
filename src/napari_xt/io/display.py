"""Display helpers that read as little as possible: contrast limits from the smallest level or a sample."""

from __future__ import annotations

import math

import numpy as np

from napari_xt.io.pyramid import Pyramid

SAMPLE_CHUNKS = 64
"""How many level-0 chunks a lazily built pyramid's contrast estimate reads at most."""


def preview_pixels(pyramid: Pyramid) -> np.ndarray:
    """A few pixels, ``(N, C)``, representative of the whole image, read cheaply.

    A stored pyramid gives its smallest level. A pyramid computed on demand would have to read all of level 0
    to produce its smallest level, so it gives an evenly spread sample of level-0 chunks instead.
    """
    if not pyramid.built_lazily:
        smallest = np.asarray(pyramid.levels[-1])
        return smallest.reshape(-1, smallest.shape[-1])
    level0 = pyramid.levels[0]
    rows, cols = len(level0.chunks[0]), len(level0.chunks[1])
    step = max(1, math.ceil(math.sqrt(rows * cols / SAMPLE_CHUNKS)))
    starts_y = np.cumsum((0, *level0.chunks[0]))
    starts_x = np.cumsum((0, *level0.chunks[1]))
    samples = []
    for i in range(step // 2, rows, step):
        for j in range(step // 2, cols, step):
            block = level0[starts_y[i] : starts_y[i + 1], starts_x[j] : starts_x[j + 1]]
            samples.append(np.asarray(block[::4, ::4]).reshape(-1, level0.shape[2]))
    return np.concatenate(samples)


def contrast_limits(pyramid: Pyramid, percentiles: tuple[float, float] = (0.5, 99.5)) -> tuple[float, float]:
    """Contrast limits for display, ignoring NaN and the nodata value; full range for 8-bit images."""
    if pyramid.dtype == np.uint8:
        return (0.0, 255.0)
    values = preview_pixels(pyramid).astype(np.float64).ravel()
    valid = np.isfinite(values)
    if pyramid.nodata is not None:
        valid &= values != pyramid.nodata
    values = values[valid]
    if values.size == 0:
        return (0.0, 1.0)
    low, high = np.percentile(values, percentiles)
    if high <= low:
        high = low + 1.0
    return (float(low), float(high))
