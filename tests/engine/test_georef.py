"""Georeferenced results for a GeoTIFF written by a GIS library (rasterio/GDAL): the CRS kept, detections and
polygons in WGS84 RFC 7946 GeoJSON (pyproj), a GeoPackage in the native CRS with typed attributes (pyogrio),
and the segmentation as a Cloud-Optimised GeoTIFF (rasterio) — each read back with the library behind the tool
a GIS user opens it with."""

import json

import numpy as np
import pyogrio
import pyproj
import pytest
import rasterio
import shapely
import zarr
from rasterio.transform import from_origin

from napari_xt.engine.polygons import to_level0
from napari_xt.engine.runner import RunOptions, run_to_end
from napari_xt.io import open_pyramid
from tests.conftest import tiny_sar_model

ORIGIN = (500000.0, 4000000.0)


def write_geotiff(path, image: np.ndarray, pixel_is_point: bool = False, crs="EPSG:32633"):
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=image.shape[1],
        height=image.shape[0],
        count=1,
        dtype="float32",
        crs=crs,
        transform=from_origin(*ORIGIN, 10, 10),
        tiled=True,
        blockxsize=256,
        blockysize=256,
    ) as dataset:
        dataset.write(image, 1)
        if pixel_is_point:
            dataset.update_tags(AREA_OR_POINT="Point")


@pytest.fixture(scope="module")
def geo_run(tmp_path_factory, sar_scene):
    folder = tmp_path_factory.mktemp("geo")
    image = np.asarray(sar_scene.pyramid().levels[0])[..., 0]
    write_geotiff(folder / "scene.tif", image)
    options = RunOptions(level=1, batch_size=8, cache_dir="", export_threshold=0.2, store_threshold=0.1)
    run_to_end(open_pyramid(folder / "scene.tif"), tiny_sar_model(), folder / "run.xt.zarr", options)
    return folder / "run.xt.zarr"


@pytest.mark.parametrize("pixel_is_point", [False, True])
def test_crs_and_geotransform_match_what_gdal_reads(tmp_path, pixel_is_point):
    write_geotiff(tmp_path / "g.tif", np.zeros((64, 64), np.float32), pixel_is_point)
    pyramid = open_pyramid(tmp_path / "g.tif")
    with rasterio.open(tmp_path / "g.tif") as dataset:
        gdal = dataset.transform.to_gdal()  # GDAL shifts PixelIsPoint tiepoints to corners
        assert pyproj.CRS.from_user_input(pyramid.crs) == pyproj.CRS.from_user_input(dataset.crs.to_wkt())
    assert pyramid.geotransform == pytest.approx(gdal)
    assert pyramid.metadata["raster_type"] == ("point" if pixel_is_point else "area")
    assert "CRS: EPSG:32633" in pyramid.describe()


def test_a_crs_the_geokeys_define_themselves_is_read_through_gdal(tmp_path):
    custom = "+proj=tmerc +lat_0=0 +lon_0=15.5 +k=0.9996 +x_0=500000 +y_0=0 +ellps=WGS84 +units=m +no_defs"
    write_geotiff(tmp_path / "c.tif", np.zeros((32, 32), np.float32), crs=custom)
    crs = pyproj.CRS.from_user_input(open_pyramid(tmp_path / "c.tif").crs)
    assert crs.to_epsg() is None and crs.coordinate_operation.params[1].value == pytest.approx(15.5)


def test_the_run_keeps_the_crs_and_lists_its_map_exports(geo_run):
    spec = zarr.open_group(str(geo_run), mode="r").attrs["napari_xt"]
    assert spec["crs"] == "EPSG:32633" and spec["geotransform"][:2] == [ORIGIN[0], 10.0]
    assert {"results.gpkg", "segmentation.tif", "detections.wgs84.geojson", "segmentation.wgs84.geojson"} <= set(
        spec["export_files"]
    )
    assert spec["exports_skipped"] == {}


def test_geopackage_layers_are_typed_in_the_native_crs_and_match_the_raster_area(geo_run):
    group = zarr.open_group(str(geo_run), mode="r")
    spec = group.attrs["napari_xt"]
    labels = group["labels/segmentation/0"][:]
    assert set(pyogrio.list_layers(geo_run / "results.gpkg")[:, 0]) == {"segmentation", "detections"}
    info = pyogrio.read_info(geo_run / "results.gpkg", layer="segmentation")
    assert pyproj.CRS.from_user_input(info["crs"]).to_epsg() == 32633
    assert dict(zip(info["fields"], info["dtypes"])) == {
        "class": "object",
        "class_index": "int32",
        "area_m2": "float64",
        "perimeter_m": "float64",
    }
    _, _, wkb, fields = pyogrio.raw.read(geo_run / "results.gpkg", layer="segmentation")
    polygons = shapely.from_wkb(wkb)
    assert shapely.is_valid(polygons).all()
    pixel_m2 = spec["layer_scale"][0] * spec["layer_scale"][1]  # one analysis pixel: 20 m × 20 m
    for index, name in enumerate(spec["segmentation_classes"][1:], start=1):
        raster = (labels == index).sum() * pixel_m2
        vector = shapely.area(polygons[fields[1] == index]).sum()
        assert vector == pytest.approx(raster, rel=0.01, abs=pixel_m2), name
    np.testing.assert_allclose(fields[2], shapely.area(polygons))  # area_m2 is the polygon's area
    # polygons lie on the scene: inside its map extent
    x0, y0 = ORIGIN
    h, w = spec["image_shape_level0"]
    assert shapely.box(x0, y0 - 10 * h, x0 + 10 * w, y0).buffer(1e-6).contains(shapely.union_all(polygons))


