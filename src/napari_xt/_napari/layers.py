"""Turn a Pyramid into napari layer data: one multiscale Image layer aligned in physical units."""

from __future__ import annotations

from pathlib import Path

from napari_xt.io import Pyramid
from napari_xt.io.display import contrast_limits
from napari_xt.io.pyramid import ome_unit


def layer_name(pyramid: Pyramid) -> str:
    source = pyramid.source
    if source.startswith("<") or source.startswith("synthetic"):
        return source.strip("<>")
    name = Path(source).name
    for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif", ".svs"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def image_layer_data(pyramid: Pyramid, name: str | None = None, reopen: dict | None = None) -> tuple:
    """``(data, kwargs, "image")`` for one multiscale Image layer showing ``pyramid``.

    ``reopen`` is a plain, JSON-serialisable recipe the widget opens the image again with (``{"path": …}`` for a
    file, the default when the pyramid came from one; ``{"world": kind, "size": n, "seed": s}`` for a demo
    world); layer metadata never holds the Pyramid object itself.

    RGB images are shown as colour; one-channel images as grey; other channel counts get a channel slider
    (axes ``c, y, x``). Scale and units follow the pyramid's pixel size, contrast limits its smallest level
    (or a sample of level 0 when the levels are computed on demand), ignoring NaN and nodata.
    """
    scale = pyramid.level_scale(0)
    kwargs: dict = {
        "name": name or layer_name(pyramid),
        "multiscale": True,
        "metadata": {
            "napari_xt": {
                "signature": pyramid.signature,
                "source": pyramid.source,
                "reopen": reopen if reopen is not None else _reopen_recipe(pyramid),
            }
        },
    }
    if pyramid.is_rgb:
        data = [level if pyramid.n_channels == 3 else level[..., :3] for level in pyramid.levels]
        kwargs.update(rgb=True, scale=scale, contrast_limits=(0, 255))
        spatial_axes = 2
    elif pyramid.n_channels == 1:
        data = [level[..., 0] for level in pyramid.levels]
        kwargs.update(rgb=False, scale=scale, contrast_limits=contrast_limits(pyramid), colormap="gray")
        spatial_axes = 2
    else:
        data = [level.transpose(2, 0, 1) for level in pyramid.levels]
        kwargs.update(rgb=False, scale=(1.0, *scale), contrast_limits=contrast_limits(pyramid), colormap="gray")
        kwargs["axis_labels"] = ("c", "y", "x")
        spatial_axes = 3
    if pyramid.unit is not None:
        unit = ome_unit(pyramid.unit)
        kwargs["units"] = ("pixel", unit, unit) if spatial_axes == 3 else (unit, unit)
    return (data, kwargs, "image")


def _reopen_recipe(pyramid: Pyramid) -> dict:
    return {"path": pyramid.source} if pyramid.source and Path(pyramid.source).exists() else {}
