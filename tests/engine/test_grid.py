import numpy as np
import pytest

from napari_xt.data.synthetic import SarScene, SlideScene
from napari_xt.engine.grid import GridError, active_regions, choose_level, foreground_mask, make_grid, otsu_threshold
from napari_xt.io import open_pyramid


def test_grid_is_anchored_at_the_image_origin_and_clipped():
    pyramid = open_pyramid(np.zeros((1000, 700), np.uint16))
    grid = make_grid(pyramid, 256, roi=(300, 10, 600, 520))
    assert grid.rows == range(1, 3) and grid.cols == range(0, 3)
    assert grid.analysis_box(2, 2) == (512, 512, 768, 700)  # clipped at the right edge
    assert grid.shape == (4, 3)
    assert grid.positions().tolist() == [[1, 0], [1, 1], [1, 2], [2, 0], [2, 1], [2, 2]]


def test_level_and_resample_geometry():
    pyramid = open_pyramid(np.zeros((4096, 4096), np.uint8), pixel_size=(0.25, 0.25), unit="µm")
    assert choose_level(pyramid, pixel_size=1.0) == (2, 1.0)
    level, resample = choose_level(pyramid, pixel_size=1.5)  # between levels 2 (1.0 µm) and 3 (2.0 µm)
    assert level == 2 and resample == pytest.approx(1.5)
    grid = make_grid(pyramid, 64, level, resample)
    assert grid.image_shape == (682, 682)
    assert grid.downsample == pytest.approx((4096 / 682, 4096 / 682))
    y, x = grid.to_level0(np.array([0.0]), np.array([10.0]))  # analysis pixel centres → level-0 centres
    assert y[0] == pytest.approx(0.5 * grid.downsample[0] - 0.5)
    assert x[0] == pytest.approx(10.5 * grid.downsample[1] - 0.5)


def test_bad_requests_are_explained():
    pyramid = open_pyramid(np.zeros((500, 500), np.uint8))
    with pytest.raises(GridError, match="lies outside the image"):
        make_grid(pyramid, 64, roi=(600, 0, 700, 100))
    with pytest.raises(GridError, match="is empty"):
        make_grid(pyramid, 64, roi=(100, 100, 100, 200))
    with pytest.raises(GridError, match="smaller than a region"):
        make_grid(open_pyramid(np.zeros((40, 40), np.uint8)), 256)
    with pytest.raises(GridError, match="does not record its pixel size"):
        choose_level(pyramid, pixel_size=2.0)
    with pytest.raises(GridError, match="level 7 does not exist"):
        choose_level(pyramid, level=7)


@pytest.mark.parametrize("seed", range(4))
def test_otsu_agrees_with_scikit_image(seed):
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(seed)
    # overlapping modes: one best threshold, the same value
    overlapping = np.concatenate([rng.normal(100, 30, 700), rng.normal(160, 30, 400)])
    assert otsu_threshold(overlapping) == pytest.approx(threshold_otsu(overlapping, nbins=256))
    # separated modes: every threshold in the gap is best; ours takes the middle of the gap, scikit-image its
    # first bin, and both split the sample alike (up to values in scikit-image's own bin)
    low, high = rng.uniform(0, 100), rng.uniform(120, 250)
    separated = np.concatenate([rng.normal(low, 8, 500 + 300 * seed), rng.normal(high, 15, 300)])
    theirs = threshold_otsu(separated, nbins=256)
    width = (separated.max() - separated.min()) / 256
    in_their_bin = int((np.abs(separated - theirs) <= width).sum())
    assert abs(int((separated <= otsu_threshold(separated)).sum()) - int((separated <= theirs).sum())) <= in_their_bin


def test_tissue_mask_skips_glass_regions():
    scene = SlideScene(height=16_384, width=16_384, seed=2, tissue_scale=6000.0)
    pyramid = scene.pyramid()
    grid = make_grid(pyramid, 256, level=2)
    active = active_regions(pyramid, grid, "tissue")
    truth = np.asarray(scene.labels(2)) > 0
    tissue_share = truth.reshape(16, 256, 16, 256).mean(axis=(1, 3))
    assert 0.1 < active.mean() < 0.95
    assert active[tissue_share > 0].all()  # every region with tissue is analysed, however pale or little
    padded = np.pad(tissue_share, 1)
    near_tissue = np.max([padded[a : a + 16, b : b + 16] for a in range(3) for b in range(3)], axis=0) > 0
    assert not active[~near_tissue].any()  # glass away from tissue is skipped
    assert active[near_tissue & (tissue_share == 0)].any()  # the ring of glass around tissue is analysed


def test_nodata_mask_skips_the_swath_edge():
    scene = SarScene(height=8192, width=8192, seed=0)
    pyramid = scene.pyramid()
    grid = make_grid(pyramid, 256, level=1)
    active = active_regions(pyramid, grid, "nodata")
    assert not active[:, -1].all() and active[:, 0].all()
    low = np.asarray(pyramid.levels[4])
    assert not foreground_mask(low, "nodata")[:, -1].any()
