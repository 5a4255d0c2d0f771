"""Annotations people already have, as training truth: QuPath GeoJSON and GIS vectors (GeoJSON, GeoPackage).

The rule (also in the README):

- a **classified annotation** (polygon or multipolygon, holes kept) is a segmentation class named by its
  ``classification.name`` (QuPath) or its ``class``/``classification``/``label``/``name`` attribute (GIS), with
  its colour when QuPath gives one;
- an **unclassified annotation** marks a fully annotated region: inside it, pixels that no classified annotation
  covers are ``background``;
- a **detection** (QuPath ``objectType: "detection"``, or any Point) is an object of a detection class: points
  as they are, cell polygons by their centroid and equivalent diameter;
- a **label raster** (a painted napari Labels layer, an editable copy of a run's segmentation) gives a class per
  pixel through its value → class table; values the table does not name (0 in a freshly painted layer) say
  nothing;
- an annotation classified ``Ignore*`` (QuPath's class for it) is unlabelled, whatever lies under it;
- every other pixel is **unlabelled**: the loss ignores it (it is not background), and training crops are drawn
  where annotations are.

Where several say something about one pixel: unclassified regions (background) under classified shapes (the
smaller over the larger) under label rasters (what was painted last is the most specific).

Coordinates: QuPath's pixel convention (level-0 pixel corners, (0, 0) the top-left corner of the image). Over a
georeferenced image (a GeoTIFF with a CRS), a file that is not a QuPath export is in map coordinates: a
GeoPackage in its own CRS, a GeoJSON in its ``crs`` member's or else WGS84 (RFC 7946); it is reprojected to the
image's CRS with pyproj and mapped to pixels with the inverse geotransform. Needs the ``geo`` extra.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from napari_xt.data.synthetic import ObjectTable
from napari_xt.engine.polygons import require_geo
from napari_xt.train.targets import IGNORE

BACKGROUND = "background"
IGNORE_CLASS = "Ignore*"  # QuPath's class for areas a classifier must not learn from
IGNORED = -1  # the class index of an ``Ignore*`` shape: its pixels are unlabelled whatever lies below
_CLASS_ATTRIBUTES = ("class", "classification", "label", "name", "category")


@dataclass
class LabelRaster:
    """A class-per-pixel raster placed on the image: level-0 pixel centre ``p`` lies on raster index
    ``(p - offset) / step`` (per axis, rounded to the nearest raster pixel); ``values`` names the class of each
    label value (None: says nothing); ``lut`` (set when classes are numbered) maps values to class indices."""

    data: object  # 2-D array-like: numpy, dask or zarr (read window by window)
    step: tuple[float, float]
    offset: tuple[float, float]
    values: dict[int, str | None]
    lut: np.ndarray | None = None
    _boxes: list | None = field(default=None, repr=False)

    def window(self, y0: int, x0: int, y1: int, x1: int, downsample: float) -> np.ndarray:
        """Class index of analysis pixels ``[y0:y1, x0:x1]`` (``IGNORE`` where the raster says nothing)."""
        out = np.full((y1 - y0, x1 - x0), IGNORE, np.int16)
        rows = self._indices(y0, y1, downsample, 0)
        cols = self._indices(x0, x1, downsample, 1)
        keep_r, keep_c = rows >= 0, cols >= 0
        if out.size == 0 or not keep_r.any() or not keep_c.any():
            return out
        r, c = rows[keep_r], cols[keep_c]
        block = np.asarray(self.data[r.min() : r.max() + 1, c.min() : c.max() + 1])
        values = block[np.ix_(r - r.min(), c - c.min())].astype(np.int64)
        lut = self.lut if self.lut is not None else np.full(1, IGNORE, np.int16)
        inside = (values >= 0) & (values < len(lut))
        classes = np.full(values.shape, IGNORE, np.int16)
        classes[inside] = lut[values[inside]]
        out[np.ix_(keep_r, keep_c)] = classes
        return out

    def _indices(self, start: int, stop: int, downsample: float, axis: int) -> np.ndarray:
        centres = (np.arange(start, stop) + 0.5) * downsample - 0.5  # analysis pixel centres, level-0 px
        index = np.rint((centres - self.offset[axis]) / self.step[axis]).astype(np.int64)
        index[(index < 0) | (index >= self.data.shape[axis])] = -1
        return index

    def boxes(self) -> list[tuple[float, float, float, float]]:
        """Level-0 boxes ``(y0, x0, y1, x1)`` (pixel corners) of the blocks of ``BLOCK`` raster pixels that hold
        a pixel naming a class (read band by band), so that crops are drawn where the painting is."""
        if self._boxes is None:
            named = np.array(sorted(v for v, name in self.values.items() if name is not None), np.int64)
            height, width = (int(n) for n in self.data.shape[:2])
            found = []
            for r0 in range(0, height, BLOCK):
                hit = np.isin(np.asarray(self.data[r0 : r0 + BLOCK]), named).any(axis=0)
                blocks = np.add.reduceat(hit, np.arange(0, width, BLOCK)) > 0 if width else []
                found += [(r0, c0 * BLOCK) for c0 in np.flatnonzero(blocks)]
            sy, sx = self.step
            oy, ox = self.offset
            self._boxes = [
                (
                    oy + (r - 0.5) * sy + 0.5,
                    ox + (c - 0.5) * sx + 0.5,
                    oy + (min(r + BLOCK, height) - 0.5) * sy + 0.5,
                    ox + (min(c + BLOCK, width) - 0.5) * sx + 0.5,
                )
                for r, c in found
            ]
        return self._boxes


BLOCK = 256  # raster pixels per side of the blocks crops are drawn in


@dataclass
class Annotations:
    """Annotations of one image in level-0 pixel corners: classified ``shapes`` ``(class index, polygon)``,
    fully annotated ``regions``, painted label ``rasters`` and detection ``points`` (pixel centres)."""

    segmentation_classes: list[str]
    detection_classes: list[str]
    shapes: list[tuple[int, object]] = field(default_factory=list)
    regions: list[object] = field(default_factory=list)
    points: ObjectTable | None = None
    colours: dict[str, str] = field(default_factory=dict)
    source: str = ""
    rasters: list[LabelRaster] = field(default_factory=list)

    @property
    def says_where_objects_are_not(self) -> bool:
        """True when some area is annotated (outside it, no object is no evidence); points alone mean the
        whole image's objects were marked."""
        return bool(self.regions or self.shapes or self.rasters)

    def labels(self, y0: int, x0: int, y1: int, x1: int, downsample: float) -> np.ndarray:
        """Class per analysis pixel ``[y0:y1, x0:x1]`` (pixel centres inside a shape), ``IGNORE`` where no
        annotation says anything."""
        from rasterio.features import rasterize
        from rasterio.transform import Affine
        from shapely.geometry import box

        out = np.full((y1 - y0, x1 - x0), IGNORE, dtype=np.int16)
        if out.size == 0:
            return out
        window = box(x0 * downsample, y0 * downsample, x1 * downsample, y1 * downsample)
        transform = Affine(downsample, 0.0, x0 * downsample, 0.0, downsample, y0 * downsample)
        regions = [(region, 0) for region in self.regions if region.intersects(window)]
        # larger shapes first, so that a small one drawn inside a larger one keeps its class
        shapes = sorted(
            ((shape, label) for label, shape in self.shapes if shape.intersects(window)),
            key=lambda item: -item[0].area,
        )
        if regions or shapes:
            burned = [(geometry, label + 2) for geometry, label in [*regions, *shapes]]  # Ignore* (-1) burns 1
            painted = rasterize(burned, out_shape=out.shape, transform=transform, fill=0, dtype="int32") - 2
            out[painted >= 0] = painted[painted >= 0]
            out[painted == IGNORED] = IGNORE
        for raster in self.rasters:
            painted = raster.window(y0, x0, y1, x1, downsample)
            out[painted != IGNORE] = painted[painted != IGNORE]
        return out

    def boxes(self, downsample: float) -> np.ndarray:
        """Bounding boxes ``(y0, x0, y1, x1)`` in analysis pixels of every annotated area (for sampling crops)."""
        items = [*self.regions, *(shape for label, shape in self.shapes if label != IGNORED)]
        boxes = [(g.bounds[1], g.bounds[0], g.bounds[3], g.bounds[2]) for g in items]
        boxes += [box for raster in self.rasters for box in raster.boxes()]
        return np.array(boxes, dtype=float).reshape(-1, 4) / downsample


