"""Headless napari (Xvfb): every format opens as one multiscale Image layer that renders."""

import numpy as np
import pytest
import tifffile
import zarr

from napari_xt._napari.reader import get_reader
from tests.conftest import smooth_image

pytestmark = pytest.mark.gui


def _screenshot_is_not_blank(viewer) -> bool:
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    rgb = shot[..., :3].astype(int)
    return rgb.std() > 5 and len(np.unique(rgb.reshape(-1, 3)[::97], axis=0)) > 5


def _open_one(viewer, path):
    layers = viewer.open(str(path), plugin="napari-xt")
    assert len(layers) == 1
    layer = layers[0]
    assert layer.multiscale
    return layer


def test_ome_zarr_opens_as_rgb_with_physical_scale(make_napari_viewer, ome_zarr_v05):
    viewer = make_napari_viewer(show=True)
    layer = _open_one(viewer, ome_zarr_v05)
    assert layer.rgb
    assert len(layer.data) == 3
    np.testing.assert_allclose(layer.scale, (0.25, 0.25))
    assert str(layer.units[0]) == "micrometer"
    assert _screenshot_is_not_blank(viewer)


def test_geotiff_sar_two_bands_one_layer_nan_safe(make_napari_viewer, geotiff_sar):
    path, image = geotiff_sar
    viewer = make_napari_viewer(show=True)
    layer = _open_one(viewer, path)
    assert not layer.rgb
    assert layer.data[0].shape == (2, 1500, 1100)  # channel slider, y, x
    np.testing.assert_allclose(layer.scale[-2:], (10.0, 10.0))
    low, high = layer.contrast_limits
    valid = image[image != -9999.0]
    assert valid.min() - 1e-6 <= low < high <= valid.max() + 1e-6
    assert _screenshot_is_not_blank(viewer)


def test_svs_and_plain_tiff_and_single_zarr(make_napari_viewer, tmp_path):
    from tests.io.test_tiff_reader import _write_svs

    _write_svs(tmp_path / "slide.svs", smooth_image(2048, 2048, 3))
    tifffile.imwrite(tmp_path / "grey.tif", smooth_image(3000, 2000, 1, np.uint16)[..., 0], tile=(256, 256))
    zarr.create_array(str(tmp_path / "one.zarr"), data=smooth_image(2500, 1800, 1, np.float32)[..., 0])
    viewer = make_napari_viewer(show=True)
    for name, levels in (("slide.svs", 2), ("grey.tif", 3), ("one.zarr", 3)):
        viewer.layers.clear()
        layer = _open_one(viewer, tmp_path / name)
        assert len(layer.data) == levels, name
        assert _screenshot_is_not_blank(viewer), name


def test_bad_file_gives_a_notification_not_a_crash(make_napari_viewer, tmp_path, monkeypatch):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00 definitely not a tiff")
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    viewer = make_napari_viewer()
    reader = get_reader(str(bad))
    assert reader is not None
    assert reader(str(bad)) == [(None,)]
    assert len(viewer.layers) == 0
    assert len(shown) == 1 and "broken.tif" in shown[0] and "not a readable TIFF" in shown[0]


def test_sample_data_is_gigapixel_class_and_renders(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-xt", "slide")
    layer = viewer.layers[0]
    assert layer.data[0].shape[0] >= 50_000 and layer.data[0].shape[1] >= 50_000
    assert layer.rgb
    assert _screenshot_is_not_blank(viewer)
    viewer.layers.clear()
    viewer.open_sample("napari-xt", "sar")
    layer = viewer.layers[0]
    assert layer.data[0].shape[0] >= 50_000
    assert _screenshot_is_not_blank(viewer)
