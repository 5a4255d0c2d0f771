"""Mamba context encoder: selective state-space blocks over the region-token sequence, alternating direction.

Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (2023); xT's Mamba variant.
``Mamba`` has exactly the parameter names and shapes of mamba-ssm's ``Mamba`` block (``in_proj``, ``conv1d``,
``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``), so one checkpoint loads into either. The scan uses
mamba-ssm's fused kernel when it imports and the tensors are on CUDA with no carried state, and our pure
PyTorch scan otherwise. The streaming state (``conv_state``, ``ssm_state``) is explicit, as in mamba-ssm.

With the fused kernel a layer scans the whole sequence in one call (its memory is linear in the length); the
PyTorch scan streams it in chunks, carrying the state. Two residuals: ``pre_norm`` (``x + mixer(norm(x))``) and
``normed`` (``h = norm(x); h + mixer(h)``, the official xT block, whose residual stream is the normed signal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from napari_xt.model.config import ContextEncoderConfig
from napari_xt.model.context import selective_scan as scan
from napari_xt.model.context.layers import add_positions, append_token, cls_parameter


@dataclass
class MambaState:
    """Streaming state of one ``Mamba`` block: the last ``d_conv`` conv inputs and the SSM state."""

    conv_state: torch.Tensor  # (B, d_inner, d_conv)
    ssm_state: torch.Tensor  # (B, d_inner, d_state)


class Mamba(nn.Module):
    """A Mamba block, weight-compatible with ``mamba_ssm.modules.mamba_simple.Mamba``."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
    ):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner, padding=d_conv - 1, bias=True
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        nn.init.uniform_(self.dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, hidden: torch.Tensor, state: MambaState | None = None) -> tuple[torch.Tensor, MambaState]:
        """``(B, L, d_model)`` → same shape, and the state after the last step."""
        batch = hidden.shape[0]
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) each
        previous = x.new_zeros(batch, self.d_inner, self.d_conv - 1) if state is None else state.conv_state[..., 1:]
        joined = torch.cat([previous.to(x.dtype), x], dim=-1)
        conv_state = joined[..., -self.d_conv :]
        if conv_state.shape[-1] < self.d_conv:
            conv_state = F.pad(conv_state, (self.d_conv - conv_state.shape[-1], 0))
        x = F.silu(F.conv1d(joined, self.conv1d.weight, self.conv1d.bias, groups=self.d_inner))
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (self.dt_proj.weight @ dt.transpose(1, 2)).contiguous()  # bias goes in as delta_bias
        A = -torch.exp(self.A_log.float())
        args = (x, dt, A, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(), self.D.float(), z)
        kwargs = {"delta_bias": self.dt_proj.bias.float(), "delta_softplus": True, "return_last_state": True}
        if state is None and x.is_cuda and scan.fused_available():
            y, ssm_state = scan.fused_selective_scan(*args, **kwargs)
        else:
            y, ssm_state = scan.selective_scan(
                *args, **kwargs, initial_state=None if state is None else state.ssm_state
            )
        return self.out_proj(y.transpose(1, 2)), MambaState(conv_state.detach(), ssm_state.detach())


class MambaLayer(nn.Module):
    """Pre-norm residual Mamba block that scans forward or in reverse."""

    def __init__(self, config: ContextEncoderConfig, reverse: bool):
        super().__init__()
        self.norm = nn.LayerNorm(config.width)
        self.mixer = Mamba(config.width, config.d_state, config.d_conv, config.expand)
        self.reverse = reverse
        self.residual = config.mamba_residual

    def forward(self, x: torch.Tensor, chunk: int) -> torch.Tensor:
        """The whole sequence through the block in its direction: in one fused scan on CUDA with mamba-ssm,
        otherwise streamed ``chunk`` tokens at a time."""
        sequence = x.flip(1) if self.reverse else x
        normed = self.norm(sequence)
        if normed.is_cuda and scan.fused_available():
            chunk = normed.shape[1]
        outputs, state = [], None
        for start in range(0, sequence.shape[1], chunk):
            out, state = self.mixer(normed[:, start : start + chunk], state)
            outputs.append(out)
        mixed = torch.cat(outputs, dim=1)
        if self.residual == "normed":
            mixed = normed + mixed
        mixed = mixed.flip(1) if self.reverse else mixed
        return mixed if self.residual == "normed" else x + mixed


class MambaContext(nn.Module):
    """Layers alternate scan direction (the first scans in reverse, as in xT) so every region sees both sides.

    With ``cls_token`` the output has one more token, the cls token's, last."""

    def __init__(self, config: ContextEncoderConfig):
        super().__init__()
        self.config = config
        self.chunk = config.window * config.tokens_per_region**2
        self.cls_token = cls_parameter(config.width) if config.cls_token else None
        self.layers = nn.ModuleList(MambaLayer(config, reverse=i % 2 == 0) for i in range(config.depth))
        self.norm = nn.LayerNorm(config.width) if config.final_norm else nn.Identity()

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = add_positions(tokens, positions, self.config.positions)
        if self.cls_token is not None:
            x = append_token(x, self.cls_token)
        for layer in self.layers:
            x = layer(x, self.chunk)
        return self.norm(x)
