"""Exports of a finished run, for the tools users already have.

In the run directory:

- ``detections.csv``; ``detections.geojson`` (QuPath detections, points or circles of the detected size);
- ``segmentation.geojson``: QuPath annotations, one polygon per class and connected component, holes kept;
- for georeferenced images (a GeoTIFF with a CRS): ``detections.wgs84.geojson`` and
  ``segmentation.wgs84.geojson`` (RFC 7946, longitude/latitude), ``results.gpkg`` (layers ``detections`` and
  ``segmentation`` in the image's CRS, flat typed attributes) and ``segmentation.tif`` (a Cloud-Optimised
  GeoTIFF of the labels in the image's CRS).

Pixel exports use QuPath's convention: (0, 0) is the top-left corner of the top-left level-0 pixel, so the
centre of level-0 pixel ``(y, x)`` (napari-xt's integer centres) is ``(x + 0.5, y + 0.5)``.
"""

from __future__ import annotations

import csv
import json
import math
import threading
import time
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
    from napari_xt.engine.georef import MapFrame

    return MapFrame(tuple(geotransform), None).xy(table.x + 0.5, table.y + 0.5)


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
    def area_name(self) -> str:
        """The QuPath measurement name of an area (QuPath writes ``Area µm^2``)."""
        return "Area px^2" if self.pixel_size is None else f"Area {self.unit}^2"

    @property
    def perimeter_name(self) -> str:
        return "Perimeter px" if self.pixel_size is None else f"Perimeter {self.unit}"

    def length(self, level0_px: float) -> float:
        return level0_px * self.pixel_size if self.pixel_size is not None else level0_px

    def area(self, level0_px2: float) -> float:
        return level0_px2 * self.pixel_size**2 if self.pixel_size is not None else level0_px2

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


