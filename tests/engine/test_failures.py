"""Every bad input gets one clear line, one bad image fails alone, and nothing finished is ever lost."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_xt.cli import EXIT_BAD_INPUT, EXIT_TERMINATED, main
from napari_xt.engine.events import Finished
from napari_xt.engine.runner import RunOptions, run_to_end
from napari_xt.engine.stages import ResultSettings, label_dtype, region_results
from napari_xt.engine.store import OutputStore, RunInUseError
from napari_xt.io import ImageReadError, open_pyramid
from napari_xt.model import CheckpointError, load_checkpoint
from tests.conftest import tiny_sar_model

CLI = [sys.executable, "-c", "import sys; from napari_xt.cli import main; sys.exit(main(sys.argv[1:]))"]


def _broken_folder(folder, sar_zarr):
    """A folder of the broken files a lab finds among 500 slides, plus one good image."""
    import shutil

    folder.mkdir()
    good = folder / "good.zarr"
    shutil.copytree(sar_zarr, good)
    image = np.random.default_rng(0).integers(0, 255, (1024, 1024), dtype=np.uint8)
    tifffile.imwrite(folder / "whole.tif", image, tile=(256, 256), compression="zlib")
    data = (folder / "whole.tif").read_bytes()
    (folder / "truncated.tif").write_bytes(data[: len(data) // 2])
    (folder / "whole.tif").unlink()
    with tifffile.TiffFile(folder / "truncated.tif") as tif:
        offsets_tag = tif.pages[0].tags["TileOffsets"]
        offsets_at = offsets_tag.valueoffset
    past_end = bytearray(data)
    past_end[offsets_at : offsets_at + 8] = (len(data) * 4).to_bytes(4, "little") * 2
    (folder / "offsets_past_end.tif").write_bytes(bytes(past_end))
    corrupt = folder / "corrupt_chunk.zarr"
    shutil.copytree(sar_zarr, corrupt)
    for chunk in (p for p in corrupt.rglob("*") if p.is_file() and p.name != "zarr.json"):
        chunk.write_bytes(b"\x00not a chunk")
    for name, multiscales in {
        "multiscales_string.zarr": "yes",
        "multiscales_empty_dataset.zarr": [{"datasets": [{}], "axes": ["y", "x"]}],
        "multiscales_number.zarr": [{"datasets": 5}],
    }.items():
        group = zarr.open_group(str(folder / name), mode="w", zarr_format=3)
        group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    (folder / "empty.tif").write_bytes(b"")
    return good


def test_a_folder_of_broken_files_and_one_good_image(tmp_path, sar_zarr, sar_checkpoint, capsys):
    good = _broken_folder(tmp_path / "slides", sar_zarr)
    images = sorted(str(p) for p in (tmp_path / "slides").iterdir())
    out = tmp_path / "runs"
    code = main(["predict", *images, "--checkpoint", str(sar_checkpoint), "--out", str(out), "--level", "1"])
    assert code == EXIT_BAD_INPUT
    lines = capsys.readouterr().err.splitlines()
    for image in images:
        mine = [line for line in lines if re.match(rf"{re.escape(image)}: (finished|bad input|failed|skipped)", line)]
        assert len(mine) == 1, (image, lines)
        expected = "finished" if image == str(good) else "bad input"
        assert mine[0].startswith(f"{image}: {expected}"), mine[0]
        assert "Traceback" not in mine[0]
    (run_dir,) = out.glob("good__*.xt.zarr")
    assert zarr.open_group(str(run_dir), mode="r").attrs["napari_xt"]["status"] == "finished"


@pytest.mark.parametrize("kind", ["none", "xl", "hyper", "mamba"])
@pytest.mark.parametrize("scene", ["all_nan", "all_zero"])
def test_nothing_to_analyse_is_a_result(tmp_path, kind, scene):
    image = np.full((700, 600), np.nan if scene == "all_nan" else 0.0, np.float32)
    result = run_to_end(image, tiny_sar_model(kind), tmp_path / "run.xt.zarr", RunOptions(level=0, cache_dir=""))
    assert isinstance(result, Finished) and result.n_detections == 0
    assert "no foreground" in result.message
    group = zarr.open_group(str(tmp_path / "run.xt.zarr"), mode="r")
    assert group.attrs["napari_xt"]["status"] == "finished" and group.attrs["napari_xt"]["no_foreground"]
    assert not group["labels/segmentation/0"][:].any()


def test_a_blank_slide_finishes_empty(tmp_path):
    from napari_xt.model import create_model

    torch.manual_seed(0)
    model = create_model("test_tiny_xl").eval()
    blank = np.full((640, 640, 3), 245, np.uint8)
    result = run_to_end(blank, model, tmp_path / "run.xt.zarr", RunOptions(level=0, cache_dir=""))
    assert isinstance(result, Finished) and "no foreground" in result.message


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--batch-size", "-1"], "--batch-size must be at least 1"),
        (["--workers", "-1"], "--workers must be at least 1"),
        (["--roi", "nan,0,10,10"], "--roi takes four finite numbers"),
        (["--roi", "10,10,5,20"], "is empty"),
        (["--pixel-size", "nan"], "--pixel-size must be a positive number"),
        (["--pixel-size", "0"], "--pixel-size must be a positive number"),
        (["--pixel-size", "-5"], "--pixel-size must be a positive number"),
        (["--level", "-1"], "--level must be 0 or more"),
        (["--device", "tpu9"], "unknown device"),
        (["--threads", "0"], "--threads must be at least 1"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, sar_zarr, sar_checkpoint, capsys, extra, says):
    args = ["predict", str(sar_zarr), "--checkpoint", str(sar_checkpoint), "--out", str(tmp_path / "o"), *extra]
    assert main(args) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a torch without CUDA")
def test_cuda_without_cuda_says_so(tmp_path, sar_zarr, sar_checkpoint, capsys):
    args = ["predict", str(sar_zarr), "--checkpoint", str(sar_checkpoint), "--out", str(tmp_path), "--device", "cuda"]
    assert main(args) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use --device cpu" in err[0]


def test_out_that_is_a_file_or_cannot_be_made_exits_2(tmp_path, sar_zarr, sar_checkpoint, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out, says in ((a_file, "is a file"), (a_file / "below", "cannot be created")):
        assert main(["predict", str(sar_zarr), "--checkpoint", str(sar_checkpoint), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err


def _crafted(tmp_path, name, edit_config=None, edit_state=None, metadata=None):
    from safetensors.torch import save_file

    model = tiny_sar_model()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    if edit_config:
        edit_config(config)
    if edit_state:
        edit_state(state)
    path = tmp_path / f"{name}.safetensors"
    meta = {"format": "napari-xt/1", "config": json.dumps(config), "provenance": "{}"}
    save_file(state, str(path), metadata={**meta, **(metadata or {})})
    return path


def _set(section, key, value):
    def edit(config):
        (config[section] if section else config)[key] = value

    return edit


@pytest.mark.parametrize(
    "name, kwargs, says",
    [
        ("wrong_shape", {"edit_state": lambda s: s.update({next(iter(s)): torch.zeros(3, 3)})}, "has shape"),
        ("region_zero", {"edit_config": _set(None, "region_size", 0)}, "region_size must be"),
        ("input_zero", {"edit_config": _set("region_encoder", "input_size", 0)}, "input_size must be"),
        ("unknown_timm", {"edit_config": _set("region_encoder", "name", "no_such_net")}, "not a timm model"),
        ("absurd_width", {"edit_config": _set("context_encoder", "width", 10**9)}, "width must be"),
        ("not_json", {"metadata": {"config": "{not json"}}, "config cannot be used"),
        ("missing_tensor", {"edit_state": lambda s: s.pop(next(iter(s)))}, "missing"),
    ],
)
def test_crafted_checkpoints_are_refused_naming_the_field(tmp_path, name, kwargs, says):
    path = _crafted(tmp_path, name, **kwargs)
    with pytest.raises(CheckpointError, match=says):
        load_checkpoint(path)


def test_a_second_process_is_locked_out_without_advice_to_overwrite(tmp_path, sar_zarr, sar_checkpoint, capsys):
    out = tmp_path / "runs"
    assert main(["predict", str(sar_zarr), "--checkpoint", str(sar_checkpoint), "--out", str(out), "--level", "1"]) == 0
    (run_dir,) = out.glob("*.xt.zarr")
    spec = dict(zarr.open_group(str(run_dir), mode="r").attrs["napari_xt"])
    holder = OutputStore.open(run_dir, spec)  # this process holds the lock
    try:
        with pytest.raises(RunInUseError) as refused:
            OutputStore.open(run_dir, spec, overwrite=True)
        assert "--overwrite" not in str(refused.value) and f"process {os.getpid()}" in str(refused.value)
        code = subprocess.run(
            [
                *CLI,
                "predict",
                str(sar_zarr),
                "--checkpoint",
                str(sar_checkpoint),
                "--out",
                str(out),
                "--level",
                "1",
                "--overwrite",
            ],
            capture_output=True,
            text=True,
        )
        assert code.returncode == EXIT_BAD_INPUT and "is being written by napari-xt process" in code.stderr
    finally:
        holder.close()


def test_a_half_created_run_directory_is_recreated(tmp_path, sar_scene):
    out = tmp_path / "run.xt.zarr"
    group = zarr.open_group(str(out), mode="w", zarr_format=3)  # creation stopped before the attributes
    group.require_group("labels")
    group.require_group("regions")
    result = run_to_end(sar_scene.pyramid(), tiny_sar_model(), out, RunOptions(level=1, cache_dir=""))
    assert isinstance(result, Finished)


def test_damaged_done_flags_are_recomputed(tmp_path, sar_scene, caplog):
    out = tmp_path / "run.xt.zarr"
    model = tiny_sar_model()
    run_to_end(sar_scene.pyramid(), model, out, RunOptions(level=1, cache_dir=""))
    reference = zarr.open_group(str(out))["labels/segmentation/0"][:]
    for chunk in (p for p in (out / "regions" / "done").rglob("*") if p.is_file() and p.name != "zarr.json"):
        chunk.write_bytes(b"damaged")
    zarr.open_group(str(out)).attrs["napari_xt"] = {**zarr.open_group(str(out)).attrs["napari_xt"], "status": "running"}
    assert isinstance(run_to_end(sar_scene.pyramid(), model, out, RunOptions(level=1, cache_dir="")), Finished)
    assert "record of finished regions is damaged" in caplog.text
    np.testing.assert_array_equal(zarr.open_group(str(out))["labels/segmentation/0"][:], reference)


def test_stale_scratch_features_are_cleaned_at_start(tmp_path, sar_scene):
    stale = tmp_path / "napari-xt-features-999999999-abc"
    stale.mkdir()
    (stale / "0_0.npy").write_bytes(b"x" * 100)
    run_to_end(sar_scene.pyramid(), tiny_sar_model(), tmp_path / "run.xt.zarr", RunOptions(level=1, cache_dir=""))
    assert not stale.exists()


@pytest.mark.slow  # in CI (.ci/run runs -m slow too), not in the default run
def test_results_do_not_depend_on_budgets_or_the_roi(tmp_path, sar_scene):
    model = tiny_sar_model()
    base = {"level": 1, "batch_size": 4, "cache_dir": ""}
    runs = {
        "default": RunOptions(**base),
        "tiny_memory": RunOptions(**base, feature_memory_budget=1),
        "nothing_kept": RunOptions(**base, feature_memory_budget=0, feature_disk_budget=0),
    }
    for name, options in runs.items():
        assert isinstance(run_to_end(sar_scene.pyramid(), model, tmp_path / f"{name}.xt.zarr", options), Finished)
    roi = tmp_path / "roi.xt.zarr"
    run_to_end(sar_scene.pyramid(), model, roi, RunOptions(**base, roi=(0, 0, 1280, 640)))
    reference = zarr.open_group(str(tmp_path / "default.xt.zarr"))["labels/segmentation/0"][:]
    csv = (tmp_path / "default.xt.zarr" / "detections.csv").read_text()
    for name in ("tiny_memory", "nothing_kept"):
        np.testing.assert_array_equal(
            zarr.open_group(str(tmp_path / f"{name}.xt.zarr"))["labels/segmentation/0"][:], reference
        )
        assert (tmp_path / f"{name}.xt.zarr" / "detections.csv").read_text() == csv
    np.testing.assert_array_equal(zarr.open_group(str(roi))["labels/segmentation/0"][:, :320], reference[:, :320])


def test_sigterm_keeps_what_finished_and_exits_143(tmp_path, sar_zarr, sar_checkpoint):
    out = tmp_path / "runs"
    command = [*CLI, "predict", str(sar_zarr), "--checkpoint", str(sar_checkpoint)]
    command += ["--out", str(out), "--level", "0", "--batch-size", "4"]
    env = {**os.environ, "NAPARI_XT_CACHE": str(tmp_path / "cache")}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
        try:
            (run_dir,) = out.glob("*.xt.zarr")
            if zarr.open_group(str(run_dir), mode="r")["regions/done"][:].sum() >= 8:
                break
        except (ValueError, KeyError, OSError):
            continue
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == EXIT_TERMINATED, err
    assert "terminated; finished regions are kept" in err
    group = zarr.open_group(str(run_dir), mode="r")
    assert group.attrs["napari_xt"]["status"] == "interrupted" and group["regions/done"][:].sum() >= 8
    assert not list(out.glob("napari-xt-features-*")), "scratch features left behind"


@pytest.mark.parametrize("axes", ["QYX", "CYX", "SYX"])
def test_planar_multichannel_tiffs_open_with_their_channels(tmp_path, axes):
    image = np.random.default_rng(1).integers(0, 60000, (7, 300, 200), dtype=np.uint16)
    path = tmp_path / f"planar_{axes}.tif"
    if axes == "QYX":
        tifffile.imwrite(path, image, metadata=None)
    elif axes == "CYX":
        tifffile.imwrite(path, image, metadata={"axes": "CYX"})
    else:
        tifffile.imwrite(path, image, planarconfig="separate")
    pyramid = open_pyramid(path)
    assert pyramid.n_channels == 7
    np.testing.assert_array_equal(np.asarray(pyramid.levels[0][:, :, 3]), image[3])


def test_more_than_255_classes_are_uint16_end_to_end(tmp_path):
    from napari_xt.engine.grid import make_grid

    assert label_dtype(255) == np.uint8 and label_dtype(256) == np.uint16
    pyramid = open_pyramid(np.zeros((128, 128), np.float32))
    grid = make_grid(pyramid, 64, 0, 1.0, None)
    logits = torch.zeros(1, 300, 64, 64)
    logits[0, 299] = 5.0
    (result,) = region_results(grid, np.array([[0, 0]]), {"segmentation": logits}, ResultSettings(4, 0.1, False, 300))
    assert result.labels.dtype == np.uint16 and int(result.labels.max()) == 299
    with pytest.raises(ImageReadError):
        open_pyramid(tmp_path / "missing.tif")