def test_detections_in_wgs84_round_trip_to_the_native_crs(geo_run):
    collection = json.loads((geo_run / "detections.wgs84.geojson").read_text())
    assert "crs" not in collection  # RFC 7946: WGS84 longitude/latitude, no crs member
    features = collection["features"]
    assert features, "the tiny model should export some detections at 0.2"
    _, _, wkb, _fields = pyogrio.raw.read(geo_run / "results.gpkg", layer="detections")
    native = shapely.from_wkb(wkb)
    to_native = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)
    lon, lat = np.array([f["geometry"]["coordinates"] for f in features]).T
    assert ((lon > 14) & (lon < 16) & (lat > 35) & (lat < 37)).all()  # UTM 33N around 15° E, 36° N
    x, y = to_native.transform(lon, lat)
    np.testing.assert_allclose(x, shapely.get_x(native), atol=1e-3)
    np.testing.assert_allclose(y, shapely.get_y(native), atol=1e-3)
    first = features[0]["properties"]
    assert set(first) == {"class", "class_index", "score", "size_m", "size_px"}  # flat, typed
    assert isinstance(first["score"], float) and first["score"] >= 0.2
    assert first["size_m"] == pytest.approx(first["size_px"] * 10.0)


def test_wgs84_polygons_wind_counter_clockwise(geo_run):
    features = json.loads((geo_run / "segmentation.wgs84.geojson").read_text())["features"]
    assert features
    for feature in features[:50]:
        polygon = shapely.geometry.shape(feature["geometry"])
        assert polygon.is_valid and polygon.exterior.is_ccw  # RFC 7946, section 3.1.6


def test_segmentation_cog_is_the_label_raster_in_the_native_crs(geo_run):
    group = zarr.open_group(str(geo_run), mode="r")
    labels = group["labels/segmentation/0"][:]
    spec = group.attrs["napari_xt"]
    second = spec["colours"].get(spec["segmentation_classes"][2], "#808080")
    with rasterio.open(geo_run / "segmentation.tif") as dataset:
        assert dataset.crs.to_epsg() == 32633
        assert dataset.transform.to_gdal() == pytest.approx((ORIGIN[0], 20.0, 0.0, ORIGIN[1], 0.0, -20.0))
        assert dataset.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert dataset.block_shapes[0] == (512, 512) and dataset.overviews(1)
        np.testing.assert_array_equal(dataset.read(1), labels)
        assert dataset.colormap(1)[2][:3] == tuple(int(second[i : i + 2], 16) for i in (1, 3, 5))


def test_qupath_annotations_carry_classes_colours_and_areas(geo_run):
    collection = json.loads((geo_run / "segmentation.geojson").read_text())
    group = zarr.open_group(str(geo_run), mode="r")
    spec = group.attrs["napari_xt"]
    labels = group["labels/segmentation/0"][:]
    areas: dict[str, float] = {}
    for feature in collection["features"]:
        properties = feature["properties"]
        assert properties["objectType"] == "annotation"
        assert set(properties["classification"]) == {"name", "color"}
        polygon = shapely.geometry.shape(feature["geometry"])
        assert polygon.is_valid
        # pixel coordinates at level 0 (QuPath's corner convention); the area measurement is in m²
        assert properties["measurements"]["Area m^2"] == pytest.approx(polygon.area * 100.0)
        name = properties["classification"]["name"]
        areas[name] = areas.get(name, 0.0) + polygon.area
    for index, name in enumerate(spec["segmentation_classes"][1:], start=1):
        level0_pixels = (labels == index).sum() * 4  # analysis level 1: 2 × 2 level-0 pixels
        assert areas.get(name, 0.0) == pytest.approx(level0_pixels, rel=0.01, abs=4), name


def test_a_failing_vector_export_costs_the_exports_never_the_run(tmp_path, sar_scene, monkeypatch):
    import napari_xt.engine.exports as exports

    def broken(*args, **kwargs):
        raise shapely.errors.GEOSException("TopologyException: side location conflict")

    monkeypatch.setattr(exports, "_export_polygons", broken)
    image = np.asarray(sar_scene.pyramid().levels[0])[:768, :768, 0]
    write_geotiff(tmp_path / "small.tif", image)
    options = RunOptions(level=0, cache_dir="", background="none")
    last = run_to_end(open_pyramid(tmp_path / "small.tif"), tiny_sar_model(), tmp_path / "r.xt.zarr", options)
    spec = zarr.open_group(str(tmp_path / "r.xt.zarr"), mode="r").attrs["napari_xt"]
    assert type(last).__name__ == "Finished" and spec["status"] == "finished"
    assert "GEOSException" in spec["exports_skipped"]["polygons and map exports"]
    assert (tmp_path / "r.xt.zarr" / "detections.csv").exists()  # the pixel exports are there


