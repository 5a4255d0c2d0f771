"""Transformer-XL context encoder: windows of region tokens with a memory carried from window to window.

Dai et al., "Transformer-XL: Attentive Language Models Beyond a Fixed-Length Context" (2019), as used by xT.
Each layer caches its inputs of past windows (detached, as Transformer-XL does) and the next window attends to
``[memory; window]``. Unlike the reference xT code, whose ``forward_context`` returns the old memory, the memory
here really carries: window ``k`` sees windows ``k - memory / window .. k - 1``. Positions come from the regions'
global 2-D grid coordinates, so a window knows where its memory came from.
"""

from __future__ import annotations

import torch
from torch import nn

from napari_xt.model.config import ContextEncoderConfig
from napari_xt.model.context.layers import FeedForward, SelfAttention, add_positions


class XLLayer(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm_attention = nn.LayerNorm(width)
        self.attention = SelfAttention(width, heads)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = FeedForward(width, mlp_ratio)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None) -> torch.Tensor:
        context = x if memory is None else torch.cat([memory, x], dim=1)
        normed = self.norm_attention(context)
        x = x + self.attention(normed[:, -x.shape[1] :], normed)
        return x + self.mlp(self.norm_mlp(x))


class TransformerXLContext(nn.Module):
    """Mix ``(B, L, W)`` region tokens over windows with carried memory.

    ``forward_window`` is the streaming step: it takes the per-layer memory and returns the new one.
    """

    def __init__(self, config: ContextEncoderConfig):
        super().__init__()
        self.config = config
        self.tokens_per_region = config.tokens_per_region**2
        self.layers = nn.ModuleList(XLLayer(config.width, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width) if config.final_norm else nn.Identity()

    @property
    def window_tokens(self) -> int:
        return self.config.window * self.tokens_per_region

    @property
    def memory_tokens(self) -> int:
        return self.config.memory * self.tokens_per_region

    def init_state(self) -> list[torch.Tensor | None]:
        return [None] * len(self.layers)

    def forward_window(self, x: torch.Tensor, state: list[torch.Tensor | None]):
        """One window ``(B, n, W)`` (positions already added) → output and the next per-layer memory."""
        new_state = []
        for layer, memory in zip(self.layers, state):
            if self.memory_tokens > 0:
                joined = x if memory is None else torch.cat([memory, x], dim=1)
                new_state.append(joined[:, -self.memory_tokens :].detach())
            else:
                new_state.append(None)
            x = layer(x, memory)
        return self.norm(x), new_state

    def _stream(self, x: torch.Tensor, reverse: bool) -> torch.Tensor:
        starts = list(range(0, x.shape[1], self.window_tokens))
        outputs = [None] * len(starts)
        state = self.init_state()
        for i in reversed(range(len(starts))) if reverse else range(len(starts)):
            window = x[:, starts[i] : starts[i] + self.window_tokens]
            outputs[i], state = self.forward_window(window, state)
        return torch.cat(outputs, dim=1)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Args: tokens ``(B, L, W)``; positions ``(B, L, 2)`` global (row, col) in region units."""
        x = add_positions(tokens, positions, self.config.positions)
        forward = self._stream(x, reverse=False)
        if not self.config.bidirectional:
            return forward
        return 0.5 * (forward + self._stream(x, reverse=True))
