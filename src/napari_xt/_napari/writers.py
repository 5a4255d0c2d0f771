"""npe2 writers: detections (Points) to GeoJSON or CSV, segmentation (Labels) to OME-Zarr."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_xt.engine.detections import DetectionTable
from napari_xt.engine.exports import write_csv, write_geojson


def _table(data, meta) -> tuple[DetectionTable, list[str]]:
    features = meta.get("features") or {}
    points = np.asarray(data, float).reshape(-1, 2)
    names = [str(n) for n in np.asarray(features.get("class", ["object"] * len(points)))]
    classes = sorted(set(names)) or ["object"]
    label = np.array([classes.index(n) for n in names], dtype=np.int64)
    score = np.asarray(features.get("score", np.ones(len(points))), float)
    size = np.asarray(features.get("size", np.full(len(points), 16.0)), float)
    return DetectionTable(points[:, 0], points[:, 1], label, score, size), classes


def _colours(meta, table: DetectionTable, classes: list[str]) -> dict:
    colours = {}
    face = np.asarray(meta.get("border_color", meta.get("face_color", [])))  # rings: the class colour is the border
    for k, name in enumerate(classes):
        index = np.flatnonzero(table.label == k)
        if len(index) and face.ndim == 2 and len(face) > index[0]:
            r, g, b = (np.clip(face[index[0], :3], 0, 1) * 255).astype(int)
            colours[name] = f"#{r:02x}{g:02x}{b:02x}"
    return colours


def write_points_geojson(path: str, data, meta: dict) -> list[str]:
    """Points as a QuPath-readable GeoJSON FeatureCollection (coordinates in the layer's data pixels)."""
    table, classes = _table(data, meta)
    write_geojson(table, Path(path), classes, _colours(meta, table, classes))
    return [path]


def write_points_csv(path: str, data, meta: dict) -> list[str]:
    table, classes = _table(data, meta)
    write_csv(table, Path(path), classes)
    return [path]


def write_labels_ome_zarr(path: str, data, meta: dict) -> list[str]:
    """Labels as a standalone OME-Zarr 0.5 label image (``image-label`` at the root), written with ome-zarr-py:
    levels by nearest sampling, the layer's scale, translation and units on the axes, and the class names
    (from napari-xt's run metadata or the layer's ``class`` feature) and colours in the ``image-label``
    metadata (built with ome-zarr-models)."""
    import dask.array as da
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_multiscale
    from ome_zarr_models.v05.image_label import Label
    from ome_zarr_models.v05.image_label_types import Color

    if Path(path).exists():
        raise FileExistsError(f"{path} exists; napari-xt does not overwrite it, choose another name")
    levels = list(data) if isinstance(data, list | tuple) else [data]
    level0 = da.asarray(levels[0])
    if level0.ndim != 2:
        raise ValueError(f"napari-xt writes 2-D label images; this layer has {level0.ndim} dimensions")
    pyramid = [level0]
    while max(pyramid[-1].shape) > 1024:
        pyramid.append(pyramid[-1][::2, ::2])
    scale = [float(v) for v in (meta.get("scale") or (1.0, 1.0))[-2:]]
    translate = [float(v) for v in (meta.get("translate") or (0.0, 0.0))[-2:]]
    unit = _ome_unit(meta.get("units"))
    axes = [{"name": name, "type": "space", **({"unit": unit} if unit else {})} for name in ("y", "x")]
    transforms = []
    for k in range(len(pyramid)):
        factor = 2**k
        transforms.append(
            [
                {"type": "scale", "scale": [scale[0] * factor, scale[1] * factor]},
                {
                    "type": "translation",
                    "translation": [
                        translate[0] + (factor - 1) * scale[0] / 2,
                        translate[1] + (factor - 1) * scale[1] / 2,
                    ],
                },
            ]
        )
    group = zarr.open_group(path, mode="w", zarr_format=3)
    name = Path(path).name.split(".")[0] or "labels"
    write_multiscale(pyramid, group, fmt=FormatV05(), axes=axes, coordinate_transformations=transforms, name=name)
    names, colours = _label_classes(meta)
    label = Label(
        version="0.5",
        colors=[Color(label_value=value, rgba=rgba) for value, rgba in colours.items()],
        properties=[{"label-value": value, "class": text} for value, text in names.items()],
    )
    attrs = dict(group.attrs["ome"])
    attrs["image-label"] = label.model_dump(mode="json", by_alias=True, exclude_none=True)
    group.attrs["ome"] = attrs
    return [path]


def _ome_unit(units) -> str | None:
    """The OME spelling of the layer's spatial unit (napari keeps pint units), or None for pixels."""
    from napari_xt.io.pyramid import ome_unit

    if not units:
        return None
    text = str(units[-1])
    return None if text in ("pixel", "", "None") else ome_unit({"micrometer": "µm", "meter": "m"}.get(text, text))


def _label_classes(meta: dict) -> tuple[dict[int, str], dict[int, list[int]]]:
    """Class names and RGBA colours by label value, from napari-xt's layer metadata or the layer's colormap."""
    info = (meta.get("metadata") or {}).get("napari_xt", {})
    classes = list(info.get("classes") or [])
    names = dict(enumerate(classes))
    colours: dict[int, list[int]] = {}
    colormap = meta.get("colormap")
    color_dict = getattr(colormap, "color_dict", None)
    if color_dict is None and isinstance(colormap, dict):
        color_dict = colormap.get("color_dict")
    for value, colour in (color_dict or {}).items():
        if value is None:
            continue
        rgba = np.clip(np.asarray(colour, float) * 255, 0, 255).round().astype(int).tolist()
        colours[int(value)] = rgba
    for value in names:
        colours.setdefault(value, [128, 128, 128, 255])
    return names, dict(sorted(colours.items()))
