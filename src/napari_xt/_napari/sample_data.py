"""Sample data: the synthetic demo worlds at gigapixel-class size, generated lazily and deterministically.

They are the worlds the shipped demo checkpoints were trained on (``napari_xt.data.worlds``), so xT
gives a real result on them at first try; nothing is downloaded.
"""

from __future__ import annotations

from napari_xt._napari.layers import image_layer_data
from napari_xt.data.worlds import synthetic_scene

SAMPLE_SEED = 7


def slide_sample():
    """A 65,536 × 65,536 RGB slide-like scene (0.5 µm pixels)."""
    return [world_layer_data("slide", 65_536, SAMPLE_SEED, "xT synthetic slide")]


def sar_sample():
    """A 50,000 × 50,000 float32 SAR-like scene (10 m pixels) with a nodata swath edge."""
    return [world_layer_data("sar", 50_000, SAMPLE_SEED, "xT synthetic SAR")]


def world_layer_data(kind: str, size: int, seed: int, name: str) -> tuple:
    """The Image layer of a demo world, with the recipe the widget reopens it by."""
    recipe = {"world": kind, "size": size, "seed": seed}
    return image_layer_data(synthetic_scene(kind, size, seed).pyramid(), name=name, reopen=recipe)
