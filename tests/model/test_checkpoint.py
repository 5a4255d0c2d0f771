import pickle

import pytest
import torch

from napari_xt.model import (
    CheckpointError,
    check_fits_image,
    create_model,
    load_checkpoint,
    preset_config,
    read_checkpoint_info,
    save_checkpoint,
)
from napari_xt.model.checkpoint import read_state_dict
from napari_xt.model.config import XTConfig


def test_save_and_load_round_trip_with_config_and_provenance(tmp_path):
    torch.manual_seed(0)
    model = create_model("test_tiny_mamba").eval()
    path = tmp_path / "tiny.safetensors"
    digest = save_checkpoint(model, path, provenance={"command": "napari-xt train …", "seed": 3})
    info = read_checkpoint_info(path)
    assert info.sha256 == digest
    assert info.config.context_encoder.kind == "mamba"
    assert info.provenance == {"command": "napari-xt train …", "seed": 3}
    loaded, _ = load_checkpoint(path)
    image = torch.rand(1, 3, 128, 128) * 255
    with torch.no_grad():
        torch.testing.assert_close(loaded(image)["segmentation"], model(image)["segmentation"])


class _RunsCode:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": {"w": torch.zeros(2)}, "payload": _RunsCode(marker)}, handle)
    with pytest.raises(CheckpointError, match="never unpickles code"):
        read_state_dict(path)
    assert not marker.exists()


def test_plain_tensor_pickle_loads_weights_only(tmp_path):
    path = tmp_path / "ok.pth"
    torch.save({"model": {"module.a": torch.ones(3)}}, path)
    assert list(read_state_dict(path)) == ["a"]


def test_channel_mismatch_is_explained():
    config = preset_config("test_tiny_xl")
    with pytest.raises(CheckpointError, match=r"expects 3-channel images but scene\.tif has 2 channel"):
        check_fits_image(config, 2, "scene.tif")


def test_bare_weight_file_is_not_taken_for_a_checkpoint(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(CheckpointError, match="no napari-xt config"):
        read_checkpoint_info(tmp_path / "bare.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match=r"not a readable \.safetensors"):
        read_checkpoint_info(tmp_path / "junk.safetensors")


def test_restyle_changes_colours_and_names_only_and_refuses_what_the_model_lacks(tmp_path, sar_checkpoint):
    from safetensors.torch import load_file

    from napari_xt.model.checkpoint import restyle_checkpoint

    out = tmp_path / "styled.safetensors"
    digest = restyle_checkpoint(sar_checkpoint, out, {"a": "#ffc83d"}, {"background": "sea"}, "napari-xt style …")
    before, after = read_checkpoint_info(sar_checkpoint), read_checkpoint_info(out)
    assert digest == after.sha256 != before.sha256
    assert after.config.heads.colours["a"] == "#ffc83d" and after.config.heads.display_names == {"background": "sea"}
    assert {k: v for k, v in after.config.heads.colours.items() if k != "a"} == {
        k: v for k, v in before.config.heads.colours.items() if k != "a"
    }
    assert after.provenance["restyled"]["from_sha256"] == before.sha256
    assert after.provenance["purpose"] == "tests"  # the source's provenance is kept
    old, new = load_file(str(sar_checkpoint)), load_file(str(out))
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) and old[k].dtype == new[k].dtype for k in old)
    with pytest.raises(CheckpointError, match="no class tumour"):
        restyle_checkpoint(sar_checkpoint, out, {"tumour": "#ff0000"})
    with pytest.raises(CheckpointError, match="#rrggbb"):
        restyle_checkpoint(sar_checkpoint, out, {"a": "sand"})
    assert read_checkpoint_info(out).sha256 == digest  # a refused restyle leaves the file alone


def test_colours_and_display_names_must_be_text(tmp_path):
    config = preset_config("test_tiny_xl").to_dict()
    config["heads"]["display_names"] = ["not", "a", "table"]
    with pytest.raises(ValueError, match=r"heads\.display_names must map class names to text"):
        XTConfig.from_dict(config)


def test_a_classifier_alone_is_refused_over_an_image_with_what_to_do():
    from napari_xt.model.official import official_config

    config = official_config("swinv2_tiny_window16_256", "hyper", width=128, classes=5)
    with pytest.raises(CheckpointError, match=r"classifies whole images into 5 classes.*train --init"):
        check_fits_image(config, 3, "slide.svs")
    config.heads.segmentation_classes = ["background", "tumour"]
    check_fits_image(config, 3, "slide.svs")
