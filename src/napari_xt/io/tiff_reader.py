"""Read TIFF family files: pyramidal TIFF and OME-TIFF (SubIFDs or series levels), Aperio SVS, plain TIFF and
GeoTIFF. Pixels are read chunk by chunk through tifffile's zarr view; the dask graph holds only the path."""

from __future__ import annotations

import functools
import os
import re
import threading
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import tifffile
import zarr

from napari_xt.io.errors import ImageReadError
from napari_xt.io.pyramid import (
    Pyramid,
    build_lazy_levels,
    check_dtype,
    check_levels_agree,
    check_not_empty,
    downsample_from_shapes,
    lazy_pyramid_downsample,
    lazy_yxc,
    normalise_unit,
)
from napari_xt.io.signature import tiff_signature

TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".svs", ".ndpi", ".btf", ".tf8")
"""Names the TIFF reader claims, longest first (so ``.ome.tif`` is cut whole from a name)."""
_SVS_MPP = re.compile(r"MPP\s*=\s*([0-9.]+)")
_EPSG_LINEAR_UNITS = {9001: "m", 9002: "ft", 9003: "ft"}


def matches(path: Path) -> bool:
    """True for a file whose name ends like a TIFF."""
    return path.is_file() and path.name.lower().endswith(TIFF_SUFFIXES)


class TiffLevel:
    """A lazily opened view of one level of one TIFF series, sliceable like an array.

    It pickles as its path and indices, so dask graphs that hold it hold no open file.
    """

    def __init__(self, path: str, mtime_ns: int, series: int, level: int, shape, dtype):
        self.path, self.mtime_ns, self.series, self.level = path, mtime_ns, series, level
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.ndim = len(self.shape)

    def token(self) -> tuple:
        return ("napari-xt-tiff", self.path, self.mtime_ns, self.series, self.level)

    def __dask_tokenize__(self):
        return self.token()

    def __getitem__(self, index):
        segments = _open_segments(self.path, self.mtime_ns, self.series, self.level)
        window = segments.window(index) if segments is not None else None
        if window is not None:
            return window
        return _open_level(self.path, self.mtime_ns, self.series, self.level)[index]


