import numpy as np
import pytest

from napari_xt.data.synthetic import SarScene, SlideScene
from napari_xt.data.worlds import synthetic_scene


@pytest.mark.parametrize("scene", [SarScene(height=6000, width=7000, bands=2), SlideScene(height=6000, width=7000)])
def test_scene_is_deterministic_and_window_independent(scene):
    pyramid = scene.pyramid()
    whole = np.asarray(pyramid.levels[1][:600, :700])
    again = np.asarray(type(scene)(**scene.__dict__).pyramid().levels[1][:600, :700])
    np.testing.assert_array_equal(whole, again)
    # a window read on its own equals the same window cut from a larger read
    np.testing.assert_array_equal(np.asarray(pyramid.levels[1][250:300, 333:400]), whole[250:300, 333:400])


def test_levels_follow_the_pyramid_contract():
    scene = SlideScene(height=50_000, width=60_000)
    pyramid = scene.pyramid()
    assert pyramid.shape == (50_000, 60_000, 3)
    assert pyramid.pixel_size == (0.5, 0.5) and pyramid.unit == "µm"
    for level, (dy, dx) in enumerate(pyramid.downsample):
        assert pyramid.levels[level].shape[:2] == (50_000 // int(dy), 60_000 // int(dx))
    assert max(pyramid.levels[-1].shape[:2]) < 1024


def test_sar_near_shore_needs_context_beyond_a_region():
    scene = SarScene(height=20_000, width=20_000, seed=3)
    objects = scene.objects()
    assert len(objects) > 50
    near = objects.label == 1
    assert near.any() and (~near).any()
    region = 256
    # a near-shore vessel can sit in a region with no land at all: the label is not decidable inside it
    ys, xs = objects.y[near], objects.x[near]
    all_sea = 0
    for y, x in zip(ys, xs):
        y0, x0 = int(y // region) * region, int(x // region) * region
        yy, xx = np.mgrid[y0 : y0 + region : 16, x0 : x0 + region : 16]
        all_sea += not scene.is_land(yy, xx).any()
    assert all_sea > 0.3 * near.sum()
    # ground truth agrees with the definition: land within the distance
    assert scene.distance_to_land_below(ys, xs, scene.near_shore_distance).all()


@pytest.mark.slow  # in CI (.ci/run runs -m slow too), not in the default run
def test_slide_margin_and_cluster_classes_follow_the_distance_to_tumour():
    scene = synthetic_scene("slide", 16_384, 1)
    objects = scene.objects()
    margin = objects.label == 0
    assert margin.sum() > 20 and (~margin).sum() > 20
    # ground truth agrees with the definition, up to the 16-pixel grid the distance is measured on
    angles = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    tolerance = scene.MARGIN_GRID * 1.5
    for y, x, is_margin in zip(objects.y[:80], objects.x[:80], margin[:80]):
        reach = scene.margin_distance + (tolerance if is_margin else -tolerance)
        rings = np.linspace(4, reach, 48)[:, None]
        assert scene.is_tumour(y + rings * np.sin(angles), x + rings * np.cos(angles)).any() == is_margin
    # the dense labels: stroma within the margin distance is invasive margin, tumour is tumour, clusters by class
    labels = np.asarray(scene.labels(0)[:4096, :4096])
    inside = (objects.y < 4000) & (objects.x < 4000)
    assert inside.sum() > 10
    for y, x, label in zip(objects.y[inside], objects.x[inside], objects.label[inside]):
        assert labels[int(y), int(x)] == 4 + label  # margin_cluster, stroma_cluster
    yy, xx = np.mgrid[:4096:64, :4096:64] + 0.0
    tumour = scene.is_tumour(yy, xx)
    np.testing.assert_array_equal(labels[::64, ::64] == 3, tumour)


def test_slide_margin_clusters_usually_have_no_tumour_in_their_own_region():
    """The context-dependent class: a margin cluster's own region (256² level-0 pixels) mostly shows only stroma."""
    scene = synthetic_scene("slide", 16_384, 2)
    objects = scene.objects()
    margin = objects.label == 0
    alone = 0
    for y, x in zip(objects.y[margin], objects.x[margin]):
        y0, x0 = int(y // 256) * 256, int(x // 256) * 256
        yy, xx = np.mgrid[y0 : y0 + 256 : 8, x0 : x0 + 256 : 8]
        alone += not scene.is_tumour(yy + 0.0, xx + 0.0).any()
    assert alone > 0.5 * margin.sum()


def test_slide_labels_do_not_depend_on_the_window():
    scene = synthetic_scene("slide", 8192, 3)
    whole = scene.render(1, 0, 1024, 0, 1024, "labels")
    np.testing.assert_array_equal(scene.render(1, 300, 700, 200, 900, "labels"), whole[300:700, 200:900])
    assert {2, 3} <= set(np.unique(whole).tolist())


def test_sar_swath_edge_is_nan_and_sea_darker_than_land():
    scene = SarScene(height=32_000, width=32_000, seed=0)
    level = np.asarray(scene.pyramid().levels[4])[..., 0]
    labels = np.asarray(scene.labels(4))
    assert (labels == 1).mean() > 0.05 and (labels == 0).mean() > 0.05
    assert np.isnan(level).any()
    valid = ~np.isnan(level)
    assert np.median(level[valid & (labels == 1)]) > 3 * np.median(level[valid & (labels == 0)])


@pytest.mark.parametrize("scene", [SarScene(height=6000, width=7000, bands=2), SlideScene(height=6000, width=7000)])
@pytest.mark.parametrize("what", ["image", "labels"])
def test_render_in_bands_equals_one_render(scene, what, monkeypatch):
    import napari_xt.data.synthetic as synthetic

    monkeypatch.setattr(synthetic, "RENDER_PIXELS", 10**9)
    whole = scene.render(3, 100, 433, 50, 850, what)  # most of the scene: land and sea, tissue and tumour
    monkeypatch.setattr(synthetic, "RENDER_PIXELS", 7 * 800)  # bands of 7 rows, the last of 4
    banded = scene.render(3, 100, 433, 50, 850, what)
    assert banded.shape == whole.shape == (333, 800, *whole.shape[2:]) and banded.dtype == whole.dtype
    np.testing.assert_array_equal(banded, whole)
    assert len(np.unique(banded)) > 1