def read_annotations(
    path: str | Path,
    pyramid=None,
    detection_classes: list[str] | None = None,
    known: tuple[list[str], list[str]] | None = None,
) -> Annotations:
    """Read a QuPath GeoJSON or a GIS vector file (GeoJSON, GeoPackage, FlatGeobuf, Shapefile) into
    ``Annotations`` (module docstring). ``pyramid``: the image, for map files over a GeoTIFF.
    ``detection_classes``: the model's detection classes, if fixed (else those found, in order of first use).
    ``known``: the segmentation and detection classes of a checkpoint being fine-tuned: when every class the
    file names is among them, their indices are kept (and so the checkpoint's heads); otherwise the file's own
    classes are used.

    Raises ``ValueError`` naming the file and what is wrong (no usable feature, a map file over an image that is
    not georeferenced, …)."""
    require_geo()
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such annotation file")
    features, qupath, crs = _features(path)
    frame = _map_frame(pyramid) if not qupath else None
    declared = crs is not None  # a GeoPackage's CRS, a GeoJSON's crs member
    if not qupath and frame is None and (declared or _looks_like_map(features)):
        raise ValueError(
            f"{path}: holds map coordinates but the image is not georeferenced (no GeoTIFF CRS); export the "
            "annotations in pixel coordinates (QuPath) or use the GeoTIFF they were drawn on"
        )
    # RFC 7946: a GeoJSON without a crs member is WGS84 longitude/latitude
    to_pixels = frame.from_crs(crs or "EPSG:4326") if frame is not None and not qupath else None
    features = [
        (to_pixels(geometry) if to_pixels is not None else geometry, properties)
        for geometry, properties in features
        if geometry is not None and not geometry.is_empty
    ]
    return collect(features, str(path), detection_classes, known)


