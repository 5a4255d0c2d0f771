import numpy as np
import pytest
import zarr

from napari_xt.engine.events import Finished, Progress
from napari_xt.engine.runner import RunOptions, run, run_to_end
from napari_xt.engine.store import OutputExistsError, label_level_shapes, write_into_levels
from napari_xt.io import open_pyramid
from tests.conftest import tiny_sar_model

FAST = {"level": 1, "cache_dir": "", "batch_size": 8}


@pytest.mark.parametrize("region", [64, 448, 100])
def test_blocks_land_in_every_level_at_any_alignment(region):
    """Level k keeps every 2**k-th analysis pixel, also for regions that are not a multiple of 2**k (Hiera's
    448² regions at a step of 128, say)."""
    height, width = 1500, 1300
    full = np.random.default_rng(0).integers(1, 200, (height, width)).astype(np.uint8)
    levels = [np.zeros(shape, np.uint8) for shape in label_level_shapes(height, width)]
    assert len(levels) == 2
    for y0 in range(0, height, region):
        for x0 in range(0, width, region):
            write_into_levels(levels, full[y0 : y0 + region, x0 : x0 + region], y0, x0)
    for k, level in enumerate(levels):
        np.testing.assert_array_equal(level, full[:: 2**k, :: 2**k])


def test_probabilities_are_a_multiscale_image_beside_the_labels(tmp_path, sar_scene):
    model = tiny_sar_model()
    out = tmp_path / "p.xt.zarr"
    options = RunOptions(**{**FAST, "level": 0}, save_probabilities=True)  # 1280 × 1152: two label levels
    assert isinstance(run_to_end(sar_scene.pyramid(), model, out, options), Finished)
    group = zarr.open_group(str(out), mode="r")
    labels = [group[f"labels/segmentation/{k}"] for k in range(2)]
    probabilities = [group[f"probabilities/{k}"] for k in range(2)]
    assert [p.shape for p in probabilities] == [(3, *label.shape) for label in labels]
    p0 = np.asarray(probabilities[0][:], np.float32)
    active = np.repeat(np.repeat(group["regions/active"][:], 64, 0), 64, 1)[: p0.shape[1], : p0.shape[2]]
    np.testing.assert_allclose(p0.sum(axis=0)[active], 1.0, atol=0.01)
    top2 = np.sort(p0, axis=0)[-2:]
    clear = active & (top2[1] - top2[0] > 1e-2)  # float16 probabilities tie where float32 logits do not
    assert clear.sum() > 0.5 * active.sum()
    np.testing.assert_array_equal(p0.argmax(axis=0)[clear], np.asarray(labels[0][:])[clear])
    np.testing.assert_array_equal(np.asarray(probabilities[1][:]), np.asarray(probabilities[0][:, ::2, ::2]))
    # an OME-Zarr image others can open: the coarse level sits on the same level-0 grid
    pyramid = open_pyramid(out / "probabilities")
    assert len(pyramid.levels) == 2 and pyramid.n_channels == 3
    assert pyramid.downsample[1] == (2.0, 2.0)


def test_roi_only_context_never_mixes_with_whole_image_results(tmp_path, sar_scene):
    model = tiny_sar_model()
    out = tmp_path / "mixed.xt.zarr"
    roi = (256, 256, 768, 640)
    run_to_end(sar_scene.pyramid(), model, out, RunOptions(**FAST, roi=roi, context_scope="image"))
    with pytest.raises(OutputExistsError, match="context_from"):
        run(sar_scene.pyramid(), model, out, RunOptions(**FAST, roi=roi, context_scope="roi"))
    # whole-image context for another ROI accumulates in the same run directory
    last = run_to_end(sar_scene.pyramid(), model, out, RunOptions(**FAST, roi=(0, 0, 256, 256), context_scope="image"))
    assert isinstance(last, Finished)
    assert len(zarr.open_group(str(out), mode="r").attrs["napari_xt"]["rois"]) == 2


def test_progress_rate_counts_only_this_runs_work(tmp_path, sar_scene):
    """On resume, regions finished earlier do not inflate the rate (or shrink the ETA)."""
    model = tiny_sar_model()
    out = tmp_path / "r.xt.zarr"
    run_to_end(sar_scene.pyramid(), model, out, RunOptions(**FAST, roi=(0, 0, 640, 1152)))
    finished_first = int(zarr.open_group(str(out), mode="r")["regions/done"][:].sum())
    events = list(run(sar_scene.pyramid(), model, out, RunOptions(**FAST)))
    predict = [e for e in events if isinstance(e, Progress) and e.phase == "predict"]
    active = int(zarr.open_group(str(out), mode="r")["regions/active"][:].sum())
    assert 0 < finished_first < active
    assert [e.done_before for e in predict] == [finished_first] * len(predict)
    assert predict[-1].done == predict[-1].total == active


