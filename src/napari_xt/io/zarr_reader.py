"""Read OME-Zarr (NGFF 0.4 on zarr v2, 0.5 on zarr v3), plain zarr multiscale groups and single zarr arrays."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import dask.array as da
import zarr

from napari_xt.io.errors import ImageReadError, UnsupportedFormatError
from napari_xt.io.pyramid import (
    Pyramid,
    build_lazy_levels,
    check_dtype,
    check_levels_agree,
    check_not_empty,
    downsample_from_shapes,
    guess_axes,
    lazy_pyramid_downsample,
    lazy_yxc,
    normalise_unit,
)
from napari_xt.io.signature import digest, directory_signature

ZARR_METADATA_FILES = ("zarr.json", ".zgroup", ".zarray")


def matches(path: Path) -> bool:
    """True for a directory that holds zarr metadata (v2 or v3)."""
    return path.is_dir() and any((path / name).exists() for name in ZARR_METADATA_FILES)


def open_zarr(path: Path) -> Pyramid:
    """Open a zarr store as a Pyramid, reading metadata only."""
    try:
        node = zarr.open(store=str(path), mode="r")
    except (json.JSONDecodeError, ValueError, KeyError, TypeError) as error:
        raise ImageReadError(path, f"zarr metadata cannot be read ({error})", "the store may be corrupt") from error
    except FileNotFoundError as error:
        raise UnsupportedFormatError(path, "holds no zarr array or group") from error
    if isinstance(node, zarr.Array):
        return _open_single_array(path, node)
    attrs = dict(node.attrs)
    if "bioformats2raw.layout" in attrs or "bioformats2raw.layout" in attrs.get("ome", {}):
        return open_zarr(path / "0")
    multiscales = attrs.get("ome", {}).get("multiscales") or attrs.get("multiscales")
    if multiscales:
        return _open_ome_multiscale(path, node, attrs, multiscales[0])
    return _open_plain_group(path, node)


def _signature(path: Path, levels: list[da.Array]) -> str:
    return digest("zarr", directory_signature(path), [lvl.shape for lvl in levels], str(levels[0].dtype))


def _lazy(path: Path, array: zarr.Array, axes: str):
    return lazy_yxc(array, axes, array.chunks, (str(path), array.path, array.shape, str(array.dtype)), path)


def _open_single_array(path: Path, array: zarr.Array, axes: str | None = None) -> Pyramid:
    check_dtype(array.dtype, path)
    check_not_empty(array.shape, path)
    axes = axes or guess_axes(array.shape, path)
    level0, view = _lazy(path, array, axes)
    levels, views = build_lazy_levels(level0, view)
    return Pyramid(
        levels=tuple(levels),
        downsample=lazy_pyramid_downsample(levels),
        signature=_signature(path, levels),
        source=str(path),
        format="zarr array",
        built_lazily=len(levels) > 1,
        views=tuple(views),
    )


def _scale_of(transforms: list[dict[str, Any]] | None) -> list[float] | None:
    for transform in transforms or []:
        if transform.get("type") == "scale":
            return [float(s) for s in transform["scale"]]
    return None


def _open_ome_multiscale(path: Path, group: zarr.Group, attrs: dict, multiscale: dict) -> Pyramid:
    axes_meta = multiscale.get("axes")
    if axes_meta and isinstance(axes_meta[0], dict):
        axes = "".join(a["name"] for a in axes_meta).lower()
        units = {a["name"].lower(): a.get("unit") for a in axes_meta}
    elif axes_meta:  # NGFF 0.3 listed names only
        axes, units = "".join(axes_meta).lower(), {}
    else:
        axes, units = None, {}
    datasets = multiscale.get("datasets") or []
    if not datasets:
        raise ImageReadError(path, "OME-Zarr multiscales lists no datasets")
    arrays, scales = [], []
    global_scale = _scale_of(multiscale.get("coordinateTransformations"))
    for dataset in datasets:
        try:
            array = group[dataset["path"]]
        except KeyError as error:
            raise ImageReadError(
                path, f"multiscale level {dataset['path']!r} is listed but missing", "the store is incomplete"
            ) from error
        check_dtype(array.dtype, path)
        check_not_empty(array.shape, path)
        arrays.append(array)
        scale = _scale_of(dataset.get("coordinateTransformations"))
        if scale and global_scale:
            scale = [a * b for a, b in zip(scale, global_scale)]
        scales.append(scale)
    axes = axes or guess_axes(arrays[0].shape, path)
    levels, views = zip(*(_lazy(path, array, axes) for array in arrays))
    check_levels_agree(levels, path)
    iy, ix = axes.index("y"), axes.index("x")
    if all(s is not None for s in scales):
        downsample = tuple((s[iy] / scales[0][iy], s[ix] / scales[0][ix]) for s in scales)
    else:
        downsample = downsample_from_shapes(levels)
    pixel_size, unit = None, None
    spatial_unit = normalise_unit(units.get("y") or units.get("x"))
    if scales[0] is not None and (spatial_unit is not None or scales[0][iy] != 1 or scales[0][ix] != 1):
        pixel_size, unit = (scales[0][iy], scales[0][ix]), spatial_unit
    omero = attrs.get("ome", {}).get("omero") or attrs.get("omero") or {}
    names = tuple(str(c.get("label", f"channel {i}")) for i, c in enumerate(omero.get("channels", [])))
    if len(names) != levels[0].shape[2]:
        names = ()
    version = attrs.get("ome", {}).get("version") or multiscale.get("version") or "0.4"
    return Pyramid(
        levels=tuple(levels),
        downsample=downsample,
        pixel_size=pixel_size,
        unit=unit,
        channel_names=names,
        signature=_signature(path, levels),
        source=str(path),
        format=f"OME-Zarr {version}",
        views=views,
    )


def _open_plain_group(path: Path, group: zarr.Group) -> Pyramid:
    arrays = [array for _, array in group.arrays()]
    if not arrays:
        raise UnsupportedFormatError(
            path, "is a zarr group with no arrays and no OME multiscales metadata", "point at an image group"
        )
    arrays.sort(key=lambda a: -math.prod(a.shape))
    if len(arrays) == 1:
        return _open_single_array(path, arrays[0])
    ndims = {len(a.shape) for a in arrays}
    if len(ndims) != 1:
        raise ImageReadError(path, f"the group's arrays have different numbers of dimensions {sorted(ndims)}")
    for array in arrays:
        check_dtype(array.dtype, path)
        check_not_empty(array.shape, path)
    axes = guess_axes(arrays[0].shape, path)
    levels, views = zip(*(_lazy(path, array, axes) for array in arrays))
    check_levels_agree(levels, path)
    return Pyramid(
        levels=tuple(levels),
        downsample=downsample_from_shapes(levels),
        signature=_signature(path, levels),
        source=str(path),
        format="zarr multiscale group",
        views=views,
    )
