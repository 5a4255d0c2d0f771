"""Results in map coordinates for georeferenced inputs (GeoTIFF): RFC 7946 GeoJSON in WGS84, a GeoPackage in the
image's own CRS with flat, typed attributes, and the segmentation as a Cloud-Optimised GeoTIFF.

Level-0 pixel corners ``(x, y)`` map to the CRS with the GDAL geotransform ``(x0, dx, rx, y0, ry, dy)`` the
reader found (PixelIsPoint files are already shifted to corners there). Needs the ``geo`` extra
(pyproj, shapely, pyogrio, rasterio).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_xt._atomic import atomic_path
from napari_xt.engine.polygons import MissingGeoExtra, packed_ones, polygon_arrays, to_level0

WGS84 = "EPSG:4326"


def require_map_exports() -> None:
    try:
        import pyogrio  # noqa: F401
        import pyproj  # noqa: F401
        import rasterio  # noqa: F401
        import shapely  # noqa: F401
    except ImportError as error:
        raise MissingGeoExtra(
            f"map exports need pyproj, shapely, pyogrio and rasterio ({error.name} is missing); install them with "
            "pip install 'napari-xt[geo]'"
        ) from error


@dataclass(frozen=True)
class MapFrame:
    """Where level-0 pixels lie on the map: a geotransform and the CRS it is in (``EPSG:<code>`` or WKT)."""

    geotransform: tuple[float, ...]
    crs: str | None

    @classmethod
    def of(cls, spec: dict) -> MapFrame | None:
        transform = spec.get("geotransform")
        return cls(tuple(float(v) for v in transform), spec.get("crs")) if transform else None

    def xy(self, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 pixel-corner coordinates → map coordinates."""
        x0, dx, rx, y0, ry, dy = self.geotransform
        return x0 + px * dx + py * rx, y0 + px * ry + py * dy

    def geometry(self, geometry):
        """A shapely geometry in level-0 pixel corners → the same in map coordinates."""
        import shapely

        def move(coords: np.ndarray) -> np.ndarray:
            x, y = self.xy(coords[:, 0], coords[:, 1])
            return np.column_stack([x, y])

        return shapely.transform(geometry, move)

    @property
    def pixel_area(self) -> float:
        """Area of one level-0 pixel in squared CRS units."""
        _, dx, rx, _, ry, dy = self.geotransform
        return abs(dx * dy - rx * ry)

    @property
    def linear_unit(self) -> str:
        """``m``, ``ft``, ``deg``, … of the CRS's axes (``unknown`` without a CRS)."""
        if not self.crs:
            return "unknown"
        import pyproj

        crs = pyproj.CRS.from_user_input(self.crs)
        if crs.is_geographic:
            return "deg"
        name = (crs.axis_info[0].unit_name or "").lower() if crs.axis_info else ""
        return {"metre": "m", "meter": "m", "foot": "ft", "us survey foot": "ft"}.get(name, name or "unknown")

    @property
    def area_field(self) -> str:
        """The attribute name of an area in the CRS's units (``area_m2``)."""
        return f"area_{self.linear_unit}2"

    @property
    def perimeter_field(self) -> str:
        return f"perimeter_{self.linear_unit}"

    def to_wgs84(self):
        """A function moving shapely geometries from the CRS to WGS84 longitude/latitude (RFC 7946 order)."""
        import pyproj
        import shapely

        transformer = pyproj.Transformer.from_crs(pyproj.CRS.from_user_input(self.crs), WGS84, always_xy=True)

        def move(geometry):
            return shapely.transform(
                geometry, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1], errcheck=True))
            )

        return move


