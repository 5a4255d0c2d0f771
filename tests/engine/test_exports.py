import json

import numpy as np
import pytest

from napari_xt.engine.detections import DetectionTable
from napari_xt.engine.exports import geojson, map_coordinates, write_csv, write_geojson
from tests.conftest import read_csv

TABLE = DetectionTable(
    np.array([10.5, 200.0]), np.array([20.25, 5.0]), np.array([1, 0]), np.array([0.9, 0.4]), np.array([12.0, 30.0])
)


def test_geojson_is_what_qupath_reads(tmp_path):
    write_geojson(TABLE, tmp_path / "d.geojson", ["open_sea", "near_shore"], {"near_shore": "#f58231"})
    data = json.loads((tmp_path / "d.geojson").read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 2
    first = data["features"][0]
    # x, y in QuPath's level-0 pixel convention: the centre of pixel (10.5, 20.25) is at (20.75, 11.0)
    assert first["geometry"] == {"type": "Point", "coordinates": [20.75, 11.0]}
    assert first["properties"]["objectType"] == "detection"
    assert first["properties"]["classification"] == {"name": "near_shore", "color": [245, 130, 49]}
    assert first["properties"]["measurements"]["Detection probability"] == pytest.approx(0.9)
    assert "Size px" in first["properties"]["measurements"]  # no pixel size given: sizes stay in pixels


def test_csv_round_trip_with_map_coordinates(tmp_path):
    geotransform = (500000.0, 10.0, 0.0, 4000000.0, 0.0, -10.0)
    write_csv(TABLE, tmp_path / "d.csv", ["open_sea", "near_shore"], geotransform)
    header = (tmp_path / "d.csv").read_text().splitlines()[0]
    assert header == "y,x,class,score,size,map_x,map_y"
    back = read_csv(tmp_path / "d.csv", ["open_sea", "near_shore"])
    np.testing.assert_allclose(back.y, TABLE.y)
    assert back.label.tolist() == [1, 0]
    map_x, map_y = map_coordinates(TABLE, geotransform)
    assert map_x[0] == pytest.approx(500000 + (20.25 + 0.5) * 10)  # pixel centre, not corner
    assert map_y[0] == pytest.approx(4000000 - (10.5 + 0.5) * 10)


def test_circles_are_closed_polygons_of_the_detected_diameter():
    feature = geojson(TABLE, ["a", "b"], {}, circles=True)["features"][0]
    ring = np.array(feature["geometry"]["coordinates"][0])
    assert feature["geometry"]["type"] == "Polygon" and (ring[0] == ring[-1]).all()
    radii = np.hypot(ring[:, 0] - 20.75, ring[:, 1] - 11.0)
    np.testing.assert_allclose(radii, 6.0)  # size 12 px, centred on the QuPath pixel centre
    assert feature["properties"]["measurements"]["Detection probability"] == pytest.approx(0.9)


def test_reads_of_the_labels_wait_until_their_rows_are_final_and_stop_when_the_run_does():
    import threading

    from napari_xt.engine.exports import _Abandoned, _FinalRows

    array = np.arange(100).reshape(10, 10)
    labels, got = _FinalRows(array), []
    reader = threading.Thread(target=lambda: got.append(labels[4:8, 2:5]))
    reader.start()
    labels.advance(7)
    reader.join(0.2)
    assert reader.is_alive() and not got  # row 7 is not final yet
    labels.advance(8)
    reader.join(5)
    assert not reader.is_alive()
    np.testing.assert_array_equal(got[0], array[4:8, 2:5])
    labels.advance(3)  # never backwards
    np.testing.assert_array_equal(labels[0:8, :], array[:8])
    errors = []

    def waits():
        try:
            labels[8:10, :]
        except _Abandoned as error:
            errors.append(error)

    reader = threading.Thread(target=waits)
    reader.start()
    labels.abandon()
    reader.join(5)
    assert not reader.is_alive() and len(errors) == 1


def test_final_label_rows_end_above_the_first_unwritten_region_on_a_chunk_border():
    from napari_xt.engine.runner import _FinalLabelRows

    class Grid:
        region_size = 64

    class Labels:
        shape, chunks = (300, 50), (128, 50)

    class Polygons:
        def __init__(self):
            self.told = []

        def final_rows(self, rows):
            self.told.append(rows)

    polygons = Polygons()
    targets = np.array([[0, 0], [0, 1], [1, 0], [2, 0], [2, 1], [4, 0]])  # row 3 holds no region to write
    rows = _FinalLabelRows(Grid(), targets, Labels(), polygons)
    rows.written([[0, 1]])
    rows.written([[0, 0], [2, 0]])  # row 1 (from 64) left, in the chunk from 0: nothing is final
    rows.written([[1, 0]])  # row 2 (from 128) left: up to 128
    rows.written([[2, 1]])  # row 4 left: up to 256 (row 3 has nothing to write)
    rows.written([[4, 0]])
    assert polygons.told == [0, 0, 0, 128, 256, 300]  # the first when it was made
