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


def test_reads_in_this_thread_never_import_dask_distributed():
    """A dask level is computed with the synchronous scheduler given as a function: named, dask would first
    import dask.distributed (0.15 s of every process's start-up) to look for a client."""
    import subprocess
    import sys

    code = """
import sys
import dask.array as da
import numpy as np
from napari_xt.engine.grid import active_regions, make_grid
from napari_xt.io import open_pyramid
pyramid = open_pyramid(da.from_array(np.random.default_rng(0).random((700, 500), np.float32), chunks=128))
pyramid = type(pyramid)(levels=pyramid.levels, downsample=pyramid.downsample)  # no views: dask reads
for level in range(len(pyramid.levels)):
    assert pyramid.read(level, 3, 90, 5, 70).shape[:2] == (87, 65)
assert active_regions(pyramid, make_grid(pyramid, 64, 0, 1.0, None)).all()
print("distributed" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
