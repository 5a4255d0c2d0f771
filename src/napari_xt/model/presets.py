"""Named presets: ``create_model(name, **overrides)`` builds an XTModel from a registered configuration.

Like timm's registry: each preset is a small function returning an ``XTConfig``. Tiny ``test_*`` presets
run in well under a second on a CPU.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from napari_xt.model.config import ContextEncoderConfig, HeadsConfig, RegionEncoderConfig, XTConfig

_PRESETS: dict[str, Callable[[], XTConfig]] = {}

SLIDE_HEADS = HeadsConfig(  # the classes of the slide demo world (napari_xt.data.worlds)
    segmentation_classes=["background", "stroma", "invasive_margin", "tumour", "margin_cluster", "stroma_cluster"],
    detection_classes=["margin_cluster", "stroma_cluster"],
    # hues that H&E has none of, so each class changes the canvas by ΔE ≥ 20 over glass, eosin, haematoxylin and
    # blood at the labels' opacity (tests/_napari/test_overlay_contrast.py measures it)
    colours={
        "background": "#00000000",
        "stroma": "#1b9e5a",
        "invasive_margin": "#ff9d00",
        "tumour": "#1f4fff",
        "margin_cluster": "#00e0ff",
        "stroma_cluster": "#b6ff00",
    },
)
SAR_HEADS = HeadsConfig(  # the classes of the SAR demo world (napari_xt.data.worlds)
    segmentation_classes=["background", "land", "open_sea", "near_shore"],
    detection_classes=["open_sea", "near_shore"],
    # saturated colours on a grey image: visible over dark sea and over bright land alike
    colours={"background": "#00000000", "land": "#ffc83d", "open_sea": "#00d5ff", "near_shore": "#ff3d9a"},
    display_names={"background": "sea", "open_sea": "open-sea vessel", "near_shore": "near-shore vessel"},
)


def register_preset(function: Callable[[], XTConfig]) -> Callable[[], XTConfig]:
    _PRESETS[function.__name__] = function
    return function


def list_presets() -> list[str]:
    return sorted(_PRESETS)


def preset_config(name: str, **overrides) -> XTConfig:
    """The config of preset ``name`` with top-level fields replaced (``in_channels`` also adapts mean/std)."""
    if name not in _PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(list_presets())}")
    config = copy.deepcopy(_PRESETS[name]())
    data = config.to_dict()
    if "in_channels" in overrides and "mean" not in overrides:
        n = overrides["in_channels"]
        overrides["mean"] = (data["mean"] * n)[:n] if len(data["mean"]) != n else data["mean"]
        overrides["std"] = (data["std"] * n)[:n] if len(data["std"]) != n else data["std"]
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    data["name"] = data.get("name") or name
    return XTConfig.from_dict(data)


def create_model(name: str, **overrides):
    """Build the XTModel of preset ``name`` (weights initialised, never downloaded)."""
    from napari_xt.model.xt import XTModel

    return XTModel(preset_config(name, **overrides))


def _sar(config: XTConfig) -> XTConfig:
    config.in_channels, config.mean, config.std = 1, [0.1], [0.15]
    config.heads = _light_decoder(SAR_HEADS)
    config.pixel_size, config.pixel_unit = 10.0, "m"
    return config


def _light_decoder(heads: HeadsConfig) -> HeadsConfig:
    """A decoder in proportion to a CPU-sized encoder: the xView3 widths cost as much as convnext_atto itself."""
    heads = copy.deepcopy(heads)
    heads.decoder_channels, heads.decoder_convs = [24, 48, 96, 128], 1
    return heads


@register_preset
def demo_slide_xl() -> XTConfig:
    """The CPU-friendly demo: convnext_atto regions of 256², a 2-layer Transformer-XL over 2 × 2 tokens each."""
    return XTConfig(
        region_size=256,
        region_encoder=RegionEncoderConfig("convnext_atto", input_size=256),
        context_encoder=ContextEncoderConfig(kind="xl", width=128, depth=2, heads=4, window=16, memory=32),
        heads=_light_decoder(SLIDE_HEADS),
        pixel_size=2.0,
        pixel_unit="µm",
    )


@register_preset
def demo_sar_xl() -> XTConfig:
    """The SAR demo: as ``demo_slide_xl`` on one float32 band."""
    return _sar(demo_slide_xl())


def _large_preset(encoder: str, input_size: int, region_size: int, kind: str) -> Callable[[], XTConfig]:
    def build() -> XTConfig:
        width = 384
        return XTConfig(
            region_size=region_size,
            region_encoder=RegionEncoderConfig(encoder, input_size=input_size),
            context_encoder=ContextEncoderConfig(
                kind=kind, width=width, depth=4, heads=width // 128, window=16, memory=64, hyper_exact_below=4096
            ),
            heads=copy.deepcopy(SLIDE_HEADS),
        )

    build.__name__ = f"{encoder.split('_window')[0]}_{kind}"
    build.__doc__ = f"{encoder} regions of {region_size}² ({input_size}² per encoder call) with {kind} context."
    return build


for _encoder, _input, _region in (
    ("swinv2_tiny_window16_256", 256, 256),
    ("convnext_tiny", 256, 256),
    ("hiera_tiny_224", 224, 448),
):
    for _kind in ("xl", "hyper", "mamba"):
        register_preset(_large_preset(_encoder, _input, _region, _kind))


def _tiny(kind: str) -> Callable[[], XTConfig]:
    def build() -> XTConfig:
        return XTConfig(
            region_size=64,
            region_encoder=RegionEncoderConfig("test_convnext", input_size=64),
            context_encoder=ContextEncoderConfig(
                kind=kind,
                width=32,
                depth=2,
                heads=2,
                window=2,
                memory=2,
                hyper_exact_below=16,
                hyper_block=8,
                hyper_samples=8,
                hyper_hash_bits=3,
                d_state=4,
            ),
            heads=HeadsConfig(
                segmentation_classes=["background", "a", "b"],
                detection_classes=["a", "b"],
                classification_classes=["x", "y"],
                decoder_channels=[8, 16, 24, 32],
                decoder_halo=32,  # half a region: every neighbour's features reach the region's decoder
            ),
        )

    build.__name__ = f"test_tiny_{kind}"
    build.__doc__ = f"A tiny CPU test model with {kind} context."
    return build


for _kind in ("none", "xl", "hyper", "mamba"):
    register_preset(_tiny(_kind))


# The official xT releases (bair-climate-initiative/xT, iNaturalist-2018 Reptilia, 284 classes): the same
# function as the official code, so their converted checkpoints load and `train --init` starts from them.
# Region encoders: Swin-v2 window-16 at 256² (Swin-L: the 12-to-16 window model) and Hiera at 224²; context
# width 768; Hyper: 2 causal LLaMA-style layers (the 1-layer releases: depth 1); Mamba: 4 blocks.
OFFICIAL_ENCODERS = {
    "swin_t": ("swinv2_tiny_window16_256", 256),
    "swin_s": ("swinv2_small_window16_256", 256),
    "swin_b": ("swinv2_base_window16_256", 256),
    "swin_l": ("swinv2_large_window12to16_192to256", 256),
    "hiera_b": ("hiera_base_224", 224),
}
OFFICIAL_HEADS = {"hyper": 2, "mamba": 4, "naive": 0}
DEEPEST_CHANNELS = {"swin_t": 768, "swin_s": 768, "swin_b": 1024, "swin_l": 1536, "hiera_b": 768}


def _official_preset(encoder: str, head: str) -> Callable[[], XTConfig]:
    def build() -> XTConfig:
        from napari_xt.model.official import official_config

        timm_name, input_size = OFFICIAL_ENCODERS[encoder]
        width = DEEPEST_CHANNELS[encoder] if head == "naive" else 768
        return official_config(timm_name, head, OFFICIAL_HEADS[head], width, input_size=input_size)

    build.__name__ = f"xt_{encoder}_{head}"
    build.__doc__ = f"The official xT {encoder.replace('_', '-').title()} release with the {head} head (284 classes)."
    return build


for _encoder in OFFICIAL_ENCODERS:
    for _head in OFFICIAL_HEADS:
        if _encoder == "hiera_b" and _head == "mamba":  # no such release
            continue
        register_preset(_official_preset(_encoder, _head))
