"""Heads: a UNet decoder fusing multi-scale region features with the region's context, and the segmentation,
detection (xView3-style centre heatmap, class and size maps) and classification heads on top of it.

The decoder follows the xView3 solutions xT builds on: channels 48/96/176/256 from stride 4 to 32, nearest
upsampling, SiLU. Context enters at every scale: the region's context tokens, laid out on their ``t × t``
grid, are projected and upsampled onto the feature map after each decoder stage and added to it, so the
context reaches the classifiers directly instead of through three stages of local features (where trained
decoders learn to ignore it).

Seams: a region decoded alone has zeros beyond its borders and a context that stops at them, so its labels
break along every region border. The decoder therefore takes a window: the region's features with a halo of
its neighbours' (``halo`` pixels each side), and the context tokens of its 3 × 3 neighbourhood, interpolated
into one continuous field across the image (the same values whichever region's window computes them). The
output is cropped back to the region.

Normalisation is per region (GroupNorm), not BatchNorm: a training batch is the regions of one crop, and
BatchNorm's batch statistics would pass crop-wide information between regions in training that is gone at
inference (running statistics), so a model learns to lean on a channel it does not have when it is used.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """3 × 3 convolution, GroupNorm (8 groups, fewer where the channels do not divide; statistics per region,
    never across the batch) and SiLU."""
    groups = math.gcd(out_channels, 8)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(groups, out_channels),
        nn.SiLU(inplace=True),
    )


class ContextUNetDecoder(nn.Module):
    """Decode features ``[(N, C_i, R/s_i, R/s_i)]`` and context ``(N, T, W)`` to a stride-4 map ``(N, c0, R/4, R/4)``.

    Args:
        channels: encoder channels per feature map.
        reductions: encoder stride per feature map.
        context_width: width of the context tokens (0: no context input).
        decoder_channels: decoder widths at strides 4, 8, 16, 32, …
        convs_per_stage: 3 × 3 convolutions per stage.
    """

    def __init__(
        self,
        channels: list[int],
        reductions: list[int],
        context_width: int,
        decoder_channels: list[int],
        convs_per_stage: int = 2,
    ):
        super().__init__()
        self.by_stride = {}
        for index, stride in enumerate(reductions):
            self.by_stride[stride] = index  # the last map at a stride wins (ViT repeats one stride)
        deepest = max(reductions)
        self.deepest_index = self.by_stride[deepest]
        self.strides = [4 * 2**i for i in range(len(decoder_channels)) if 4 * 2**i <= deepest]
        if not self.strides:
            raise ValueError(f"the encoder's deepest stride {deepest} is finer than 4")
        widths = {s: decoder_channels[i] for i, s in enumerate(self.strides)}
        top = self.strides[-1]
        self.deepest_stride = deepest
        self.entry = conv_block(channels[self.deepest_index], widths[top])
        self.context_proj = (
            nn.ModuleDict({str(stride): nn.Conv2d(context_width, widths[stride], 1) for stride in self.strides})
            if context_width
            else None
        )
        self.stages = nn.ModuleDict()
        for stride in reversed(self.strides[:-1]):
            skip = channels[self.by_stride[stride]] if stride in self.by_stride else 0
            blocks = [conv_block(widths[stride * 2] + skip, widths[stride])]
            blocks += [conv_block(widths[stride], widths[stride]) for _ in range(convs_per_stage - 1)]
            self.stages[str(stride)] = nn.Sequential(*blocks)
        self.out_channels = widths[4]

    def forward(self, features: list[torch.Tensor], context: torch.Tensor | None, halo: int = 0) -> torch.Tensor:
        """``features``: the region's maps, or windows with ``halo`` pixels of neighbours' maps each side;
        ``context``: the region's tokens ``(N, T, W)`` (only without a halo), or its neighbourhood's token grid
        ``(N, W, 3t, 3t)`` (``tokenization.context_neighbourhoods``), which becomes a field continuous across
        region borders. Returns the map at stride 4 over the window."""
        x = features[self.deepest_index]
        top = self.strides[-1]
        if self.deepest_stride > top:  # encoders deeper than the decoder: bring the map up to its top stride
            x = F.interpolate(x, scale_factor=self.deepest_stride // top, mode="nearest")
        grid, field = None, False
        if self.context_proj is not None and context is not None:
            if context.ndim == 4:
                grid, field = context.to(x.dtype), True
            else:
                if halo:
                    raise ValueError("a decoder window with a halo needs the neighbourhood's context grid")
                n, t, w = context.shape
                side = round(t**0.5)
                grid = context.transpose(1, 2).reshape(n, w, side, side).to(x.dtype)
        x = self._with_context(self.entry(x), grid, top, halo if field else None)
        for stride in reversed(self.strides[:-1]):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            if stride in self.by_stride:
                skip = features[self.by_stride[stride]]
                if skip.shape[-2:] != x.shape[-2:]:
                    skip = F.interpolate(skip, size=x.shape[-2:], mode="nearest")
                x = torch.cat([x, skip], dim=1)
            x = self._with_context(self.stages[str(stride)](x), grid, stride, halo if field else None)
        return x

    def _with_context(self, x: torch.Tensor, grid: torch.Tensor | None, stride: int, halo: int | None) -> torch.Tensor:
        if grid is None:
            return x
        projected = self.context_proj[str(stride)](grid)
        if halo is None:  # the region's own tokens, spread over the region
            return x + F.interpolate(projected, size=x.shape[-2:], mode="bilinear")
        # the neighbourhood's grid spread bilinearly over three regions and the window cut out (as one
        # separable product, without the 3 × 3 regions in between): every window samples the same image-wide
        # field, so the context is continuous across region borders
        h = halo // stride
        m = x.shape[-1] - 2 * h
        weights = window_interpolation(grid.shape[-1], 3 * m, m - h, m + 2 * h, x.device, projected.dtype)
        return x + torch.einsum("ir,ncrs,js->ncij", weights, projected, weights)


@functools.lru_cache(maxsize=64)
def _interpolation_matrix(size_in: int, size_out: int, start: int, length: int) -> torch.Tensor:
    rows = torch.zeros(length, size_in, dtype=torch.float64)
    scale = size_in / size_out
    for k in range(length):
        source = max((start + k + 0.5) * scale - 0.5, 0.0)  # as F.interpolate(bilinear, align_corners=False)
        low = min(int(source), size_in - 1)
        high = min(low + 1, size_in - 1)
        weight = source - low
        rows[k, low] += 1.0 - weight
        rows[k, high] += weight
    return rows


def window_interpolation(size_in: int, size_out: int, start: int, length: int, device, dtype) -> torch.Tensor:
    """``(length, size_in)``: the rows ``start … start + length`` of bilinear upsampling from ``size_in`` to
    ``size_out`` samples (``F.interpolate``'s ``align_corners=False`` weights, edges clamped)."""
    return _interpolation_matrix(size_in, size_out, start, length).to(device=device, dtype=dtype)


class SegmentationHead(nn.Module):
    """Class logits at stride 4, upsampled to region pixels."""

    def __init__(self, in_channels: int, n_classes: int):
        super().__init__()
        self.classifier = nn.Sequential(conv_block(in_channels, in_channels), nn.Conv2d(in_channels, n_classes, 1))

    def forward(self, x: torch.Tensor, region_size: int) -> torch.Tensor:
        return F.interpolate(self.classifier(x), size=(region_size, region_size), mode="bilinear")


class DetectionHead(nn.Module):
    """Centre heatmap (logit), class logits, object size (pixels) and the centre's offset inside its cell
    (in cells, −0.5 … 0.5, as CenterNet) at the detection stride."""

    def __init__(self, in_channels: int, n_classes: int, upsample: int):
        super().__init__()
        self.upsample = upsample
        self.trunk = conv_block(in_channels, in_channels)
        self.heatmap = nn.Conv2d(in_channels, 1, 1)
        self.classes = nn.Conv2d(in_channels, n_classes, 1)
        self.size = nn.Conv2d(in_channels, 1, 1)
        self.offset = nn.Conv2d(in_channels, 2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.upsample > 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="nearest")
        x = self.trunk(x)
        return {
            "heatmap": self.heatmap(x),
            "classes": self.classes(x),
            "size": F.softplus(self.size(x)) * 16,
            "offset": 0.5 * torch.tanh(self.offset(x)),
        }


class ClassificationHead(nn.Module):
    """Logits ``(N, K)`` from the mean of tokens ``(N, T, W)`` (or from one summary ``(N, W)``).

    Two uses: image-level classes from all context tokens of an image (or its cls token, or its pooled features),
    and, in training only, each region's class distribution from its own context tokens (deep supervision of the
    context encoder: a short path from the labels to the context that does not pass through the decoder).

    ``mlp_ratio`` 0: LayerNorm and a linear layer; r > 0: linear to ``r × width``, GELU, LayerNorm, linear.
    """

    def __init__(self, width: int, n_classes: int, mlp_ratio: int = 0):
        super().__init__()
        if mlp_ratio:
            hidden = width * mlp_ratio
            self.layers = nn.Sequential(
                nn.Linear(width, hidden), nn.GELU(), nn.LayerNorm(hidden), nn.Linear(hidden, n_classes)
            )
        else:
            self.layers = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, n_classes))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.layers(tokens.mean(dim=1) if tokens.ndim == 3 else tokens)


