import pytest
import torch

from napari_xt.model.config import RegionEncoderConfig
from napari_xt.model.region_encoder import RegionEncoder

FAMILIES = [
    ("test_convnext", 64, {}),
    ("test_vit", 64, {}),
    ("test_efficientnet", 64, {}),
    ("test_resnet", 64, {}),
    ("swinv2_tiny_window8_256", 256, {"depths": (1, 1, 1, 1), "embed_dim": 24, "num_heads": (1, 1, 1, 1)}),
    ("hiera_tiny_224", 224, {"stages": (1, 1, 1, 1), "embed_dim": 16, "num_heads": 1}),
]


@pytest.mark.parametrize(("name", "size", "kwargs"), FAMILIES, ids=[f[0] for f in FAMILIES])
@pytest.mark.parametrize("channels", [1, 2, 3])
def test_families_give_nchw_maps_that_match_feature_info(name, size, kwargs, channels):
    config = RegionEncoderConfig(name, input_size=size, kwargs=kwargs)
    encoder = RegionEncoder(config, in_channels=channels, region_size=size).eval()
    with torch.no_grad():
        features = encoder(torch.randn(2, channels, size, size))
    assert len(features) == len(encoder.channels)
    for feature, chans, reduction in zip(features, encoder.channels, encoder.reductions):
        assert feature.shape == (2, chans, size // reduction, size // reduction)


def test_swin_nhwc_maps_are_permuted():
    config = RegionEncoderConfig(
        "swinv2_tiny_window8_256",
        input_size=256,
        kwargs={"depths": (1, 1, 1, 1), "embed_dim": 24, "num_heads": (1, 1, 1, 1)},
    )
    encoder = RegionEncoder(config, in_channels=3, region_size=256)
    assert encoder.channels_last_output
    assert encoder(torch.zeros(1, 3, 256, 256))[0].shape == (1, 24, 64, 64)


def test_local_timm_weights_initialise_a_two_channel_encoder(tmp_path):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("test_convnext", pretrained=False)  # an RGB classifier, as timm files are
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "weights.safetensors"))
    config = RegionEncoderConfig("test_convnext", input_size=64, weights=str(tmp_path / "weights.safetensors"))
    encoder = RegionEncoder(config, in_channels=2, region_size=64)
    own = encoder.backbone.state_dict()
    stem = source.state_dict()["stem.0.weight"]
    assert own["stem_0.weight"].shape[1] == 2
    # timm's adapt_input_conv: RGB kernels repeated, cut to 2 channels and scaled by 3 / 2
    torch.testing.assert_close(own["stem_0.weight"], stem[:, :2] * 1.5)
    deep = next(k for k in own if k.startswith("stages_3") and k.endswith("weight"))
    torch.testing.assert_close(own[deep], source.state_dict()[deep.replace("stages_", "stages.")])
