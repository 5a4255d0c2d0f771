"""Wrap in-memory numpy arrays and dask arrays (one level, or a list of levels) as a Pyramid."""

from __future__ import annotations

from collections.abc import Sequence

import dask.array as da
import numpy as np

from napari_xt.io.pyramid import (
    TARGET_CHUNK,
    DaskSource,
    Pyramid,
    YXCView,
    build_lazy_levels,
    check_dtype,
    check_levels_agree,
    check_not_empty,
    downsample_from_shapes,
    guess_axes,
    lazy_pyramid_downsample,
    to_yxc,
)
from napari_xt.io.signature import array_signature, digest


def is_array_like(source: object) -> bool:
    return isinstance(source, np.ndarray | da.Array) or (
        isinstance(source, Sequence)
        and not isinstance(source, str)
        and len(source) > 0
        and all(isinstance(level, np.ndarray | da.Array) for level in source)
    )


def _describe(array) -> str:
    return f"<{type(array).__module__.split('.')[0]} array {tuple(array.shape)} {array.dtype}>"


def _as_dask(array, axes: str) -> da.Array:
    if isinstance(array, da.Array):
        return array
    chunks = tuple(TARGET_CHUNK if name in "yx" else -1 for name in axes)
    return da.from_array(array, chunks=chunks)


def open_array(
    source,
    axes: str | None = None,
    pixel_size: tuple[float, float] | None = None,
    unit: str | None = None,
    sign: bool = True,
) -> Pyramid:
    """Wrap ``source`` (an array, or a list of levels from full resolution down) as a Pyramid.

    Args:
        source: numpy or dask array, or a sequence of them.
        axes: axis names such as ``"yx"``, ``"yxc"`` or ``"cyx"``; guessed when omitted.
        pixel_size: ``(y, x)`` size of a level-0 pixel, if known.
        unit: unit of ``pixel_size``.
        sign: compute the content signature (a hash of the bytes); without it the signature is empty, for
            callers that only look at the levels' shapes and must not read every pixel.
    """
    arrays = list(source) if isinstance(source, Sequence) else [source]
    name = _describe(arrays[0])
    for array in arrays:
        check_dtype(array.dtype, name)
        check_not_empty(array.shape, name)
    axes = axes or guess_axes(arrays[0].shape, name)
    levels = [to_yxc(_as_dask(array, axes), axes, name) for array in arrays]
    check_levels_agree(levels, name)
    built_lazily = False
    views = [
        YXCView(array, axes, level.name) if isinstance(array, np.ndarray) else None
        for array, level in zip(arrays, levels)
    ]
    if len(levels) == 1:
        levels, views = build_lazy_levels(levels[0], views[0] or DaskSource(levels[0]))
        downsample = lazy_pyramid_downsample(levels)
        built_lazily = len(levels) > 1
    else:
        downsample = downsample_from_shapes(levels)
    return Pyramid(
        levels=tuple(levels),
        downsample=downsample,
        pixel_size=pixel_size,
        unit=unit,
        signature=digest("array", axes, [array_signature(array) for array in arrays]) if sign else "",
        source=name,
        format="array",
        built_lazily=built_lazily,
        views=tuple(views),
    )
