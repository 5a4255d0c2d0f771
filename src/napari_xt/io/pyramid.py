"""The ``Pyramid``: lazy multiscale levels with axes ``(Y, X, C)`` and what is known of their geometry."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np

from napari_xt.io.errors import ImageReadError

SUPPORTED_DTYPES = tuple(
    np.dtype(name) for name in ("uint8", "uint16", "uint32", "int8", "int16", "int32", "float16", "float32", "float64")
)
SMALLEST_LEVEL_SIZE = 1024
"""A lazily built pyramid stops halving once both sides fit in this many pixels."""

TARGET_CHUNK = 1024
"""Dask chunks are made about this large (a multiple of the file's own chunks) to keep graphs small."""

UNIT_ALIASES = {
    "micrometer": "µm",
    "micron": "µm",
    "um": "µm",
    "µm": "µm",
    "nanometer": "nm",
    "nm": "nm",
    "millimeter": "mm",
    "mm": "mm",
    "centimeter": "cm",
    "meter": "m",
    "metre": "m",
    "m": "m",
    "kilometer": "km",
    "degree": "deg",
    "deg": "deg",
}


OME_UNIT_NAMES = {
    "µm": "micrometer",
    "nm": "nanometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
    "km": "kilometer",
    "deg": "degree",
}


def ome_unit(unit: str) -> str:
    """Short symbol → the unit name OME-Zarr and napari (pint) use (``µm`` → ``micrometer``)."""
    return OME_UNIT_NAMES.get(unit, unit)


def normalise_unit(unit: str | None) -> str | None:
    """Map OME/GeoTIFF unit spellings to short symbols (``micrometer`` → ``µm``); unknown units pass through."""
    if unit is None or unit == "":
        return None
    return UNIT_ALIASES.get(str(unit).strip().lower(), str(unit))


@dataclass(frozen=True)
class Pyramid:
    """A multiscale image, read lazily.

    Attributes:
        levels: dask arrays with axes ``(Y, X, C)``; level 0 is full resolution.
        downsample: ``(dy, dx)`` of each level relative to level 0.
        pixel_size: ``(y, x)`` size of a level-0 pixel in ``unit``, or None when unknown.
        unit: unit of ``pixel_size`` (``µm`` for slides, ``m`` for SAR), or None.
        channel_names: one name per channel.
        signature: an identity that changes whenever the pixels change (``io.signature``).
        source: the path it was opened from, or a description of the array.
        format: short name of the reader that opened it.
        nodata: value that marks missing pixels (GeoTIFF), or None.
        geotransform: GDAL-style ``(x0, dx, rx, y0, ry, dy)`` mapping level-0 pixel corners to map coordinates.
        built_lazily: True when levels past 0 are computed from level 0 on demand, not stored.
        metadata: anything else a reader found worth keeping (OME XML excerpt, CRS keys, …).
        views: the array-likes ``(Y, X, C)`` the levels read, one per level, or none where a level is a dask
            graph of its own (an array the user built with dask): ``read`` slices them directly.
    """

    levels: tuple[da.Array, ...]
    downsample: tuple[tuple[float, float], ...]
    pixel_size: tuple[float, float] | None = None
    unit: str | None = None
    channel_names: tuple[str, ...] = ()
    signature: str = ""
    source: str = ""
    format: str = ""
    nodata: float | None = None
    geotransform: tuple[float, ...] | None = None
    built_lazily: bool = False
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)
    views: tuple = field(default=(), compare=False, repr=False)

    def __post_init__(self):
        if not self.levels:
            raise ImageReadError(self.source, "has no image levels")
        if len(self.downsample) != len(self.levels):
            raise ValueError("downsample needs one entry per level")
        if self.views and len(self.views) != len(self.levels):
            raise ValueError("views need one entry per level")
        for level in self.levels:
            if level.ndim != 3:
                raise ValueError(f"pyramid levels must be (Y, X, C), got shape {level.shape}")
        if not self.channel_names:
            object.__setattr__(self, "channel_names", default_channel_names(self.levels[0].shape[2]))

    @property
    def crs(self) -> str | None:
        """The coordinate reference system of ``geotransform`` (``EPSG:<code>`` or WKT), or None."""
        return self.metadata.get("crs")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Level-0 shape ``(Y, X, C)``."""
        return tuple(int(n) for n in self.levels[0].shape)

    @property
    def dtype(self) -> np.dtype:
        return self.levels[0].dtype

    @property
    def n_channels(self) -> int:
        return int(self.levels[0].shape[2])

    @property
    def is_rgb(self) -> bool:
        """True for 8-bit three- or four-channel images shown as colour."""
        return self.n_channels in (3, 4) and self.dtype == np.uint8

    def read(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` of ``level`` as a numpy array ``(Y, X, C)``, read in this thread.

        The level's view is sliced directly where there is one: a dask graph for one region costs about 2 ms,
        six times the decoding of a 256² JPEG tile.
        """
        view = self.views[level] if self.views else None
        if view is not None:
            return np.asarray(view[y0:y1, x0:x1, :])
        return in_this_thread(self.levels[level][y0:y1, x0:x1])

    def level_scale(self, level: int) -> tuple[float, float]:
        """Layer ``scale`` for ``level``: level-0 pixel size (or 1) times its downsample."""
        s0 = self.pixel_size or (1.0, 1.0)
        dy, dx = self.downsample[level]
        return (s0[0] * dy, s0[1] * dx)

    def describe(self) -> str:
        """A few human-readable lines: levels, shapes, chunks, dtype, pixel size."""
        size = "unknown" if self.pixel_size is None else f"{self.pixel_size[0]:g} × {self.pixel_size[1]:g} {self.unit}"
        lines = [
            f"source: {self.source}",
            f"format: {self.format}",
            f"dtype: {self.dtype}, channels: {self.n_channels} ({', '.join(self.channel_names)})",
            f"pixel size (level 0): {size}",
        ]
        if self.nodata is not None:
            lines.append(f"nodata: {self.nodata:g}")
        if self.geotransform is not None:
            x0, dx, _, y0, _, dy = self.geotransform
            crs = self.crs or "unknown (the GeoKeys name no CRS; install napari-xt[geo] to read a custom one)"
            crs_line = crs if len(crs) < 80 else crs[:77] + "..."
            lines.append(f"CRS: {crs_line}")
            lines.append(f"geotransform: origin ({x0:.10g}, {y0:.10g}), pixel {dx:.10g} × {dy:.10g}")
        for i, (level, ds) in enumerate(zip(self.levels, self.downsample)):
            chunks = (level.chunksize[0], level.chunksize[1])
            lazy = " (computed on demand)" if self.built_lazily and i > 0 else ""
            lines.append(
                f"level {i}: {level.shape[0]} × {level.shape[1]} px, downsample {ds[0]:.4g} × {ds[1]:.4g}, "
                f"chunks {chunks[0]} × {chunks[1]}{lazy}"
            )
        return "\n".join(lines)