def collect(
    features: list,
    source: str,
    detection_classes: list[str] | None = None,
    known: tuple[list[str], list[str]] | None = None,
    rasters: list[LabelRaster] = (),
) -> Annotations:
    """``Annotations`` from ``(shapely geometry, properties)`` pairs in level-0 pixel corners (a QuPath
    export's convention; properties as QuPath or a GIS file gives them) and label ``rasters``; classes as
    ``read_annotations`` numbers them. ``source`` names where they came from, in messages."""
    fixed = detection_classes is not None
    if known:
        seg_start = list(known[0]) or [BACKGROUND]
        found = _collect(
            features, source, seg_start, detection_classes or list(known[1]), fixed, bool(known[0]), rasters
        )
        if not (found.segmentation_classes[len(known[0]) :] or found.detection_classes[len(known[1]) :]):
            return found
    return _collect(features, source, [BACKGROUND], detection_classes, fixed, False, rasters)


def _collect(
    features: list,
    path: str,
    seg_names: list[str],
    det_names: list[str] | None,
    fixed_detection: bool,
    keep_listed: bool,
    rasters: list[LabelRaster] = (),
) -> Annotations:
    """``Annotations`` from features in level-0 pixel corners, classes numbered from ``seg_names`` and
    ``det_names`` on (names the file adds come after them, unless ``fixed_detection``); with ``keep_listed``
    the listed segmentation classes stay even where the file has no polygon (a checkpoint's classes)."""
    seg_names, det_names = list(seg_names), list(det_names or [])
    rasters = [replace(raster) for raster in rasters]  # their value → class tables are numbered here
    for raster in rasters:
        lut = np.full(max(raster.values, default=0) + 1, IGNORE, np.int16)
        for value, name in raster.values.items():
            if name is None or value < 0:
                continue
            name = _segmentation_name(name)
            if name == IGNORE_CLASS:
                continue
            if name not in seg_names:
                seg_names.append(name)
            lut[value] = seg_names.index(name)
        raster.lut = lut
    colours: dict[str, str] = {}
    shapes, regions = [], []
    ys, xs, labels, sizes = [], [], [], []
    for geometry, properties in features:
        name, colour = _class_of(properties)
        kind = properties.get("objectType")
        if kind in ("detection", "cell") or geometry.geom_type in ("Point", "MultiPoint"):
            if name is None:
                name = det_names[0] if det_names else "object"
            if name not in det_names:
                if fixed_detection:
                    raise ValueError(f"{path}: detection class {name!r} is not one of the model's {det_names}")
                det_names.append(name)
            for point, size in _point_objects(geometry, properties):
                ys.append(point[1] - 0.5), xs.append(point[0] - 0.5)  # QuPath corners → pixel centres
                labels.append(det_names.index(name)), sizes.append(size)
            if colour:
                colours.setdefault(name, colour)
            continue
        polygons = [g for g in _polygons(geometry) if g.area > 0]
        if not polygons:
            continue
        if name is None:
            regions.extend(polygons)
            continue
        name = _segmentation_name(name)
        if name == IGNORE_CLASS:
            shapes.extend((IGNORED, polygon) for polygon in polygons)
            continue
        if name not in seg_names:
            seg_names.append(name)
        if colour:
            colours.setdefault(name, colour)
        shapes.extend((seg_names.index(name), polygon) for polygon in polygons)
    if not shapes and not regions and not ys and not rasters:
        raise ValueError(f"{path}: no polygon, point or painted annotation napari-xt can use")
    points = ObjectTable(np.array(ys), np.array(xs), np.array(labels, dtype=np.int64), np.array(sizes, float))
    return Annotations(
        seg_names if (shapes or regions or rasters or keep_listed) else [],
        det_names,
        shapes,
        regions,
        points if ys else None,
        colours,
        str(path),
        rasters,
    )


