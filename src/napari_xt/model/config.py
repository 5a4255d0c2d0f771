"""XTConfig: everything needed to rebuild an xT model, JSON-serialisable (stored in checkpoint metadata)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

CONTEXT_KINDS = ("none", "xl", "hyper", "mamba")
ORDERS = ("hilbert", "raster", "token_raster")
LAYERS = ("pre_norm", "llama")
POSITIONS = ("region", "mae")
MAMBA_RESIDUALS = ("pre_norm", "normed")
CLASSIFICATION_INPUTS = ("context", "cls_token", "features")


@dataclass
class RegionEncoderConfig:
    """A timm backbone used with ``features_only``.

    Attributes:
        name: timm model name (``convnext_atto``, ``swinv2_tiny_window16_256``, ``hiera_tiny_224``, …).
        input_size: the side the encoder takes; a larger region is cut into sub-regions of this size.
        out_indices: which feature levels to keep (None: all timm offers).
        kwargs: extra keyword arguments for ``timm.create_model``.
        weights: optional path of a local timm weight file to initialise from (never downloaded).
    """

    name: str = "convnext_atto"
    input_size: int = 256
    out_indices: list[int] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None


@dataclass
class ContextEncoderConfig:
    """The long-sequence model that mixes region tokens of the whole image.

    Attributes:
        kind: ``none``, ``xl`` (Transformer-XL with carried memory), ``hyper`` (HyperAttention) or ``mamba``.
        width: token width.
        depth: number of layers.
        heads: attention heads (``xl``/``hyper``); must divide ``width``.
        tokens_per_region: pooled tokens per region side (``2`` gives 2 × 2 = 4 tokens per region).
        order: the order in which the regions are read: ``hilbert`` (along a Hilbert curve of their global grid
            positions, so windows and scans cover compact 2-D patches at any image width), ``raster`` (region
            by region, row by row, each region's tokens together) or ``token_raster`` (every token of the image
            row by row over the stitched token grid, as the official xT code reads it).
        window: regions per window for ``xl`` (and chunk length for the ``mamba`` scan, in regions).
        memory: regions of memory ``xl`` carries from window to window.
        bidirectional: ``xl``: also run over the regions in reverse order and average, so every region sees
            context on both sides; ``mamba`` alternates scan direction layer by layer instead.
        hyper_exact_below: ``hyper`` uses exact attention for sequences shorter than this many tokens.
        hyper_block: block size of HyperAttention's block-diagonal part.
        hyper_samples: sampled key columns of HyperAttention.
        hyper_hash_bits: angular LSH bits (2**bits buckets).
        mlp_ratio: hidden width of the feed-forward layers relative to ``width``.
        d_state, d_conv, expand: Mamba block settings (mamba-ssm's defaults).
        grad_ratio: share of regions of a training crop that receive gradients through the region encoder.
        layer: ``hyper``'s layer: ``pre_norm`` (LayerNorm, attention, LayerNorm, GELU MLP) or ``llama`` (the
            official xT layer: RMSNorm, attention with one biased ``qkv`` projection, RMSNorm, gated MLP without
            biases).
        causal: ``hyper``: each token attends to itself and the tokens before it (the official xT setting).
        cls_token: a learned token appended after the last region token (``hyper``, ``mamba``); the
            classification head can read its output (``heads.classification_input = "cls_token"``).
        positions: ``region`` (sin-cos of the regions' global grid positions, in region units) or ``mae`` (MAE's
            2-D sin-cos over the token grid, counted from the first token of the image or crop, as official xT).
        final_norm: a LayerNorm after the last layer (the official heads bring their own).
        mamba_residual: ``pre_norm`` (``x + mixer(norm(x))``) or ``normed`` (``h = norm(x); h + mixer(h)``, as
            the official xT Mamba block).
    """

    kind: str = "xl"
    width: int = 128
    depth: int = 2
    heads: int = 4
    tokens_per_region: int = 2
    order: str = "hilbert"
    window: int = 16
    memory: int = 32
    bidirectional: bool = True
    hyper_exact_below: int = 4096
    hyper_block: int = 256
    hyper_samples: int = 256
    hyper_hash_bits: int = 7
    mlp_ratio: float = 2.0
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    grad_ratio: float = 1.0
    layer: str = "pre_norm"
    causal: bool = False
    cls_token: bool = False
    positions: str = "region"
    final_norm: bool = True
    mamba_residual: str = "pre_norm"


@dataclass
class HeadsConfig:
    """Which heads the model has, their classes and colours.

    Attributes:
        segmentation_classes: class names of the segmentation map (index 0 is background); empty: no head.
        detection_classes: classes of point objects; empty: no detection head.
        classification_classes: image-level classes; empty: no classification head.
        colours: ``name -> "#rrggbb"`` for display.
        display_names: ``name -> words`` shown to people (``background`` → ``sea``); a class without one is
            shown with its underscores as spaces.
        decoder_channels: UNet decoder widths from fine (stride 4) to coarse.
        decoder_convs: 3 × 3 convolutions per decoder stage (2 as in UNet; 1 for light CPU models).
        detection_stride: output stride of the detection maps (≤ 4).
        classification_input: what the classification head reads: ``context`` (the mean of all context
            tokens), ``cls_token`` (the context encoder's cls token) or ``features`` (the mean of the region
            encoder's deepest features over the image, as the official "naive" xT head).
        classification_mlp_ratio: 0: LayerNorm and a linear layer; r > 0: linear to r × its input width, GELU,
            LayerNorm, linear (the official "naive" head).
        decoder_halo: pixels of the neighbours' features each region is decoded with (a multiple of the
            encoder's deepest stride, at most half a region); None: the deepest stride, or more up to an eighth
            of the region; 0: each region decoded alone (seams at region borders).
        decoder_blend: with a halo, each region's outputs are blended from its own window and its neighbours'
            where they overlap (weights falling linearly to the window edges: continuous across borders);
            False: cropped from its own window.
    """

    segmentation_classes: list[str] = field(default_factory=list)
    detection_classes: list[str] = field(default_factory=list)
    classification_classes: list[str] = field(default_factory=list)
    colours: dict[str, str] = field(default_factory=dict)
    display_names: dict[str, str] = field(default_factory=dict)
    decoder_channels: list[int] = field(default_factory=lambda: [48, 96, 176, 256])
    decoder_convs: int = 2
    detection_stride: int = 4
    classification_input: str = "context"
    classification_mlp_ratio: int = 0
    decoder_halo: int | None = None
    decoder_blend: bool = True


def _ranges(config) -> list[tuple[str, object, float, float]]:
    """Numeric settings and the ranges a model can be built with (beyond them a crafted file could ask for
    terabytes, or divide by zero)."""
    context, encoder = config.context_encoder, config.region_encoder
    return [
        ("in_channels", config.in_channels, 1, 64),
        ("region_size", config.region_size, 16, 8192),
        ("region_encoder.input_size", encoder.input_size, 16, 8192),
        ("context_encoder.width", context.width, 1, 8192),
        ("context_encoder.depth", context.depth, 0, 128),
        ("context_encoder.heads", context.heads, 1, 256),
        ("context_encoder.tokens_per_region", context.tokens_per_region, 1, 64),
        ("context_encoder.window", context.window, 1, 1 << 16),
        ("context_encoder.memory", context.memory, 0, 1 << 16),
        ("context_encoder.mlp_ratio", context.mlp_ratio, 0.0625, 16),
        ("context_encoder.d_state", context.d_state, 1, 1024),
        ("context_encoder.d_conv", context.d_conv, 1, 64),
        ("context_encoder.expand", context.expand, 1, 16),
        ("context_encoder.grad_ratio", context.grad_ratio, 0, 1),
        ("context_encoder.hyper_block", context.hyper_block, 1, 1 << 16),
        ("context_encoder.hyper_samples", context.hyper_samples, 0, 1 << 16),
        ("context_encoder.hyper_hash_bits", context.hyper_hash_bits, 1, 16),
        ("context_encoder.hyper_exact_below", context.hyper_exact_below, 0, 1 << 30),
        ("heads.decoder_convs", config.heads.decoder_convs, 1, 8),
        ("heads.classification_mlp_ratio", config.heads.classification_mlp_ratio, 0, 16),
    ]


@dataclass
class XTConfig:
    """A whole xT model.

    Attributes:
        in_channels: image channels (3 for RGB slides, 1–2 for SAR).
        mean, std: per-channel normalisation applied to raw pixel values.
        region_size: side of one region in pixels of the analysis level.
        pixel_size: the pixel size the model was trained at, with ``pixel_unit`` (None: any).
    """

    in_channels: int = 3
    mean: list[float] = field(default_factory=lambda: [0.485 * 255, 0.456 * 255, 0.406 * 255])
    std: list[float] = field(default_factory=lambda: [0.229 * 255, 0.224 * 255, 0.225 * 255])
    region_size: int = 256
    region_encoder: RegionEncoderConfig = field(default_factory=RegionEncoderConfig)
    context_encoder: ContextEncoderConfig = field(default_factory=ContextEncoderConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    pixel_size: float | None = None
    pixel_unit: str | None = None
    name: str = ""

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` with the offending setting when the config cannot build a model."""
        context = self.context_encoder
        for name, value, low, high in _ranges(self):
            if isinstance(value, bool) or not isinstance(value, int | float) or not (low <= value <= high):
                raise ValueError(f"{name} must be a number from {low} to {high}, not {value!r}")
        if not self.region_encoder.name or not isinstance(self.region_encoder.name, str):
            raise ValueError("region_encoder.name must name a timm model")
        if any(not isinstance(c, int) or not 1 <= c <= 4096 for c in self.heads.decoder_channels):
            raise ValueError(f"heads.decoder_channels must be widths from 1 to 4096, not {self.heads.decoder_channels}")
        if context.kind not in CONTEXT_KINDS:
            raise ValueError(f"context_encoder.kind must be one of {CONTEXT_KINDS}, not {context.kind!r}")
        for name, value, allowed in (
            ("context_encoder.order", context.order, ORDERS),
            ("context_encoder.layer", context.layer, LAYERS),
            ("context_encoder.positions", context.positions, POSITIONS),
            ("context_encoder.mamba_residual", context.mamba_residual, MAMBA_RESIDUALS),
            ("heads.classification_input", self.heads.classification_input, CLASSIFICATION_INPUTS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {value!r}")
        if context.kind in ("xl", "hyper") and context.width % context.heads:
            raise ValueError(f"context_encoder.heads ({context.heads}) must divide width ({context.width})")
        if context.positions == "mae" and context.width % 4:
            raise ValueError(f"context_encoder.positions 'mae' needs a width divisible by 4, not {context.width}")
        if context.cls_token and context.kind not in ("hyper", "mamba"):
            raise ValueError("context_encoder.cls_token needs a 'hyper' or 'mamba' context encoder (one pass)")
        if (context.layer != "pre_norm" or context.causal) and context.kind != "hyper":
            raise ValueError("context_encoder.layer 'llama' and causal are settings of the 'hyper' context encoder")
        if self.heads.classification_input == "cls_token" and not context.cls_token:
            raise ValueError("heads.classification_input 'cls_token' needs context_encoder.cls_token")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(f"mean and std need {self.in_channels} values (one per input channel)")
        if self.region_size % self.region_encoder.input_size:
            raise ValueError(
                f"region_size ({self.region_size}) must be a multiple of the encoder's input_size "
                f"({self.region_encoder.input_size})"
            )
        if self.heads.detection_stride not in (1, 2, 4):
            raise ValueError(f"heads.detection_stride must be 1, 2 or 4, not {self.heads.detection_stride!r}")
        if any(not isinstance(v, int | float) or not v > 0 for v in self.std):
            raise ValueError(f"std must hold positive numbers, not {self.std}")
        for name in ("colours", "display_names"):
            table = getattr(self.heads, name)
            if not isinstance(table, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in table.items()
            ):
                raise ValueError(f"heads.{name} must map class names to text, not {table!r}"[:300])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> XTConfig:
        """Build from a dict (unknown keys are refused, so a typo does not pass silently)."""
        parts = {
            "region_encoder": RegionEncoderConfig,
            "context_encoder": ContextEncoderConfig,
            "heads": HeadsConfig,
        }
        kwargs = {}
        known = {f.name for f in fields(cls)}
        for key, value in data.items():
            if key not in known:
                raise ValueError(f"unknown XTConfig setting {key!r}")
            if key in parts:
                sub_known = {f.name for f in fields(parts[key])}
                unknown = set(value) - sub_known
                if unknown:
                    raise ValueError(f"unknown {key} settings {sorted(unknown)}")
                value = parts[key](**value)
            kwargs[key] = value
        return cls(**kwargs)
