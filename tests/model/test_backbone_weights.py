"""Pretrained backbone weights from local files, loaded by timm's own machinery: every tensor lands, for each
family a region encoder can be (ConvNeXt, Swin-v2, Hiera, ViT incl. ViT-L/H foundation-model names, ResNet,
EfficientNet), from a weight file as timm saves it or a Hugging Face hub folder; partial files are refused."""

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from napari_xt.model.config import RegionEncoderConfig
from napari_xt.model.region_encoder import RegionEncoder, WeightsError

SMALL = {
    "test_convnext": ({}, 64),
    "swinv2_tiny_window8_256": ({"depths": (1, 1, 1, 1), "embed_dim": 24, "num_heads": (1, 1, 1, 1)}, 256),
    "hiera_tiny_224": ({"stages": (1, 1, 1, 1), "embed_dim": 16, "num_heads": 1}, 224),
    "vit_large_patch16_224": ({"embed_dim": 32, "depth": 2, "num_heads": 2}, 224),
    "vit_huge_patch14_224": ({"embed_dim": 32, "depth": 1, "num_heads": 2}, 224),
    "test_resnet": ({}, 64),
    "test_efficientnet": ({}, 64),
}


def timm_file(tmp_path, name, kwargs, size):
    """A random RGB classifier of ``name`` saved as timm saves weights (``model.safetensors``)."""
    extra = {"img_size": size} if "vit" in name or "hiera" in name or "swin" in name else {}
    source = timm.create_model(name, pretrained=False, **kwargs, **extra)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"{name}.safetensors"
    save_file(state, str(path))
    return path, state


def source_key(key: str, source: dict) -> str | None:
    """The timm key a feature-backbone key came from (``stages_1.x`` ← ``stages.1.x``, ``model.x`` ← ``x``)."""
    for candidate in (key, key.removeprefix("model."), key.replace("_", ".", 1)):
        if candidate in source:
            return candidate
    return None


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("channels", [3, 2])
def test_every_backbone_tensor_lands(tmp_path, name, channels):
    kwargs, size = SMALL[name]
    path, source = timm_file(tmp_path, name, kwargs, size)
    config = RegionEncoderConfig(name, input_size=size, kwargs=dict(kwargs), weights=str(path))
    encoder = RegionEncoder(config, in_channels=channels, region_size=size)
    own = encoder.backbone.state_dict()
    assert encoder.weights_report.loaded == len(own) > 0
    adapted = 0
    for key, tensor in own.items():
        origin = source_key(key, source)
        assert origin is not None, key
        if tensor.shape != source[origin].shape:  # the stem, adapted to the channel count
            assert channels != 3 and tensor.shape[1] == channels
            adapted += 1
            continue
        torch.testing.assert_close(tensor, source[origin], msg=key)
    assert adapted == (0 if channels == 3 else 1)
    features = encoder(torch.randn(1, channels, size, size))
    assert [f.shape[-1] for f in features] == [size // r for r in encoder.reductions]


def test_vit_gives_four_strides_for_the_decoder(tmp_path):
    kwargs, _size = SMALL["vit_huge_patch14_224"]  # patch 14: a 16 × 16 token map
    encoder = RegionEncoder(RegionEncoderConfig("vit_huge_patch14_224", 224, kwargs=kwargs), 3, 448)
    assert encoder.reductions == [4, 8, 16, 32] and encoder.channels == [8, 16, 32, 32]
    maps = encoder(torch.randn(1, 3, 448, 448))  # 2 × 2 sub-regions, stitched back
    assert [m.shape[-1] for m in maps] == [112, 56, 28, 14]


def test_position_embeddings_are_resized_by_timms_filter(tmp_path):
    kwargs, _ = SMALL["vit_large_patch16_224"]
    path, _source = timm_file(tmp_path, "vit_large_patch16_224", kwargs, 224)
    config = RegionEncoderConfig("vit_large_patch16_224", input_size=128, kwargs=dict(kwargs), weights=str(path))
    encoder = RegionEncoder(config, in_channels=3, region_size=128)
    assert encoder.backbone.state_dict()["model.pos_embed"].shape[1] == 1 + 8 * 8  # 224 → 128 px: 14² → 8² tokens


def test_hugging_face_hub_cache_folder_offline(tmp_path):
    kwargs, size = SMALL["vit_large_patch16_224"]
    path, source = timm_file(tmp_path, "vit_large_patch16_224", {**kwargs, "init_values": 1e-5}, size)
    snapshot = tmp_path / "models--MahmoodLab--UNI" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    path.rename(snapshot / "model.safetensors")
    (snapshot / "config.json").write_text(
        json.dumps(
            {
                "architecture": "vit_large_patch16_224",
                "num_classes": 0,
                "model_args": {**kwargs, "init_values": 1e-5, "img_size": 224},
                "pretrained_cfg": {"input_size": [3, 224, 224], "mean": [0.485, 0.456, 0.406]},
            }
        )
    )
    config = RegionEncoderConfig("vit_large_patch16_224", input_size=224, weights=str(snapshot.parents[1]))
    encoder = RegionEncoder(config, in_channels=3, region_size=224)
    assert config.kwargs["init_values"] == 1e-5  # kept in the config, so a checkpoint rebuilds the same model
    own = encoder.backbone.state_dict()
    torch.testing.assert_close(own["model.blocks.0.ls1.gamma"], source["blocks.0.ls1.gamma"])
    other = RegionEncoderConfig("vit_huge_patch14_224", input_size=224, weights=str(snapshot))
    with pytest.raises(WeightsError, match="holds vit_large_patch16_224 weights"):
        RegionEncoder(other, in_channels=3, region_size=224)


def test_partial_and_foreign_files_are_refused_naming_the_keys(tmp_path):
    kwargs, size = SMALL["hiera_tiny_224"]
    _path, source = timm_file(tmp_path, "hiera_tiny_224", kwargs, size)
    partial = {k: v for k, v in source.items() if not k.startswith("blocks.1.")}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    config = RegionEncoderConfig(
        "hiera_tiny_224", 224, kwargs=dict(kwargs), weights=str(tmp_path / "partial.safetensors")
    )
    with pytest.raises(WeightsError, match=r"missing \(e\.g\. \['blocks\.1\."):
        RegionEncoder(config, 3, 224)
    vit_path, _ = timm_file(tmp_path, "vit_large_patch16_224", SMALL["vit_large_patch16_224"][0], 224)
    config = RegionEncoderConfig("hiera_tiny_224", 224, kwargs=dict(kwargs), weights=str(vit_path))
    with pytest.raises(WeightsError, match="does not fit hiera_tiny_224"):
        RegionEncoder(config, 3, 224)
    with pytest.raises(WeightsError, match="no such weight file"):
        RegionEncoder(RegionEncoderConfig("hiera_tiny_224", 224, weights=str(tmp_path / "nope.pth")), 3, 224)
