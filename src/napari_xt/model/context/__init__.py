"""Context encoders: mix the region tokens of a whole image. ``build_context_encoder(config)``."""

from __future__ import annotations

import torch
from torch import nn

from napari_xt.model.config import ContextEncoderConfig


class NoContext(nn.Module):
    """The baseline: each region keeps its own tokens; nothing crosses regions."""

    def __init__(self, config: ContextEncoderConfig):
        super().__init__()

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return tokens


def build_context_encoder(config: ContextEncoderConfig) -> nn.Module:
    from napari_xt.model.context.hyper_attention import HyperContext
    from napari_xt.model.context.mamba import MambaContext
    from napari_xt.model.context.transformer_xl import TransformerXLContext

    builders = {"none": NoContext, "xl": TransformerXLContext, "hyper": HyperContext, "mamba": MambaContext}
    return builders[config.kind](config)
