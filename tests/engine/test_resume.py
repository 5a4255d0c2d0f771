"""A run killed with SIGKILL half-way resumes, skips finished regions, and ends as an uninterrupted run does."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr


def _predict_command(image, checkpoint, out):
    code = "import sys; from napari_xt.cli import main; sys.exit(main(sys.argv[1:]))"
    return [
        sys.executable,
        "-c",
        code,
        "predict",
        str(image),
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
        "--level",
        "0",
        "--batch-size",
        "4",
    ]


@pytest.mark.slow  # in CI (.ci/run runs -m slow too), not in the default run
def test_sigkill_half_way_then_resume_equals_uninterrupted(tmp_path, sar_zarr, sar_checkpoint):
    # the uninterrupted reference runs as the killed run does, in a fresh process: the test process has loaded
    # other libraries by now, and its floating-point state is not the command's
    env = {**os.environ, "NAPARI_XT_CACHE": str(tmp_path / "reference-cache")}
    subprocess.run(_predict_command(sar_zarr, sar_checkpoint, tmp_path / "reference"), env=env, check=True)
    reference = tmp_path / "reference" / "scene__tiny_sar_xl__L0.xt.zarr"

    out = tmp_path / "runs"
    env = {**os.environ, "NAPARI_XT_CACHE": str(tmp_path / "cache")}
    process = subprocess.Popen(_predict_command(sar_zarr, sar_checkpoint, out), env=env, stderr=subprocess.DEVNULL)
    run_dir = out / "scene__tiny_sar_xl__L0.xt.zarr"
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
        try:
            done = int(zarr.open_group(str(run_dir), mode="r")["regions/done"][:].sum())
        except (FileNotFoundError, KeyError, ValueError, OSError):
            continue
        if done >= 40:
            break
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    group = zarr.open_group(str(run_dir), mode="r")
    killed_done = int(group["regions/done"][:].sum())
    total = int(group["regions/active"][:].sum())
    assert 0 < killed_done < total, "the kill must land half-way"
    assert group.attrs["napari_xt"]["status"] == "running"

    resumed = subprocess.run(_predict_command(sar_zarr, sar_checkpoint, out), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{killed_done} already done" in resumed.stderr
    final = zarr.open_group(str(run_dir), mode="r")
    assert final.attrs["napari_xt"]["status"] == "finished"
    np.testing.assert_array_equal(
        final["labels/segmentation/0"][:], zarr.open_group(str(reference))["labels/segmentation/0"][:]
    )
    assert (run_dir / "detections.csv").read_text() == (reference / "detections.csv").read_text()

    again = subprocess.run(_predict_command(sar_zarr, sar_checkpoint, out), env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "skipped already finished" in again.stderr
