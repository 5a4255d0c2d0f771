"""Exports of detections: GeoJSON that QuPath opens (level-0 pixel coordinates) and CSV; map coordinates when
the image carries a GeoTIFF geotransform."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from napari_xt._atomic import atomic_path, write_text_atomic
from napari_xt.engine.detections import DetectionTable


def hex_to_rgba(colour: str) -> list[int]:
    """``#rrggbb`` or ``#rrggbbaa`` → ``[r, g, b, a]`` (0–255); anything else is opaque yellow."""
    colour = colour.lstrip("#")
    if len(colour) not in (6, 8):
        return [255, 255, 0, 255]
    values = [int(colour[i : i + 2], 16) for i in range(0, len(colour), 2)]
    return [*values, 255] if len(values) == 3 else values


def hex_to_rgb(colour: str) -> list[int]:
    return hex_to_rgba(colour)[:3]


def map_coordinates(table: DetectionTable, geotransform) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 pixel centres → map coordinates with a GDAL geotransform (pixel corners at integers)."""
    x0, dx, rx, y0, ry, dy = geotransform
    px, py = table.x + 0.5, table.y + 0.5
    return x0 + px * dx + py * rx, y0 + px * ry + py * dy


def write_csv(table: DetectionTable, path: str | Path, class_names: list[str], geotransform=None) -> None:
    """One row per detection: y, x (level-0 px), class, score, size (level-0 px)[, map_x, map_y]."""
    path = Path(path)
    header = ["y", "x", "class", "score", "size"] + (["map_x", "map_y"] if geotransform else [])
    map_x, map_y = map_coordinates(table, geotransform) if geotransform else (None, None)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i in range(len(table)):
            row = [
                f"{table.y[i]:.2f}",
                f"{table.x[i]:.2f}",
                class_names[int(table.label[i])],
                f"{table.score[i]:.4f}",
                f"{table.size[i]:.2f}",
            ]
            if geotransform:
                row += [f"{map_x[i]:.3f}", f"{map_y[i]:.3f}"]
            writer.writerow(row)


def geojson(table: DetectionTable, class_names: list[str], colours: dict[str, str], geotransform=None) -> dict:
    """A FeatureCollection of Point detections as QuPath reads them (``objectType``, ``classification``)."""
    xs, ys = map_coordinates(table, geotransform) if geotransform else (table.x, table.y)
    features = []
    for i in range(len(table)):
        name = class_names[int(table.label[i])]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [float(xs[i]), float(ys[i])]},
                "properties": {
                    "objectType": "detection",
                    "classification": {"name": name, "color": hex_to_rgb(colours.get(name, "#ffff00"))},
                    "measurements": {"score": float(table.score[i]), "size": float(table.size[i])},
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(table: DetectionTable, path: str | Path, class_names, colours, geotransform=None) -> None:
    write_text_atomic(Path(path), json.dumps(geojson(table, class_names, colours, geotransform)))
