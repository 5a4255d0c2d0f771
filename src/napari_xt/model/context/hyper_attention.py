"""HyperAttention context encoder: near-linear approximate attention over all region tokens of an image.

Han et al., "HyperAttention: Long-context Attention in Near-Linear Time" (2023), the "Hyper" variant of xT.
Queries and keys are bucketed by angular LSH (sign bits of random projections, ordered by Gray code so that
neighbouring buckets are similar), sorted by bucket, and attend exactly inside diagonal blocks of the sorted
order; keys outside the block are estimated from uniformly sampled columns. The two parts are merged through
their log-sum-exp. Below ``hyper_exact_below`` tokens, attention is exact. Non-causal.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from napari_xt.model.config import ContextEncoderConfig
from napari_xt.model.context.layers import FeedForward, SelfAttention, sincos_2d


def gray_to_rank(bits: int) -> torch.Tensor:
    """For each integer ``g < 2**bits`` read as Gray code, its position in the Gray sequence."""
    codes = torch.arange(2**bits)
    rank = codes.clone()
    shift = codes >> 1
    while bool(shift.any()):
        rank ^= shift
        shift >>= 1
    return rank


def angular_buckets(x: torch.Tensor, projections: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """Bucket of each vector ``(..., D)``: sign bits of ``x @ projections`` ranked in Gray order."""
    bits = (x @ projections > 0).long()
    weights = 2 ** torch.arange(projections.shape[-1], device=x.device)
    return rank.to(x.device)[(bits * weights).sum(-1)]


def _block_attention(q, k, v, scale):
    """Exact attention inside aligned blocks ``(B, H, nb, b, D)``: output and log-sum-exp per query."""
    scores = torch.einsum("bhnqd,bhnkd->bhnqk", q, k) * scale
    lse = torch.logsumexp(scores, dim=-1)
    return torch.einsum("bhnqk,bhnkd->bhnqd", torch.softmax(scores, dim=-1), v), lse


def hyper_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    projections: torch.Tensor,
    rank: torch.Tensor,
    block: int,
    samples: int,
    exact_below: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Approximate ``softmax(q kᵀ / √d) v`` for ``(B, H, L, D)`` tensors (self-attention, L_q = L_k)."""
    b, h, length, d = q.shape
    if length < max(exact_below, 2 * block):
        return nn.functional.scaled_dot_product_attention(q, k, v)
    scale = 1.0 / math.sqrt(d)
    q_order = torch.argsort(angular_buckets(q, projections, rank), dim=-1, stable=True)
    k_order = torch.argsort(angular_buckets(k, projections, rank), dim=-1, stable=True)
    pad = (-length) % block
    n_blocks = (length + pad) // block

    def sort_pad(x, order):
        x = torch.gather(x, 2, order[..., None].expand(-1, -1, -1, x.shape[-1]))
        return nn.functional.pad(x, (0, 0, 0, pad)) if pad else x

    qs, ks, vs = sort_pad(q, q_order), sort_pad(k, k_order), sort_pad(v, k_order)
    shape = (b, h, n_blocks, block, d)
    out_block, lse_block = _block_attention(qs.view(shape), ks.view(shape), vs.view(shape), scale)
    if pad:  # padded keys sit in the last block: remove their (zero-score) contribution exactly
        valid = block - pad
        last_q = qs.view(shape)[:, :, -1]
        scores = torch.einsum("bhqd,bhkd->bhqk", last_q, ks.view(shape)[:, :, -1, :valid]) * scale
        lse_block[:, :, -1] = torch.logsumexp(scores, dim=-1)
        out_block[:, :, -1] = torch.softmax(scores, dim=-1) @ vs.view(shape)[:, :, -1, :valid]
    out_block = out_block.reshape(b, h, -1, d)[:, :, :length]
    lse_block = lse_block.reshape(b, h, -1)[:, :, :length]

    # sampled columns estimate the keys outside each query's block
    m = samples
    picked = torch.randint(0, length, (b, h, m), device=q.device, generator=generator)
    k_position = torch.empty_like(k_order)
    k_position.scatter_(2, k_order, torch.arange(length, device=q.device).expand(b, h, -1))
    sample_block = k_position.gather(2, picked) // block  # block of each sampled key in sorted order
    k_s = torch.gather(k, 2, picked[..., None].expand(-1, -1, -1, d))
    v_s = torch.gather(v, 2, picked[..., None].expand(-1, -1, -1, d))
    q_block = (torch.arange(length, device=q.device) // block).expand(b, h, -1)  # sorted queries' blocks
    scores = torch.einsum("bhqd,bhkd->bhqk", qs[:, :, :length], k_s) * scale
    outside = sample_block[:, :, None, :] != q_block[..., None]
    scores = scores.masked_fill(~outside, float("-inf"))
    count = outside.sum(-1).clamp(min=1)
    lse_sample = torch.logsumexp(scores, dim=-1)
    out_sample = torch.softmax(scores, dim=-1).nan_to_num(0.0) @ v_s
    weight = torch.log((length - block) / count.to(q.dtype))
    lse_sample = torch.where(outside.any(-1), lse_sample + weight, torch.full_like(lse_sample, float("-inf")))
    lse = torch.logaddexp(lse_block, lse_sample)
    merged = torch.exp(lse_block - lse)[..., None] * out_block + torch.exp(lse_sample - lse)[..., None] * out_sample
    out = torch.empty_like(merged)
    out.scatter_(2, q_order[..., None].expand(-1, -1, -1, d), merged)
    return out


class HyperAttention(SelfAttention):
    """Self-attention through ``hyper_attention``; its LSH projections are fixed at build time (seeded)."""

    def __init__(self, width: int, heads: int, config: ContextEncoderConfig, seed: int):
        super().__init__(width, heads)
        self.config = config
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer(
            "projections", torch.randn(width // heads, config.hyper_hash_bits, generator=generator), persistent=False
        )
        self.register_buffer("rank", gray_to_rank(config.hyper_hash_bits), persistent=False)
        self.seed = seed

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project(queries, context)
        generator = None
        if not self.training:  # the same samples every time: inference is reproducible
            generator = torch.Generator(device=q.device).manual_seed(self.seed)
        attended = hyper_attention(
            q,
            k,
            v,
            self.projections.to(q.dtype),
            self.rank,
            self.config.hyper_block,
            self.config.hyper_samples,
            self.config.hyper_exact_below,
            generator,
        )
        return self.merge(attended)


class HyperLayer(nn.Module):
    def __init__(self, config: ContextEncoderConfig, seed: int):
        super().__init__()
        self.norm_attention = nn.LayerNorm(config.width)
        self.attention = HyperAttention(config.width, config.heads, config, seed)
        self.norm_mlp = nn.LayerNorm(config.width)
        self.mlp = FeedForward(config.width, config.mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm_attention(x)
        x = x + self.attention(normed, normed)
        return x + self.mlp(self.norm_mlp(x))


class HyperContext(nn.Module):
    """Global approximate attention over all ``(B, L, W)`` tokens at once (no streaming state: one pass)."""

    def __init__(self, config: ContextEncoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(HyperLayer(config, seed=1000 + i) for i in range(config.depth))
        self.norm = nn.LayerNorm(config.width)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = tokens + sincos_2d(positions, tokens.shape[-1]).to(tokens.dtype)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)
