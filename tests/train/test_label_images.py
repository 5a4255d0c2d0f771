"""Segmentation classes come from the label values themselves at level 0, never from an averaged level."""

import numpy as np
import pytest
import tifffile

from napari_xt.io import ImageReadError
from napari_xt.train.data import file_source
from tests.conftest import smooth_image


@pytest.fixture
def image_and_labels(tmp_path):
    tifffile.imwrite(tmp_path / "image.tif", smooth_image(2048, 2048, 3), tile=(256, 256), photometric="rgb")
    labels = np.zeros((2048, 2048), np.uint16)
    labels[:1024] = 1
    labels[1024:, :500] = 2
    labels[1500:1800, 1500:1800] = 3
    labels[100:300, 100:300] = 4
    for y in range(200, 2000, 300):  # class 5 only in 3-pixel objects: gone from any averaged level
        for x in range(600, 2000, 300):
            labels[y : y + 3, x : x + 3] = 5
    tifffile.imwrite(tmp_path / "labels.tif", labels, tile=(256, 256))
    return tmp_path / "image.tif", tmp_path / "labels.tif", labels


def test_classes_are_the_level0_label_values(image_and_labels):
    image, labels, truth = image_and_labels
    source = file_source(str(image), 1, str(labels), None, [])
    assert source.segmentation_classes == [f"class {i}" for i in range(6)]
    level1 = source.labels(0, 0, 1024, 1024)
    np.testing.assert_array_equal(level1, truth[:2048:2, :2048:2])  # nearest, never averaged
    named = file_source(str(image), 0, str(labels), None, [], ["bg", "stroma", "margin", "tumour", "necrosis", "lym"])
    assert named.segmentation_classes[5] == "lym"
    with pytest.raises(ValueError, match="up to 5 but 3 class names"):
        file_source(str(image), 0, str(labels), None, [], ["a", "b", "c"])


def test_label_images_that_are_not_class_indices_are_refused(tmp_path, image_and_labels):
    image, _, truth = image_and_labels
    tifffile.imwrite(tmp_path / "float.tif", truth.astype(np.float32), tile=(256, 256))
    with pytest.raises(ImageReadError, match="float32 values, not class indices"):
        file_source(str(image), 0, str(tmp_path / "float.tif"), None, [])
    tifffile.imwrite(tmp_path / "signed.tif", truth.astype(np.int16) - 1, tile=(256, 256))
    with pytest.raises(ImageReadError, match="negative labels"):
        file_source(str(image), 0, str(tmp_path / "signed.tif"), None, [])
