"""Regions read as model input: the stored pixels as float32 ``(C, R, R)``, NaN beyond the image, resampled."""

import numpy as np
import torch

from napari_xt.engine.grid import make_grid
from napari_xt.engine.reading import read_batch, read_region
from napari_xt.io import open_pyramid
from tests.conftest import smooth_image


def test_a_batch_holds_each_regions_pixels_and_nan_beyond_the_image():
    image = smooth_image(300, 200, 3, np.uint16)
    grid = make_grid(open_pyramid(image), region_size=128)
    positions = np.array([[0, 0], [2, 1], [1, 1], [2, 0]])
    batch = read_batch(open_pyramid(image), grid, positions)
    assert batch.shape == (4, 3, 128, 128) and batch.dtype == np.float32
    for region, (row, col) in zip(batch, positions):
        stored = image[row * 128 : (row + 1) * 128, col * 128 : (col + 1) * 128].transpose(2, 0, 1)
        height, width = stored.shape[1:]
        np.testing.assert_array_equal(region[:, :height, :width], stored.astype(np.float32))
        assert np.isnan(region[:, height:]).all() and np.isnan(region[:, :, width:]).all()
    assert np.isnan(batch[1]).sum() == 3 * (128 * 128 - 44 * 72)  # the corner region: 44 rows, 72 columns


def test_a_resampled_region_is_the_area_average_of_its_level_pixels():
    image = smooth_image(400, 400, 1, np.float32)
    pyramid = open_pyramid(image)
    grid = make_grid(pyramid, region_size=64, resample=1.5)  # 1.5 level pixels per analysis pixel
    region = read_region(pyramid, grid, 1, 2)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(image[96:192, 192:288, 0])[None, None], size=(64, 64), mode="area"
    )[0]
    np.testing.assert_allclose(region, expected.numpy(), rtol=1e-6)
    last = read_region(pyramid, grid, 4, 4)  # analysis rows 256–266 of 266: 10 rows, the rest NaN
    assert np.isfinite(last[:, :10, :10]).all() and np.isnan(last[:, 10:]).all()
