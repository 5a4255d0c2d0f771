"""Layer data of a run directory: the ROI layer and its region grid (no viewer needed)."""

import numpy as np
import pytest

from napari_xt._napari.run_layers import MAX_GRID_LINES, points_properties, region_grid_lines, roi_layer_data
from napari_xt.engine.detections import DetectionTable


def test_region_grid_lines_lie_on_region_borders_inside_the_roi():
    lines = region_grid_lines((100, 0, 1000, 700), (256.0, 256.0))
    horizontal = [line for line in lines if line[0, 0] == line[1, 0]]
    vertical = [line for line in lines if line[0, 1] == line[1, 1]]
    assert [line[0, 0] for line in horizontal] == [256.0, 512.0, 768.0]  # borders between y 100 and 1000
    assert [line[0, 1] for line in vertical] == [0.0, 256.0, 512.0]
    for line in horizontal:
        np.testing.assert_array_equal(line[:, 1], [0.0, 700.0])  # across the whole ROI
    for line in vertical:
        np.testing.assert_array_equal(line[:, 0], [100.0, 1000.0])


def test_region_grid_of_a_huge_roi_is_thinned_to_whole_multiples():
    lines = region_grid_lines((0, 0, 1_000_000, 512), (256.0, 256.0))
    horizontal = np.array([line[0, 0] for line in lines if line[0, 0] == line[1, 0]])
    assert len(horizontal) <= MAX_GRID_LINES
    assert np.all(horizontal % (256 * 4) == 0) and horizontal[0] == 0  # every 4th border of 3,907


def test_roi_layer_puts_rectangle_edges_on_pixel_edges_and_adds_the_grid_on_request(tmp_path):
    spec = {"rois": [[0, 0, 512, 768]], "pixel_size": [0.5, 0.5], "unit": "micrometer", "region_level0": [256, 256]}
    plain, kwargs, kind = roi_layer_data(tmp_path, spec, "roi")
    assert kind == "shapes" and len(plain) == 1 and kwargs["shape_type"] == ["rectangle"]
    # level-0 pixel i is drawn centred at i × 0.5 µm: its top-left edge is 0.25 µm before that
    np.testing.assert_allclose(np.asarray(kwargs["translate"]) + np.asarray(kwargs["scale"]) * plain[0][0], -0.25)
    shapes, kwargs, _ = roi_layer_data(tmp_path, spec, "roi", region_grid=True)
    assert kwargs["shape_type"] == ["rectangle"] + ["line"] * 7  # y: 0, 256, 512; x: 0, 256, 512, 768
    assert len(shapes) == len(kwargs["edge_width"]) == 8


def test_points_take_class_names_and_colours_from_the_checkpoint_and_numbers_for_unnamed_classes():
    table = DetectionTable(
        np.array([1.0, 2.0, 3.0, 4.0], np.float32),
        np.array([5.0, 6.0, 7.0, 8.0], np.float32),
        np.array([1, 0, 3, 1], np.int16),
        np.array([0.9, 0.2, 0.7, 0.5], np.float32),
        np.array([0.5, 4.0, 6.0, 8.0], np.float32),
    )
    spec = {"detection_classes": ["vessel", "fishing"], "colours": {"vessel": "#ff0000", "fishing": "#0000ff"}}
    props = points_properties(table, spec, threshold=0.5)
    assert list(props["features"]["class"]) == ["fishing", "vessel", "3", "fishing"]
    np.testing.assert_allclose(props["border_color"][0], [0, 0, 1, 1])  # rings in the class colour
    np.testing.assert_allclose(props["border_color"][1], [1, 0, 0, 1])
    np.testing.assert_allclose(props["border_color"][2], [1, 1, 0, 1])  # unnamed: the default yellow
    np.testing.assert_allclose(props["face_color"][:, 3], 0.15)  # a faint fill: what they mark stays visible
    np.testing.assert_array_equal(props["data"], [[1, 5], [2, 6], [3, 7], [4, 8]])
    np.testing.assert_array_equal(props["shown"], [True, False, True, True])
    np.testing.assert_allclose(props["size"], [1.0, 4.0, 6.0, 8.0])  # at least one pixel
    empty = points_properties(DetectionTable.empty(), spec, 0.5)
    assert empty["data"].shape == (0, 2) and empty["face_color"].shape == (0, 4)


