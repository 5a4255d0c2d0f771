"""dask.distributed: one task per image; results equal the local run; a dead worker loses no finished image."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_xt.engine.batch import analyse_distributed, analyse_image
from tests.conftest import read_csv

pytest.importorskip("distributed")

OPTIONS = {"level": 1, "batch_size": 8, "cache_dir": ""}
CLASSES = ["a", "b"]  # the tiny test model's detection classes


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
    expected = read_csv(Path(local.run_dir) / "detections.csv", CLASSES)
    assert len(expected) > 0
    run_dirs = {result.image: Path(result.run_dir) for result in results}
    assert sorted(run_dirs) == sorted(three_images)
    for image in three_images:
        assert run_dirs[image].parent == tmp_path / "dist"
        np.testing.assert_array_equal(_labels(run_dirs[image]), _labels(local.run_dir))
        found = read_csv(run_dirs[image] / "detections.csv", CLASSES)
        # the same detections; scores may differ in the 4th decimal: dask's workers run torch with one thread
        # (OMP_NUM_THREADS=1), the local run with two, and the sums are rounded in another order
        np.testing.assert_array_equal(found.label, expected.label)
        np.testing.assert_allclose(np.stack([found.y, found.x]), np.stack([expected.y, expected.x]), atol=0.01)
        np.testing.assert_allclose(found.score, expected.score, atol=1e-3)
        np.testing.assert_allclose(found.size, expected.size, rtol=1e-3, atol=0.01)


def test_a_run_counts_what_it_waited_on_before_it_began_as_its_start_up(tmp_path, sar_zarr, sar_checkpoint):
    """``start_up`` given to ``analyse_image`` (the CLI's own start-up) is the run's first stage, in its total."""
    from napari_xt.engine.stages import STAGES

    result = analyse_image(str(sar_zarr), str(sar_checkpoint), str(tmp_path), OPTIONS, start_up=30.0)
    timings = zarr.open_group(result.run_dir, mode="r").attrs["napari_xt"]["timings"]
    assert 30.0 <= timings["start_up"] < timings["total"] - timings["encode"]
    named = [*STAGES, "export", "other"]
    assert sum(timings[name] for name in named) == pytest.approx(timings["total"], abs=0.01)


def _dies_once(image, checkpoint, out_dir, options, marker):
    """A task that kills its worker process the first time it runs on image 'b'."""
    if image.endswith("b.zarr") and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return analyse_image(image, checkpoint, out_dir, options)


@pytest.mark.slow  # in CI (.ci/run runs -m slow too), not in the default run
def test_a_killed_worker_loses_no_finished_image(tmp_path, three_images, sar_checkpoint, monkeypatch):
    import functools

    import napari_xt.engine.batch as batch

    marker = str(tmp_path / "died-once")
    monkeypatch.setattr(batch, "analyse_image", functools.partial(_dies_once, marker=marker))
    results = list(analyse_distributed(three_images, str(sar_checkpoint), str(tmp_path / "out"), OPTIONS, workers=2))
    assert os.path.exists(marker), "the worker was not killed"
    assert sorted(r.status for r in results) == ["finished"] * 3
    for result in results:
        assert zarr.open_group(result.run_dir).attrs["napari_xt"]["status"] == "finished"


def test_bad_input_is_a_result_never_retried_on_another_worker(tmp_path, three_images, sar_checkpoint):
    bad = tmp_path / "truncated.tif"
    bad.write_bytes(b"II*\x00" + b"\x00" * 20)
    images = [str(bad), three_images[0]]
    results = {
        r.image: r for r in analyse_distributed(images, str(sar_checkpoint), str(tmp_path / "o"), OPTIONS, workers=1)
    }
    assert results[str(bad)].status == "bad input" and "truncated.tif" in results[str(bad)].message
    assert results[three_images[0]].status == "finished"
