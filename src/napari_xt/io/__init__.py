"""Lazy multiscale image reading: ``open_pyramid(source) -> Pyramid`` with axes ``(Y, X, C)``."""

from napari_xt.io.errors import ImageReadError, InconsistentPyramidError, UnsupportedFormatError
from napari_xt.io.open import can_open, open_pyramid
from napari_xt.io.pyramid import Pyramid

__all__ = [
    "ImageReadError",
    "InconsistentPyramidError",
    "Pyramid",
    "UnsupportedFormatError",
    "can_open",
    "open_pyramid",
]
