import sys

import pytest
import zarr

from napari_xt.cli import EXIT_BAD_INPUT, main


def test_info_prints_levels_and_pixel_size(ome_zarr_v05, capsys):
    assert main(["info", str(ome_zarr_v05)]) == 0
    out = capsys.readouterr().out
    assert "OME-Zarr 0.5" in out
    assert "level 2: 300 × 425 px, downsample 4 × 4" in out
    assert "0.25 × 0.25 µm" in out


def test_info_bad_input_exits_2_with_one_line(tmp_path, capsys):
    zarr.create_array(str(tmp_path / "c.zarr"), shape=(4, 4), dtype="complex64")
    assert main(["info", str(tmp_path / "c.zarr")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "c.zarr: pixel type complex64 is not supported" in err[0]


def test_predict_batch_skips_finished_and_reports_bad_images(tmp_path, sar_zarr, sar_checkpoint, capsys):
    import shutil

    from napari_xt.cli import EXIT_OK, process_age
    from napari_xt.engine.stages import STAGES

    second = tmp_path / "second.zarr"
    shutil.copytree(sar_zarr, second)
    args = [
        "predict",
        str(sar_zarr),
        str(second),
        "--checkpoint",
        str(sar_checkpoint),
        "--out",
        str(tmp_path / "runs"),
        "--level",
        "1",
    ]
    age = process_age()
    assert age > 0
    assert main(args) == EXIT_OK
    assert (tmp_path / "runs" / "scene__tiny_sar_xl__L1.xt.zarr" / "detections.csv").exists()
    assert (tmp_path / "runs" / "second__tiny_sar_xl__L1.xt.zarr" / "detections.geojson").exists()
    # the first image's run counts the process's start-up; the second waited on nothing before it began
    first, then = (
        zarr.open_group(str(tmp_path / "runs" / f"{name}__tiny_sar_xl__L1.xt.zarr"), mode="r").attrs["napari_xt"][
            "timings"
        ]
        for name in ("scene", "second")
    )
    assert first["start_up"] >= age > 2 * then["start_up"]
    for timings in (first, then):
        named = [*STAGES, "export", "other"]
        assert sum(timings[name] for name in named) == pytest.approx(timings["total"], abs=0.01)
    capsys.readouterr()
    assert main(args) == EXIT_OK
    assert capsys.readouterr().err.count("skipped already finished") == 2
    missing = [
        "predict",
        str(tmp_path / "nope.zarr"),
        "--checkpoint",
        str(sar_checkpoint),
        "--out",
        str(tmp_path / "runs"),
    ]
    assert main(missing) == EXIT_BAD_INPUT
    assert "nope.zarr: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("boot_clock", [False, True])
@pytest.mark.parametrize("offset", [-7200.0, 3600.0])
def test_a_process_start_time_that_is_not_plausible_is_not_believed(monkeypatch, offset, boot_clock):
    """A start time hours before the command line was loaded, or after it (clocks that disagree in a container),
    gives the time since the command line was loaded instead, whichever clock gave it."""
    import time

    import psutil

    from napari_xt import cli

    monkeypatch.setattr(cli, "_STARTED", None)
    if boot_clock:
        monkeypatch.setattr(cli, "_age_since_boot", lambda: time.time() - cli._LOADED - offset)
    else:
        monkeypatch.setattr(cli, "_age_since_boot", lambda: None)
        monkeypatch.setattr(psutil.Process, "create_time", lambda self: cli._LOADED + offset)
    before = time.time()
    age = cli.process_age()
    assert before - cli._LOADED <= age <= time.time() - cli._LOADED


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's clocks since boot are Linux's")
def test_the_process_age_comes_from_the_clocks_since_boot():
    """The age from /proc (clock ticks) is at least the time since the command line was loaded, and within the
    second that psutil's start time (whole-second boot time) may be off by."""
    import time

    import psutil

    from napari_xt import cli

    age = cli._age_since_boot()
    loaded = time.time() - cli._LOADED
    by_psutil = time.time() - psutil.Process().create_time()
    assert age is not None
    assert loaded - 0.02 <= age < loaded + 600.0
    assert abs(age - by_psutil) <= 1.05
    assert cli.process_age() == pytest.approx(age, abs=0.05)
    # the clocks since boot tick in 10 ms: the age is found once, so that later ages keep growing
    before, first = time.time(), cli.process_age()
    time.sleep(0.003)
    second, after = cli.process_age(), time.time()
    assert 0.003 <= second - first <= after - before


def test_predict_exit_2_for_checkpoint_problems(tmp_path, sar_zarr, ome_zarr_v05, sar_checkpoint, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    assert main(["predict", str(sar_zarr), "--checkpoint", str(bad), "--out", str(tmp_path)]) == EXIT_BAD_INPUT
    assert "not a readable .safetensors" in capsys.readouterr().err
    pickle = tmp_path / "swin-t-hyper.ckpt"
    pickle.write_bytes(b"an official checkpoint")
    assert main(["predict", str(sar_zarr), "--checkpoint", str(pickle), "--out", str(tmp_path)]) == EXIT_BAD_INPUT
    assert "napari-xt convert swin-t-hyper.ckpt" in capsys.readouterr().err
    rgb = ["predict", str(ome_zarr_v05), "--checkpoint", str(sar_checkpoint), "--out", str(tmp_path)]
    assert main(rgb) == EXIT_BAD_INPUT
    assert "expects 1-channel images" in capsys.readouterr().err
    roi = ["predict", str(sar_zarr), "--checkpoint", str(sar_checkpoint), "--out", str(tmp_path), "--roi", "1,2,3"]
    assert main(roi) == EXIT_BAD_INPUT


def test_predict_can_keep_class_probabilities(tmp_path, sar_zarr, sar_checkpoint):
    out = tmp_path / "runs"
    args = ["predict", str(sar_zarr), "--checkpoint", str(sar_checkpoint), "--out", str(out), "--level", "1"]
    assert main([*args, "--probabilities"]) == 0
    group = zarr.open_group(str(out / "scene__tiny_sar_xl__L1.xt.zarr"), mode="r")
    assert group["probabilities/0"].shape == (3, *group["labels/segmentation/0"].shape)


def test_train_from_backbone_weights_reports_what_landed_or_refuses_the_file(tmp_path, capsys):
    import timm
    from safetensors.torch import save_file

    from napari_xt.model import load_checkpoint

    source = timm.create_model("test_vit", pretrained=False, img_size=64)  # an RGB classifier, as timm saves it
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    common = ["train", "--data", "synthetic:sar", "--preset", "demo_sar_xl", "--backbone", "test_vit"]
    common += ["--region-size", "64", "--steps", "1", "--crop-regions", "2", "--batch", "1"]
    out = tmp_path / "m.safetensors"
    assert main([*common, "--backbone-weights", str(tmp_path / "vit.safetensors"), "--out", str(out)]) == 0
    assert "region encoder initialised with" in capsys.readouterr().err
    (tmp_path / "vit.safetensors").rename(tmp_path / "gone.safetensors")
    model, _ = load_checkpoint(out)  # the checkpoint stands alone: the weight file is not read again
    assert model.region_encoder.reductions == [4, 8, 16, 32]
    other = timm.create_model("test_convnext", pretrained=False)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "convnext.safetensors"))
    # --init takes a timm backbone file too, through the same loading (here a ConvNeXt's, refused by a ViT)
    code = main([*common, "--init", str(tmp_path / "convnext.safetensors"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and "is backbone weights" in err and "does not fit test_vit" in err


def test_folders_globs_config_json_and_quiet(tmp_path, sar_zarr, sar_checkpoint, capsys):
    """A folder of images, a glob, options from --config (the command line wins), one JSON line per image on
    stdout, plain progress lines in a redirected log, and nothing but failures with --quiet."""
    import json
    import shutil

    from napari_xt.cli import EXIT_OK, expand_inputs

    images = tmp_path / "images"
    images.mkdir()
    shutil.copytree(sar_zarr, images / "a.zarr")
    shutil.copytree(sar_zarr, images / "b.zarr")
    (images / "notes.txt").write_text("not an image")
    shutil.copytree(sar_zarr, images / "old.xt.zarr")  # a run directory is never an input
    assert expand_inputs([str(images)]) == [str(images / "a.zarr"), str(images / "b.zarr")]
    assert expand_inputs([str(images / "*.zarr")]) == [str(images / "a.zarr"), str(images / "b.zarr")]
    assert expand_inputs([str(images / "a.zarr")]) == [str(images / "a.zarr")]  # a zarr store stays one image
    with pytest.raises(ValueError, match="matches no file"):
        expand_inputs([str(images / "*.svs")])
    with pytest.raises(ValueError, match=r"no image of the types \.svs"):
        expand_inputs([str(images)], "svs")

    config = tmp_path / "run.yaml"
    out = tmp_path / "runs"
    config.write_text(
        f"images: [{images / 'a.zarr'}]\ncheckpoint: {sar_checkpoint}\nout: {out}\nlevel: 1\nthreshold: 0.9\n"
    )
    assert main(["predict", "--config", str(config), "--threshold", "0.3", "--json"]) == EXIT_OK
    captured = capsys.readouterr()
    (line,) = captured.out.splitlines()
    record = json.loads(line)
    assert record["status"] == "finished" and record["run_dir"].endswith("a__tiny_sar_xl__L1.xt.zarr")
    assert set(record["detections"]) == {"a", "b"} and "encode" in record["timings"]
    spec = zarr.open_group(record["run_dir"], mode="r").attrs["napari_xt"]
    assert spec["level"] == 1 and spec["export_threshold"] == 0.3  # from the file, and the command line won
    assert "predict" in captured.err and "\r" not in captured.err  # plain progress lines, not a bar

    assert main(["predict", str(images / "b.zarr"), "--config", str(config), "--quiet"]) == EXIT_OK
    assert capsys.readouterr().err == ""  # images on the command line replace the file's; quiet prints nothing
    assert (out / "b__tiny_sar_xl__L1.xt.zarr").is_dir()
    config.write_text("thresold: 0.4\n")
    with pytest.raises(SystemExit) as stop:
        main(["predict", "--config", str(config)])
    assert stop.value.code == EXIT_BAD_INPUT and "unknown option 'thresold'" in capsys.readouterr().err


def test_version_names_the_libraries(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("napari-xt 0.1.0 (torch ")


def test_style_gives_a_checkpoint_colours_and_names_and_explains_bad_pairs(tmp_path, sar_checkpoint, capsys):
    from napari_xt.model import read_checkpoint_info

    out = tmp_path / "styled.safetensors"
    args = ["style", str(sar_checkpoint), "--colour", "a=#ffc83d", "--name", "x=open-sea vessel"]
    assert main([*args, "--out", str(out)]) == 0
    heads = read_checkpoint_info(out).config.heads
    assert heads.colours["a"] == "#ffc83d" and heads.display_names["x"] == "open-sea vessel"
    assert "weights unchanged" in capsys.readouterr().out
    assert main(["style", str(out), "--colour", "a"]) == EXIT_BAD_INPUT
    assert "expected CLASS=VALUE" in capsys.readouterr().err
    assert main(["style", str(out)]) == EXIT_BAD_INPUT
    assert "nothing to change" in capsys.readouterr().err


def test_convert_an_official_checkpoint_and_fine_tune_from_it(tmp_path, capsys):
    import json

    from napari_xt.model import read_checkpoint_info
    from tests.model.official_files import official_state, save_official

    source = save_official(tmp_path, official_state("swin-t-hyper-512-256", width=128), "swin-t-hyper-top1.ckpt")
    (tmp_path / "names.txt").write_text("\n".join(f"species {i}" for i in range(284)))
    assert main(["convert", str(source), "--classes", str(tmp_path / "names.txt")]) == 0
    out = tmp_path / "swin-t-hyper-top1.safetensors"
    assert "loaded all 242 tensors" in capsys.readouterr().out
    info = read_checkpoint_info(out)
    assert info.config.heads.classification_classes[3] == "species 3"
    assert info.provenance["architecture"]["timm_name"] == "swinv2_tiny_window16_256"
    assert info.provenance["source_sha256"] and info.provenance["converted_from"] == source.name
    assert main(["convert", str(source), "--out", str(tmp_path / "b.safetensors"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["architecture"]["head"] == "hyper" and report["tensors"] == 242
    pooled = tmp_path / "pooled.safetensors"
    assert main(["convert", str(source), "--out", str(pooled), "--tokens-per-region", "2"]) == 0
    assert read_checkpoint_info(pooled).config.context_encoder.tokens_per_region == 2
    capsys.readouterr()
    # the official file itself is not a starting point for training: the message says how to convert it
    assert main(["train", "--init", str(source), "--out", str(tmp_path / "m.safetensors")]) == EXIT_BAD_INPUT
    assert "napari-xt convert" in capsys.readouterr().err
    assert main(["convert", str(source), "--out", str(source)]) == EXIT_BAD_INPUT
    assert "is the source file" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "names.txt")]) == EXIT_BAD_INPUT
    assert "unknown weight file type" in capsys.readouterr().err


LEAVE = """
import atexit, sys, tempfile, threading, time
from pathlib import Path
from napari_xt.cli import leave
out = Path(sys.argv[1])
atexit.register(lambda: (out / "handler").write_text("ran"))
kept = tempfile.TemporaryDirectory(dir=out)  # removed by its finalizer at exit
(out / "where").write_text(kept.name)
if sys.argv[2] == "thread":  # a thread that is not a daemon is waited for, as Python does
    threading.Thread(target=lambda: (time.sleep(0.5), (out / "thread").write_text("done"))).start()
sys.stdout.write("unflushed line")
leave(7)
(out / "after").write_text("leave returned")
"""


@pytest.mark.parametrize("mode", ["plain", "thread"])
def test_leave_runs_exit_handlers_flushes_and_keeps_the_exit_code(tmp_path, mode):
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run(
        [sys.executable, "-c", LEAVE, str(tmp_path), mode], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 7, done.stderr
    assert done.stdout == "unflushed line"
    assert (tmp_path / "handler").read_text() == "ran"
    assert not Path((tmp_path / "where").read_text()).exists()  # the temporary folder was removed
    assert not (tmp_path / "after").exists()
    assert (tmp_path / "thread").exists() == (mode == "thread")
