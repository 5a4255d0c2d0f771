"""Sample data: synthetic gigapixel-class scenes, generated lazily and deterministically (nothing downloaded)."""

from __future__ import annotations

from napari_xt._napari.layers import image_layer_data
from napari_xt.data.synthetic import SarScene, SlideScene


def slide_sample():
    """A 65,536 × 65,536 RGB slide-like scene (0.5 µm pixels)."""
    scene = SlideScene()
    return [image_layer_data(scene.pyramid(), name="xT synthetic slide")]


def sar_sample():
    """A 50,000 × 50,000 float32 SAR-like scene (10 m pixels) with a nodata swath edge."""
    scene = SarScene()
    return [image_layer_data(scene.pyramid(), name="xT synthetic SAR")]
