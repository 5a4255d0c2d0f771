"""Building blocks shared by the attention context encoders: 2-D positions, feed-forward, pre-norm layers."""

from __future__ import annotations

import math

import torch
from torch import nn


def sincos_2d(positions: torch.Tensor, width: int) -> torch.Tensor:
    """Sine-cosine embedding of 2-D positions ``(..., 2)`` (row, col; any real units) into ``(..., width)``."""
    if width % 4:
        raise ValueError(f"2-D positional embedding needs a width divisible by 4, not {width}")
    quarter = width // 4
    frequencies = torch.exp(
        -math.log(10_000.0) * torch.arange(quarter, device=positions.device, dtype=torch.float32) / quarter
    )
    angles = positions.float()[..., None] * frequencies  # (..., 2, quarter)
    rows, cols = angles[..., 0, :], angles[..., 1, :]
    return torch.cat([rows.sin(), rows.cos(), cols.sin(), cols.cos()], dim=-1)


class FeedForward(nn.Sequential):
    def __init__(self, width: int, ratio: float):
        hidden = int(width * ratio)
        super().__init__(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))


class SelfAttention(nn.Module):
    """Multi-head attention whose keys and values may include a memory (Transformer-XL) before the queries."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        return x.view(b, n, self.heads, w // self.heads).transpose(1, 2)

    def project(self, queries: torch.Tensor, context: torch.Tensor):
        q = self.split(self.q(queries))
        k, v = (self.split(t) for t in self.kv(context).chunk(2, dim=-1))
        return q, k, v

    def merge(self, attended: torch.Tensor) -> torch.Tensor:
        b, h, n, d = attended.shape
        return self.out(attended.transpose(1, 2).reshape(b, n, h * d))

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project(queries, context)
        return self.merge(nn.functional.scaled_dot_product_attention(q, k, v))
