import dask.array as da
import numpy as np
import pytest

from napari_xt.io import ImageReadError, open_pyramid
from napari_xt.io.pyramid import to_yxc
from tests.conftest import area_mean, smooth_image


@pytest.mark.parametrize("wrap", [np.asarray, lambda a: da.from_array(a, chunks=333)])
def test_array_gets_exact_area_averaged_levels(wrap):
    image = smooth_image(2300, 1500, 1, np.uint16)
    pyramid = open_pyramid(wrap(image[..., 0]))
    assert pyramid.shape == (2300, 1500, 1)
    assert pyramid.downsample == ((1, 1), (2, 2), (4, 4))
    expected = image
    for level in (1, 2):  # each level halves the one above, rounding to the integer dtype
        expected = np.rint(area_mean(expected, 2)).astype(image.dtype)
        np.testing.assert_array_equal(np.asarray(pyramid.levels[level]), expected)


def test_channels_first_array_and_explicit_axes():
    image = smooth_image(300, 400, 2, np.float32)
    pyramid = open_pyramid(image.transpose(2, 0, 1))
    np.testing.assert_array_equal(np.asarray(pyramid.levels[0]), image)
    pyramid = open_pyramid(image.transpose(1, 0, 2), axes="xyc", pixel_size=(10.0, 10.0), unit="m")
    np.testing.assert_array_equal(np.asarray(pyramid.levels[0]), image)
    assert pyramid.pixel_size == (10.0, 10.0)


def test_list_of_levels_is_checked():
    image = smooth_image(512, 512, 3)
    pyramid = open_pyramid([image, image[::2, ::2]])
    assert pyramid.downsample == ((1, 1), (2, 2)) and not pyramid.built_lazily
    with pytest.raises(ImageReadError, match="larger than level 0"):
        open_pyramid([image[::2, ::2], image])


def test_unreadable_arrays():
    with pytest.raises(ImageReadError, match="cannot tell the axes"):
        open_pyramid(np.zeros((10, 10, 10, 10), np.uint8))
    with pytest.raises(ImageReadError, match="boolean mask"):
        open_pyramid(np.zeros((10, 10), bool))
    with pytest.raises(ImageReadError, match="zero size"):
        open_pyramid(np.zeros((0, 10), np.uint8))
    with pytest.raises(TypeError, match="takes a path, an array"):
        open_pyramid(42)


def test_to_yxc_takes_first_time_and_z():
    array = da.from_array(np.arange(2 * 3 * 4 * 5 * 6).reshape(2, 3, 4, 5, 6))
    out = to_yxc(array, "tczyx", "test")
    assert out.shape == (5, 6, 3)
    np.testing.assert_array_equal(np.asarray(out)[..., 1], np.asarray(array)[0, 1, 0])


def test_layer_geometry_keeps_pixel_centres_aligned():
    pyramid = open_pyramid(smooth_image(4096, 4096, 1), pixel_size=(0.5, 0.5), unit="µm")
    assert pyramid.level_scale(2) == (2.0, 2.0)
    from napari_xt.engine.grid import make_grid
    from napari_xt.engine.runner import display_spec
    from napari_xt.model.config import RegionEncoderConfig, XTConfig

    config = XTConfig(
        in_channels=1, mean=[0.0], std=[1.0], region_size=64, region_encoder=RegionEncoderConfig(input_size=64)
    )
    spec = display_spec(pyramid, config, make_grid(pyramid, 64, 2, 1.0, None))
    assert spec["layer_scale"] == [2.0, 2.0]
    # the centre of analysis pixel 0 at level 2 is the mean of the level-0 pixel centres it covers
    assert spec["layer_translate"][0] == pytest.approx(np.mean(np.arange(4)) * 0.5)
