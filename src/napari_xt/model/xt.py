"""XTModel: region encoder → pooled region tokens → context encoder → decoder and heads.

Two ways in. ``forward(images)`` runs a whole (training-sized) image of N × N regions end to end: nested
tokenization, every region encoded, context over all of them, outputs put back together. For images too large
to hold, the engine calls the parts itself — ``encode``/``region_tokens`` for every region (pass 1),
``contextualise`` over the whole token sequence, then ``encode`` again and ``decode`` batch by batch (pass 2).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from napari_xt.model.config import XTConfig
from napari_xt.model.context import build_context_encoder
from napari_xt.model.heads import (
    ClassificationHead,
    ContextUNetDecoder,
    DetectionHead,
    SegmentationHead,
)
from napari_xt.model.region_encoder import RegionEncoder
from napari_xt.model.tokenization import cut, grid_positions, serial_order, uncut


class XTModel(nn.Module):
    def __init__(self, config: XTConfig):
        super().__init__()
        config.validate()
        self.config = config
        context = config.context_encoder
        self.region_encoder = RegionEncoder(config.region_encoder, config.in_channels, config.region_size)
        deepest = max(range(len(self.region_encoder.reductions)), key=lambda i: self.region_encoder.reductions[i])
        self.deepest_index = deepest
        self.token_grid = context.tokens_per_region
        self.token_pool = nn.AdaptiveAvgPool2d(self.token_grid)
        self.token_proj = nn.Linear(self.region_encoder.channels[deepest], context.width)
        self.context_encoder = build_context_encoder(context)
        heads = config.heads
        self.decoder = None
        if heads.segmentation_classes or heads.detection_classes:
            self.decoder = ContextUNetDecoder(
                self.region_encoder.channels,
                self.region_encoder.reductions,
                context.width,
                heads.decoder_channels,
                heads.decoder_convs,
            )
        self.segmentation = (
            SegmentationHead(self.decoder.out_channels, len(heads.segmentation_classes))
            if heads.segmentation_classes
            else None
        )
        self.detection = (
            DetectionHead(self.decoder.out_channels, len(heads.detection_classes), 4 // heads.detection_stride)
            if heads.detection_classes
            else None
        )
        self.classification = (
            ClassificationHead(context.width, len(heads.classification_classes))
            if heads.classification_classes
            else None
        )
        self.region_classes = (
            ClassificationHead(context.width, len(heads.segmentation_classes)) if heads.segmentation_classes else None
        )
        self._initialise_decoder()
        self.register_buffer("mean", torch.tensor(config.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, -1, 1, 1), persistent=False)

    def _initialise_decoder(self) -> None:
        """Kaiming-normal convolutions in the decoder and heads (as the xView3 decoders xT builds on).

        PyTorch's default conv init shrinks the signal at every decoder stage, which drowns the context
        added at the deepest level; timm's encoder keeps its own init.
        """
        for part in (self.decoder, self.segmentation, self.detection):
            if part is None:
                continue
            for module in part.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
        if self.detection is not None:
            nn.init.constant_(self.detection.heatmap.bias, -4.0)  # few objects: a low prior (as CenterNet)

    # -- parts the engine calls -------------------------------------------------------------------------------

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """Raw pixel values ``(N, C, H, W)`` → normalised float; NaN (SAR nodata) becomes 0."""
        x = (pixels.float() - self.mean) / self.std
        return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)

    def encode(self, regions: torch.Tensor) -> list[torch.Tensor]:
        """Normalised regions ``(N, C, R, R)`` → multi-scale features."""
        return self.region_encoder(regions)

    def region_tokens(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Features → ``(N, T, W)`` pooled tokens (T = tokens_per_region²), the region's summary for context."""
        pooled = self.token_pool(features[self.deepest_index])  # (N, C, t, t)
        return self.token_proj(pooled.flatten(2).transpose(1, 2))

    def token_positions(self, region_positions: torch.Tensor) -> torch.Tensor:
        """Region grid positions ``(..., M, 2)`` → token positions ``(..., M * T, 2)`` in region units."""
        t = self.token_grid
        offsets = (torch.arange(t, device=region_positions.device, dtype=torch.float32) + 0.5) / t - 0.5
        sub = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1).reshape(-1, 2)
        positions = region_positions.float()[..., :, None, :] + sub
        return positions.flatten(-3, -2)

    def contextualise(self, tokens: torch.Tensor, region_positions: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, M, T, W)`` of M regions at grid ``region_positions`` ``(B, M, 2)`` → context, same shape.

        The regions are read in the configured order (``context_encoder.order``), whatever order they come in.
        """
        b, m, t, w = tokens.shape
        order = serial_order(region_positions, self.config.context_encoder.order)
        if order is not None:
            tokens = tokens.gather(1, order[..., None, None].expand(-1, -1, t, w))
            region_positions = region_positions.gather(1, order[..., None].expand(-1, -1, 2))
        mixed = self.context_encoder(tokens.reshape(b, m * t, w), self.token_positions(region_positions))
        mixed = mixed.reshape(b, m, t, w)
        if order is None:
            return mixed
        return torch.empty_like(mixed).scatter_(1, order[..., None, None].expand(-1, -1, t, w), mixed)

    def decode(self, features: list[torch.Tensor], context: torch.Tensor) -> dict:
        """Per-region outputs from features and the region's context ``(N, T, W)``."""
        outputs: dict = {}
        if self.decoder is None:
            return outputs
        x = self.decoder(features, context)
        if self.segmentation is not None:
            outputs["segmentation"] = self.segmentation(x, self.config.region_size)
        if self.detection is not None:
            outputs["detection"] = self.detection(x)
        return outputs

    def classify(self, context: torch.Tensor) -> torch.Tensor | None:
        """Image-level logits from the context tokens ``(B, M, T, W)`` of all its regions."""
        if self.classification is None:
            return None
        return self.classification(context.flatten(1, 2))

    # -- whole images (training crops, small ROIs) ------------------------------------------------------------

    def encode_regions(self, regions: torch.Tensor) -> list[torch.Tensor]:
        """Encode normalised regions; in training only ``grad_ratio`` of them (chosen at random) get gradients."""
        ratio = self.config.context_encoder.grad_ratio
        if not (self.training and torch.is_grad_enabled()) or ratio >= 1.0:
            return self.encode(regions)
        n = regions.shape[0]
        n_grad = max(1, math.ceil(n * ratio))
        order = torch.randperm(n, device=regions.device)
        with_grad = self.encode(regions[order[:n_grad]])
        with torch.no_grad():
            without = self.encode(regions[order[n_grad:]]) if n_grad < n else None
        inverse = torch.argsort(order)
        if without is None:
            return [f[inverse] for f in with_grad]
        return [torch.cat([a, b], dim=0)[inverse] for a, b in zip(with_grad, without)]

    def forward(self, images: torch.Tensor, grid_offset: tuple[int, int] = (0, 0)) -> dict:
        """Run images ``(B, C, H, W)`` (raw pixel values; H and W multiples of ``region_size``).

        Returns:
            ``segmentation`` logits ``(B, K, H, W)``; ``detection`` maps ``heatmap``/``classes``/``size`` at the
            detection stride; ``classification`` logits ``(B, K)``; as the config asks. With segmentation,
            also ``region_classes``: each region's class-distribution logits from its context ``(B, rows, cols,
            K)`` (deep supervision of the context in training).
        """
        b = images.shape[0]
        regions, grid = cut(self.normalise(images), self.config.region_size)
        features = self.encode_regions(regions)
        tokens = self.region_tokens(features)
        m = grid[0] * grid[1]
        positions = grid_positions(*grid, offset=grid_offset, device=images.device).expand(b, m, 2)
        context = self.contextualise(tokens.view(b, m, *tokens.shape[1:]), positions)
        per_region = self.decode(features, context.flatten(0, 1))
        outputs: dict = {}
        if "segmentation" in per_region:
            outputs["segmentation"] = uncut(per_region["segmentation"], grid)
        if "detection" in per_region:
            outputs["detection"] = {name: uncut(value, grid) for name, value in per_region["detection"].items()}
        logits = self.classify(context)
        if logits is not None:
            outputs["classification"] = logits
        if self.region_classes is not None:
            outputs["region_classes"] = self.region_classes(context.flatten(0, 1)).view(b, *grid, -1)
        return outputs
