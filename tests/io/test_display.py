import numpy as np

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