def test_progress_rate_and_eta_exclude_earlier_work():
    progress = Progress("predict", done=30, total=40, seconds=2.0, done_before=10)
    assert progress.rate == 10.0 and progress.eta == 1.0
    assert Progress("predict", done=10, total=40, seconds=0.0, done_before=10).eta is None


def test_ome_zarr_py_reads_the_segmentation_with_its_colours_and_scale(tmp_path, sar_scene):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    out = tmp_path / "r.xt.zarr"
    run_to_end(sar_scene.pyramid(), tiny_sar_model(), out, RunOptions(**FAST))
    nodes = list(Reader(parse_url(str(out / "labels" / "segmentation")))())
    (node,) = [n for n in nodes if type(n.specs[0]).__name__ == "Label"]
    # from the root: the image preview, then its labels (what napari-ome-zarr shows)
    image, *labels = list(Reader(parse_url(str(out)))())
    assert [type(s).__name__ for s in image.specs][:1] == ["Multiscales"] and image.data[0].shape[0] == 1
    assert any("Label" in [type(s).__name__ for s in n.specs] for n in labels)
    from napari_ome_zarr import napari_get_reader  # what napari users open OME-Zarr with

    layers = napari_get_reader(str(out))(str(out))
    kinds = [kind for _, _, kind in layers]
    assert kinds == ["image", "labels"]
    _, kwargs, _ = layers[1]
    run_spec = zarr.open_group(str(out), mode="r").attrs["napari_xt"]
    assert list(kwargs["scale"]) == run_spec["layer_scale"]
    assert kwargs["properties"]["class"] == run_spec["segmentation_classes"]
    spec = zarr.open_group(str(out), mode="r").attrs["napari_xt"]
    assert node.data[0].shape == tuple(spec["image_shape"])
    assert sorted(node.metadata["color"]) == list(range(len(spec["segmentation_classes"])))
    scale = node.metadata["coordinateTransformations"][0][0]["scale"]
    assert scale == spec["layer_scale"]


def test_a_run_directory_from_before_the_root_preview_gets_one_when_it_resumes(tmp_path, sar_scene):
    from tests.conftest import assert_valid_ngff

    out = tmp_path / "old.xt.zarr"
    run_to_end(sar_scene.pyramid(), tiny_sar_model(), out, RunOptions(**FAST))
    group = zarr.open_group(str(out), mode="r+")
    attrs = dict(group.attrs)
    del attrs["ome"]  # the layout of earlier versions: no image at the root
    attrs["napari_xt"] = {**attrs["napari_xt"], "preview_written": False}
    group.attrs.clear()
    group.attrs.update(attrs)
    for name in [k for k in group.array_keys() if k.isdigit()]:
        del group[name]
    run_to_end(sar_scene.pyramid(), tiny_sar_model(), out, RunOptions(**FAST))
    assert_valid_ngff(out)
    assert np.nanstd(zarr.open_group(str(out), mode="r")["0"][:]) > 0  # the preview shows the image (NaN: nodata)


def test_regions_side_by_side_are_grouped_into_runs_in_reading_order():
    from types import SimpleNamespace

    from napari_xt.engine.store import side_by_side

    def region(row, col, size=64):
        return SimpleNamespace(row=row, col=col, box=(row * size, col * size, (row + 1) * size, (col + 1) * size))

    batch = [region(0, 7), region(1, 0), region(0, 5), region(0, 6), region(1, 1), region(1, 3)]
    runs = side_by_side(batch)
    assert [[(r.row, r.col) for r in run] for run in runs] == [[(0, 5), (0, 6), (0, 7)], [(1, 0), (1, 1)], [(1, 3)]]


@pytest.mark.parametrize("band", [3, 1024])
def test_the_preview_samples_a_level_a_band_of_rows_at_a_time_as_it_would_whole(monkeypatch, band):
    import dask.array as da

    from napari_xt.engine import store as module

    monkeypatch.setattr(module, "PREVIEW_BAND", band)
    level = np.random.default_rng(3).random((50, 40, 2)).astype(np.float32)
    rows = np.array([0, 0, 4, 9, 10, 11, 30, 49])  # repeated, ascending, ending on the last row
    cols = np.array([39, 0, 7, 7, 20])
    read = []

    class Counted:  # a lazy level: what was read
        shape, dtype = level.shape, level.dtype

        def __getitem__(self, key):
            read.append(key)
            return level[key]

    expected = level[rows][:, cols]
    np.testing.assert_array_equal(module._nearest_samples(Counted(), rows, cols), expected)
    bands = [(0, 1), (4, 5), (9, 12), (30, 31), (49, 50)] if band == 3 else [(0, 50)]  # rows 0-2, 3-5, …
    assert [(k.start, k.stop) for k in read] == bands
    lazy = da.from_array(level, chunks=(8, 40, 2))  # a dask level is read in bands of whole chunks
    np.testing.assert_array_equal(module._nearest_samples(lazy, rows, cols), expected)
