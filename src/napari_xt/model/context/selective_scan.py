"""Selective scan (the S6 recurrence of Mamba) in pure PyTorch, with an explicit state, and a guard that uses
mamba-ssm's fused CUDA kernel when it imports.

Recurrence, per channel ``d`` and state ``n``::

    h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t        y_t = C_t · h_t + D u_t        (then y · silu(z))

``selective_scan`` has mamba-ssm's ``selective_scan_fn`` signature plus ``initial_state``. It runs in chunks:
inside a chunk of ``K`` steps the recurrence is one masked ``(K × K)`` decay matrix per (channel, state), so
the Python loop has ``L / K`` iterations (``K`` trades Python steps against ``K``-fold arithmetic: 16 for
narrow scans, 4 for wide ones, as measured on CPU); the state leaves each chunk for the next, which is also how
a long sequence is streamed piece by piece.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # optional fused kernels: CUDA only
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as fused_selective_scan
except ImportError:  # mamba-ssm not installed, or built without CUDA
    fused_selective_scan = None

CHUNK = 16  # steps per chunk for narrow scans (batch × channels × states below WIDE)
WIDE_CHUNK, WIDE = 4, 4096


def fused_available() -> bool:
    """True when mamba-ssm's kernels imported (``pip install napari-xt[mamba]`` on a CUDA machine)."""
    return fused_selective_scan is not None


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: torch.Tensor | None = None,
    chunk: int | None = None,
):
    """Pure-PyTorch selective scan.

    Args:
        u, delta, z: ``(b, d, L)``.
        A: ``(d, n)`` (negative real).
        B, C: ``(b, n, L)`` (input-dependent).
        D: ``(d,)`` skip connection.
        delta_bias: ``(d,)`` added to ``delta`` before the optional softplus.
        initial_state: ``(b, d, n)`` state before the first step (zeros when None).

    Returns:
        ``y`` ``(b, d, L)`` in ``u``'s dtype, and the last state ``(b, d, n)`` when ``return_last_state``.
    """
    dtype = u.dtype
    u, delta, A, B, C = u.float(), delta.float(), A.float(), B.float(), C.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, length = u.shape
    n = A.shape[1]
    state = u.new_zeros(b, d, n) if initial_state is None else initial_state.float()
    if chunk is None:
        chunk = CHUNK if b * d * n < WIDE else WIDE_CHUNK
    outputs = []
    for start in range(0, length, chunk):
        stop = min(start + chunk, length)
        dt = delta[:, :, start:stop]  # (b, d, K)
        log_decay = torch.einsum("bdk,dn->bdnk", dt, A).cumsum(dim=-1)  # S_t, (b, d, n, K)
        drive = torch.einsum("bdk,bnk->bdnk", dt * u[:, :, start:stop], B[:, :, start:stop])
        steps = stop - start
        gap = log_decay[..., :, None] - log_decay[..., None, :]  # S_t - S_s, (b, d, n, K, K)
        causal = torch.ones(steps, steps, dtype=torch.bool, device=u.device).tril()
        weights = torch.exp(gap.masked_fill(~causal, float("-inf")))
        states = (weights @ drive[..., None]).squeeze(-1) + torch.exp(log_decay) * state[..., None]
        outputs.append(torch.einsum("bdnk,bnk->bdk", states, C[:, :, start:stop]))
        state = states[..., -1]
    y = torch.cat(outputs, dim=-1)
    if D is not None:
        y = y + D.float()[:, None] * u
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(dtype)
    return (y, state) if return_last_state else y


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Step-by-step recurrence, one time step per iteration: the oracle the chunked scan is tested against."""
    u, delta = u.double(), delta.double()
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, length = u.shape
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(length):
        h = (
            torch.exp(delta[:, :, t, None] * A.double()) * h
            + (delta[:, :, t] * u[:, :, t])[..., None] * B.double()[:, None, :, t]
        )
        ys.append((h * C.double()[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        y = y * F.silu(z.double())
    return y, h
