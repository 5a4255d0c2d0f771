import numpy as np
import pytest

from napari_xt.io import open_pyramid
from napari_xt.io.display import contrast_limits
from napari_xt.io.pyramid import Pyramid


class _Exploding:
    """An array-like that fails if anyone reads it: proves level 0 is never read."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype, self.ndim = shape, np.dtype(dtype), len(shape)

    def __getitem__(self, index):
        raise AssertionError("level 0 was read")


def test_contrast_from_smallest_stored_level_never_level0():
    import dask.array as da

    small = np.linspace(10, 20, 64 * 64, dtype=np.float32).reshape(64, 64, 1)
    level0 = da.from_array(_Exploding((4096, 4096, 1), np.float32), chunks=1024)
    pyramid = Pyramid(levels=(level0, da.from_array(small)), downsample=((1, 1), (64, 64)))
    low, high = contrast_limits(pyramid, percentiles=(0, 100))
    assert (low, high) == (10.0, 20.0)


def test_contrast_ignores_nan_and_nodata(geotiff_sar):
    path, image = geotiff_sar
    pyramid = open_pyramid(path)
    low, high = contrast_limits(pyramid, percentiles=(0, 100))
    valid = image[image != -9999.0]
    assert low >= valid.min() - 1e-6 and high <= valid.max() + 1e-6
    assert low > -9999.0


def test_uint8_uses_full_range():
    assert contrast_limits(open_pyramid(np.zeros((10, 10, 3), np.uint8))) == (0.0, 255.0)


def test_delta_e_spans_black_to_white_and_vanishes_for_equal_colours():
    from napari_xt.io.display import delta_e

    assert float(delta_e((0, 0, 0), (255, 255, 255))) == pytest.approx(100.0, abs=0.01)  # L* 0 → 100
    assert float(delta_e((120, 30, 200), (120, 30, 200))) == 0.0
    # a one-step change of one channel is far below what the eye sees at a glance; a primary swap is huge
    assert float(delta_e((128, 128, 128), (129, 128, 128))) < 1.0
    assert float(delta_e((255, 0, 0), (0, 0, 255))) > 150


def test_overlay_contrast_grows_with_opacity_and_is_zero_for_the_same_colour():
    from napari_xt.io.display import overlay_contrast

    background = np.array([[230, 157, 190], [5, 5, 5]])
    low, high = overlay_contrast((31, 79, 255), 0.2, background), overlay_contrast((31, 79, 255), 0.6, background)
    assert np.all(high > low) and np.all(low > 0)
    assert float(overlay_contrast((230, 157, 190), 0.7, (230, 157, 190))) == pytest.approx(0.0, abs=1e-9)
    assert np.all(overlay_contrast((31, 79, 255), 0.0, background) == 0)