class GeoJSONWriter:
    """A FeatureCollection written feature by feature to a temporary file, renamed into place on ``close()``
    (an interrupted export never leaves half a file under the final name)."""

    def __init__(self, path: Path, header: dict | None = None):
        self._context = atomic_path(Path(path))
        self._tmp = self._context.__enter__()
        self._handle = open(self._tmp, "w")  # noqa: SIM115 (closed in close())
        members = "".join(f"{json.dumps(k)}: {json.dumps(v)}, " for k, v in (header or {}).items())
        self._handle.write('{"type": "FeatureCollection", ' + members + '"features": [\n')
        self._first = True
        self.count = 0

    def add(self, geometry, properties: dict) -> None:
        one = np.empty(1, dtype=object)
        one[0] = geometry
        self.add_texts(geojson_pieces(one), [json.dumps(properties)])

    def add_texts(self, geometries, properties) -> None:
        """Features from the GeoJSON texts of their geometries (``geojson_texts``, or ``geojson_pieces``: a
        large polygon's text made piece by piece as it is written), not parsed and written again, and of their
        properties. Each is written as it is made and never copied whole (a polygon's text can be tens of MB)."""
        write = self._handle.write
        for geometry, values in zip(geometries, properties):
            write('{"type": "Feature", "geometry": ' if self._first else ',\n{"type": "Feature", "geometry": ')
            for piece in (geometry,) if isinstance(geometry, str) else geometry:
                write(piece)
            write(f', "properties": {values}}}')
            self._first = False
            self.count += 1

    def close(self) -> None:
        self._handle.write("\n]}\n")
        self._handle.close()
        self._context.__exit__(None, None, None)

    def abort(self) -> None:
        self._handle.close()
        self._context.__exit__(RuntimeError, RuntimeError("aborted"), None)


LARGE_POLYGON = 100_000
"""From this many vertices on, ``geojson_texts`` writes a polygon from its vertex arrays. GEOS's GeoJSON writer
first builds a JSON tree of about 100 bytes a vertex: 237 MB for the open sea of a speckled 16,384² SAR map
(2.5 million vertices, 249,951 holes), whose text is 42 MB."""


def geojson_texts(geometries: np.ndarray) -> list[str]:
    """The GeoJSON text of each geometry, as ``shapely.to_geojson`` writes it. Polygons of ``LARGE_POLYGON``
    vertices or more are written from their vertex arrays, with numbers in Python's shortest round-trip form
    (GEOS's own for pixel and map coordinates; above about 1e14 the two may pick different digits of the same
    number)."""
    return [text if isinstance(text, str) else "".join(text) for text in geojson_pieces(geometries)]


def geojson_pieces(geometries: np.ndarray, downsample: tuple[float, float] | None = None) -> list:
    """``geojson_texts``, where each large polygon's text (and each ``PackedPolygon``'s, which ``geojson_texts``
    does not take) is an iterator of its pieces instead, made from the polygon's arrays only as it is consumed
    (``GeoJSONWriter.add_texts`` writes them one by one): the open sea of a speckled 16,384² SAR map is 42 MB of
    text, and its arrays, ring texts and the joined text took the export 227 MB above what it held.

    ``downsample``: the texts of ``polygons.to_level0(geometries, downsample)``, the same numbers, without a
    scaled copy of the large polygons (the open sea's: 236 MB)."""
    import shapely

    geometries = np.asarray(geometries, dtype=object)
    packed = packed_ones(geometries)
    large = packed.copy()
    large[~packed] = (shapely.get_type_id(geometries[~packed]) == shapely.GeometryType.POLYGON) & (
        shapely.get_num_coordinates(geometries[~packed]) >= LARGE_POLYGON
    )
    texts = np.empty(len(geometries), dtype=object)
    small = geometries[~large]
    texts[~large] = shapely.to_geojson(small if downsample is None else to_level0(small, downsample))
    factor = None if downsample is None else np.array([float(downsample[1]), float(downsample[0])])
    for i in np.flatnonzero(large):
        texts[i] = _polygon_pieces(geometries[i], factor)
    return texts.tolist()