def default_channel_names(n_channels: int) -> tuple[str, ...]:
    if n_channels == 3:
        return ("red", "green", "blue")
    if n_channels == 4:
        return ("red", "green", "blue", "alpha")
    return tuple(f"channel {i}" for i in range(n_channels))


def check_dtype(dtype: np.dtype, source: object) -> None:
    """Refuse pixel types the model cannot take, naming what to convert them to."""
    dtype = np.dtype(dtype)
    if dtype in SUPPORTED_DTYPES:
        return
    if dtype.kind == "c":
        hint = "complex SAR (SLC) data: convert it to amplitude or intensity (float32) first"
    elif dtype.kind == "b":
        hint = "a boolean mask is not an image: convert it to uint8"
    else:
        hint = "convert it to uint8, uint16 or float32"
    raise ImageReadError(source, f"pixel type {dtype} is not supported", hint)


def check_not_empty(shape: tuple[int, ...], source: object) -> None:
    if any(int(n) == 0 for n in shape):
        raise ImageReadError(source, f"has zero size (shape {tuple(shape)})", "the file holds no pixels")


def to_yxc(array: da.Array, axes: str, source: object) -> da.Array:
    """Reorder ``array`` with named ``axes`` (any of ``tczyxs``, case-insensitive) to ``(Y, X, C)``.

    Time and z take their first index; ``s`` (TIFF samples) is a channel axis.
    """
    axes = axes.lower().replace("s", "c")
    if len(axes) != array.ndim:
        raise ImageReadError(source, f"axes {axes!r} do not match the array's {array.ndim} dimensions")
    if "y" not in axes or "x" not in axes:
        raise ImageReadError(source, f"axes {axes!r} have no y and x", "napari-xt reads 2-D images")
    index = tuple(0 if name not in "yxc" else slice(None) for name in axes)
    array = array[index]
    kept = [name for name in axes if name in "yxc"]
    if kept.count("c") > 1:
        raise ImageReadError(source, f"axes {axes!r} have two channel axes")
    if "c" not in kept:
        array = array[..., None]
        kept.append("c")
    return array.transpose([kept.index("y"), kept.index("x"), kept.index("c")])


