"""Exports of detections: GeoJSON that QuPath opens (QuPath's level-0 pixel convention, measurements with
units) and CSV; map coordinates when the image carries a GeoTIFF geotransform."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ExportUnits:
    """How object sizes are reported: in physical units when the image knows its pixel size."""

    pixel_size: float | None = None  # level-0 pixel side, in ``unit``
    unit: str | None = None

    @classmethod
    def of(cls, spec: dict) -> ExportUnits:
        size = spec.get("pixel_size")
        return cls(float(size[0]), spec.get("unit")) if size and spec.get("unit") else cls()

    @property
    def size_name(self) -> str:
        """The QuPath measurement name of an object's size (a cell's diameter, a vessel's length)."""
        if self.pixel_size is None:
            return "Size px"
        return f"Length {self.unit}" if self.unit in ("m", "km") else f"Diameter {self.unit}"

    @property
    def csv_column(self) -> str | None:
        return None if self.pixel_size is None else "size_" + {"µm": "um"}.get(self.unit, self.unit)

    def size(self, size_px: np.ndarray) -> np.ndarray:
        return size_px * self.pixel_size if self.pixel_size is not None else size_px


def write_csv(
    table: DetectionTable, path: str | Path, class_names: list[str], geotransform=None, units: ExportUnits | None = None
) -> None:
    """One row per detection: y, x (level-0 pixel centres), class, score, size (level-0 px)[, size in the image's
    unit][, map_x, map_y]."""
    path = Path(path)
    units = units or ExportUnits()
    extra = [units.csv_column] if units.csv_column else []
    header = ["y", "x", "class", "score", "size", *extra] + (["map_x", "map_y"] if geotransform else [])
    map_x, map_y = map_coordinates(table, geotransform) if geotransform else (None, None)
    physical = units.size(table.size)
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
            if extra:
                row.append(f"{physical[i]:.4g}")
            if geotransform:
                row += [f"{map_x[i]:.3f}", f"{map_y[i]:.3f}"]
            writer.writerow(row)


def geojson(
    table: DetectionTable,
    class_names: list[str],
    colours: dict[str, str],
    geotransform=None,
    units: ExportUnits | None = None,
    threshold: float | None = None,
) -> dict:
    """A FeatureCollection of Point detections as QuPath reads them (``objectType``, ``classification``,
    ``measurements``).

    Without a geotransform, coordinates follow QuPath's pixel convention: (0, 0) is the top-left corner of the
    top-left level-0 pixel, so a pixel centre at integer ``(y, x)`` is written as ``(x + 0.5, y + 0.5)``.
    """
    units = units or ExportUnits()
    xs, ys = map_coordinates(table, geotransform) if geotransform else (table.x + 0.5, table.y + 0.5)
    sizes = units.size(table.size)
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
                    "measurements": {"Detection probability": float(table.score[i]), units.size_name: float(sizes[i])},
                },
            }
        )
    collection = {"type": "FeatureCollection", "features": features}
    if threshold is not None:
        collection["napari_xt"] = {"score_threshold": float(threshold)}
    return collection


def write_geojson(
    table: DetectionTable,
    path: str | Path,
    class_names,
    colours,
    geotransform=None,
    units: ExportUnits | None = None,
    threshold: float | None = None,
) -> None:
    write_text_atomic(Path(path), json.dumps(geojson(table, class_names, colours, geotransform, units, threshold)))
