"""Building blocks shared by the context encoders: 2-D positions, feed-forward layers, attention, RMSNorm, the
LLaMA-style layer of the official xT context encoder, and the cls token."""

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


def add_positions(tokens: torch.Tensor, positions: torch.Tensor, kind: str) -> torch.Tensor:
    """``tokens`` plus the 2-D embedding of their ``positions`` (``region``: (row, col) in region units; ``mae``:
    (row, col) on the token grid, embedded as MAE does: the first half of the width encodes the column)."""
    if kind == "mae":
        positions = positions.flip(-1)
    return tokens + sincos_2d(positions, tokens.shape[-1]).to(tokens.dtype)


def cls_parameter(width: int) -> nn.Parameter:
    """A learned token to append after the last token of a sequence; its output summarises the image."""
    return nn.Parameter(nn.init.normal_(torch.empty(1, 1, width), std=1e-6))


def append_token(x: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, token.to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019), computed in float32 as LLaMA does."""

    def __init__(self, width: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class GatedMLP(nn.Module):
    """``down(act(gate(x)) · up(x))`` without biases; GELU as the official xT layer (LLaMA uses SiLU)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(width, hidden, bias=False)
        self.up_proj = nn.Linear(width, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.gelu(self.gate_proj(x)) * self.up_proj(x))


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
