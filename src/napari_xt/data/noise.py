"""Deterministic hash-based noise evaluated at arbitrary level-0 coordinates (pure numpy)."""

from __future__ import annotations

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def hash_uniform(*keys, seed: int) -> np.ndarray:
    """Uniform floats in [0, 1) from integer keys (arrays broadcast), the same on every machine."""
    with np.errstate(over="ignore"):
        h = np.uint64(seed) * _GOLDEN + np.uint64(0x632BE59BD9B4E019)
        for key in keys:
            k = np.asarray(key).astype(np.int64).view(np.uint64)
            h = h ^ (k + _GOLDEN + (h << np.uint64(6)) + (h >> np.uint64(2)))
            h = (h ^ (h >> np.uint64(30))) * _M1
            h = (h ^ (h >> np.uint64(27))) * _M2
            h = h ^ (h >> np.uint64(31))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def value_noise(y: np.ndarray, x: np.ndarray, cell: float, seed: int) -> np.ndarray:
    """Smooth noise in [0, 1) with features about ``cell`` level-0 pixels across."""
    gy, gx = y / cell, x / cell
    iy, ix = np.floor(gy), np.floor(gx)
    fy, fx = gy - iy, gx - ix
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    iy, ix = iy.astype(np.int64), ix.astype(np.int64)
    v00 = hash_uniform(iy, ix, seed=seed)
    v01 = hash_uniform(iy, ix + 1, seed=seed)
    v10 = hash_uniform(iy + 1, ix, seed=seed)
    v11 = hash_uniform(iy + 1, ix + 1, seed=seed)
    return (v00 * (1 - fx) + v01 * fx) * (1 - fy) + (v10 * (1 - fx) + v11 * fx) * fy


def fractal_noise(y: np.ndarray, x: np.ndarray, cell: float, seed: int, octaves: int = 4) -> np.ndarray:
    """Sum of ``octaves`` value-noise layers, each half the size and weight of the last, in about [0, 1)."""
    total, weight, norm = 0.0, 1.0, 0.0
    for octave in range(octaves):
        total = total + weight * value_noise(y, x, cell / 2**octave, seed + 7919 * octave)
        norm += weight
        weight *= 0.5
    return total / norm


def coarse_field(func, i0: int, j0: int, factor: int, shape: tuple[int, int], coarse: int = 8) -> np.ndarray:
    """Evaluate a smooth field ``func(y, x)`` on a grid ``coarse`` times sparser, then bilinearly upsample.

    The output covers level pixels ``[i0, i0 + h) × [j0, j0 + w)`` of a level whose pixels are ``factor``
    level-0 pixels wide. The coarse grid is anchored to the level, not to the window, so any window gives
    the same values as the same pixels cut from a larger one. Only for fields whose features are much
    larger than ``coarse * factor`` level-0 pixels.
    """
    h, w = shape
    gy0, gx0 = i0 // coarse, j0 // coarse
    gy = np.arange(gy0, (i0 + h - 1) // coarse + 2)
    gx = np.arange(gx0, (j0 + w - 1) // coarse + 2)
    grid = func(((gy * coarse + 0.5) * factor - 0.5)[:, None], ((gx * coarse + 0.5) * factor - 0.5)[None, :])
    ty = (np.arange(i0, i0 + h) - gy0 * coarse) / coarse
    tx = (np.arange(j0, j0 + w) - gx0 * coarse) / coarse
    iy, ix = np.floor(ty).astype(np.int64), np.floor(tx).astype(np.int64)
    fy, fx = (ty - iy)[:, None], (tx - ix)[None, :]
    top = grid[iy][:, ix] * (1 - fx) + grid[iy][:, ix + 1] * fx
    bottom = grid[iy + 1][:, ix] * (1 - fx) + grid[iy + 1][:, ix + 1] * fx
    return top * (1 - fy) + bottom * fy
