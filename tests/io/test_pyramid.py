"""``Pyramid.read``: a window read through a level's view equals the same window of its dask level."""

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_xt.data.synthetic import SarScene
from napari_xt.io import open_pyramid
from tests.conftest import smooth_image


def _tiff(tmp_path):
    image = smooth_image(2300, 1500, 3)
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, image, tile=(256, 256), compression="jpeg")
    return open_pyramid(path)


def _zarr(tmp_path):
    path = tmp_path / "array.zarr"
    array = zarr.create_array(str(path), shape=(2300, 1500), chunks=(200, 300), dtype="uint16")
    array[:] = smooth_image(2300, 1500, 1, np.uint16)[..., 0]
    return open_pyramid(path)


@pytest.mark.parametrize(
    "make",
    [
        _tiff,
        _zarr,
        lambda _: open_pyramid(smooth_image(2300, 1500, 2, np.float32).transpose(2, 0, 1)),
        lambda _: open_pyramid(da.from_array(smooth_image(2300, 1500, 1, np.uint8), chunks=250)),
        lambda _: SarScene(height=1400, width=1000, seed=3).pyramid(),
    ],
    ids=["tiff", "zarr", "numpy-channels-first", "dask", "synthetic"],
)
def test_read_equals_the_dask_level_at_every_level(tmp_path, make):
    pyramid = make(tmp_path)
    assert len(pyramid.levels) > 1
    rng = np.random.default_rng(0)
    for level, array in enumerate(pyramid.levels):
        height, width = array.shape[:2]
        for _ in range(6):
            y0, x0 = int(rng.integers(0, height)), int(rng.integers(0, width))
            y1, x1 = min(height, y0 + int(rng.integers(1, 300))), min(width, x0 + int(rng.integers(1, 300)))
            window = pyramid.read(level, y0, y1, x0, x1)
            assert isinstance(window, np.ndarray) and window.dtype == array.dtype
            np.testing.assert_array_equal(window, np.asarray(array[y0:y1, x0:x1]))


def test_views_must_match_the_levels():
    pyramid = open_pyramid(smooth_image(300, 300, 1))
    with pytest.raises(ValueError, match="one entry per level"):
        type(pyramid)(levels=pyramid.levels, downsample=pyramid.downsample, views=pyramid.views[:1] * 5)
