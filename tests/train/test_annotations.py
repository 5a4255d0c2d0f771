"""Training truth from the annotations people have: QuPath GeoJSON (classified polygons with holes, an
unclassified annotated region, detections as points and cell polygons) and GIS vectors in another CRS over a
GeoTIFF; unlabelled pixels are ignored by the loss, and crops come from annotated areas."""

import json
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
import tifffile
import torch
from rasterio.transform import from_origin

from napari_xt.cli import main
from napari_xt.io import open_pyramid
from napari_xt.train.annotations import read_annotations
from napari_xt.train.data import file_source, sample_crop
from napari_xt.train.targets import IGNORE
from tests.conftest import smooth_image


def feature(geometry, name=None, kind="annotation", colour=None, **measurements):
    properties = {"objectType": kind}
    if name:
        properties["classification"] = {"name": name, **({"color": colour} if colour else {})}
    if measurements:
        properties["measurements"] = measurements
    return {"type": "Feature", "geometry": shapely.geometry.mapping(geometry), "properties": properties}


@pytest.fixture
def qupath(tmp_path):
    """A QuPath export over a 1024² RGB slide: an annotated region (unclassified), tumour with a hole, stroma,
    two cells as points and one as a polygon."""
    tifffile.imwrite(tmp_path / "slide.tif", smooth_image(1024, 1024, 3), tile=(256, 256), photometric="rgb")
    tumour = shapely.Polygon(
        [(100, 100), (400, 100), (400, 400), (100, 400)], [[(200, 200), (300, 200), (300, 300), (200, 300)]]
    )
    features = [
        feature(shapely.box(50, 50, 600, 600)),  # the fully annotated region
        feature(tumour, "Tumor", colour=[200, 0, 0]),
        feature(shapely.box(450, 450, 550, 550), "Stroma", colour=[0, 150, 0]),
        feature(shapely.Point(700.5, 800.5), "Lymphocyte", kind="detection", **{"Size px": 10.0}),
        feature(shapely.Point(720.5, 810.5), "Lymphocyte", kind="detection"),
        feature(shapely.Point(730.0, 730.0).buffer(6, quad_segs=32), "Tumor cell", kind="detection"),
    ]
    (tmp_path / "qupath.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return tmp_path / "slide.tif", tmp_path / "qupath.geojson"


def test_qupath_export_gives_classes_colours_regions_and_objects(qupath):
    _image, path = qupath
    found = read_annotations(path)
    assert found.segmentation_classes == ["background", "Tumor", "Stroma"]
    assert found.detection_classes == ["Lymphocyte", "Tumor cell"]
    assert found.colours["Tumor"] == "#c80000" and found.colours["Stroma"] == "#009600"
    labels = found.labels(0, 0, 1024, 1024, 1.0)
    assert labels[150, 150] == 1 and labels[500, 500] == 2
    assert labels[250, 250] == 0  # the tumour's hole lies inside the annotated region: background
    assert labels[580, 580] == 0  # in the region, under no class
    assert labels[700, 700] == IGNORE and labels[10, 10] == IGNORE  # nothing said there: ignored, not background
    assert (labels == 1).sum() == 300 * 300 - 100 * 100  # pixel centres inside the polygon
    points = found.points
    np.testing.assert_allclose(points.x[:2], [700.0, 720.0])  # QuPath corners → napari-xt pixel centres
    assert points.size[0] == 10.0
    assert points.label.tolist() == [0, 0, 1] and points.size[2] == pytest.approx(12.0, rel=0.01)
    # at level 1 (2 level-0 pixels per analysis pixel) the same truth, sampled at analysis pixel centres
    level1 = found.labels(0, 0, 512, 512, 2.0)
    assert level1[75, 75] == 1 and level1[125, 125] == 0 and level1[300, 300] == IGNORE


def test_crops_come_from_annotated_areas_and_the_loss_ignores_the_rest(qupath):
    image, path = qupath
    source = file_source(str(image), 0, None, None, [], annotations=str(path)).materialise()
    rng = np.random.default_rng(0)
    for _ in range(20):
        crop = sample_crop(source, 128, rng, object_bias=0.0)
        assert (crop["segmentation"] != IGNORE).any()  # every crop holds truth
        cells = (crop["segmentation"] != IGNORE).reshape(32, 4, 32, 4).any(axis=(1, 3))
        np.testing.assert_array_equal(crop["annotated"], cells | crop["centres"])  # no negatives unannotated


def test_polygons_without_any_object_say_nothing_about_objects(tmp_path):
    """Fine-tuning on painted areas alone must not teach the detection head that there are no objects."""
    tifffile.imwrite(tmp_path / "slide.tif", smooth_image(512, 512, 3), photometric="rgb")
    features = [feature(shapely.box(0, 0, 512, 512), "Tumor")]
    (tmp_path / "areas.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    known = (["background", "Tumor"], ["Lymphocyte"])
    source = file_source(
        str(tmp_path / "slide.tif"), 0, None, None, [], annotations=str(tmp_path / "areas.geojson"), known=known
    ).materialise()
    crop = sample_crop(source, 128, np.random.default_rng(0))
    assert (crop["segmentation"] == 1).all()
    assert not crop["annotated"].any()  # no heatmap negatives: no object was marked anywhere


def test_train_on_a_qupath_export_from_the_command_line(qupath, tmp_path, capsys):
    from napari_xt.model import read_checkpoint_info

    image, path = qupath
    out = tmp_path / "mine.safetensors"
    args = ["train", "--data", "files", "--image", str(image), "--annotations", str(path), "--level", "0"]
    args += ["--preset", "demo_slide_xl", "--region-size", "64", "--steps", "1", "--crop-regions", "2"]
    args += ["--batch", "1", "--out", str(out)]
    assert main(args) == 0
    heads = read_checkpoint_info(out).config.heads
    assert heads.segmentation_classes == ["background", "Tumor", "Stroma"]
    assert heads.detection_classes == ["Lymphocyte", "Tumor cell"] and heads.colours["Tumor"] == "#c80000"


def test_gis_vectors_in_another_crs_are_reprojected_onto_the_geotiff(tmp_path):
    import pyproj

    with rasterio.open(
        tmp_path / "scene.tif",
        "w",
        driver="GTiff",
        width=512,
        height=512,
        count=1,
        dtype="float32",
        crs="EPSG:32633",
        transform=from_origin(500000, 4000000, 10, 10),
    ) as dataset:
        dataset.write(np.ones((1, 512, 512), np.float32))
    utm = shapely.box(
        500000 + 10 * 100, 4000000 - 10 * 300, 500000 + 10 * 250, 4000000 - 10 * 150
    )  # px x 100–250, y 150–300
    to_wgs84 = pyproj.Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    lonlat = shapely.transform(
        shapely.segmentize(utm, 50), lambda xy: np.column_stack(to_wgs84.transform(xy[:, 0], xy[:, 1]))
    )
    pyogrio.raw.write(
        str(tmp_path / "land.gpkg"),
        shapely.to_wkb([lonlat]),
        field_data=[np.array(["land"], dtype=object)],
        fields=["class"],
        layer="land",
        driver="GPKG",
        geometry_type="Polygon",
        crs="EPSG:4326",
    )
    found = read_annotations(tmp_path / "land.gpkg", open_pyramid(tmp_path / "scene.tif"))
    assert found.segmentation_classes == ["background", "land"]
    labels = found.labels(0, 0, 512, 512, 1.0)
    inside = np.argwhere(labels == 1)
    assert inside[:, 0].min() == 150 and inside[:, 0].max() == 299 and inside[:, 1].min() == 100
    assert abs((labels == 1).sum() - 150 * 150) <= 150  # within a row of pixels of the UTM box
    with pytest.raises(ValueError, match="not georeferenced"):
        tifffile.imwrite(tmp_path / "plain.tif", np.zeros((64, 64), np.uint8))
        read_annotations(tmp_path / "land.gpkg", open_pyramid(tmp_path / "plain.tif"))


def test_fine_tune_a_shipped_checkpoint_with_new_classes_and_a_held_out_image(qupath, tmp_path, capsys):
    """--init keeps the shipped model's encoders and context, gives new heads for the annotation's classes,
    --freeze encoder leaves the region encoder untouched, and --held-out scores the last image."""
    import shutil

    from safetensors.torch import load_file

    from napari_xt.model import load_checkpoint

    image, path = qupath
    shutil.copy(image, tmp_path / "second.tif")
    shipped = Path(__file__).parents[2] / "src" / "napari_xt" / "checkpoints" / "slide_xl.safetensors"
    out = tmp_path / "tuned.safetensors"
    args = ["train", "--data", "files", "--level", "0", "--init", str(shipped), "--freeze", "encoder"]
    args += ["--image", str(image), "--annotations", str(path), "--image", str(tmp_path / "second.tif")]
    args += ["--annotations", str(path), "--held-out", "1", "--steps", "2", "--crop-regions", "2", "--batch", "1"]
    assert main([*args, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "new: detection, region_classes, segmentation" in err and "held out" in err
    _model, info = load_checkpoint(out)
    assert info.config.heads.segmentation_classes == ["background", "Tumor", "Stroma"]
    before, after = load_file(str(shipped)), load_file(str(out))
    encoder = [k for k in after if k.startswith("region_encoder.")]
    assert encoder and all(torch.equal(after[k].float(), before[k].float()) for k in encoder)  # frozen
    moved = [
        k for k in after if k.startswith("context_encoder.") and not torch.equal(after[k].float(), before[k].float())
    ]
    assert moved  # the context was fine-tuned
    assert info.provenance["eval"][0]["iou"].keys() == {"background", "Tumor", "Stroma"}


def textures(folder: Path, size: int = 512, seed: int = 0) -> np.ndarray:
    """Two textured classes (stripes, speckle) in smooth blobs; QuPath-style polygons annotate the top half
    (inside one unclassified annotated region); the bottom half is held out. Returns the true classes 1, 2."""
    import scipy.ndimage as ndi
    from rasterio.features import shapes

    rng = np.random.default_rng(seed)
    truth = (ndi.gaussian_filter(rng.normal(size=(size, size)), 24) > 0).astype(np.uint8) + 1
    _, xx = np.mgrid[:size, :size]
    grey = np.where(truth == 1, 127 + 100 * np.sin(xx / 2.0), 127 + 60 * rng.normal(size=(size, size))).clip(0, 255)
    tifffile.imwrite(folder / "textures.tif", np.stack([grey, grey * 0.8, grey * 0.6], -1).astype(np.uint8))
    top = np.zeros_like(truth)
    top[: size // 2] = truth[: size // 2]
    features = [feature(shapely.box(0, 0, size, size // 2))]
    for geometry, value in shapes(top, mask=top > 0, connectivity=4):
        features.append(feature(shapely.geometry.shape(geometry), {1: "Stripes", 2: "Speckle"}[int(value)]))
    (folder / "textures.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return truth


def test_it_learns_from_qupath_polygons_on_an_image_nobody_tuned_for(tmp_path):
    """60 CPU steps (about 20 s on the 2-core dev VM) on the annotated top half; the held-out bottom half
    reaches an IoU above 0.5 for both textures (measured 0.65 and 0.72)."""
    import zarr

    from napari_xt.engine.runner import RunOptions, run_to_end
    from napari_xt.model import load_checkpoint

    truth = textures(tmp_path)
    out = tmp_path / "textures.safetensors"
    args = ["train", "--data", "files", "--image", str(tmp_path / "textures.tif"), "--level", "0"]
    args += ["--annotations", str(tmp_path / "textures.geojson"), "--preset", "test_tiny_none", "--steps", "60"]
    args += ["--crop-regions", "2", "--batch", "2", "--lr", "3e-3", "--out", str(out)]
    assert main(args) == 0
    model, info = load_checkpoint(out)
    run = tmp_path / "held_out.xt.zarr"
    run_to_end(str(tmp_path / "textures.tif"), model, run, RunOptions(level=0, cache_dir="", background="none"))
    predicted = zarr.open_group(str(run), mode="r")["labels/segmentation/0"][256:]
    names = info.config.heads.segmentation_classes
    for value, name in ((1, "Stripes"), (2, "Speckle")):
        mine, true = predicted == names.index(name), truth[256:] == value
        assert (mine & true).sum() / (mine | true).sum() > 0.5, name


def test_annotations_named_as_the_checkpoints_classes_keep_its_heads(tmp_path, capsys):
    """Fine-tuning the same task: the annotation's classes take the checkpoint's indices, every head is kept."""
    from napari_xt.model import read_checkpoint_info

    shipped = Path(__file__).parents[2] / "src" / "napari_xt" / "checkpoints" / "slide_xl.safetensors"
    classes = read_checkpoint_info(shipped).config.heads.segmentation_classes
    tifffile.imwrite(tmp_path / "s.tif", smooth_image(512, 512, 3), photometric="rgb")
    features = [feature(shapely.box(0, 0, 512, 512)), feature(shapely.box(10, 10, 200, 200), "tumour")]
    features.append(feature(shapely.box(300, 300, 400, 400), "stroma"))
    (tmp_path / "a.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    args = [
        "train",
        "--data",
        "files",
        "--image",
        str(tmp_path / "s.tif"),
        "--annotations",
        str(tmp_path / "a.geojson"),
    ]
    args += ["--init", str(shipped), "--level", "0", "--steps", "1", "--crop-regions", "1", "--batch", "1"]
    assert main([*args, "--out", str(tmp_path / "same.safetensors")]) == 0
    assert "new: none" in capsys.readouterr().err
    assert read_checkpoint_info(tmp_path / "same.safetensors").config.heads.segmentation_classes == classes


def test_broken_files_and_geometries_get_clear_errors_or_repairs(tmp_path):
    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])  # self-intersecting
    (tmp_path / "bowtie.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": [feature(bowtie, "x")]})
    )
    found = read_annotations(tmp_path / "bowtie.geojson")
    assert [round(shape.area) for _, shape in found.shapes] == [25, 25]  # both lobes, repaired
    (tmp_path / "empty.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(ValueError, match="no polygon, point or painted annotation"):
        read_annotations(tmp_path / "empty.geojson")
    (tmp_path / "broken.geojson").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid GeoJSON"):
        read_annotations(tmp_path / "broken.geojson")
    (tmp_path / "broken.gpkg").write_bytes(b"nonsense")
    with pytest.raises(ValueError, match="cannot be read as a vector file"):
        read_annotations(tmp_path / "broken.gpkg")
