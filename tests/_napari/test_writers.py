import json

import numpy as np
import zarr

from napari_xt._napari.writers import write_labels_ome_zarr, write_points_csv, write_points_geojson

META = {
    "features": {"class": np.array(["near_shore", "open_sea"]), "score": np.array([0.9, 0.6]), "size": [12.0, 20.0]},
    "border_color": np.array([[0.96, 0.51, 0.19, 1.0], [0.26, 0.39, 0.85, 1.0]]),  # rings: the class colour
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


def test_labels_to_ome_zarr_keep_units_translation_classes_and_colours(tmp_path):
    """Proven with the libraries that define and read OME-Zarr: ome-zarr-models validates the label image,
    ome-zarr-py's Reader and napari-ome-zarr open it as labels with their scale, translation and colours."""
    from napari.utils.colormaps import DirectLabelColormap
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image_label import ImageLabel

    labels = np.zeros((2600, 500), np.uint8)
    labels[100:200, 50:150] = 2
    meta = {
        "scale": (0.5, 0.5),
        "translate": (0.25, 0.25),
        "units": ("micrometer", "micrometer"),
        "colormap": DirectLabelColormap(
            color_dict={0: np.zeros(4), 2: np.array([0.0, 0.0, 1.0, 1.0]), None: np.zeros(4)}
        ),
        "metadata": {"napari_xt": {"classes": ["background", "stroma", "tumour"]}},
    }
    path = tmp_path / "seg.ome.zarr"
    write_labels_ome_zarr(str(path), labels, meta)
    model = ImageLabel.from_zarr(zarr.open_group(str(path), mode="r"))
    attrs = model.ome_attributes
    assert [c.rgba for c in attrs.image_label.colors if c.label_value == 2] == [(0, 0, 255, 255)]
    assert {p["label-value"]: p["class"] for p in attrs.image_label.model_dump(by_alias=True)["properties"]} == {
        0: "background",
        1: "stroma",
        2: "tumour",
    }
    assert [a.unit for a in attrs.multiscales[0].axes] == ["micrometer", "micrometer"]
    (node,) = [n for n in Reader(parse_url(str(path)))() if "Label" in [type(s).__name__ for s in n.specs]]
    np.testing.assert_array_equal(np.asarray(node.data[0]), labels)
    assert len(node.data) == 3  # 2600 → 1300 → 650
    assert node.metadata["coordinateTransformations"][0][1] == {"type": "translation", "translation": [0.25, 0.25]}
    from napari_ome_zarr import napari_get_reader

    ((_data, kwargs, kind),) = napari_get_reader(str(path))(str(path))
    assert kind == "labels"
    np.testing.assert_allclose(kwargs["scale"], (0.5, 0.5))
    # (napari-ome-zarr 0.10 does not apply translations; ome-zarr-py's Reader above reads ours)
    assert kwargs["properties"]["class"][list(kwargs["properties"]["index"]).index(2)] == "tumour"
