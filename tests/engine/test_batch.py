"""dask.distributed: one task per image; results equal the local run; a dead worker loses no finished image."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_xt.engine.batch import analyse_distributed, analyse_image, run_dir_for

pytest.importorskip("distributed")

OPTIONS = {"level": 1, "batch_size": 8, "cache_dir": ""}


@pytest.fixture
def three_images(tmp_path, sar_zarr):
    images = []
    for name in ("a", "b", "c"):
        target = tmp_path / f"{name}.zarr"
        shutil.copytree(sar_zarr, target)
        images.append(str(target))
    return images


def _labels(run_dir):
    return zarr.open_group(str(run_dir), mode="r")["labels/segmentation/0"][:]


def test_distributed_results_equal_the_local_run(tmp_path, three_images, sar_checkpoint):
    local = analyse_image(three_images[0], str(sar_checkpoint), str(tmp_path / "local"), OPTIONS)
    assert local.status == "finished"
    results = list(analyse_distributed(three_images, str(sar_checkpoint), str(tmp_path / "dist"), OPTIONS, workers=2))
    assert sorted(r.status for r in results) == ["finished"] * 3
    for image in three_images:
        np.testing.assert_array_equal(_labels(run_dir_for(image, tmp_path / "dist")), _labels(local.run_dir))
        assert (run_dir_for(image, tmp_path / "dist") / "detections.csv").read_text() == (
            Path(local.run_dir) / "detections.csv"
        ).read_text()


def _dies_once(image, checkpoint, out_dir, options, marker):
    """A task that kills its worker process the first time it runs on image 'b'."""
    if image.endswith("b.zarr") and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return analyse_image(image, checkpoint, out_dir, options)


def test_a_killed_worker_loses_no_finished_image(tmp_path, three_images, sar_checkpoint, monkeypatch):
    import functools

    import napari_xt.engine.batch as batch

    marker = str(tmp_path / "died-once")
    monkeypatch.setattr(batch, "analyse_image", functools.partial(_dies_once, marker=marker))
    results = list(analyse_distributed(three_images, str(sar_checkpoint), str(tmp_path / "out"), OPTIONS, workers=2))
    assert os.path.exists(marker), "the worker was not killed"
    assert sorted(r.status for r in results) == ["finished"] * 3
    for image in three_images:
        assert zarr.open_group(str(run_dir_for(image, tmp_path / "out"))).attrs["napari_xt"]["status"] == "finished"