class PageSegments:
    """A level stored as one TIFF page, read tile by tile (or strip by strip) with ``os.pread`` and decoded by
    tifffile, without zarr: a 256² JPEG tile of a slide costs 0.33 ms this way, 1.0 ms through tifffile's zarr
    store (its per-chunk machinery; with dask's per-read graph on top, 2.9 ms).

    Only simple layouts take this way (``of`` returns None for the rest, which zarr reads): one page, 2-D
    ``(Y, X)`` or ``(Y, X, S)`` with interleaved samples, whole bytes per sample, not NDPI.
    """

    def __init__(self, path: str, tif: tifffile.TiffFile, page):
        self._tif, self._page = tif, page  # the page's decoder needs it open
        self._fd = os.open(path, os.O_RDONLY)
        self.shape = tuple(int(n) for n in page.shape)
        self.dtype = np.dtype(page.dtype)
        self._segment = (int(page.chunks[0]), int(page.chunks[1]))
        self._across = int(page.chunked[1])
        self._offsets, self._counts = page.dataoffsets, page.databytecounts
        self._fill = page.nodata or 0

    @classmethod
    def of(cls, path: str, series: int, level: int) -> PageSegments | None:
        tif = tifffile.TiffFile(path)
        try:
            found = tif.series[series].levels[level]
            page = found.keyframe
            simple = (
                len(found.pages) == 1
                and found.pages[0] is not None
                and tuple(found.shape) == tuple(page.shape)
                and len(page.shape) in (2, 3)
                and (page.planarconfig == 1 or page.samplesperpixel == 1)
                and page.imagedepth == 1
                and page.bitspersample in (8, 16, 32, 64)
                and not page.is_ndpi
                and len(page.dataoffsets) == int(np.prod(page.chunked))
            )
            if simple:
                return cls(path, tif, page)
        except Exception:  # anything tifffile finds odd here is left to its zarr store, which says what it is
            pass
        tif.close()
        return None

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)
            self._tif.close()

    def window(self, index) -> np.ndarray | None:
        """The pixels at ``index`` (unit-step slices, one per axis), or None for any other index."""
        index = index if isinstance(index, tuple) else (index,)
        if len(index) > len(self.shape) or not all(isinstance(i, slice) for i in index):
            return None
        spans = [i.indices(n) for i, n in zip(index, self.shape)]
        if any(step != 1 for _, _, step in spans):
            return None
        (y0, y1, _), (x0, x1, _) = spans[:2]
        out = np.full((max(0, y1 - y0), max(0, x1 - x0), *self.shape[2:]), self._fill, dtype=self.dtype)
        if out.size:
            self._paste(out, y0, y1, x0, x1)
        return out[(slice(None), slice(None), *index[2:])]

    def _paste(self, out: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> None:
        height, width = self._segment
        decode, page = self._page.decode, self._page
        for row in range(y0 // height, (y1 - 1) // height + 1):
            for col in range(x0 // width, (x1 - 1) // width + 1):
                i = row * self._across + col
                count = int(self._counts[i])
                if count == 0:
                    continue  # a segment never written: the fill value
                data = os.pread(self._fd, count, int(self._offsets[i]))
                segment = decode(data, i, jpegtables=page.jpegtables, jpegheader=page.jpegheader)[0]
                segment = segment.reshape(segment.shape[1:3] + self.shape[2:])
                sy, sx = row * height, col * width
                ya, yb = max(y0, sy), min(y1, sy + segment.shape[0])
                xa, xb = max(x0, sx), min(x1, sx + segment.shape[1])
                out[ya - y0 : yb - y0, xa - x0 : xb - x0] = segment[ya - sy : yb - sy, xa - sx : xb - sx]


_open_lock = threading.Lock()


@functools.lru_cache(maxsize=16)
def _open_level_cached(path: str, mtime_ns: int, series: int, level: int) -> zarr.Array:
    store = tifffile.imread(path, aszarr=True, series=series, level=level)
    return zarr.open_array(store=store, mode="r")


def _open_level(path: str, mtime_ns: int, series: int, level: int) -> zarr.Array:
    with _open_lock:
        return _open_level_cached(path, mtime_ns, series, level)


@functools.lru_cache(maxsize=16)
def _open_segments_cached(path: str, mtime_ns: int, series: int, level: int) -> PageSegments | None:
    return PageSegments.of(path, series, level)


def _open_segments(path: str, mtime_ns: int, series: int, level: int) -> PageSegments | None:
    with _open_lock:
        return _open_segments_cached(path, mtime_ns, series, level)


def open_tiff(path: Path) -> Pyramid:
    """Open a TIFF-family file as a Pyramid, reading metadata only."""
    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError) as error:
        raise ImageReadError(
            path, f"is not a readable TIFF ({error})", "the file may be truncated or corrupt"
        ) from error
    with tif:
        if not tif.series:
            raise ImageReadError(
                path, "is not a readable TIFF (no image in it)", "the file may be truncated or corrupt"
            )
        series_index, series_levels = _main_series(tif)
        series = tif.series[series_index]
        check_dtype(series.dtype, path)
        check_not_empty(series.shape, path)
        mtime_ns = os.stat(path).st_mtime_ns
        axes = series.axes
        arrays, views = [], []
        for level_index, level in series_levels:
            if level.axes != axes:
                raise ImageReadError(path, f"level axes {level.axes!r} differ from {axes!r}")
            view = TiffLevel(str(path), mtime_ns, level_index[0], level_index[1], level.shape, level.dtype)
            array, yxc_view = lazy_yxc(view, _map_axes(axes), _native_chunks(level, axes), view.token(), path)
            arrays.append(array)
            views.append(yxc_view)
        check_levels_agree(arrays, path)
        pixel_size, unit, names = _physical_metadata(tif, path)
        nodata, geotransform, geo_meta = _geotiff_metadata(tif)
        if geotransform is not None and pixel_size is None:
            pixel_size = (abs(geotransform[5]), abs(geotransform[1]))
            unit = geo_meta.get("unit")
        fmt = _format_name(tif)
        built_lazily = False
        if len(arrays) == 1:
            arrays, views = build_lazy_levels(arrays[0], views[0], nodata)
            downsample = lazy_pyramid_downsample(arrays)
            built_lazily = len(arrays) > 1
        else:
            downsample = downsample_from_shapes(arrays)
        pages = [page for _, level in series_levels for page in level.pages if page is not None]
        signature = tiff_signature(path, pages)
    return Pyramid(
        levels=tuple(arrays),
        downsample=downsample,
        pixel_size=pixel_size,
        unit=unit,
        channel_names=names if len(names) == arrays[0].shape[2] else (),
        signature=signature,
        source=str(path),
        format=fmt,
        nodata=nodata,
        geotransform=geotransform,
        built_lazily=built_lazily,
        metadata=geo_meta,
        views=tuple(views),
    )


def _map_axes(axes: str) -> str:
    """tifffile axis letters to ours: S (samples) and C are channels; Z is z; others are extra axes.

    A planar multi-channel file written without axis metadata has its channels on a generic axis (``Q`` for a
    shaped series, ``I`` for a stack of pages): without an S or C axis, the first of those is the channel axis.
    """
    upper = axes.upper()
    generic_channel = None
    if "S" not in upper and "C" not in upper:
        generic_channel = next((i for i, name in enumerate(upper) if name in "QI"), None)
    mapped = []
    for i, name in enumerate(upper):
        if name in "YX":
            mapped.append(name.lower())
        elif name in "SC" or i == generic_channel:
            mapped.append("c")
        elif name == "Z":
            mapped.append("z")
        else:
            mapped.append("t")
    return "".join(mapped)


def _native_chunks(level, axes: str) -> tuple[int, ...]:
    page = level.keyframe
    tile_y = page.tilelength or page.rowsperstrip or level.shape[axes.index("Y")]
    tile_x = page.tilewidth or level.shape[axes.index("X")]
    out = []
    for name, size in zip(axes, level.shape):
        out.append(tile_y if name == "Y" else tile_x if name == "X" else size)
    return tuple(min(int(c), int(s)) for c, s in zip(out, level.shape))


def _main_series(tif: tifffile.TiffFile):
    """The series holding the image and its levels as ``[((series, level), series_or_level), ...]``.

    Levels come from the series' own pyramid (SubIFDs, SVS, reduced-resolution pages); failing that, later
    series that are 2×, 4×, … downsampled copies of the first (pyramids written one series per level).
    """
    series = tif.series[0]
    if len(series.levels) > 1:
        return 0, [((0, i), level) for i, level in enumerate(series.levels)]
    levels = [((0, 0), series)]
    y_axis, x_axis = series.axes.index("Y"), series.axes.index("X")
    previous = series
    for index, candidate in enumerate(tif.series[1:], start=1):
        if candidate.axes != series.axes or candidate.dtype != series.dtype:
            break
        ratio_y = previous.shape[y_axis] / candidate.shape[y_axis]
        ratio_x = previous.shape[x_axis] / candidate.shape[x_axis]
        if not (1.5 < ratio_y < 4.5 and abs(ratio_y - ratio_x) / ratio_y < 0.1):
            break
        levels.append(((index, 0), candidate))
        previous = candidate
    return 0, levels


def _format_name(tif: tifffile.TiffFile) -> str:
    if tif.is_svs:
        return "Aperio SVS"
    if tif.is_ome:
        return "OME-TIFF"
    if tif.is_geotiff:
        return "GeoTIFF"
    return "TIFF"


def _physical_metadata(tif: tifffile.TiffFile, path: Path):
    """Pixel size ``(y, x)``, unit and channel names from OME XML, SVS MPP or centimetre resolution tags."""
    if tif.is_ome and tif.ome_metadata:
        try:
            return _ome_physical(tif.ome_metadata)
        except ElementTree.ParseError as error:
            raise ImageReadError(path, f"OME-XML metadata is malformed ({error})") from error
    if tif.is_svs:
        match = _SVS_MPP.search(tif.pages.first.description or "")
        if match:
            mpp = float(match.group(1))
            return (mpp, mpp), "µm", ()
        return None, None, ()
    page = tif.pages.first
    unit_tag = page.tags.get("ResolutionUnit")
    x_res, y_res = page.tags.get("XResolution"), page.tags.get("YResolution")
    if unit_tag is not None and int(unit_tag.value) == 3 and x_res is not None and y_res is not None:
        per_cm_x = x_res.value[0] / x_res.value[1]
        per_cm_y = y_res.value[0] / y_res.value[1]
        if per_cm_x > 1 and per_cm_y > 1:
            return (1e4 / per_cm_y, 1e4 / per_cm_x), "µm", ()
    return None, None, ()


def _ome_physical(xml: str):
    root = ElementTree.fromstring(xml)
    pixels = next((el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"), None)
    if pixels is None:
        return None, None, ()
    names = tuple(
        el.get("Name", f"channel {i}")
        for i, el in enumerate(e for e in pixels if e.tag.endswith("}Channel") or e.tag == "Channel")
    )
    size_x, size_y = pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeY")
    if size_x is None or size_y is None:
        return None, None, names
    unit = normalise_unit(pixels.get("PhysicalSizeXUnit", "µm"))
    return (float(size_y), float(size_x)), unit, names


def _geotiff_metadata(tif: tifffile.TiffFile):
    """nodata, GDAL geotransform (level-0 pixel corners) and the georeferencing keys of a GeoTIFF (None/empty for
    other TIFFs): ``unit``, ``crs`` (``EPSG:<code>``, or the WKT GDAL reads when the GeoKeys define their own CRS),
    ``raster_type`` (``area`` or ``point``)."""
    page = tif.pages.first
    nodata = None
    nodata_tag = page.tags.get("GDAL_NODATA")
    if nodata_tag is not None:
        try:
            nodata = float(str(nodata_tag.value).strip("\x00 "))
        except ValueError:
            nodata = None
    if not tif.is_geotiff:
        return nodata, None, {}
    geo = tif.geotiff_metadata or {}
    scale, tiepoint = geo.get("ModelPixelScale"), geo.get("ModelTiepoint")
    meta: dict = {}
    model_type = geo.get("GTModelTypeGeoKey")
    model_name = getattr(model_type, "name", str(model_type))
    if "GEOGRAPHIC" in model_name.upper():
        meta["unit"] = "deg"
    else:
        units_key = geo.get("ProjLinearUnitsGeoKey")
        meta["unit"] = _EPSG_LINEAR_UNITS.get(int(units_key), "m") if units_key is not None else "m"
    crs = _crs_of(geo, tif.filehandle.path)
    if crs:
        meta["crs"] = crs
    # PixelIsPoint: the tiepoint is the centre of its pixel, not its top-left corner (GeoTIFF 1.1, 2.5.2.2)
    point = int(geo.get("GTRasterTypeGeoKey", 1) or 1) == 2
    meta["raster_type"] = "point" if point else "area"
    geotransform = None
    if scale is not None and tiepoint is not None and len(tiepoint) >= 6:
        i, j, x, y = tiepoint[0], tiepoint[1], tiepoint[3], tiepoint[4]
        sx, sy = float(scale[0]), float(scale[1])
        if point:
            i, j = i + 0.5, j + 0.5
        geotransform = (x - i * sx, sx, 0.0, y + j * sy, 0.0, -sy)
    elif "ModelTransformation" in geo:
        m = np.asarray(geo["ModelTransformation"], dtype=float).reshape(4, 4)
        x0, y0 = m[0, 3], m[1, 3]
        if point:
            x0, y0 = x0 - (m[0, 0] + m[0, 1]) / 2, y0 - (m[1, 0] + m[1, 1]) / 2
        geotransform = (x0, m[0, 0], m[0, 1], y0, m[1, 0], m[1, 1])
    return nodata, geotransform, meta


_USER_DEFINED = 32767


def _crs_of(geo: dict, path: str) -> str | None:
    """The CRS of a GeoTIFF as pyproj/GDAL read it: ``EPSG:<code>`` from the GeoKeys when they name one, else
    the WKT that GDAL builds from the keys (needs the ``geo`` extra), else None."""
    for key in ("ProjectedCSTypeGeoKey", "GeographicTypeGeoKey"):
        code = geo.get(key)
        if code is not None and 1024 <= int(code) < _USER_DEFINED:
            return f"EPSG:{int(code)}"
    try:
        import rasterio
    except ImportError:
        return None
    try:
        with rasterio.open(path) as dataset:
            return dataset.crs.to_wkt() if dataset.crs else None
    except Exception:  # GDAL cannot read what tifffile did: keep the image, without a CRS
        return None