def guess_axes(shape: tuple[int, ...], source: object) -> str:
    """Axes of an array that carries no axis names: ``yx``, ``yxc`` (≤ 4 channels last) or ``cyx``."""
    if len(shape) == 2:
        return "yx"
    if len(shape) == 3:
        if shape[2] <= 4:
            return "yxc"
        if shape[0] <= 4:
            return "cyx"
    raise ImageReadError(
        source,
        f"cannot tell the axes of an array of shape {tuple(shape)}",
        "expected (Y, X), (Y, X, C) or (C, Y, X) with at most 4 channels; save it as OME-Zarr with axes",
    )


class YXCView:
    """An array-like view of a stored array (zarr, TIFF level) with its axes reordered to ``(Y, X, C)``.

    Dask wraps it with one lazy ``from_array`` layer, where slicing and transposing a dask array would
    materialise a task per chunk (tens of thousands for a 200,000² image).
    """

    def __init__(self, array, axes: str, token: object):
        axes = axes.lower().replace("s", "c")
        self.array, self.axes, self.token = array, axes, token
        self._y, self._x = axes.index("y"), axes.index("x")
        self._c = axes.index("c") if "c" in axes else None
        n_channels = array.shape[self._c] if self._c is not None else 1
        self.shape = (int(array.shape[self._y]), int(array.shape[self._x]), int(n_channels))
        self.dtype = np.dtype(array.dtype)
        self.ndim = 3

    def __dask_tokenize__(self):
        return ("napari-xt-yxc", self.token, self.axes)

    def __getitem__(self, index):
        index = index if isinstance(index, tuple) else (index,)
        index = (*index, *[slice(None)] * (3 - len(index)))
        # dask may fuse an integer index into the read: read a one-wide slice and drop that axis at the end
        dropped = tuple(axis for axis, i in enumerate(index) if isinstance(i, int | np.integer))
        ys, xs, cs = (
            slice(int(i), int(i) + 1 if int(i) != -1 else None) if axis in dropped else i
            for axis, i in enumerate(index)
        )
        source = [0] * len(self.axes)
        source[self._y], source[self._x] = ys, xs
        if self._c is not None:
            source[self._c] = cs
        block = np.asarray(self.array[tuple(source)])
        kept = [name for name in self.axes if name in "yxc"]
        if self._c is None:
            block = block[..., None][..., cs]
            kept.append("c")
        block = block.transpose([kept.index("y"), kept.index("x"), kept.index("c")])
        return block[tuple(0 if axis in dropped else slice(None) for axis in range(3))]


