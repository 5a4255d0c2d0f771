"""HyperAttention context encoder: near-linear approximate attention over all region tokens of an image.

Han et al., "HyperAttention: Long-context Attention in Near-Linear Time" (2023), the "Hyper" variant of xT.
Queries and keys are bucketed by angular LSH (sign bits of random projections, ordered by Gray code so that
neighbouring buckets are similar), sorted by bucket, and attend exactly inside diagonal blocks of the sorted
order; keys outside the block are estimated from uniformly sampled columns. The two parts are merged through
their log-sum-exp. Below ``hyper_exact_below`` tokens, attention is exact.

Causal attention (the official xT setting) follows the paper's recursion: the sequence is halved; each half
attends to itself causally (recursively, both halves in one call) and the second half attends to the whole
first half without a mask, approximately; the two parts merge through their log-sum-exp.

Two layers: ``pre_norm`` (LayerNorm, attention, LayerNorm, GELU MLP) and ``llama``, the official xT layer
(RMSNorm, one biased ``qkv`` projection, RMSNorm, gated MLP without biases; the parameter names are the official
ones, so its checkpoints map one to one).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from napari_xt.model.config import ContextEncoderConfig
from napari_xt.model.context.layers import (
    FeedForward,
    GatedMLP,
    RMSNorm,
    SelfAttention,
    add_positions,
    append_token,
    cls_parameter,
)


def gray_to_rank(bits: int) -> torch.Tensor:
    """For each integer ``g < 2**bits`` read as Gray code, its position in the Gray sequence."""
    codes = torch.arange(2**bits, device="cpu")
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
    with_lse: bool = False,
):
    """Approximate ``softmax(q kᵀ / √d) v`` for ``(B, H, L, D)`` tensors (L_q = L_k); with ``with_lse`` also
    the log-sum-exp of each query's scores ``(B, H, L)``."""
    b, h, length, d = q.shape
    if length < max(exact_below, 2 * block):
        if not with_lse:
            return nn.functional.scaled_dot_product_attention(q, k, v)
        return exact_attention(q, k, v, causal=False)
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
    if not with_lse:
        return out
    return out, torch.empty_like(lse).scatter_(2, q_order, lse)


def exact_attention(q, k, v, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention and the log-sum-exp of each query's scores."""
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v, torch.logsumexp(scores, dim=-1)


def causal_hyper_attention(q, k, v, projections, rank, block, samples, exact_below, generator=None, with_lse=True):
    """Causal ``hyper_attention``: output and (``with_lse``) log-sum-exp ``(B, H, L)``; exact below
    ``exact_below`` tokens (without ``with_lse`` through SDPA, no score matrix materialised)."""
    b, h, length, d = q.shape
    if length <= max(exact_below, 2 * block):
        if not with_lse:
            return nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return exact_attention(q, k, v, causal=True)
    odd = length % 2
    if odd:  # a zero row at the end: seen by no real query
        q, k, v = (nn.functional.pad(t, (0, 0, 0, 1)) for t in (q, k, v))
    half = q.shape[2] // 2
    halves = [t.reshape(b, 2 * h, half, d) for t in (q, k, v)]  # each half as heads of their own
    diagonal, diagonal_lse = causal_hyper_attention(*halves, projections, rank, block, samples, exact_below, generator)
    diagonal, diagonal_lse = diagonal.reshape(b, h, 2 * half, d), diagonal_lse.reshape(b, h, 2 * half)
    below, below_lse = hyper_attention(
        q[:, :, half:], k[:, :, :half], v[:, :, :half], projections, rank, block, samples, exact_below, generator, True
    )
    lower_lse = torch.logaddexp(diagonal_lse[:, :, half:], below_lse)
    lower = (
        torch.exp(diagonal_lse[:, :, half:] - lower_lse)[..., None] * diagonal[:, :, half:]
        + torch.exp(below_lse - lower_lse)[..., None] * below
    )
    out = torch.cat([diagonal[:, :, :half], lower], dim=2)[:, :, :length]
    if not with_lse:
        return out
    return out, torch.cat([diagonal_lse[:, :, :half], lower_lse], dim=2)[:, :, :length]


class _Hashing(nn.Module):
    """The fixed LSH projections of one attention layer (seeded at build time; not part of checkpoints)."""

    def __init__(self, head_width: int, config: ContextEncoderConfig, seed: int):
        super().__init__()
        self.config = config
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer(
            "projections",
            torch.randn(head_width, config.hyper_hash_bits, generator=generator, device="cpu"),
            persistent=False,
        )
        self.register_buffer("rank", gray_to_rank(config.hyper_hash_bits), persistent=False)
        self.seed = seed

    def attend(self, q, k, v, training: bool, causal: bool) -> torch.Tensor:
        generator = None
        if not training:  # the same samples every time: inference is reproducible
            generator = torch.Generator(device=q.device).manual_seed(self.seed)
        c = self.config
        args = (q, k, v, self.projections.to(q.dtype), self.rank, c.hyper_block, c.hyper_samples, c.hyper_exact_below)
        if causal:
            return causal_hyper_attention(*args, generator, with_lse=False)
        return hyper_attention(*args, generator)


class HyperAttention(SelfAttention):
    """Self-attention through ``hyper_attention`` (separate query and key-value projections)."""

    def __init__(self, width: int, heads: int, config: ContextEncoderConfig, seed: int):
        super().__init__(width, heads)
        self.hashing = _Hashing(width // heads, config, seed)
        self.causal = config.causal

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project(queries, context)
        return self.merge(self.hashing.attend(q, k, v, self.training, self.causal))


class QKVHyperAttention(nn.Module):
    """Self-attention through ``hyper_attention`` with one biased ``qkv`` projection and ``proj`` (official xT)."""

    def __init__(self, width: int, heads: int, config: ContextEncoderConfig, seed: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=True)
        self.proj = nn.Linear(width, width)
        self.hashing = _Hashing(width // heads, config, seed)
        self.causal = config.causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        attended = self.hashing.attend(q, k, v, self.training, self.causal)
        return self.proj(attended.transpose(1, 2).reshape(b, n, w))


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


class LlamaLayer(nn.Module):
    """The official xT context layer: ``x + attn(rms(x))``, then ``x + mlp(rms(x))`` with a gated MLP."""

    def __init__(self, config: ContextEncoderConfig, seed: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.width)
        self.attn = QKVHyperAttention(config.width, config.heads, config, seed)
        self.post_attention_layernorm = RMSNorm(config.width)
        self.mlp = GatedMLP(config.width, int(config.width * config.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class HyperContext(nn.Module):
    """Global approximate attention over all ``(B, L, W)`` tokens at once (no streaming state: one pass).

    With ``cls_token`` the output has one more token, the cls token's, last."""

    def __init__(self, config: ContextEncoderConfig):
        super().__init__()
        self.config = config
        layer = LlamaLayer if config.layer == "llama" else HyperLayer
        self.cls_token = cls_parameter(config.width) if config.cls_token else None
        self.layers = nn.ModuleList(layer(config, seed=1000 + i) for i in range(config.depth))
        self.norm = nn.LayerNorm(config.width) if config.final_norm else nn.Identity()

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = add_positions(tokens, positions, self.config.positions)
        if self.cls_token is not None:
            x = append_token(x, self.cls_token)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)
