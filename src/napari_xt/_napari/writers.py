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
    face = np.asarray(meta.get("face_color", []))
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
    """Labels as an OME-Zarr (NGFF 0.5) label image, written with ome-zarr-py (multiscale by nearest)."""
    import dask.array as da
    import zarr
    from ome_zarr.writer import write_labels

    if Path(path).exists():
        raise FileExistsError(f"{path} exists; napari-xt does not overwrite it")
    level0 = data[0] if isinstance(data, list) else data
    labels = da.asarray(level0)
    group = zarr.open_group(path, mode="w")
    scale = meta.get("scale")
    name = Path(path).name.split(".")[0] or "labels"
    kwargs = {"axes": "yx"}
    if scale is not None:
        kwargs["scale"] = {"y": float(scale[-2]), "x": float(scale[-1])}
    write_labels(labels, group, name=name, **kwargs)
    return [path]
