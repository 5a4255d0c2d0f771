import json

import numpy as np

from napari_xt._napari.writers import write_labels_ome_zarr, write_points_csv, write_points_geojson
from napari_xt.io import open_pyramid

META = {
    "features": {"class": np.array(["near_shore", "open_sea"]), "score": np.array([0.9, 0.6]), "size": [12.0, 20.0]},
    "face_color": np.array([[0.96, 0.51, 0.19, 1.0], [0.26, 0.39, 0.85, 1.0]]),
}


def test_points_to_geojson_and_csv(tmp_path):
    data = np.array([[10.0, 20.0], [30.0, 40.0]])
    write_points_geojson(str(tmp_path / "p.geojson"), data, META)
    features = json.loads((tmp_path / "p.geojson").read_text())["features"]
    assert features[0]["geometry"]["coordinates"] == [20.5, 10.5]  # QuPath's corner-origin pixel convention
    assert features[0]["properties"]["classification"] == {"name": "near_shore", "color": [244, 130, 48]}
    write_points_csv(str(tmp_path / "p.csv"), data, META)
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "y,x,class,score,size" and lines[2].startswith("30.00,40.00,open_sea,0.6000")


def test_labels_to_ome_zarr_reads_back(tmp_path):
    labels = np.zeros((600, 500), np.uint8)
    labels[100:200, 50:150] = 2
    path = tmp_path / "seg.ome.zarr"
    write_labels_ome_zarr(str(path), labels, {"scale": (0.5, 0.5)})
    pyramid = open_pyramid(path / "labels" / "seg")
    np.testing.assert_array_equal(np.asarray(pyramid.levels[0])[..., 0], labels)
    assert pyramid.pixel_size == (0.5, 0.5)
