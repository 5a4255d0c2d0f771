"""Region encoders: timm backbones with ``features_only``, any number of input channels, nested sub-regions.

A region of ``region_size`` larger than the encoder's ``input_size`` is cut into sub-regions, encoded as one
batch, and each feature map is reassembled into the region's map, as xT's nested tokenization does.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from napari_xt.model.config import RegionEncoderConfig
from napari_xt.model.tokenization import cut, uncut

logger = logging.getLogger(__name__)


class RegionEncoder(nn.Module):
    """Encode regions ``(N, C, R, R)`` into multi-scale feature maps ``[(N, C_i, R / s_i, R / s_i), ...]``.

    Attributes:
        channels: channels of each returned map.
        reductions: stride of each returned map relative to region pixels.
    """

    def __init__(self, config: RegionEncoderConfig, in_channels: int, region_size: int):
        super().__init__()
        import timm

        kwargs = dict(config.kwargs)
        if config.out_indices is not None:
            kwargs["out_indices"] = tuple(config.out_indices)
        if _takes_img_size(config.name):
            kwargs.setdefault("img_size", config.input_size)
        self.backbone = timm.create_model(
            config.name, pretrained=False, features_only=True, in_chans=in_channels, **kwargs
        )
        self.input_size = config.input_size
        self.region_size = region_size
        info = self.backbone.feature_info
        self.channels = list(info.channels())
        self.reductions = list(info.reductions() if hasattr(info, "reductions") else info.reduction())
        self.channels_last_output = str(getattr(self.backbone, "output_fmt", "NCHW")).endswith("NHWC")
        if config.weights:
            load_timm_weights(self, config.weights)

    def forward(self, regions: torch.Tensor) -> list[torch.Tensor]:
        n = regions.shape[0]
        sub, grid = cut(regions, self.input_size) if regions.shape[-1] != self.input_size else (regions, (1, 1))
        features = self.backbone(sub)
        if self.channels_last_output:
            features = [f.permute(0, 3, 1, 2) for f in features]
        if grid != (1, 1):
            features = [uncut(f, grid) for f in features]
        assert features[0].shape[0] == n
        return [f.contiguous() for f in features]


def _takes_img_size(name: str) -> bool:
    return any(family in name for family in ("swin", "vit", "hiera", "deit", "eva", "beit"))


def load_timm_weights(encoder: RegionEncoder, path: str | Path) -> tuple[list[str], list[str]]:
    """Initialise ``encoder`` from a local timm weight file (safetensors, or a pickle loaded weights-only).

    Classifier weights are dropped; a stem with another number of input channels is adapted with timm's
    ``adapt_input_conv``. Returns the missing and unexpected keys (also logged).
    """
    from timm.models import adapt_input_conv

    from napari_xt.model.checkpoint import read_state_dict

    state = read_state_dict(path)
    own = encoder.backbone.state_dict()
    adapted = {}
    for key, value in state.items():
        target = _match_key(key, own)
        if target is None:
            continue
        if value.ndim == 4 and own[target].ndim == 4 and value.shape[1] != own[target].shape[1]:
            value = adapt_input_conv(own[target].shape[1], value)
        if value.shape == own[target].shape:
            adapted[target] = value
    result = encoder.backbone.load_state_dict(adapted, strict=False)
    logger.info("loaded %d tensors from %s; %d missing", len(adapted), path, len(result.missing_keys))
    unexpected = sorted(set(state) - {k for k in state if _match_key(k, own) is not None})
    return list(result.missing_keys), unexpected


def _match_key(key: str, own: dict) -> str | None:
    """The encoder key for a timm checkpoint key.

    ``features_only`` models flatten their first-level sequential modules, so ``stem.0.weight`` becomes
    ``stem_0.weight`` and ``stages.1.blocks…`` becomes ``stages_1.blocks…``.
    """
    for candidate in (key, key.replace(".", "_", 1)):
        if candidate in own:
            return candidate
    return None
