import pytest
import torch

from napari_xt.model.config import ContextEncoderConfig
from napari_xt.model.context import selective_scan as scan
from napari_xt.model.context.mamba import Mamba, MambaContext


def _scan_inputs(b=2, d=6, n=4, length=45, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        u=torch.randn(b, d, length, generator=g),
        delta=torch.randn(b, d, length, generator=g),
        A=-torch.rand(d, n, generator=g) * 3,
        B=torch.randn(b, n, length, generator=g),
        C=torch.randn(b, n, length, generator=g),
        D=torch.randn(d, generator=g),
        z=torch.randn(b, d, length, generator=g),
        delta_bias=torch.randn(d, generator=g),
        delta_softplus=True,
    )


@pytest.mark.parametrize("chunk", [1, 7, 16, 64])
def test_scan_equals_step_by_step_recurrence(chunk):
    inputs = _scan_inputs()
    y, last = scan.selective_scan(**inputs, return_last_state=True, chunk=chunk)
    y_ref, last_ref = scan.selective_scan_reference(**inputs)
    torch.testing.assert_close(y.double(), y_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(last.double(), last_ref, atol=1e-5, rtol=1e-4)


def test_scan_with_carried_state_equals_full_sequence():
    inputs = _scan_inputs(length=50)
    full = scan.selective_scan(**inputs)
    first = {k: (v[..., :23] if torch.is_tensor(v) and v.dim() == 3 else v) for k, v in inputs.items()}
    second = {k: (v[..., 23:] if torch.is_tensor(v) and v.dim() == 3 else v) for k, v in inputs.items()}
    y1, state = scan.selective_scan(**first, return_last_state=True)
    y2 = scan.selective_scan(**second, initial_state=state)
    torch.testing.assert_close(torch.cat([y1, y2], dim=-1), full, atol=1e-6, rtol=1e-5)


def test_block_streams_in_chunks_like_one_pass():
    torch.manual_seed(0)
    block = Mamba(32, d_state=8)
    x = torch.randn(2, 70, 32)
    with torch.no_grad():
        whole, _ = block(x)
        pieces, state = [], None
        for start in (0, 3, 40):  # uneven chunks, one shorter than d_conv
            stop = {0: 3, 3: 40, 40: 70}[start]
            out, state = block(x[:, start:stop], state)
            pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, atol=1e-5, rtol=1e-4)


def test_parameters_match_mamba_ssm_names_and_shapes():
    # mamba_ssm.modules.mamba_simple.Mamba(d_model=64) with its defaults (d_state 16, d_conv 4, expand 2)
    expected = {
        "in_proj.weight": (256, 64),
        "conv1d.weight": (128, 1, 4),
        "conv1d.bias": (128,),
        "x_proj.weight": (4 + 2 * 16, 128),
        "dt_proj.weight": (128, 4),
        "dt_proj.bias": (128,),
        "A_log": (128, 16),
        "D": (128,),
        "out_proj.weight": (64, 128),
    }
    assert {k: tuple(v.shape) for k, v in Mamba(64).state_dict().items()} == expected


def test_context_layers_alternate_direction_and_see_both_sides():
    config = ContextEncoderConfig(kind="mamba", width=16, depth=2, tokens_per_region=1, window=4, d_state=4)
    torch.manual_seed(0)
    model = MambaContext(config).eval()
    assert [layer.reverse for layer in model.layers] == [True, False]
    with torch.no_grad():  # step Δ = 1 and slow decay (A = -0.01): influence is not lost to float noise
        for layer in model.layers:
            layer.mixer.A_log.fill_(torch.log(torch.tensor(0.01)))
            layer.mixer.dt_proj.bias.fill_(0.5413)  # softplus(0.5413) = 1
    x, positions = torch.randn(1, 30, 16), torch.zeros(1, 30, 2)
    for index in (0, 29):
        changed = x.clone()
        changed[:, index] += torch.randn(16)
        with torch.no_grad():
            difference = (model(x, positions) - model(changed, positions)).abs().amax(dim=-1)[0]
        assert (difference > 1e-4).all(), f"a change at token {index} does not reach every token"


@pytest.mark.gpu
def test_pure_torch_scan_matches_mamba_ssm_kernel():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("mamba_ssm", reason="install napari-xt[mamba] on a CUDA machine")
    assert scan.fused_available()
    inputs = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in _scan_inputs(b=2, d=64, n=16, length=512).items()}
    fused, fused_state = scan.fused_selective_scan(**inputs, return_last_state=True)
    ours, our_state = scan.selective_scan(**inputs, return_last_state=True)
    torch.testing.assert_close(ours, fused, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(our_state, fused_state, atol=2e-3, rtol=2e-3)


@pytest.mark.gpu
def test_fused_layers_scan_the_whole_sequence_as_the_streamed_scan_does():
    """On CUDA with mamba-ssm a layer scans all tokens in one fused call; the result is the CPU scan's, streamed
    chunk by chunk with its carried state, for both residuals."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("mamba_ssm", reason="install napari-xt[mamba] on a CUDA machine")
    calls = []
    original = scan.fused_selective_scan
    for residual in ("pre_norm", "normed"):
        torch.manual_seed(0)
        config = ContextEncoderConfig(kind="mamba", width=64, depth=2, window=4, tokens_per_region=2)
        config.mamba_residual = residual
        model = MambaContext(config).eval()
        x, positions = torch.randn(2, 3000, 64), torch.rand(2, 3000, 2) * 50
        with torch.no_grad():
            streamed = model(x, positions)
            scan.fused_selective_scan = lambda *a, **k: calls.append(a[0].shape[-1]) or original(*a, **k)
            try:
                fused = model.cuda()(x.cuda(), positions.cuda()).cpu()
            finally:
                scan.fused_selective_scan = original
        torch.testing.assert_close(fused, streamed, atol=3e-3, rtol=3e-3)
    assert calls and set(calls) == {3000}  # one call per layer, over every token