def test_layers_are_named_for_people_not_by_run_directory():
    from napari_xt._napari.run_layers import run_names

    run_dir = "/runs/slide_07__slide_xl__L1.xt.zarr"
    spec = {"image_source": "/data/slide_07.ome.tif", "checkpoint": "/models/slide_xl.safetensors"}
    assert run_names(run_dir, spec) == ("slide_07", "slide_xl")
    assert run_names(run_dir, {**spec, "image_name": "xT synthetic slide"})[0] == "xT synthetic slide"
    in_memory = {"image_source": "<numpy array (700, 600) float32>", "config": {"name": "demo"}}
    assert run_names("/r/blob__demo__L0.xt.zarr", in_memory) == ("blob", "demo")


def test_hovering_the_segmentation_names_the_class_and_detections_are_rings(make_napari_viewer, tmp_path, sar_scene):
    import zarr

    from napari_xt.engine.runner import RunOptions, run_to_end
    from tests.conftest import tiny_sar_model

    run_dir = tmp_path / "scene.xt.zarr"
    run_to_end(sar_scene.pyramid(), tiny_sar_model(), run_dir, RunOptions(level=1, cache_dir="", store_threshold=0.0))
    viewer = make_napari_viewer()
    layers = viewer.open(str(run_dir), plugin="napari-xt")
    segmentation = next(layer for layer in layers if layer.metadata["napari_xt"]["role"] == "segmentation")
    labels = zarr.open_group(str(run_dir), mode="r")["labels/segmentation/0"][:]
    y, x = np.argwhere(labels == 1)[0]
    world = segmentation.data_to_world((y, x))
    status = segmentation.get_status(world, world=True)
    text = status["coordinates"] if isinstance(status, dict) else str(status)
    classes = segmentation.metadata["napari_xt"]["classes"]
    assert classes[1].replace("_", " ") in text  # the class's name, not only its number
    points = next(layer for layer in layers if layer.metadata["napari_xt"]["role"] == "detections")
    if len(points.data):
        assert np.all(points.face_color[:, 3] <= 0.2) and np.all(points.border_color[:, 3] == 1.0)


def test_the_legend_names_classes_in_words_with_their_areas_and_counts():
    from napari_xt._napari.run_layers import legend_html

    summary = {
        "area_unit": "mm²",
        "classes": {
            "stroma": {"area": 0.5, "share_of_foreground": 0.25},
            "invasive_margin": {"area": 1.5, "share_of_foreground": 0.75},
        },
        "detections": {"margin_cluster": {"count": 40, "density": 13.1}},
    }
    rows = legend_html(summary, {"invasive_margin": "#f0a050", "margin_cluster": "#e6194b"}).split("<br>")
    assert rows[0] == "<span style='color:#f0a050'>■</span> invasive margin: 1.5 mm² (75.0%)"  # largest first
    assert rows[1].endswith("stroma: 0.5 mm² (25.0%)") and "#cccccc" in rows[1]  # no colour: grey
    assert rows[2] == "<span style='color:#e6194b'>○</span> margin cluster: 40 detected"
    named = legend_html(summary, {}, {"margin_cluster": "cluster in the margin"})
    assert named.split("<br>")[2].endswith("cluster in the margin: 40 detected")  # the checkpoint's display name


def test_hovering_the_segmentation_shows_the_checkpoints_display_names(tmp_path):
    from napari_xt._napari.run_layers import labels_layer_data

    spec = {
        "image_shape": [512, 512],
        "layer_scale": [2.0, 2.0],
        "layer_translate": [0.5, 0.5],
        "segmentation_classes": ["background", "land", "open_sea"],
        "colours": {"land": "#ffc83d"},
        "display_names": {"background": "sea", "open_sea": "open-sea vessel"},
    }
    _, kwargs, kind = labels_layer_data(tmp_path, spec, "scene · segmentation (sar_xl)")
    assert kind == "labels" and list(kwargs["features"]["class"]) == ["sea", "land", "open-sea vessel"]
    colours = kwargs["colormap"].color_dict
    np.testing.assert_allclose(colours[1], np.array([255, 200, 61, 255]) / 255)
    assert colours[0][3] == 0 and colours[2][:3].tolist() == pytest.approx([128 / 255] * 3)  # no colour: grey


def test_the_legend_shows_hostile_class_names_as_text():
    from napari_xt._napari.run_layers import legend_html

    summary = {"classes": {"<img src=x>": {"area": 1.0}}, "detections": {}}
    html = legend_html(summary, {"<img src=x>": "#'><b>x"}, {"<img src=x>": "<b>bold</b>"})
    assert "<b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html and "<img" not in html