def lazy_yxc(array, axes: str, native_chunks: tuple[int, ...], token: object, source: object):
    """A dask array ``(Y, X, C)`` over a stored array with named ``axes``, chunked near ``TARGET_CHUNK``.

    Returns:
        ``(dask_array, view)``: the view is the array-like the dask array reads, for ``build_lazy_levels``.
    """
    axes = axes.lower().replace("s", "c")
    if "y" not in axes or "x" not in axes or len(axes) != len(array.shape):
        raise ImageReadError(source, f"axes {axes!r} do not fit an array of shape {tuple(array.shape)}")
    if axes.count("c") > 1:
        raise ImageReadError(source, f"axes {axes!r} have two channel axes")
    view = YXCView(array, axes, token)
    by_name = dict(zip(axes, native_chunks))
    chunks = dask_chunks((by_name["y"], by_name["x"], view.shape[2]), view.shape, "yxc")
    return da.from_array(view, chunks=chunks, asarray=False, lock=False, inline_array=True), view


def dask_chunks(native: tuple[int, ...], shape: tuple[int, ...], axes: str) -> tuple[int, ...]:
    """Chunk sizes for dask: multiples of the file's chunks about ``TARGET_CHUNK`` along y and x, whole elsewhere."""
    chunks = []
    for n, size, name in zip(native, shape, axes.lower()):
        n = max(1, int(n))
        if name in "yx":
            chunks.append(min(int(size), n * max(1, TARGET_CHUNK // n)))
        elif name in "cs":
            chunks.append(int(size))
        else:
            chunks.append(1)
    return tuple(chunks)


def _area_average(block: np.ndarray, nodata: float | None) -> np.ndarray:
    """2× area average of a ``(Y, X, C)`` block, NaN- and nodata-safe for floats.

    An odd trailing row or column (only the image's last block can have one) is dropped.
    """
    y, x, c = block.shape
    grid = block[: y - y % 2, : x - x % 2].reshape(y // 2, 2, x // 2, 2, c)
    if block.dtype.kind == "f":
        values = grid.astype(np.float32)
        if nodata is not None and not np.isnan(nodata):
            values = np.where(values == nodata, np.nan, values)
        with np.errstate(invalid="ignore"):
            counts = np.sum(~np.isnan(values), axis=(1, 3))
            sums = np.nansum(values, axis=(1, 3))
            mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        return mean.astype(block.dtype)
    mean = grid.mean(axis=(1, 3), dtype=np.float32)
    info = np.iinfo(block.dtype)
    return np.clip(np.rint(mean), info.min, info.max).astype(block.dtype)


HALVE_TILE = 512
"""Output tile (pixels per side) in which a computed level reads its parent, bounding memory per level."""


class HalvedView:
    """A level computed on demand as the 2× area average of ``parent`` (an array-like ``(Y, X, C)``).

    Reading a region reads twice that region of the parent in tiles of ``HALVE_TILE``, so a chain of views
    reaches level 0 with bounded memory, and dask wraps each level with one lazy layer: opening a
    200,000² image builds no per-chunk tasks.
    """

    def __init__(self, parent, nodata: float | None, token: object):
        self.parent, self.nodata, self.token = parent, nodata, token
        self.shape = (parent.shape[0] // 2, parent.shape[1] // 2, parent.shape[2])
        self.dtype = np.dtype(parent.dtype)
        self.ndim = 3

    def __dask_tokenize__(self):
        return ("napari-xt-halved", self.token)

    def __getitem__(self, index):
        ys, xs, cs = (_as_slice(i, n) for i, n in zip(index, self.shape))
        out = np.empty((ys.stop - ys.start, xs.stop - xs.start, self.shape[2]), dtype=self.dtype)
        for y0 in range(ys.start, ys.stop, HALVE_TILE):
            y1 = min(y0 + HALVE_TILE, ys.stop)
            for x0 in range(xs.start, xs.stop, HALVE_TILE):
                x1 = min(x0 + HALVE_TILE, xs.stop)
                block = np.asarray(self.parent[2 * y0 : 2 * y1, 2 * x0 : 2 * x1, :])
                out[y0 - ys.start : y1 - ys.start, x0 - xs.start : x1 - xs.start] = _area_average(block, self.nodata)
        return out[:, :, cs]


def _as_slice(index, size: int) -> slice:
    if isinstance(index, slice):
        start, stop, step = index.indices(size)
        if step != 1:
            raise IndexError("computed pyramid levels are read with unit steps")
        return slice(start, stop)
    raise IndexError("computed pyramid levels are read with slices")


def in_this_thread(array) -> np.ndarray:
    """A dask (or array-like) array's values, computed in this thread: dask's synchronous scheduler, given as
    the function itself (named, dask first imports dask.distributed, 0.15 s, to look for a client)."""
    from dask.local import get_sync

    return np.asarray(array.compute(scheduler=get_sync) if hasattr(array, "compute") else array)


class DaskSource:
    """Lets a ``HalvedView`` read from a dask array ``(Y, X, C)`` (an image the user wrapped in dask)."""

    def __init__(self, array: da.Array):
        self.array, self.shape, self.dtype = array, array.shape, array.dtype

    def __getitem__(self, index):
        return in_this_thread(self.array[index])


def halve_view(parent, nodata: float | None, token: object) -> tuple[da.Array, HalvedView]:
    """The next level below ``parent``: a lazy dask array over a ``HalvedView``, and the view itself."""
    view = HalvedView(parent, nodata, token)
    chunks = (min(TARGET_CHUNK, view.shape[0]), min(TARGET_CHUNK, view.shape[1]), view.shape[2])
    return da.from_array(view, chunks=chunks, asarray=False, lock=False, inline_array=True), view


def build_lazy_levels(level0: da.Array, source, nodata: float | None = None) -> tuple[list[da.Array], list]:
    """Level 0 followed by 2× area-averaged levels until both sides fit in ``SMALLEST_LEVEL_SIZE``, and the
    array-likes they read (``Pyramid.views``).

    Args:
        level0: the full-resolution dask array ``(Y, X, C)``.
        source: the array-like behind ``level0`` (a ``YXCView`` or ``DaskSource``), read directly by the
            computed levels so that no dask graph is nested in another.
        nodata: value ignored by the averaging (floats only); NaN is always ignored.
    """
    levels, views = [level0], [source]
    while max(levels[-1].shape[:2]) > SMALLEST_LEVEL_SIZE and min(levels[-1].shape[:2]) >= 2:
        level, view = halve_view(views[-1], nodata, (level0.name, len(levels)))
        levels.append(level)
        views.append(view)
    return levels, views


def downsample_from_shapes(levels: list[da.Array]) -> tuple[tuple[float, float], ...]:
    """``(dy, dx)`` of each level relative to level 0 from the ratio of their shapes."""
    h0, w0 = levels[0].shape[:2]
    return tuple((h0 / level.shape[0], w0 / level.shape[1]) for level in levels)


def lazy_pyramid_downsample(levels: list[da.Array]) -> tuple[tuple[float, float], ...]:
    """Exact downsample of levels built by ``halve``: powers of two."""
    return tuple((float(2**i), float(2**i)) for i in range(len(levels)))


def check_levels_agree(levels: list[da.Array], source: object) -> None:
    """Levels must share dtype and channels and shrink monotonically with a consistent aspect ratio."""
    first = levels[0]
    for i, level in enumerate(levels[1:], start=1):
        if level.dtype != first.dtype:
            raise ImageReadError(source, f"level {i} has dtype {level.dtype} but level 0 has {first.dtype}")
        if level.shape[2] != first.shape[2]:
            raise ImageReadError(source, f"level {i} has {level.shape[2]} channels but level 0 has {first.shape[2]}")
        previous = levels[i - 1]
        if level.shape[0] > previous.shape[0] or level.shape[1] > previous.shape[1]:
            raise ImageReadError(
                source,
                f"level {i} ({level.shape[0]} × {level.shape[1]}) is larger than level {i - 1} "
                f"({previous.shape[0]} × {previous.shape[1]})",
                "multiscale levels must go from full resolution down",
            )
        dy, dx = first.shape[0] / level.shape[0], first.shape[1] / level.shape[1]
        if abs(math.log(dy / dx)) > math.log(1.1) and min(level.shape[:2]) > 16:
            raise ImageReadError(
                source,
                f"level {i} is downsampled {dy:.3g}× in y but {dx:.3g}× in x",
                "the levels do not belong to one image",
            )