def circle(x: float, y: float, diameter: float, sides: int = 32) -> dict:
    """A GeoJSON Polygon approximating a circle (``sides`` vertices, closed) of ``diameter`` around ``(x, y)``."""
    angles = np.linspace(0.0, 2 * np.pi, sides, endpoint=False)
    radius = max(float(diameter), 1.0) / 2
    ring = [[float(x + radius * np.cos(a)), float(y - radius * np.sin(a))] for a in angles]
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def geojson(
    table: DetectionTable,
    class_names: list[str],
    colours: dict[str, str],
    units: ExportUnits | None = None,
    threshold: float | None = None,
    circles: bool = False,
) -> dict:
    """A FeatureCollection of detections as QuPath reads them (``objectType``, ``classification``,
    ``measurements``), in QuPath's level-0 pixel convention: points, or with ``circles`` polygons of the
    detected size."""
    units = units or ExportUnits()
    xs, ys = table.x + 0.5, table.y + 0.5
    sizes = units.size(table.size)
    features = []
    for i in range(len(table)):
        name = class_names[int(table.label[i])]
        x, y = float(xs[i]), float(ys[i])
        geometry = circle(x, y, float(table.size[i])) if circles else {"type": "Point", "coordinates": [x, y]}
        features.append(
            {
                "type": "Feature",
                "geometry": geometry,
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
    units: ExportUnits | None = None,
    threshold: float | None = None,
    circles: bool = False,
) -> None:
    write_text_atomic(Path(path), json.dumps(geojson(table, class_names, colours, units, threshold, circles)))


@dataclass(frozen=True)
class ExportSettings:
    """What a run's exports hold: detections scoring at least ``threshold``, detections as ``circles`` of their
    size (else points), and the segmentation as ``polygons``. Recorded in the run directory."""

    threshold: float = 0.5
    circles: bool = False
    polygons: bool = True

    def to_dict(self) -> dict:
        return {"threshold": float(self.threshold), "circles": bool(self.circles), "polygons": bool(self.polygons)}


def export_run(
    run_dir: Path,
    spec: dict,
    labels,
    detections: DetectionTable,
    settings: ExportSettings,
    polygons: PolygonsAhead | None = None,
) -> dict:
    """Write every export of a finished run (module docstring) and return what was written and what was left
    out, and why: ``{"files": [...], "skipped": {name: reason}}``.

    ``labels`` is the analysis-level label array (read tile by tile); ``detections`` are already filtered at
    ``settings.threshold``; ``polygons``: the segmentation polygons traced while the run wrote the labels
    (``PolygonsAhead``), whose files are taken rather than traced again.
    """
    from napari_xt.engine.georef import MapFrame
    from napari_xt.engine.polygons import MissingGeoExtra

    run_dir = Path(run_dir)
    written: list[str] = []
    skipped: dict[str, str] = {}
    det_names, colours = spec["detection_classes"], spec.get("colours", {})
    units = ExportUnits.of(spec)
    frame = MapFrame.of(spec)
    if det_names:
        write_csv(detections, run_dir / "detections.csv", det_names, frame.geotransform if frame else None, units)
        write_geojson(
            detections, run_dir / "detections.geojson", det_names, colours, units, settings.threshold, settings.circles
        )
        written += ["detections.csv", "detections.geojson"]
    if frame is not None and not frame.crs:
        skipped["map exports"] = "the GeoTIFF names no CRS that napari-xt could read"
        frame = None
    try:
        if frame is not None:
            from napari_xt.engine.georef import require_map_exports

            require_map_exports()
        if wants_polygons(spec, settings):
            written += polygons.files() if polygons is not None else _traced_polygons(run_dir, spec, labels)
        if frame is not None:
            written += _export_map(run_dir, spec, labels, detections, frame)
    except MissingGeoExtra as error:
        skipped["polygons and map exports"] = str(error)
    except OSError:
        raise  # a full disk or a permission: the run reports it, and a resume exports again
    except Exception as error:  # a GEOS, GDAL or PROJ failure costs these exports, never the run's results
        skipped["polygons and map exports"] = f"{type(error).__name__}: {str(error)[:300]}"
    return {"files": written, "skipped": skipped}


def wants_polygons(spec: dict, settings: ExportSettings) -> bool:
    """Whether a run with ``spec`` exports segmentation polygons (asked for, and classes beyond background)."""
    return bool(settings.polygons) and len(spec.get("segmentation_classes") or []) > 1


def _traced_polygons(run_dir: Path, spec: dict, labels) -> list[str]:
    """``_export_polygons`` in the run's frame: on a map where the GeoTIFF names a CRS (after checking that the
    map exports' libraries are there), else in pixels only."""
    from napari_xt.engine.georef import MapFrame, require_map_exports

    frame = MapFrame.of(spec)
    if frame is not None and not frame.crs:
        frame = None
    if frame is not None:
        require_map_exports()
    return _export_polygons(Path(run_dir), spec, labels, ExportUnits.of(spec), frame)


class PolygonsAhead:
    """A run's segmentation polygons, traced in a thread while its labels are still being written.

    The tracing reads the label map top to bottom, a row of tiles at a time, and a read waits until the run says
    that its rows are final (``final_rows``). A whole-image run writes its regions row by row, so the polygons
    are done soon after the last region rather than traced after it, where the model leaves a core free for
    them (``runner._traces_during_run``: on an 8,192² slide, 1 s of a 5 s export was left after pass 2).
    ``files()`` waits for the rest and returns what ``_export_polygons`` wrote, or raises what it raised;
    ``abandon()`` (a cancelled or failed run) stops the tracing, and the files it was writing are removed. The
    polygons are those traced after the run: the same reads of the same final labels in the same order.
    """

    def __init__(self, run_dir: Path, spec: dict, labels):
        self._labels = _FinalRows(labels)
        self._files: list[str] | None = None
        self._error: BaseException | None = None
        self.seconds = 0.0  # how long the tracing ran, mostly beside the run's other stages
        self._thread = threading.Thread(
            target=self._trace, args=(Path(run_dir), spec), name="napari-xt polygons", daemon=True
        )
        self._thread.start()

    def final_rows(self, rows: int) -> None:
        """The label rows above ``rows`` will not be written again."""
        self._labels.advance(rows)

    def files(self) -> list[str]:
        """Wait for the tracing of the whole (now final) label map; the files written, or its error."""
        self._labels.advance(self._labels.shape[0])
        self._thread.join()
        if self._error is not None:
            raise self._error
        return list(self._files or [])

    def abandon(self) -> None:
        """Stop the tracing (a run that stops early) and wait for it; its partial files are removed."""
        self._labels.abandon()
        self._thread.join()

    def _trace(self, run_dir: Path, spec: dict) -> None:
        started = time.perf_counter()
        try:
            self._files = _traced_polygons(run_dir, spec, self._labels)
        except BaseException as error:  # handed to files(), which raises it where the run exports
            self._error = error
        finally:
            self.seconds = time.perf_counter() - started


class _Abandoned(Exception):
    """The run stopped before its labels were final."""


class _FinalRows:
    """A label array whose reads wait until the rows they ask for are final (``PolygonsAhead``)."""

    def __init__(self, array):
        self._array = array
        self.shape = tuple(array.shape)
        self.dtype = array.dtype
        self._final = 0
        self._abandoned = False
        self._changed = threading.Condition()

    def advance(self, rows: int) -> None:
        with self._changed:
            self._final = max(self._final, min(int(rows), self.shape[0]))
            self._changed.notify_all()

    def abandon(self) -> None:
        with self._changed:
            self._abandoned = True
            self._changed.notify_all()

    def __getitem__(self, key):
        rows = key[0] if isinstance(key, tuple) else key
        stop = self.shape[0] if rows.stop is None else min(rows.stop, self.shape[0])
        with self._changed:
            self._changed.wait_for(lambda: self._abandoned or self._final >= stop)
            if self._abandoned:
                raise _Abandoned("the run stopped before these labels were final")
        return self._array[key]


def _export_polygons(run_dir: Path, spec: dict, labels, units: ExportUnits, frame) -> list[str]:
    """``segmentation.geojson`` (QuPath annotations) and, on a map, the same polygons in the GeoPackage and in
    WGS84 GeoJSON."""
    from napari_xt.engine.georef import GeoJSONWriter, GeoPackageLayer
    from napari_xt.engine.polygons import polygon_batches

    names = list(spec["segmentation_classes"])
    colours = spec.get("colours", {})
    downsample = tuple(spec.get("downsample") or (1.0, 1.0))
    qupath = GeoJSONWriter(run_dir / "segmentation.geojson")
    wgs84 = gpkg = None
    if frame is not None:
        wgs84 = GeoJSONWriter(run_dir / "segmentation.wgs84.geojson")
        gpkg_path = run_dir / ".results.building.gpkg"
        gpkg_path.unlink(missing_ok=True)
        gpkg = GeoPackageLayer(
            gpkg_path,
            "segmentation",
            "Polygon",
            {"class": "U", "class_index": "int32", frame.area_field: "float64", frame.perimeter_field: "float64"},
            frame.crs,
        )
    properties = _qupath_annotation_properties(names, colours, units)
    writers = _PolygonWriters(qupath, wgs84, gpkg, frame, names, downsample, units, properties)
    try:
        for batch in polygon_batches(labels, len(names), arrays=True):
            writers.write(*batch)
            del batch  # a tile of speckle is thousands of polygons: not kept while the next batch is made
    except BaseException:
        qupath.abort()
        if wgs84 is not None:
            wgs84.abort()
        raise
    qupath.close()
    files = ["segmentation.geojson"]
    if frame is not None:
        gpkg.flush()
        wgs84.close()
        files.append("segmentation.wgs84.geojson")
    return files


@dataclass
class _PolygonWriters:
    """Where ``_export_polygons`` writes each batch of polygons. A batch is measured, made text and written in
    ``write``, so that nothing of it outlives the call: the loop that made the next batch held the last one's
    polygons, measurements and texts (a 2,048² tile of the speckled 16,384² SAR map: up to 19,328 polygons of
    688,000 vertices) while the image's largest component was merged, simplified, tested and written."""

    qupath: object
    wgs84: object
    gpkg: object
    frame: object
    names: list
    downsample: tuple
    units: ExportUnits
    properties: object

    def __post_init__(self):
        self.move = None if self.frame is None else self.frame.to_wgs84()  # a geometry on the map → in WGS84

    def write(self, classes: np.ndarray, geometries: np.ndarray) -> None:
        import shapely

        from napari_xt.engine.georef import geojson_pieces
        from napari_xt.engine.polygons import built, measured, to_level0

        downsample, units, properties, frame = self.downsample, self.units, self.properties, self.frame
        if frame is None and downsample[0] == downsample[1]:
            # measured and written without a scaled copy (the same numbers where the downsample is a power of
            # two; otherwise to the last bit or so), a PackedPolygon from its arrays
            area, length = measured(geometries)
            areas = units.area(area * (downsample[0] * downsample[1])).tolist()
            perimeters = units.length(length * downsample[0]).tolist()
            del area, length
            texts = geojson_pieces(geometries, downsample)
            self.qupath.add_texts(texts, list(map(properties, classes.tolist(), areas, perimeters)))
            return
        level0 = to_level0(built(geometries), downsample)
        areas = units.area(shapely.area(level0)).tolist()
        perimeters = units.length(shapely.length(level0)).tolist()
        self.qupath.add_texts(geojson_pieces(level0), list(map(properties, classes.tolist(), areas, perimeters)))
        if frame is None:
            return
        for label, geometry in zip(classes.tolist(), level0):
            name = self.names[label]
            on_map = frame.geometry(geometry)
            self.gpkg.add(
                on_map,
                **{
                    "class": name,
                    "class_index": label,
                    frame.area_field: float(on_map.area),
                    frame.perimeter_field: float(on_map.length),
                },
            )
            lonlat = shapely.orient_polygons(self.move(on_map))  # RFC 7946: exterior rings counter-clockwise
            self.wgs84.add(lonlat, {"class": name, frame.area_field: float(on_map.area)})


def _qupath_annotation_properties(names: list[str], colours: dict, units: ExportUnits):
    """``properties(class_index, area, perimeter)`` → the JSON text of a QuPath annotation's properties (the
    class part written once per class, not once per polygon)."""
    heads = [
        '{"objectType": "annotation", "classification": '
        + json.dumps({"name": name, "color": hex_to_rgb(colours.get(name, "#808080"))})
        + ', "isLocked": false, "measurements": {'
        for name in names
    ]
    area, perimeter = json.dumps(units.area_name), json.dumps(units.perimeter_name)

    def properties(label: int, area_value: float, perimeter_value: float) -> str:
        return f"{heads[label]}{area}: {json.dumps(area_value)}, {perimeter}: {json.dumps(perimeter_value)}}}}}"

    return properties


def _export_map(run_dir: Path, spec: dict, labels, detections: DetectionTable, frame) -> list:
    """Detections in the GeoPackage and in WGS84 GeoJSON, and the segmentation as a COG, then the GeoPackage
    moved into place."""
    import os

    import shapely

    from napari_xt.engine.georef import GeoJSONWriter, GeoPackageLayer, write_cog

    files = []
    gpkg_path = run_dir / ".results.building.gpkg"
    names = spec["detection_classes"]
    if names:
        size_field = "size_" + frame.linear_unit
        layer = GeoPackageLayer(
            gpkg_path,
            "detections",
            "Point",
            {"class": "U", "class_index": "int32", "score": "float64", size_field: "float64", "size_px": "float64"},
            frame.crs,
        )
        xs, ys = frame.xy(detections.x + 0.5, detections.y + 0.5)
        scale = math.sqrt(frame.pixel_area)
        wgs84 = GeoJSONWriter(run_dir / "detections.wgs84.geojson")
        move = frame.to_wgs84()
        try:
            for i in range(len(detections)):
                point = shapely.Point(float(xs[i]), float(ys[i]))
                values = {
                    "class": names[int(detections.label[i])],
                    "class_index": int(detections.label[i]),
                    "score": float(detections.score[i]),
                    size_field: float(detections.size[i]) * scale,
                    "size_px": float(detections.size[i]),
                }
                layer.add(point, **values)
                wgs84.add(move(point), values)
        except BaseException:
            wgs84.abort()
            raise
        layer.flush()
        wgs84.close()
        files.append("detections.wgs84.geojson")
    if spec.get("segmentation_classes"):
        classes = spec["segmentation_classes"]
        colours = spec.get("colours", {})
        write_cog(
            labels,
            run_dir / "segmentation.tif",
            frame,
            tuple(spec["downsample"]),
            [hex_to_rgba(colours.get(name, "#808080")) for name in classes],
        )
        files.append("segmentation.tif")
    if gpkg_path.exists():
        os.replace(gpkg_path, run_dir / "results.gpkg")
        files.append("results.gpkg")
    return files
