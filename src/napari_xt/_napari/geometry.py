"""Where things are, in numbers only (no Qt, no napari objects): the part of the canvas in view, a drawn
rectangle, and boxes clipped to the image, all as level-0 pixel boxes ``(y0, x0, y1, x1)`` of an image layer
with ``scale`` and ``translate`` (world = pixel · scale + translate, pixel centres on integers)."""

from __future__ import annotations

import numpy as np


def view_box(centre, canvas_size, zoom: float, scale, translate) -> tuple[float, float, float, float]:
    """The canvas in view (``centre`` in world units, ``canvas_size`` in screen pixels, ``zoom`` screen pixels
    per world unit) as a box of the layer's level-0 pixels; not clipped to the image."""
    centre = np.asarray(centre, float)[-2:]
    extent = np.asarray(canvas_size, float)[-2:] / float(zoom)
    scale, translate = np.asarray(scale, float)[-2:], np.asarray(translate, float)[-2:]
    low, high = (centre - extent / 2 - translate) / scale, (centre + extent / 2 - translate) / scale
    return (float(low[0]), float(low[1]), float(high[0]), float(high[1]))


def rectangle_box(world_vertices, scale, translate) -> tuple[float, float, float, float]:
    """The box around a shape's vertices (world units) in the layer's level-0 pixels."""
    vertices = np.asarray(world_vertices, float)[:, -2:]
    scale, translate = np.asarray(scale, float)[-2:], np.asarray(translate, float)[-2:]
    low, high = (vertices.min(0) - translate) / scale, (vertices.max(0) - translate) / scale
    return (float(low[0]), float(low[1]), float(high[0]), float(high[1]))


def clip_box(box, shape) -> tuple[float, float, float, float]:
    """``box`` cut to an image of ``shape`` (level-0 ``(height, width)``)."""
    y0, x0, y1, x1 = box
    h, w = shape[:2]
    return (max(y0, 0.0), max(x0, 0.0), min(y1, float(h)), min(x1, float(w)))