def _polygon_pieces(polygon, factor: np.ndarray | None) -> Iterator[str]:
    yield '{"type":"Polygon","coordinates":['
    vertices, ring_offsets = polygon_arrays(polygon)
    for start, stop in zip(ring_offsets[:-1].tolist(), ring_offsets[1:].tolist()):
        yield "[" if start == 0 else ",["
        for first in range(start, stop, _VERTICES_AT_ONCE):
            block = vertices[first : min(first + _VERTICES_AT_ONCE, stop)]  # int32 in a PackedPolygon
            block = (block.astype(np.float64) if factor is None else block * factor).tolist()
            yield ("" if first == start else ",") + ",".join(f"[{x!r},{y!r}]" for x, y in block)
        yield "]"
    yield "]}"


_VERTICES_AT_ONCE = 65_536
"""Vertices of a large polygon made text at once: as Python lists and strings a vertex takes about 200 bytes
before it is joined (the open sea's 1.3-million-vertex shell: 190 MB)."""


class GeoPackageLayer:
    """One layer of a GeoPackage in the image's CRS, written in batches (``pyogrio``)."""

    def __init__(self, path: Path, layer: str, geometry_type: str, fields: dict[str, str], crs: str | None):
        self.path, self.layer, self.geometry_type, self.crs = Path(path), layer, geometry_type, crs
        self.fields = fields  # name → numpy dtype ("U" for text)
        self._rows: list[tuple] = []
        self._written = False

    def add(self, geometry, **values) -> None:
        self._rows.append((geometry, values))
        if len(self._rows) >= 10_000:
            self.flush()

    def flush(self) -> None:
        import shapely
        from pyogrio.raw import write

        if not self._rows and self._written:
            return
        geometries = shapely.to_wkb([g for g, _ in self._rows]) if self._rows else np.array([], dtype=object)
        columns = [
            np.array([values[name] for _, values in self._rows], dtype=object if dtype == "U" else dtype)
            for name, dtype in self.fields.items()
        ]
        write(
            str(self.path),
            geometries,
            field_data=columns,
            fields=list(self.fields),
            layer=self.layer,
            driver="GPKG",
            geometry_type=self.geometry_type,
            crs=self.crs,
            append=self._written,
            encoding="UTF-8",
        )
        self._written = True
        self._rows = []


def write_cog(
    labels, path: Path, frame: MapFrame, downsample: tuple[float, float], colours: Iterable[tuple[int, ...]]
) -> None:
    """The label raster (analysis level, read in strips) as a Cloud-Optimised GeoTIFF in the image's CRS, with
    the class colours as its colour table and nearest-neighbour overviews."""
    import rasterio
    import rasterio.shutil
    from rasterio.transform import Affine

    height, width = labels.shape
    dtype = np.dtype(labels.dtype)
    x0, dx, rx, y0, ry, dy = frame.geotransform
    sy, sx = float(downsample[0]), float(downsample[1])
    transform = Affine(dx * sx, rx * sy, x0, ry * sx, dy * sy, y0)
    path = Path(path)
    staging = path.with_name(f".{path.name}.tiled.tif")
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": dtype.name,
        "crs": frame.crs,
        "transform": transform,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    try:
        with rasterio.open(staging, "w", **profile) as dataset:
            strip = 2048
            for top in range(0, height, strip):
                bottom = min(top + strip, height)
                window = rasterio.windows.Window(0, top, width, bottom - top)
                dataset.write(np.asarray(labels[top:bottom, :]), 1, window=window)
            if dtype.itemsize == 1:
                dataset.write_colormap(1, {i: tuple(rgba) for i, rgba in enumerate(colours)})
            factors = [2**k for k in range(1, 12) if max(height, width) / 2**k >= 256]
            if factors:
                dataset.build_overviews(factors, rasterio.enums.Resampling.nearest)
            dataset.update_tags(AREA_OR_POINT="Area")
        with atomic_path(path) as tmp:
            rasterio.shutil.copy(staging, tmp, driver="COG", compress="deflate", overview_resampling="nearest")
    finally:
        if staging.exists():
            staging.unlink()
        for extra in path.parent.glob(f".{path.name}.tiled.tif*"):
            extra.unlink() if extra.is_file() else shutil.rmtree(extra, ignore_errors=True)
