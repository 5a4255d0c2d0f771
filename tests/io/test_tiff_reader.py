import numpy as np
import pytest
import tifffile

from napari_xt.io import ImageReadError, open_pyramid
from tests.conftest import area_mean, smooth_image


def test_ome_tiff_with_subifds(tmp_path):
    image = smooth_image(1024, 1536, 2, np.uint16)
    path = tmp_path / "multi.ome.tif"
    with tifffile.TiffWriter(path) as tw:
        metadata = {"axes": "CYX", "PhysicalSizeX": 0.325, "PhysicalSizeY": 0.325, "Channel": {"Name": ["DAPI", "CD3"]}}
        tw.write(image.transpose(2, 0, 1), subifds=2, tile=(256, 256), metadata=metadata)
        for factor in (2, 4):
            tw.write(image[::factor, ::factor].transpose(2, 0, 1), subfiletype=1, tile=(256, 256))
    pyramid = open_pyramid(path)
    assert pyramid.format == "OME-TIFF"
    assert pyramid.channel_names == ("DAPI", "CD3")
    assert pyramid.pixel_size == (0.325, 0.325) and pyramid.unit == "µm"
    assert not pyramid.built_lazily and len(pyramid.levels) == 3
    for level, factor in enumerate((1, 2, 4)):
        np.testing.assert_array_equal(np.asarray(pyramid.levels[level]), image[::factor, ::factor])


def test_pyramid_stored_as_one_series_per_level(tmp_path):
    image = smooth_image(1000, 800, 1, np.uint8)
    path = tmp_path / "series.tif"
    with tifffile.TiffWriter(path) as tw:
        for factor in (1, 2, 4):
            tw.write(image[::factor, ::factor, 0], tile=(128, 128))
    pyramid = open_pyramid(path)
    assert [level.shape for level in pyramid.levels] == [(1000, 800, 1), (500, 400, 1), (250, 200, 1)]
    np.testing.assert_array_equal(np.asarray(pyramid.levels[2])[..., 0], image[::4, ::4, 0])


def _write_svs(path, image):
    aperio = "Aperio Image Library v12.0.15\n"
    h, w = image.shape[:2]
    head = f"{aperio}{w}x{h} [0,100 {w}x{h}] (256x256) JPEG/RGB Q=90|AppMag = 20|MPP = 0.4990"
    with tifffile.TiffWriter(path) as tw:
        kwargs = {"compression": "jpeg", "metadata": None}
        tw.write(image, tile=(256, 256), description=head, **kwargs)
        tw.write(image[::16, ::16], description=f"{aperio}{w}x{h} -> thumbnail", **kwargs)
        tw.write(image[::4, ::4], tile=(256, 256), description=f"{aperio}{w}x{h} -> 4x", **kwargs)
        tw.write(image[::8, ::8], description=f"{aperio}label 300x300", subfiletype=1, **kwargs)
        tw.write(image[::8, ::8], description=f"{aperio}macro 1280x431", subfiletype=9, **kwargs)


def test_aperio_svs_levels_and_mpp(tmp_path):
    image = smooth_image(2048, 3072, 3, np.uint8)
    path = tmp_path / "slide.svs"
    _write_svs(path, image)
    pyramid = open_pyramid(path)
    assert pyramid.format == "Aperio SVS"
    assert pyramid.pixel_size == (0.499, 0.499) and pyramid.unit == "µm"
    assert [level.shape for level in pyramid.levels] == [(2048, 3072, 3), (512, 768, 3)]
    assert pyramid.downsample[1] == (4.0, 4.0)
    for level, factor in ((0, 1), (1, 4)):
        error = np.abs(np.asarray(pyramid.levels[level]).astype(int) - image[::factor, ::factor].astype(int))
        assert error.mean() < 2.0  # JPEG at Q=90 on a smooth image


def test_geotiff_float32_two_bands_with_nodata(geotiff_sar):
    path, image = geotiff_sar
    pyramid = open_pyramid(path)
    assert pyramid.format == "GeoTIFF"
    assert pyramid.dtype == np.float32 and pyramid.n_channels == 2
    assert pyramid.pixel_size == (10.0, 10.0) and pyramid.unit == "m"
    assert pyramid.nodata == -9999.0
    assert pyramid.geotransform == (500000.0, 10.0, 0.0, 4000000.0, 0.0, -10.0)
    assert pyramid.crs == "EPSG:32633" and pyramid.metadata["raster_type"] == "area"
    np.testing.assert_array_equal(np.asarray(pyramid.levels[0]), image)
    # computed level: nodata rows become NaN, valid rows are area means
    level1 = np.asarray(pyramid.levels[1])
    assert np.isnan(level1[:100]).all()
    reference = area_mean(image, 2)
    np.testing.assert_allclose(level1[100:], reference[100:], rtol=1e-5)


