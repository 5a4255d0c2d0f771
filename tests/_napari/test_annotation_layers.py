"""napari layers as training truth: painted Labels at another scale, Points with a class feature (hidden ones
left out), Shapes classed by feature or by layer name, unclassified shapes as annotated regions, Ignore*,
transforms refused."""

import numpy as np
import pytest
from napari.layers import Image, Labels, Points, Shapes

from napari_xt._napari.annotation_layers import annotation_layer_kwargs, annotations_from_layers, label_names
from napari_xt.train.targets import IGNORE


@pytest.fixture
def image():
    """A 400² image at 0.5 µm, shifted by 10 µm in x (world = 0.5 · pixel + (0, 10))."""
    return Image(np.zeros((400, 400), np.uint8), scale=(0.5, 0.5), translate=(0.0, 10.0), name="slide")


def test_painted_labels_at_half_resolution_land_on_the_image_pixels(image):
    painted = np.zeros((200, 200), np.uint8)  # one label pixel = 2 × 2 image pixels
    painted[10:20, 30:40] = 1
    painted[50:60, 50:60] = 2
    labels = Labels(
        painted,
        scale=(1.0, 1.0),
        translate=(0.25, 10.25),  # label pixel centres on the centres of 2 × 2 image pixel blocks
        features={"index": [0, 1, 2], "class": ["", "tumour", "Background"]},
        name="painted",
    )
    found = annotations_from_layers(image, [labels])
    assert found.segmentation_classes == ["background", "tumour"]
    truth = found.labels(0, 0, 400, 400, 1.0)
    assert (truth == 1).sum() == 20 * 20 and truth[20:40, 60:80].min() == 1  # 10 label px = 20 image px
    assert (truth == 0).sum() == 20 * 20 and truth[100:120, 100:120].max() == 0  # "Background" is background
    assert (truth == IGNORE).sum() == 400 * 400 - 800  # 0 says nothing: unpainted is not background
    # at the image's level 1 (downsample 2) the same areas, one analysis pixel per label pixel
    level1 = found.labels(0, 0, 200, 200, 2.0)
    assert (level1 == 1).sum() == 100 and level1[10:20, 30:40].min() == 1
    np.testing.assert_allclose(found.boxes(1.0), [[0, 0, 400, 400]])  # the one block of 256 label px
    painted_far = np.zeros((2000, 2000), np.uint8)
    painted_far[5, 5] = painted_far[1900, 600] = 1
    plain = Image(np.zeros((2000, 2000), np.uint8))
    far = annotations_from_layers(plain, [Labels(painted_far, features={"index": [0, 1], "class": ["", "x"]})])
    np.testing.assert_allclose(far.boxes(1.0), [[0, 0, 256, 256], [1792, 512, 2000, 768]])  # blocks painted in


def test_labels_without_names_number_their_classes(image):
    painted = np.zeros((400, 400), np.uint16)
    painted[:10, :10] = 3
    found = annotations_from_layers(image, [Labels(painted, scale=(0.5, 0.5), translate=(0, 10))])
    assert found.segmentation_classes == ["background", "class 1", "class 2", "class 3"]
    assert found.labels(0, 0, 20, 20, 1.0)[5, 5] == 3


def test_points_with_a_class_feature_hidden_ones_left_out(image):
    points = Points(
        np.array([[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]]),  # world µm
        features={"class": ["vessel", "cell", "vessel"], "score": [0.9, 0.8, 0.1]},
        size=np.array([4.0, 6.0, 5.0]),
        shown=np.array([True, True, False]),
        name="Points",
    )
    found = annotations_from_layers(image, [points])
    assert found.detection_classes == ["vessel", "cell"]
    np.testing.assert_allclose(found.points.y, [20.0, 60.0])  # (10 µm - 0) / 0.5
    np.testing.assert_allclose(found.points.x, [20.0, 60.0])  # (20 µm - 10) / 0.5
    np.testing.assert_allclose(found.points.size, [8.0, 12.0])  # 4 layer units = 4 µm = 8 image pixels
    assert found.points.label.tolist() == [0, 1]
    assert not found.says_where_objects_are_not  # points alone: the image's objects, everywhere


def test_shapes_classed_by_layer_name_and_unclassified_regions(image):
    region = Shapes([np.array([[0, 10], [0, 60], [50, 60], [50, 10]], float)], shape_type="rectangle", name="Shapes")
    # an ellipse with semi-axes 10 and 20 image px around image pixel (100, 100)
    tumour = Shapes(
        [np.array([[90, 80], [90, 120], [110, 120], [110, 80]], float)],
        shape_type="ellipse",
        name="tumour",
        scale=(0.5, 0.5),
        translate=(0.0, 10.0),  # drawn in the image's pixels
    )
    ignored = Shapes(
        [np.array([[0, 0], [0, 10], [10, 10], [10, 0]], float)],
        shape_type="polygon",
        name="Ignore*",
        scale=(0.5, 0.5),
        translate=(0, 10),
    )
    found = annotations_from_layers(image, [region, tumour, ignored])
    assert found.segmentation_classes == ["background", "tumour"]
    truth = found.labels(0, 0, 400, 400, 1.0)
    # the region covers image rows 0–99 and columns 0–99 (world 0–50 µm, 10–60 µm): background there
    assert truth[50, 50] == 0 and truth[150, 150] == IGNORE
    assert abs((truth == 1).sum() - np.pi * 10 * 20) < 0.03 * np.pi * 200
    assert truth[100, 100] == 1 and truth[100, 118] == 1 and truth[100, 122] == IGNORE
    assert truth[5, 5] == IGNORE  # Ignore* over the region: unlabelled after all
    assert found.says_where_objects_are_not


def test_new_annotation_layer_values_are_classes_shifted_by_one(image):
    kwargs = annotation_layer_kwargs(["background", "tumour"], {"tumour": "#b03a8c"}, "a", image)
    layer = Labels(np.zeros((400, 400), np.uint8), **kwargs)
    assert label_names(layer) == {0: None, 1: "background", 2: "tumour"}
    layer.data[0:4, 0:4] = 1
    layer.data[4:8, 4:8] = 2
    found = annotations_from_layers(image, [layer])
    truth = found.labels(0, 0, 10, 10, 1.0)
    assert truth[0, 0] == 0 and truth[5, 5] == 1 and truth[9, 9] == IGNORE


def test_transformed_layers_and_other_layers_are_refused(image):
    rotated = Shapes([np.eye(4, 2)], rotate=30, name="tumour")
    with pytest.raises(ValueError, match="rotated, sheared or has an affine"):
        annotations_from_layers(image, [rotated])
    with pytest.raises(ValueError, match="cannot be an annotation"):
        annotations_from_layers(image, [Image(np.zeros((4, 4)))])
    with pytest.raises(ValueError, match="no polygon, point or painted annotation"):
        annotations_from_layers(image, [Shapes([np.array([[0, 0], [5, 5]], float)], shape_type="line")])