def test_large_polygons_are_written_from_their_vertices_as_geos_writes_them(monkeypatch, tmp_path):
    from napari_xt.engine import georef

    rng = np.random.default_rng(2)
    shell = [(0.0, 0.0), (4e8, 0.0), (4e8, 3e8), (0.0, 3e8)]  # map metres, level-0 pixels and their fractions
    holes = [list(rng.uniform(1e3, 2.9e8, 2)[None] + rng.uniform(0, 1e3, (6, 2))) for _ in range(20)]
    holes += [[(5.25, 5.0), (6.0, 5.5), (5.75, 6.75)], [(10.0, 10.0), (11.0, 10.0), (10.0, 11.0)]]
    holed = shapely.Polygon(shell, holes)
    assert len(holed.interiors) == 22
    mixed = np.array([shapely.Point(1.5, 2.0), holed, shapely.box(0, 0, 1, 1), shapely.MultiPoint([(0, 0), (1, 1)])])
    expected = shapely.to_geojson(mixed).tolist()
    monkeypatch.setattr(georef, "LARGE_POLYGON", 10)  # the holed polygon and not the box goes the array way
    assert georef.geojson_texts(mixed) == expected
    monkeypatch.setattr(georef, "_VERTICES_AT_ONCE", 2)  # rings of 4 and 7 vertices joined from blocks
    assert georef.geojson_texts(mixed) == expected
    for downsample in ((4.0, 4.0), (3.0, 1.5)):  # (dy, dx): the level-0 texts without a scaled copy
        level0 = shapely.to_geojson(to_level0(mixed, downsample)).tolist()
        pieces = georef.geojson_pieces(mixed, downsample)
        assert [text if isinstance(text, str) else "".join(text) for text in pieces] == level0
    for name, texts in (("large.geojson", georef.geojson_texts), ("pieces.geojson", georef.geojson_pieces)):
        writer = georef.GeoJSONWriter(tmp_path / name)
        writer.add_texts(texts(mixed), [json.dumps({"n": i}) for i in range(4)])
        writer.add(holed, {"n": 4})
        writer.close()
    assert not isinstance(georef.geojson_pieces(mixed)[1], str)  # the holed polygon as pieces, made as written
    assert (tmp_path / "pieces.geojson").read_bytes() == (tmp_path / "large.geojson").read_bytes()
    features = json.loads((tmp_path / "large.geojson").read_text())["features"]
    assert [f["properties"]["n"] for f in features] == [0, 1, 2, 3, 4]
    assert shapely.from_geojson(json.dumps(features[4]["geometry"])).equals_exact(holed, 0)


def test_components_handed_on_as_arrays_give_the_same_map_exports(geo_run, tmp_path, monkeypatch):
    """The QuPath GeoJSON, the WGS84 GeoJSON and the GeoPackage layer are the same whether the merged components
    reach the writers as their arrays (``PackedPolygon``) or as GEOS polygons."""
    from napari_xt.engine import polygons as module
    from napari_xt.engine.exports import ExportUnits, _export_polygons
    from napari_xt.engine.georef import MapFrame

    group = zarr.open_group(str(geo_run), mode="r")
    spec, labels = dict(group.attrs["napari_xt"]), group["labels/segmentation/0"]
    real, real_built, packed = module.polygon_batches, module.built, []
    monkeypatch.setattr(module, "polygon_batches", lambda *args, **kwargs: real(*args, tile=16, **kwargs))

    def built(geometries):
        packed.append(sum(isinstance(g, module.PackedPolygon) for g in geometries))
        return real_built(geometries)

    monkeypatch.setattr(module, "built", built)
    for folder, arrays_from in (("geos", 10**12), ("arrays", 0)):
        monkeypatch.setattr(module, "ARRAYS_FROM", arrays_from)
        (tmp_path / folder).mkdir()
        _export_polygons(tmp_path / folder, spec, labels, ExportUnits.of(spec), MapFrame.of(spec))
    for name in ("segmentation.geojson", "segmentation.wgs84.geojson"):
        assert (tmp_path / "arrays" / name).read_bytes() == (tmp_path / "geos" / name).read_bytes()
    read = [pyogrio.raw.read(tmp_path / f / ".results.building.gpkg", layer="segmentation") for f in ("arrays", "geos")]
    assert read[0][2].tolist() == read[1][2].tolist()  # the geometries' WKB
    for mine, theirs in zip(read[0][3], read[1][3], strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert sum(packed) > 0  # merged components with holes reached the writers as arrays
