"""One export threshold everywhere, QuPath's conventions, and per-image summaries that match the raster."""

import csv
import json

import numpy as np
import pytest
import zarr

from napari_xt.cli import EXIT_BAD_INPUT, main
from napari_xt.engine.runner import RunOptions, run_to_end
from tests.conftest import read_csv, tiny_sar_model

CLASSES = ["a", "b"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, sar_scene):
    out = tmp_path_factory.mktemp("summary") / "run.xt.zarr"
    options = RunOptions(level=1, batch_size=8, cache_dir="", export_threshold=0.3, store_threshold=0.1)
    run_to_end(sar_scene.pyramid(), tiny_sar_model(), out, options)
    return out


def test_class_areas_are_the_raster_areas(finished_run):
    summary = json.loads((finished_run / "summary.json").read_text())
    group = zarr.open_group(str(finished_run), mode="r")
    labels = group["labels/segmentation/0"][:]
    spec = group.attrs["napari_xt"]
    pixel_km2 = spec["layer_scale"][0] * spec["layer_scale"][1] / 1e6  # 10 m pixels at level 1 → 20 m
    assert summary["area_unit"] == "km²" and summary["unit"] == "m"
    active = np.kron(group["regions/active"][:], np.ones((128, 128), bool))[: labels.shape[0], : labels.shape[1]]
    for k, name in enumerate(spec["segmentation_classes"]):
        if k == 0:
            continue
        expected = int(((labels == k) & active).sum()) * pixel_km2
        assert summary["classes"][name]["area"] == pytest.approx(expected, rel=1e-9)
    shares = [c["share_of_foreground"] for c in summary["classes"].values()]
    assert sum(shares) == pytest.approx(1.0) or summary["foreground_area"] == 0
    assert summary["analysed_area"] == pytest.approx(int(active.sum()) * pixel_km2)


def test_detection_counts_and_densities_follow_the_export_threshold(finished_run):
    summary = json.loads((finished_run / "summary.json").read_text())
    exported = read_csv(finished_run / "detections.csv", CLASSES)
    assert len(exported) > 0 and exported.score.min() >= 0.3
    stored = zarr.open_group(str(finished_run), mode="r")["detections/score"][:]
    assert (stored < 0.3).any(), "the stored table keeps lower scores for display thresholds"
    for k, name in enumerate(CLASSES):
        count = int((exported.label == k).sum())
        assert summary["detections"][name]["count"] == count
        assert summary["detections"][name]["density"] == pytest.approx(count / summary["foreground_area"])
    assert summary["score_threshold"] == 0.3


def test_qupath_geojson_uses_corner_origin_and_named_measurements(finished_run):
    collection = json.loads((finished_run / "detections.geojson").read_text())
    exported = read_csv(finished_run / "detections.csv", CLASSES)
    assert collection["napari_xt"]["score_threshold"] == 0.3
    feature = collection["features"][0]
    assert feature["properties"]["objectType"] == "detection"
    assert set(feature["properties"]["measurements"]) == {"Detection probability", "Length m"}
    xs = np.array([f["geometry"]["coordinates"][0] for f in collection["features"]])
    ys = np.array([f["geometry"]["coordinates"][1] for f in collection["features"]])
    np.testing.assert_allclose(xs, exported.x + 0.5, atol=0.006)  # the CSV rounds to 2 decimals
    np.testing.assert_allclose(ys, exported.y + 0.5, atol=0.006)
    lengths = np.array([f["properties"]["measurements"]["Length m"] for f in collection["features"]])
    np.testing.assert_allclose(lengths, exported.size * 10.0, rtol=1e-3, atol=0.05)  # level-0 px of 10 m


def test_a_new_threshold_exports_again_and_the_batch_summary_lists_every_image(tmp_path, sar_zarr, sar_checkpoint):
    out = tmp_path / "runs"
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00" + b"\x00" * 16)
    base = ["predict", str(sar_zarr), str(bad), "--checkpoint", str(sar_checkpoint), "--out", str(out), "--level", "1"]
    assert main([*base, "--threshold", "0.2"]) == EXIT_BAD_INPUT
    (run_dir,) = out.glob("scene__*.xt.zarr")
    low = read_csv(run_dir / "detections.csv", CLASSES)
    assert main([*base, "--threshold", "0.6"]) == EXIT_BAD_INPUT
    high = read_csv(run_dir / "detections.csv", CLASSES)
    assert len(high) < len(low) and (len(high) == 0 or high.score.min() >= 0.6)
    with open(out / "summary.csv", newline="") as handle:
        rows = {row["image"]: row for row in csv.DictReader(handle)}
    assert rows[str(bad)]["status"] == "bad input" and "broken.tif" in rows[str(bad)]["message"]
    assert rows[str(sar_zarr)]["status"] == "finished" and rows[str(sar_zarr)]["score_threshold"] == "0.6"
    assert main([*base[:2], *base[3:], "--threshold", "1.5"]) == EXIT_BAD_INPUT


def test_an_empty_scene_reports_zero_areas(tmp_path):
    out = tmp_path / "run.xt.zarr"
    run_to_end(np.full((500, 500), np.nan, np.float32), tiny_sar_model(), out, RunOptions(level=0, cache_dir=""))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["no_foreground"] and summary["analysed_area"] == 0 and summary["regions_analysed"] == 0
    assert all(d["count"] == 0 for d in summary["detections"].values())
