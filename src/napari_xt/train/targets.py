"""Training targets for a crop: class map, and xView3-style detection maps at stride 4.

Detection targets (CenterNet): a Gaussian centre heatmap (σ = 2 cells), the class of the cells near each
centre, and at the centre cell the object size (analysis pixels) and the centre's offset inside the cell.
"""

from __future__ import annotations

import numpy as np

IGNORE = -100


def detection_targets(
    ys: np.ndarray,
    xs: np.ndarray,
    labels: np.ndarray,
    sizes: np.ndarray,
    shape: tuple[int, int],
    stride: int = 4,
    sigma: float = 2.0,
    class_radius: float = 2.0,
) -> dict[str, np.ndarray]:
    """Maps for objects at analysis-pixel centres ``(ys, xs)`` in a crop of ``shape`` analysis pixels."""
    h, w = shape[0] // stride, shape[1] // stride
    heatmap = np.zeros((h, w), np.float32)
    classes = np.full((h, w), IGNORE, np.int64)
    size = np.zeros((h, w), np.float32)
    offset = np.zeros((2, h, w), np.float32)
    centre_mask = np.zeros((h, w), bool)
    cy = (np.asarray(ys, float) - (stride - 1) / 2) / stride  # in cells
    cx = (np.asarray(xs, float) - (stride - 1) / 2) / stride
    grid_y, grid_x = np.mgrid[:h, :w]
    for y, x, label, s in zip(cy, cx, labels, sizes):
        iy, ix = int(round(y)), int(round(x))
        if not (0 <= iy < h and 0 <= ix < w):
            continue
        distance2 = (grid_y - y) ** 2 + (grid_x - x) ** 2
        heatmap = np.maximum(heatmap, np.exp(-distance2 / (2 * sigma**2)))
        classes[distance2 <= class_radius**2] = int(label)
        heatmap[iy, ix] = 1.0
        centre_mask[iy, ix] = True
        size[iy, ix] = float(s)
        offset[:, iy, ix] = (y - iy, x - ix)
    return {
        "heatmap": heatmap.astype(np.float32),
        "classes": classes,
        "size": size,
        "offset": offset,
        "centres": centre_mask,
    }