def _segmentation_name(name: str) -> str:
    """``background`` and QuPath's ``Ignore*`` in any case are the fixed classes; other names stay as given."""
    folded = name.strip().lower()
    if folded == BACKGROUND:
        return BACKGROUND
    if folded in ("ignore", "ignore*"):
        return IGNORE_CLASS
    return name


def _features(path: Path) -> tuple[list, bool, str | None]:
    """``(shapely geometry, flat properties)`` pairs, whether the file is a QuPath export, and its CRS."""
    from shapely.geometry import shape

    if path.suffix.lower() in (".geojson", ".json"):
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: is not valid GeoJSON ({error})") from error
        if isinstance(data, list):
            items = data  # QuPath's "export as a list of features"
        else:
            items = data.get("features", []) if data.get("type") == "FeatureCollection" else [data]
        features = []
        for item in items:
            if not isinstance(item, dict) or not item.get("geometry"):
                continue
            try:
                features.append((shape(item["geometry"]), item.get("properties") or {}))
            except Exception as error:  # shapely refusing a malformed geometry
                raise ValueError(f"{path}: a feature has an invalid geometry ({error})") from error
        qupath = any("objectType" in props or "classification" in props for _, props in features)
        crs = ((data.get("crs") or {}).get("properties") or {}).get("name") if isinstance(data, dict) else None
        return features, qupath, crs
    import pyogrio
    import shapely

    try:
        _, _, wkb, fields = pyogrio.raw.read(path)
        info = pyogrio.read_info(path)
    except Exception as error:  # GDAL cannot read it
        raise ValueError(f"{path}: cannot be read as a vector file ({error})") from error
    names = list(info["fields"])
    geometries = shapely.from_wkb(wkb)
    features = [
        (geometry, {name: column[i] for name, column in zip(names, fields)}) for i, geometry in enumerate(geometries)
    ]
    return features, False, info.get("crs")


