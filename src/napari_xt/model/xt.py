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
from napari_xt.model.tokenization import (
    blend_windows,
    context_neighbourhoods,
    cut,
    grid_positions,
    halo_windows,
    neighbour_table,
    serial_order,
    uncut,
)


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
        heads = config.heads
        feature_classifier = bool(heads.classification_classes) and heads.classification_input == "features"
        wants_tokens = bool(heads.segmentation_classes or heads.detection_classes) or context.kind != "none"
        # a classifier of pooled features alone (the official "naive" head) reads no tokens: no projection
        self.token_proj = (
            nn.Linear(self.region_encoder.channels[deepest], context.width)
            if wants_tokens or not feature_classifier
            else None
        )
        self.context_encoder = build_context_encoder(context)
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
            ClassificationHead(
                self.region_encoder.channels[deepest] if feature_classifier else context.width,
                len(heads.classification_classes),
                heads.classification_mlp_ratio,
            )
            if heads.classification_classes
            else None
        )
        self.region_classes = (
            ClassificationHead(context.width, len(heads.segmentation_classes)) if heads.segmentation_classes else None
        )
        self.halo = decoder_halo(heads.decoder_halo, config.region_size, max(self.region_encoder.reductions))
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
        pooled = self.token_pool(features[self.deepest_index]).flatten(2).transpose(1, 2)  # (N, t * t, C)
        return pooled if self.token_proj is None else self.token_proj(pooled)

    def token_grid_positions(self, region_positions: torch.Tensor) -> torch.Tensor:
        """Region grid positions ``(..., M, 2)`` → integer ``(row, col)`` of their tokens on the image's token grid
        ``(..., M * T, 2)``, each region's tokens row by row."""
        t = self.token_grid
        k = torch.arange(t, device=region_positions.device)
        sub = torch.stack(torch.meshgrid(k, k, indexing="ij"), dim=-1).reshape(-1, 2)
        return (region_positions.long()[..., :, None, :] * t + sub).flatten(-3, -2)

    def token_positions(self, region_positions: torch.Tensor) -> torch.Tensor:
        """Region grid positions ``(..., M, 2)`` → the positions the context encoder embeds ``(..., M * T, 2)``:
        ``region``: region units, a token at its centre's place; ``mae``: token-grid units counted from the first
        region of the sequence (the crop's or image's corner), as official xT."""
        if self.config.context_encoder.positions == "mae":
            origin = region_positions.long().amin(dim=-2, keepdim=True)
            return self.token_grid_positions(region_positions.long() - origin).float()
        t = self.token_grid
        offsets = (torch.arange(t, device=region_positions.device, dtype=torch.float32) + 0.5) / t - 0.5
        sub = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1).reshape(-1, 2)
        positions = region_positions.float()[..., :, None, :] + sub
        return positions.flatten(-3, -2)

    def sequence_order(self, region_positions: torch.Tensor) -> torch.Tensor | None:
        """Permutation ``(B, M * T)`` of the tokens (each region's together, regions as given) into the
        configured reading order; None: as given."""
        order = self.config.context_encoder.order
        t2 = self.token_grid**2
        if order == "token_raster":
            grid = self.token_grid_positions(region_positions)
            key = grid[..., 0] * (int(grid[..., 1].max()) + 1 if grid.numel() else 1) + grid[..., 1]
            return torch.argsort(key, dim=-1, stable=True)
        regions = serial_order(region_positions, order)
        if regions is None:
            return None
        return (regions[..., None] * t2 + torch.arange(t2, device=regions.device)).flatten(-2)

    def contextualise(self, tokens: torch.Tensor, region_positions: torch.Tensor, with_summary: bool = False):
        """Tokens ``(B, M, T, W)`` of M regions at grid ``region_positions`` ``(B, M, 2)`` → context, same shape.

        The tokens are read in the configured order (``context_encoder.order``), whatever order the regions come
        in. With ``with_summary``, also the cls token's output ``(B, W)`` (None without a cls token).
        """
        b, m, t, w = tokens.shape
        sequence = tokens.reshape(b, m * t, w)
        positions = self.token_positions(region_positions)
        order = self.sequence_order(region_positions)
        if order is not None:
            sequence = sequence.gather(1, order[..., None].expand(-1, -1, w))
            positions = positions.gather(1, order[..., None].expand(-1, -1, 2))
        mixed = self.context_encoder(sequence, positions)
        summary = None
        if self.config.context_encoder.cls_token:
            mixed, summary = mixed[:, :-1], mixed[:, -1]
        if order is not None:
            mixed = torch.empty_like(mixed).scatter_(1, order[..., None].expand(-1, -1, w), mixed)
        mixed = mixed.reshape(b, m, t, w)
        return (mixed, summary) if with_summary else mixed

    def decode(self, features: list[torch.Tensor], context: torch.Tensor, halo: int = 0, crop: bool = True) -> dict:
        """Per-region outputs from features and context.

        Without ``halo``: the regions' own features and context tokens ``(N, T, W)``. With it (pixels, as
        ``self.halo``): windows of the features with ``halo`` pixels of the neighbours' each side
        (``neighbourhood_windows``) and the neighbourhoods' context grids ``(N, W, 3t, 3t)``; the outputs are
        cropped to the regions, unless ``crop`` is False: then they are the whole windows (to blend).
        """
        outputs: dict = {}
        if self.decoder is None:
            return outputs
        x = self.decoder(features, context, halo)
        size = self.config.region_size
        crop = crop and halo > 0
        if self.segmentation is not None:
            logits = self.segmentation(x, size + 2 * halo)
            outputs["segmentation"] = logits[..., halo : halo + size, halo : halo + size] if crop else logits
        if self.detection is not None:
            maps = self.detection(x)
            if crop:
                cells = size // self.config.heads.detection_stride
                h = self.output_halos(halo)["detection"]
                maps = {name: value[..., h : h + cells, h : h + cells] for name, value in maps.items()}
            outputs["detection"] = maps
        return outputs

    def output_halos(self, halo: int | None = None) -> dict[str, int]:
        """Cells of each output's window beyond the region on each side, for a halo of ``halo`` pixels (default:
        the model's): ``segmentation`` maps are at pixel resolution, ``detection`` maps at ``detection_stride``."""
        halo = self.halo if halo is None else halo
        return {"segmentation": halo, "detection": halo // self.config.heads.detection_stride}

    @property
    def blends(self) -> bool:
        """Whether a region's outputs are blended from its neighbourhood's windows (``heads.decoder_blend``,
        with a halo) rather than cropped from its own."""
        return bool(self.halo and self.config.heads.decoder_blend)

    def decode_neighbourhoods(
        self, features: list[torch.Tensor], context: torch.Tensor, table: torch.Tensor, crop: bool = True
    ) -> dict:
        """Outputs of N regions, each decoded with its neighbours: ``features`` ``[(M, C, m, m)]`` and ``context``
        ``(M, T, W)`` of M regions (without a context encoder: their own tokens), ``table`` ``(N, 9)`` each
        region's 3 × 3 neighbourhood among them (``tokenization.neighbour_table`` for whole grids). The outputs
        are cropped to the regions; ``crop`` False: the decoder's whole windows (the region and ``halo`` pixels
        around it), for ``blend``."""
        windows = self.neighbourhood_windows(features, table)
        return self.decode(windows, self.neighbourhood_context(context, table), self.halo, crop=crop)

    def decode_all(self, features: list[torch.Tensor], context: torch.Tensor, table: torch.Tensor) -> dict:
        """Outputs of regions decoded together with all their neighbours (a whole image or crop, or a batch
        taken as one): blended from their windows when the model blends, else cropped from them."""
        outputs = self.decode_neighbourhoods(features, context, table, crop=not self.blends)
        return self.blend(outputs, table) if self.blends else outputs

    def blend(self, windows: dict, table: torch.Tensor) -> dict:
        """Outputs of N regions blended from the decoded windows of M regions (``decode_neighbourhoods`` with
        ``crop`` False), ``table`` ``(N, 9)`` each region's neighbourhood among them (-1: not decoded)."""
        halos = self.output_halos()
        blended = {}
        if "segmentation" in windows:
            blended["segmentation"] = blend_windows(windows["segmentation"], table, halos["segmentation"])
        if "detection" in windows:
            blended["detection"] = {
                name: blend_windows(value, table, halos["detection"]) for name, value in windows["detection"].items()
            }
        return blended

    def neighbourhood_windows(self, features: list[torch.Tensor], table: torch.Tensor) -> list[torch.Tensor]:
        """Decoder windows of N regions: ``features`` ``[(M, C, m, m)]`` of M regions, ``table`` ``(N, 9)`` the
        indices of each region's 3 × 3 neighbourhood among them (-1: absent, zeros)."""
        reductions = self.region_encoder.reductions
        return [halo_windows(f, table, self.halo // s) for f, s in zip(features, reductions)]

    def neighbourhood_context(self, context: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Context grids ``(N, W, 3t, 3t)`` of N regions' neighbourhoods from the context ``(M, T, W)`` of M."""
        return context_neighbourhoods(context, table)

    def classify(self, context=None, summary=None, features=None) -> torch.Tensor | None:
        """Image-level logits from what ``heads.classification_input`` names: the context tokens ``(B, M, T, W)``
        of all its regions, the cls token's output ``(B, W)``, or its regions' deepest features pooled ``(B, C)``."""
        if self.classification is None:
            return None
        source = self.config.heads.classification_input
        if source == "cls_token":
            return self.classification(summary)
        if source == "features":
            return self.classification(features)
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
        m = grid[0] * grid[1]
        context = summary = None
        if self.token_proj is not None:
            tokens = self.region_tokens(features)
            positions = grid_positions(*grid, offset=grid_offset, device=images.device).expand(b, m, 2)
            context, summary = self.contextualise(tokens.view(b, m, *tokens.shape[1:]), positions, with_summary=True)
        per_region = {}
        if self.decoder is not None:
            # each region decoded with its neighbours in the image (as the engine does over whole images)
            table = neighbour_table(*grid, images=b, device=images.device)
            tokens = context.flatten(0, 1) if context is not None else self.region_tokens(features)
            per_region = self.decode_all(features, tokens, table)
        outputs: dict = {}
        if "segmentation" in per_region:
            outputs["segmentation"] = uncut(per_region["segmentation"], grid)
        if "detection" in per_region:
            outputs["detection"] = {name: uncut(value, grid) for name, value in per_region["detection"].items()}
        deepest = features[self.deepest_index]
        pooled = deepest.mean(dim=(-2, -1)).view(b, m, -1).mean(dim=1) if self.classification is not None else None
        logits = self.classify(context, summary, pooled)
        if logits is not None:
            outputs["classification"] = logits
        if self.region_classes is not None:
            outputs["region_classes"] = self.region_classes(context.flatten(0, 1)).view(b, *grid, -1)
        return outputs


def decoder_halo(requested: int | None, region_size: int, deepest_stride: int) -> int:
    """The halo (pixels) a model decodes its regions with; ``requested`` None: the deepest stride, or its
    smallest multiple that reaches an eighth of the region, but no more than a quarter of it (0 when even one
    deepest cell is more)."""
    if requested is None:
        quarter = (region_size // 4) // deepest_stride * deepest_stride
        wanted = -(-region_size // 8 // deepest_stride) * deepest_stride
        return min(wanted, quarter)
    if requested < 0 or requested % deepest_stride or requested > region_size // 2:
        raise ValueError(
            f"heads.decoder_halo must be a multiple of the encoder's deepest stride ({deepest_stride}) from 0 "
            f"to half a region ({region_size // 2}), not {requested}"
        )
    return requested
