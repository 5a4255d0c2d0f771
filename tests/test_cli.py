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

    from napari_xt.cli import EXIT_OK

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
    assert main(args) == EXIT_OK
    assert (tmp_path / "runs" / "scene__tiny_sar_xl__L1.xt.zarr" / "detections.csv").exists()
    assert (tmp_path / "runs" / "second__tiny_sar_xl__L1.xt.zarr" / "detections.geojson").exists()
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


def test_predict_exit_2_for_checkpoint_problems(tmp_path, sar_zarr, ome_zarr_v05, sar_checkpoint, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    assert main(["predict", str(sar_zarr), "--checkpoint", str(bad), "--out", str(tmp_path)]) == EXIT_BAD_INPUT
    assert "not a readable .safetensors" in capsys.readouterr().err
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
    code = main([*common, "--backbone-weights", str(tmp_path / "convnext.safetensors"), "--out", str(out)])
    assert code == EXIT_BAD_INPUT and "does not fit test_vit" in capsys.readouterr().err