def _class_of(properties: dict) -> tuple[str | None, str | None]:
    """The class name (None: unclassified) and ``#rrggbb`` colour of a feature."""
    classification = properties.get("classification")
    if isinstance(classification, str):
        try:
            classification = json.loads(classification)
        except json.JSONDecodeError:
            return classification or None, None
    if isinstance(classification, dict):
        name = classification.get("name") or None
        colour = classification.get("color") or classification.get("colorRGB")
        if isinstance(colour, list | tuple) and len(colour) >= 3:
            return name, "#" + "".join(f"{int(c) & 255:02x}" for c in colour[:3])
        if isinstance(colour, int):  # QuPath's packed RGB
            return name, f"#{(colour >> 16) & 255:02x}{(colour >> 8) & 255:02x}{colour & 255:02x}"
        return name, None
    for key in _CLASS_ATTRIBUTES:
        value = properties.get(key)
        if value not in (None, "") and not (isinstance(value, float) and np.isnan(value)):
            return str(value), None
    return None, None


def _polygons(geometry) -> list:
    """The valid polygons of a geometry (a self-intersecting ring is repaired by ``make_valid``, both lobes
    of a bow-tie kept)."""
    import shapely

    if geometry.geom_type == "Polygon":
        if geometry.is_valid:
            return [geometry]
        repaired = shapely.make_valid(geometry)
        return (
            [part for part in _polygons(repaired) if part.is_valid] if repaired.geom_type != "Polygon" else [repaired]
        )
    if geometry.geom_type in ("MultiPolygon", "GeometryCollection"):
        return [part for g in geometry.geoms for part in _polygons(g)]
    return []


def _point_objects(geometry, properties: dict):
    """``((x, y), size)`` of each object: points with their recorded size, polygons by centroid and equivalent
    diameter."""
    measurements = properties.get("measurements") or {}
    if isinstance(measurements, list):  # older QuPath: [{"name": …, "value": …}]
        measurements = {m.get("name"): m.get("value") for m in measurements if isinstance(m, dict)}
    if geometry.geom_type in ("Point", "MultiPoint"):
        size = measurements.get("Size px") or properties.get("size") or 16.0
        points = [geometry] if geometry.geom_type == "Point" else list(geometry.geoms)
        return [((p.x, p.y), float(size)) for p in points]
    return [((g.centroid.x, g.centroid.y), float(2 * np.sqrt(g.area / np.pi))) for g in _polygons(geometry)]


def _looks_like_map(features) -> bool:
    """Coordinates no pixel image has: negative or beyond 10⁷ (UTM northings), or fractional degrees."""
    for geometry, _ in features[:50]:
        minx, miny, maxx, maxy = geometry.bounds
        if minx < -1 or miny < -1 or max(abs(maxx), abs(maxy)) > 1e7:
            return True
    return False


@dataclass(frozen=True)
class _PixelFrame:
    geotransform: tuple[float, ...]
    crs: str

    def from_crs(self, crs: str | None):
        """A function moving shapely geometries from ``crs`` to level-0 pixel corners of the image."""
        import pyproj
        import shapely

        x0, dx, rx, y0, ry, dy = self.geotransform
        inverse = np.linalg.inv(np.array([[dx, rx], [ry, dy]]))
        transformer = None
        if crs and not pyproj.CRS.from_user_input(crs).equals(pyproj.CRS.from_user_input(self.crs)):
            transformer = pyproj.Transformer.from_crs(crs, self.crs, always_xy=True)

        def move(xy: np.ndarray) -> np.ndarray:
            if transformer is not None:
                xy = np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))
            return (xy - np.array([x0, y0])) @ inverse.T

        return lambda geometry: shapely.transform(geometry, move)


def _map_frame(pyramid) -> _PixelFrame | None:
    if pyramid is None or pyramid.geotransform is None or not pyramid.crs:
        return None
    return _PixelFrame(tuple(pyramid.geotransform), pyramid.crs)
