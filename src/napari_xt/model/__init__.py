"""The xT model in PyTorch: config, region and context encoders, heads, checkpoints and presets.

Importing ``napari_xt.model`` imports torch; ``napari_xt`` itself does not.
"""

from napari_xt.model.checkpoint import (
    CheckpointError,
    check_fits_image,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
)
from napari_xt.model.config import ContextEncoderConfig, HeadsConfig, RegionEncoderConfig, XTConfig
from napari_xt.model.official import convert_official, load_official_xt
from napari_xt.model.presets import create_model, list_presets, preset_config
from napari_xt.model.xt import XTModel

__all__ = [
    "CheckpointError",
    "ContextEncoderConfig",
    "HeadsConfig",
    "RegionEncoderConfig",
    "XTConfig",
    "XTModel",
    "check_fits_image",
    "convert_official",
    "create_model",
    "list_presets",
    "load_checkpoint",
    "load_official_xt",
    "preset_config",
    "read_checkpoint_info",
    "save_checkpoint",
]
