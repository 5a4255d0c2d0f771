"""Region encoders: timm backbones with ``features_only``, any number of input channels, nested sub-regions.

A region of ``region_size`` larger than the encoder's ``input_size`` is cut into sub-regions, encoded as one
batch, and each feature map is reassembled into the region's map, as xT's nested tokenization does.

Pretrained weights come from local files only (never downloaded) and are loaded by timm's own machinery: the
model's checkpoint filter (position embeddings resized to ``img_size``, renamed keys), the stem adapted to the
input channels by the model's declared ``first_conv``, the classifier dropped. A timm weight file (``.safetensors``,
``.pth``, ``.bin``) or a Hugging Face hub folder (``config.json`` + ``model.safetensors``, as ``timm`` and
``huggingface_hub`` cache them) is accepted. Every backbone tensor must land: a file that leaves any missing or
brings any timm cannot place is refused, naming them.

Plain ViTs give one map at their patch stride; ``SimpleFeaturePyramid`` turns it into the four strides (4, 8,
16, 32) the decoder takes, as ViTDet and SAM's adapters do.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from napari_xt.model.config import RegionEncoderConfig
from napari_xt.model.tokenization import cut, uncut

logger = logging.getLogger(__name__)

PYRAMID_STRIDES = (4, 8, 16, 32)
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors")


class WeightsError(ValueError):
    """A backbone weight file that does not fit the backbone it is given for."""


@dataclass
class WeightsReport:
    """What loading a backbone weight file did: ``loaded`` tensors, and none ``missing`` or ``unexpected``."""

    source: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def describe(self) -> str:
        unused = f" ({len(self.unexpected)} head tensors unused)" if self.unexpected else ""
        return f"{self.loaded} backbone tensors from {self.source}{unused}"


class RegionEncoder(nn.Module):
    """Encode regions ``(N, C, R, R)`` into multi-scale feature maps ``[(N, C_i, R / s_i, R / s_i), ...]``.

    Attributes:
        channels: channels of each returned map.
        reductions: stride of each returned map relative to region pixels.
        weights_report: what loading ``config.weights`` did (None without weights).
    """

    def __init__(self, config: RegionEncoderConfig, in_channels: int, region_size: int):
        super().__init__()
        kwargs = dict(config.kwargs)
        if config.out_indices is not None:
            kwargs["out_indices"] = tuple(config.out_indices)
        if _takes_img_size(config.name):
            kwargs.setdefault("img_size", config.input_size)
        if _is_plain_vit(config.name) and config.out_indices is None:
            kwargs["out_indices"] = (-1,)  # the last block; SimpleFeaturePyramid makes the strides
        self.weights_report = None
        if config.weights:
            self.backbone, self.weights_report = create_pretrained(config, in_channels, kwargs)
        else:
            import timm

            self.backbone = timm.create_model(
                config.name, pretrained=False, features_only=True, in_chans=in_channels, **kwargs
            )
        self.input_size = config.input_size
        self.region_size = region_size
        info = self.backbone.feature_info
        channels = list(info.channels())
        reductions = list(info.reductions() if hasattr(info, "reductions") else info.reduction())
        self.channels_last_output = str(getattr(self.backbone, "output_fmt", "NCHW")).endswith("NHWC")
        self.pyramid = None
        if len(set(reductions)) == 1:  # a plain ViT: one stride for every map
            self.pyramid = SimpleFeaturePyramid(channels[-1], config.input_size)
            channels, reductions = self.pyramid.channels, list(PYRAMID_STRIDES)
        self.channels, self.reductions = channels, reductions

    def forward(self, regions: torch.Tensor) -> list[torch.Tensor]:
        n = regions.shape[0]
        sub, grid = cut(regions, self.input_size) if regions.shape[-1] != self.input_size else (regions, (1, 1))
        features = self.backbone(sub)
        if self.channels_last_output:
            features = [f.permute(0, 3, 1, 2) for f in features]
        if self.pyramid is not None:
            features = self.pyramid(features[-1])
        if grid != (1, 1):
            features = [uncut(f, grid) for f in features]
        assert features[0].shape[0] == n
        return [f.contiguous() for f in features]


class SimpleFeaturePyramid(nn.Module):
    """One single-stride ViT map ``(N, D, h, w)`` → maps at strides 4, 8, 16 and 32 of the input side, with
    ``D/4, D/2, D, D`` channels: a 1×1 projection, resampling to the stride's size, a 3×3 convolution."""

    def __init__(self, dim: int, input_size: int):
        super().__init__()
        self.channels = [max(dim // 4, 1), max(dim // 2, 1), dim, dim]
        self.sizes = [max(input_size // stride, 1) for stride in PYRAMID_STRIDES]
        self.levels = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(dim, c, 1, bias=False),
                nn.GroupNorm(1, c),
                _Resize(size),
                nn.Conv2d(c, c, 3, padding=1, bias=False),
                nn.GroupNorm(1, c),
            )
            for c, size in zip(self.channels, self.sizes)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [level(x) for level in self.levels]


class _Resize(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.size and x.shape[-2] == self.size:
            return x
        return nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)


def _is_plain_vit(name: str) -> bool:
    return name.startswith(("vit_", "deit", "eva", "beit", "test_vit"))


def _takes_img_size(name: str) -> bool:
    return any(family in name for family in ("swin", "vit", "hiera", "deit", "eva", "beit"))


def weight_source(path: str | Path) -> tuple[Path, dict | None]:
    """The weight file to load and, for a Hugging Face hub folder, its ``config.json`` (``architecture``,
    ``model_args``, ``pretrained_cfg``). Accepts a file, a folder holding one, or a hub cache folder
    (``models--org--name`` with ``snapshots/<revision>/``)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise WeightsError(f"{path}: no such weight file or folder")
    if path.is_file():
        return path, None
    snapshots = sorted((path / "snapshots").glob("*/")) if (path / "snapshots").is_dir() else []
    folder = snapshots[-1] if snapshots else path
    weights = next((folder / name for name in WEIGHT_NAMES if (folder / name).is_file()), None)
    if weights is None:
        raise WeightsError(f"{path}: holds no weight file ({', '.join(WEIGHT_NAMES)})")
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else None
    return weights, config


def create_pretrained(config: RegionEncoderConfig, in_channels: int, kwargs: dict):
    """``timm.create_model(..., pretrained=True)`` from a local file through ``pretrained_cfg_overlay``,
    checked: every tensor of the backbone comes from the file. Returns the backbone and a ``WeightsReport``.

    A hub folder's ``config.json`` must name the same architecture; its ``model_args`` (``img_size``,
    ``init_values``, …) are merged into ``config.kwargs`` so that the saved config rebuilds the same model.
    """
    import timm

    weights, hub_config = weight_source(config.weights)
    overlay: dict = {"file": str(weights)}
    if hub_config is not None:
        architecture = hub_config.get("architecture")
        if architecture and architecture != config.name:
            raise WeightsError(
                f"{config.weights}: holds {architecture} weights, but the region encoder is {config.name}; set "
                f"region_encoder.name to {architecture!r}"
            )
        for key, value in (hub_config.get("model_args") or {}).items():
            if key not in ("num_classes", "pretrained_cfg"):
                config.kwargs.setdefault(key, value)
                kwargs.setdefault(key, value)
        source_cfg = hub_config.get("pretrained_cfg") or {}
        for key in ("input_size", "first_conv", "mean", "std"):
            if key in source_cfg:
                overlay[key] = source_cfg[key]
    if not timm.is_model(config.name):
        raise WeightsError(f"{config.name!r} is not a timm model this timm ({timm.__version__}) knows")
    records = _TimmLoadLog()
    builder_log = logging.getLogger("timm.models._builder")
    builder_log.addHandler(records)
    previous_level = builder_log.level
    builder_log.setLevel(logging.INFO)
    try:
        backbone = timm.create_model(
            config.name,
            pretrained=True,
            pretrained_cfg_overlay=overlay,
            features_only=True,
            in_chans=in_channels,
            **{"num_classes": 0, **kwargs},  # no classifier: its tensors are the only ones timm may drop
        )
    except (RuntimeError, KeyError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = "; ".join(lines[:3])[:400]
        raise WeightsError(
            f"{config.weights}: does not fit {config.name} ({detail}); is it a weight file of this very model and size?"
        ) from error
    finally:
        builder_log.removeHandler(records)
        builder_log.setLevel(previous_level)
    if records.missing:
        raise WeightsError(
            f"{config.weights}: does not fit {config.name}: {len(records.missing)} backbone tensors missing "
            f"(e.g. {records.missing[:5]}); is it a weight file of this very model and size?"
        )
    loaded = sum(1 for _ in backbone.state_dict())
    # unexpected: tensors of the file's head (a classifier's last convolution, its norm) a feature backbone
    # does not have
    report = WeightsReport(str(weights), loaded, unexpected=records.unexpected)
    logger.info("napari-xt: loaded %s", report.describe())
    return backbone, report


class _TimmLoadLog(logging.Handler):
    """Reads the missing and unexpected keys timm's loader reports (it loads non-strictly for feature
    backbones, whose classifier it drops)."""

    def __init__(self):
        super().__init__(level=logging.INFO)
        self.missing: list[str] = []
        self.unexpected: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for marker, target in (("Missing keys (", self.missing), ("Unexpected keys (", self.unexpected)):
            if message.startswith(marker):
                names = message[len(marker) :].split(")", 1)[0]
                target.extend(name.strip() for name in names.split(",") if name.strip())
