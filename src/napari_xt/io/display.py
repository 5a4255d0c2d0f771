"""Display helpers: contrast limits read from as little as possible (the smallest level or a sample), and the
colour difference an overlay makes on the canvas."""

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


def cielab(rgb) -> np.ndarray:
    """CIE L*a*b* (D65) of sRGB colours ``(..., 3)`` in 0–255."""
    linear = np.asarray(rgb, dtype=np.float64)[..., :3] / 255.0
    linear = np.where(linear > 0.04045, ((linear + 0.055) / 1.055) ** 2.4, linear / 12.92)
    to_xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])
    cube = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack(
        [116 * cube[..., 1] - 16, 500 * (cube[..., 0] - cube[..., 1]), 200 * (cube[..., 1] - cube[..., 2])], -1
    )


def delta_e(rgb_a, rgb_b) -> np.ndarray:
    """Perceived colour difference (CIE76 ΔE*ab) of sRGB colours in 0–255: about 2 is just noticeable, 20 and
    more is plain at a glance."""
    return np.linalg.norm(cielab(rgb_a) - cielab(rgb_b), axis=-1)


def overlay_contrast(colour, opacity: float, background) -> np.ndarray:
    """ΔE that a colour laid over ``background`` (sRGB 0–255) at ``opacity`` makes, as napari's translucent
    blending draws it."""
    background = np.asarray(background, dtype=np.float64)[..., :3]
    blended = opacity * np.asarray(colour, dtype=np.float64)[..., :3] + (1 - opacity) * background
    return delta_e(blended, background)
