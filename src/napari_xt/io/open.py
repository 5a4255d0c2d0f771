"""``open_pyramid``: pick the reader for a path or array and open it lazily."""

from __future__ import annotations

import os
from pathlib import Path

from napari_xt.io import tiff_reader, zarr_reader
from napari_xt.io.arrays import is_array_like, open_array
from napari_xt.io.errors import ImageReadError, UnsupportedFormatError
from napari_xt.io.pyramid import Pyramid


def can_open(path: str | os.PathLike) -> bool:
    """True if some reader claims ``path`` (by its name and, for directories, its zarr metadata)."""
    path = Path(path)
    return zarr_reader.matches(path) or tiff_reader.matches(path)


def open_pyramid(source, **array_options) -> Pyramid:
    """Open an image as a lazy Pyramid; reads metadata only.

    Args:
        source: a path to an OME-Zarr / zarr store or a TIFF-family file (OME-TIFF, SVS, pyramidal, plain,
            GeoTIFF), a numpy or dask array, a list of arrays (levels), or a Pyramid (returned as is).
        array_options: for arrays only: ``axes``, ``pixel_size``, ``unit``.

    Raises:
        ImageReadError: the source is missing, corrupt, or holds something napari-xt cannot use; the message
            names the file and what is wrong.
    """
    if isinstance(source, Pyramid):
        return source
    if is_array_like(source):
        return open_array(source, **array_options)
    if not isinstance(source, str | os.PathLike):
        raise TypeError(f"open_pyramid takes a path, an array or a list of arrays, not {type(source).__name__}")
    path = Path(source).expanduser()
    if not path.exists():
        raise ImageReadError(path, "no such file or directory", "check the path")
    reader = zarr_reader.open_zarr if zarr_reader.matches(path) else tiff_reader.open_tiff
    if zarr_reader.matches(path) or tiff_reader.matches(path):
        try:
            return reader(path)
        except ImageReadError:
            raise
        except PermissionError as error:
            raise ImageReadError(path, f"cannot be read ({error.strerror})", "check its permissions") from error
        except Exception as error:  # a reader or codec failed on malformed content, whatever its kind
            raise ImageReadError(
                path,
                f"cannot be read ({type(error).__name__}: {str(error)[:200]})",
                "the file may be truncated, corrupt, or written with metadata napari-xt does not understand",
            ) from error
    if path.is_dir():
        raise UnsupportedFormatError(
            path,
            "is a directory but not a zarr store (no zarr.json, .zgroup or .zarray inside)",
            "open an OME-Zarr or zarr directory, or a TIFF file",
        )
    raise UnsupportedFormatError(
        path,
        f"has a suffix napari-xt does not read ({path.suffix or 'none'})",
        "supported: OME-Zarr/zarr directories, .tif/.tiff/.ome.tif/.svs/.ndpi files",
    )
