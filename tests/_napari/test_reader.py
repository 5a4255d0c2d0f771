"""Headless napari (Xvfb): every format opens as one multiscale Image layer that renders."""

import numpy as np
import pytest
import tifffile

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


def test_a_drop_never_asks_which_reader(make_napari_viewer, tmp_path, geotiff_sar):
    """With napari-ome-zarr and napari's builtins installed too, opening a file without naming a plugin picks one
    reader: napari-xt for slides, GeoTIFFs and run directories, napari's own for a small plain TIFF."""
    from napari.settings import get_settings

    from napari_xt._napari.preferences import claim_readers
    from napari_xt.engine.runner import RunOptions, run_to_end
    from tests.conftest import tiny_sar_model
    from tests.io.test_tiff_reader import _write_svs

    assert "*.svs" in claim_readers()
    assert claim_readers() == []  # set once; a user's own choice is never replaced
    get_settings().plugins.extension2reader = {**get_settings().plugins.extension2reader, "*.ndpi": "napari"}
    assert "*.ndpi" not in claim_readers()
    _write_svs(tmp_path / "slide.svs", smooth_image(2048, 2048, 3))
    tifffile.imwrite(tmp_path / "grey.tif", smooth_image(600, 400, 1, np.uint16)[..., 0])
    with tifffile.TiffWriter(tmp_path / "pyramid.ome.tif") as tw:
        image = smooth_image(1024, 1024, 1, np.uint8)[..., 0]
        tw.write(image, subifds=1, tile=(256, 256), metadata={"axes": "YX"})
        tw.write(image[::2, ::2], subfiletype=1, tile=(256, 256))
    geotiff, _ = geotiff_sar
    run_dir = tmp_path / "scene.xt.zarr"
    run_to_end(np.asarray(geotiff_sar[1][..., 0]), tiny_sar_model(), run_dir, RunOptions(cache_dir="", level=1))
    viewer = make_napari_viewer(show=True)
    for path, levels in ((tmp_path / "slide.svs", 2), (tmp_path / "pyramid.ome.tif", 2), (geotiff, 2)):
        viewer.layers.clear()
        (layer,) = viewer.open(str(path), plugin=None)  # as a drop: no plugin named, no MultipleReaderError
        assert layer.multiscale and len(layer.data) == levels, path.name
        assert "napari_xt" in layer.metadata, path.name
        assert _screenshot_is_not_blank(viewer), path.name
    viewer.layers.clear()
    (plain,) = viewer.open(str(tmp_path / "grey.tif"), plugin=None)  # napari's builtin reader, as without napari-xt
    assert not plain.multiscale and "napari_xt" not in plain.metadata and plain.data.shape == (600, 400)
    viewer.layers.clear()
    layers = viewer.open(str(run_dir), plugin=None)
    roles = {layer.metadata["napari_xt"]["role"] for layer in layers}
    assert "segmentation" in roles and all(layer.metadata["napari_xt"]["run_dir"] == str(run_dir) for layer in layers)


def test_ndpi_and_slides_are_claimed_plain_zarr_is_left_to_others():
    from npe2 import PluginManager

    manager = PluginManager.instance()
    manager.discover()
    for name in ("scan.ndpi", "slide.svs", "scene.tif", "run.xt.zarr"):
        assert "napari-xt" in [r.plugin_name for r in manager.iter_compatible_readers([name])], name
    assert "napari-xt" not in [r.plugin_name for r in manager.iter_compatible_readers(["image.ome.zarr"])]


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


def test_stacks_and_small_tiffs_go_to_naparis_reader_pyramids_to_napari_xt(tmp_path):
    from napari_xt._napari.reader import read_image, serves_better

    stack = smooth_image(256, 256, 3, np.uint16).transpose(2, 0, 1)  # a 3-plane z-stack
    tifffile.imwrite(tmp_path / "zstack.ome.tif", stack, metadata={"axes": "ZYX"})
    with tifffile.TiffWriter(tmp_path / "zpyramid.ome.tif") as tw:  # a pyramidal z-stack
        tw.write(stack, subifds=1, tile=(128, 128), metadata={"axes": "ZYX"})
        tw.write(stack[:, ::2, ::2], subfiletype=1, tile=(128, 128))
    with tifffile.TiffWriter(tmp_path / "pyramid.ome.tif") as tw:
        tw.write(stack[0], subifds=1, tile=(128, 128), metadata={"axes": "YX"})
        tw.write(stack[0, ::2, ::2], subfiletype=1, tile=(128, 128))
    tifffile.imwrite(tmp_path / "channels.ome.tif", stack, metadata={"axes": "CYX"})
    assert not serves_better(str(tmp_path / "zstack.ome.tif"))
    assert not serves_better(str(tmp_path / "zpyramid.ome.tif"))
    assert serves_better(str(tmp_path / "pyramid.ome.tif"))
    assert not serves_better(str(tmp_path / "channels.ome.tif"))  # small, flat: napari's reader does as well
    assert get_reader(str(tmp_path / "pyramid.ome.tif")) is read_image
    assert get_reader(str(tmp_path / "zstack.ome.tif")) is not read_image