@dataclass
class Detections:
    """Points decoded from detection maps, in pixels of the decoded map's input (region or image)."""

    y: torch.Tensor
    x: torch.Tensor
    label: torch.Tensor
    score: torch.Tensor
    size: torch.Tensor
    batch: torch.Tensor


def decode_detections(
    maps: dict[str, torch.Tensor], stride: int, threshold: float = 0.3, max_objects: int = 2000
) -> Detections:
    """Peaks of the centre heatmap (3 × 3 local maxima above ``threshold``) with their class and size.

    Coordinates are pixel centres: map cell ``i`` covers input pixels ``i*stride .. (i+1)*stride - 1``, so its
    centre is ``i*stride + (stride - 1) / 2``, moved by the predicted ``offset`` (in cells) when there is one.
    """
    heat = torch.sigmoid(maps["heatmap"].float())
    peaks = (heat == F.max_pool2d(heat, 3, stride=1, padding=1)) & (heat > threshold)
    batch, _, iy, ix = torch.nonzero(peaks, as_tuple=True)
    score = heat[batch, 0, iy, ix]
    if len(score) > max_objects:
        keep = torch.topk(score, max_objects).indices
        batch, iy, ix, score = batch[keep], iy[keep], ix[keep], score[keep]
    label = maps["classes"][batch, :, iy, ix].argmax(dim=1)
    size = maps["size"][batch, 0, iy, ix]
    y = iy.float() * stride + (stride - 1) / 2
    x = ix.float() * stride + (stride - 1) / 2
    if "offset" in maps:
        y = y + maps["offset"][batch, 0, iy, ix].float() * stride
        x = x + maps["offset"][batch, 1, iy, ix].float() * stride
    return Detections(y, x, label, score, size, batch)