def test_plain_tiff_with_centimetre_resolution(tmp_path):
    image = smooth_image(600, 700, 1, np.uint16)[..., 0]
    path = tmp_path / "plain.tiff"
    tifffile.imwrite(path, image, resolution=(20000, 20000), resolutionunit="CENTIMETER")
    pyramid = open_pyramid(path)
    assert pyramid.format == "TIFF"
    assert pyramid.pixel_size == pytest.approx((0.5, 0.5)) and pyramid.unit == "µm"
    np.testing.assert_array_equal(np.asarray(pyramid.levels[0])[..., 0], image)


def test_truncated_and_garbage_files(tmp_path, geotiff_sar):
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"this is not a tiff at all")
    with pytest.raises(ImageReadError, match=r"garbage\.tif: is not a readable TIFF"):
        open_pyramid(garbage)
    path, _ = geotiff_sar
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(path.read_bytes()[:64])
    with pytest.raises(ImageReadError, match=r"truncated\.tif"):
        open_pyramid(truncated)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(ImageReadError, match=r"nope\.svs: no such file"):
        open_pyramid(tmp_path / "nope.svs")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(ImageReadError, match=r"suffix napari-xt does not read \(\.png\)"):
        open_pyramid(tmp_path / "image.png")


def test_dask_graph_holds_no_open_file(geotiff_sar):
    import pickle

    path, image = geotiff_sar
    pyramid = open_pyramid(path)
    restored = pickle.loads(pickle.dumps(pyramid.levels[1]))
    np.testing.assert_allclose(np.asarray(restored[200:210, :5]), area_mean(image, 2)[200:210, :5], rtol=1e-5)


def _zarr_window(path, index):
    import os

    from napari_xt.io.tiff_reader import _open_level

    return _open_level(str(path), os.stat(path).st_mtime_ns, 0, 0)[index]


def _windows(shape, rng, n=40):
    """Random windows, some reaching past the image's end, and the image's corner segment edges."""
    height, width = shape[:2]
    out = [(slice(0, height), slice(0, width)), (slice(height - 1, height), slice(width - 1, width + 9))]
    for _ in range(n):
        y0, x0 = rng.integers(0, height), rng.integers(0, width)
        out.append((slice(y0, y0 + rng.integers(1, 300)), slice(x0, x0 + rng.integers(1, 300))))
    return out


@pytest.mark.parametrize(
    "layout",
    [
        {"dtype": np.uint8, "channels": 3, "tile": (256, 256), "compression": "jpeg"},
        {"dtype": np.uint16, "channels": 1, "tile": (128, 128), "compression": "lzw"},
        {"dtype": np.float32, "channels": 1, "rowsperstrip": 37, "compression": "zlib", "predictor": True},
        {"dtype": np.float64, "channels": 2, "tile": (64, 96), "photometric": "minisblack", "planarconfig": "contig"},
    ],
    ids=["jpeg-rgb-tiles", "uint16-lzw-tiles", "float32-strips-predictor", "float64-two-samples"],
)
def test_segments_are_read_as_tifffiles_zarr_store_reads_them(tmp_path, layout):
    from napari_xt.io.tiff_reader import PageSegments

    layout = dict(layout)
    image = smooth_image(700, 530, layout.pop("channels"), layout.pop("dtype"))
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, image[..., 0] if image.shape[2] == 1 else image, **layout)
    segments = PageSegments.of(str(path), 0, 0)
    assert segments is not None
    rng = np.random.default_rng(1)
    for window in _windows(segments.shape, rng):
        index = window + ((slice(1, 2),) if len(segments.shape) == 3 else ())
        np.testing.assert_array_equal(segments.window(index), _zarr_window(path, index))


def test_a_segment_never_written_reads_as_nodata(tmp_path):
    from napari_xt.io.tiff_reader import PageSegments

    def tiles():
        for i in range(12):
            yield None if i in (1, 5) else np.full((128, 128), i, np.float32)

    path = tmp_path / "sparse.tif"
    gdal_nodata = (42113, "s", 0, "-9999", True)
    tifffile.imwrite(path, tiles(), shape=(300, 500), dtype="float32", tile=(128, 128), extratags=[gdal_nodata])
    window = PageSegments.of(str(path), 0, 0).window((slice(0, 300), slice(0, 500)))
    assert window[0, 0] == 0.0 and window[150, 0] == 4.0  # tiles 0 and 4 (row 1, column 0)
    assert window[0, 128] == -9999.0 and window[130, 130] == -9999.0  # tiles 1 and 5 were never written
    np.testing.assert_array_equal(window, _zarr_window(path, (slice(0, 300), slice(0, 500))))


def test_layouts_segments_do_not_read_are_left_to_zarr(tmp_path, geotiff_sar):
    from napari_xt.io.tiff_reader import PageSegments

    path, image = geotiff_sar  # two bands stored as separate planes
    assert PageSegments.of(str(path), 0, 0) is None
    pyramid = open_pyramid(path)
    np.testing.assert_array_equal(pyramid.read(0, 190, 260, 1000, 1100), image[190:260, 1000:1100])
