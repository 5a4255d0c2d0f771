"""npe2 reader: run directories, and the slides and scenes napari-xt serves better than napari's own reader
(SVS, NDPI, pyramidal OME-TIFF, GeoTIFF, and TIFFs too large to load whole) as one lazy multiscale Image layer.

The manifest claims ``*.tif``/``*.tiff`` so that GeoTIFFs and pyramids open lazily; any other TIFF (small,
stacks, …) goes to napari's builtin reader, as if napari-xt were not installed. OME-Zarr other than run
directories is left to napari-ome-zarr and napari.
"""

from __future__ import annotations

from pathlib import Path

from napari_xt.io import ImageReadError, can_open, open_pyramid

LARGE_TIFF_PIXELS = 8192 * 8192
"""A TIFF page with more pixels than this is read lazily by napari-xt, whatever its metadata."""


def get_reader(path):
    """Return a reader function for ``path``, or None when napari-xt does not handle it."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, str | Path):
        return None
    path = str(path)
    from napari_xt.engine.store import is_run_dir

    if is_run_dir(path):
        return read_run
    if not can_open(path):
        return None
    if Path(path).is_file() and not serves_better(path):
        return _builtin_reader(path)
    return read_image


def serves_better(path: str) -> bool:
    """True for a TIFF napari-xt opens better than napari's builtin reader: a 2-D pyramid (several levels,
    SVS, NDPI), a GeoTIFF (map coordinates, nodata), or a page too large to load whole; never a z-stack or time
    series. Unreadable files are ours too, so that the user gets napari-xt's explanation."""
    import tifffile

    if path.lower().endswith((".svs", ".ndpi")):
        return True
    from napari_xt.io.tiff_reader import _map_axes

    try:
        with tifffile.TiffFile(path) as tif:
            if tif.is_svs or tif.is_ndpi or tif.is_geotiff:
                return True
            series = tif.series[0]
            mapped = _map_axes(series.axes)
            if any(axis in "zt" and size > 1 for axis, size in zip(mapped, series.shape)):
                return False  # a z-stack or time series: napari's reader gives it its sliders
            if len(series.levels) > 1:
                return True
            page = tif.pages.first
            return page.shape[0] * page.shape[1] > LARGE_TIFF_PIXELS if len(page.shape) >= 2 else False
    except Exception:  # not a TIFF tifffile reads: napari-xt's reader says what is wrong
        return True


def _builtin_reader(path: str):
    """napari's own reader for what napari-xt does not serve better (None when napari_builtins is missing)."""
    try:
        from napari_builtins.io import napari_get_reader
    except ImportError:
        return read_image
    return napari_get_reader(path)


def read_run(path):
    """A napari-xt run directory: its segmentation, detections, probabilities and ROI layers."""
    from napari_xt._napari.run_layers import run_layers

    path = path[0] if isinstance(path, list) else path
    return run_layers(path)


def read_image(path):
    """Read ``path`` into layer data; a file that cannot be read gives a notification and no layer."""
    from napari.utils.notifications import show_error

    from napari_xt._napari.layers import image_layer_data

    path = path[0] if isinstance(path, list) else path
    try:
        pyramid = open_pyramid(path)
    except ImageReadError as error:
        show_error(f"napari-xt could not open {error}")
        return [(None,)]
    return [image_layer_data(pyramid)]
