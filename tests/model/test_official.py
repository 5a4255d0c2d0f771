"""Official xT checkpoints: the architecture is read from the tensors, every tensor lands, and the loaded model
computes what the official model does.

``fixtures/official_xt_keys.json`` holds the key names and shapes of every official variant, written by
``scripts/official_parity.py`` from the official model definitions (bair-climate-initiative/xT). The logits are
checked against a reference written here from the published equations (MAE 2-D sin-cos positions, RMSNorm,
causal softmax attention, gated GELU MLP, the Mamba recurrence), reading the official tensors by their official
names; the comparison with the official code itself is ``scripts/official_parity.py``.
"""

import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from napari_xt.model import CheckpointError, XTModel, convert_official, load_checkpoint, load_official_xt
from napari_xt.model.official import plan_official
from napari_xt.model.presets import preset_config
from tests.model.official_files import VARIANTS, official_state, save_official, shapes_of

EXPECTED = {  # variant → (family, size, head, depth, the preset that is the same architecture)
    "swin-t-nonxl-256": ("swinv2", "T", "naive", 0, "xt_swin_t_naive"),
    "swin-t-hyper-512-256": ("swinv2", "T", "hyper", 2, "xt_swin_t_hyper"),
    "swin-t-hyper-1layer-512-256": ("swinv2", "T", "hyper", 1, None),
    "swin-t-mamba-512-256": ("swinv2", "T", "mamba", 4, "xt_swin_t_mamba"),
    "swin-s-hyper-512-256": ("swinv2", "S", "hyper", 2, "xt_swin_s_hyper"),
    "swin-b-hyper-512-256": ("swinv2", "B", "hyper", 2, "xt_swin_b_hyper"),
    "swin-b-mamba-512-256": ("swinv2", "B", "mamba", 4, "xt_swin_b_mamba"),
    "swin-l-hyper-512-256": ("swinv2", "L", "hyper", 2, "xt_swin_l_hyper"),
    "swin-l-mamba-512-256": ("swinv2", "L", "mamba", 4, "xt_swin_l_mamba"),
    "hiera-b-nonxl-224": ("hiera", "B", "naive", 0, "xt_hiera_b_naive"),
    "hiera-b-hyper-448-224": ("hiera", "B", "hyper", 2, "xt_hiera_b_hyper"),
}


def test_the_fixture_covers_every_official_variant():
    assert set(VARIANTS) == set(EXPECTED)
    assert {v["head"] for v in VARIANTS.values()} == {"naive", "hyper", "mamba"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_official_tensor_has_its_place_and_fills_the_model(name):
    shapes = shapes_of(name)
    plan = plan_official(shapes, name)
    family, size, head, depth, preset = EXPECTED[name]
    arch = plan.architecture
    assert (arch.family, arch.size, arch.head, arch.depth, arch.classes) == (family, size, head, depth, 284)
    assert arch.input_size == VARIANTS[name]["input_size"]
    with torch.device("meta"):  # shapes only: Swin-L is 200 M parameters
        own = XTModel(plan.config).state_dict()
    assert sorted(plan.keys.values()) == sorted(own), "every model tensor filled, from exactly one file tensor"
    for key, target in plan.keys.items():
        assert tuple(own[target].shape) == shapes[key], key
    if preset:  # the preset named after the release is that architecture
        assert preset_config(preset).to_dict() == plan.config.to_dict()


def test_unknown_heads_and_encoders_are_refused_naming_them():
    shapes = shapes_of("swin-t-hyper-512-256")
    with pytest.raises(CheckpointError, match=r"decoder\.layers\.0\.attn\.q_proj"):
        plan_official({**shapes, "decoder.layers.0.attn.q_proj.weight": (768, 768)}, "x.pth")
    encoder = {k: v for k, v in shapes.items() if k.startswith("encoder.") and "layers_2.blocks.5" not in k}
    with pytest.raises(CheckpointError, match="5 blocks in stage 3"):
        plan_official({**encoder, **{k: v for k, v in shapes.items() if k.startswith("decoder.")}}, "x.pth")
    no_head = {k: v for k, v in shapes.items() if k.startswith("encoder.")}
    with pytest.raises(CheckpointError, match="none of the official"):
        plan_official({**no_head, "decoder.foo.weight": (1,)}, "x.pth")


# -- a real file, loaded, against a reference written from the equations -------------------------------------


def mae_sincos(width: int, rows: int, cols: int) -> torch.Tensor:
    """MAE's 2-D sin-cos table: the first half of the width encodes the column, the second the row."""

    def one_d(dim, positions):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.outer(positions, omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    table = np.concatenate([one_d(width // 2, c.ravel()), one_d(width // 2, r.ravel())], axis=1)
    return torch.tensor(table, dtype=torch.float32)


def rms(x, weight, eps=1e-5):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def linear(x, state, prefix, bias=True):
    return F.linear(x, state[prefix + ".weight"], state.get(prefix + ".bias") if bias else None)


def reference_logits(state: dict, encoder_name: str, images: torch.Tensor, region: int) -> torch.Tensor:
    """The official classifier from its tensors: timm's feature backbone for the regions, the head from equations."""
    backbone = timm.create_model(encoder_name, pretrained=False, features_only=True).eval()
    prefix = "model." if encoder_name.startswith("hiera") else ""
    backbone.load_state_dict({prefix + k[len("encoder.model.") :]: v for k, v in state.items() if k[:8] == "encoder."})
    b, _, h, w = images.shape
    rows, cols = h // region, w // region
    regions = images.reshape(b, 3, rows, region, cols, region).permute(0, 2, 4, 1, 3, 5).reshape(-1, 3, region, region)
    deepest = backbone(regions)[-1]
    if deepest.shape[-1] != deepest.shape[1] and deepest.shape[-1] > deepest.shape[1] // 2:
        deepest = deepest.permute(0, 3, 1, 2)  # Swin's maps come channels-last
    c, t = deepest.shape[1], deepest.shape[-1]
    stitched = deepest.reshape(b, rows, cols, c, t, t).permute(0, 3, 1, 4, 2, 5).reshape(b, c, rows * t, cols * t)
    if "decoder.input_proj.weight" not in state:  # the naive head
        x = stitched.mean((-2, -1))
        x = F.gelu(linear(x, state, "decoder.layers.0"))
        x = F.layer_norm(x, x.shape[-1:], state["decoder.layers.2.weight"], state["decoder.layers.2.bias"])
        return linear(x, state, "decoder.layers.3")
    x = linear(stitched.flatten(2).transpose(1, 2), state, "decoder.input_proj")  # tokens row by row
    x = x + mae_sincos(x.shape[-1], rows * t, cols * t)
    x = torch.cat([x, state["decoder.cls_token"].expand(b, 1, -1)], dim=1)
    depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("decoder.layers."))
    for i in range(depth):
        p = f"decoder.layers.{i}"
        x = mamba_block(x, state, p, reverse=i % 2 == 0) if f"{p}.mixer.A_log" in state else llama_layer(x, state, p)
    x = x[:, -1]
    x = F.layer_norm(x, x.shape[-1:], state["decoder.cls.0.weight"], state["decoder.cls.0.bias"])
    return linear(x, state, "decoder.cls.1")


def llama_layer(x, state, p):
    b, n, w = x.shape
    heads = w // 128 or 1
    q, k, v = linear(rms(x, state[f"{p}.input_layernorm.weight"]), state, f"{p}.attn.qkv").chunk(3, dim=-1)
    q, k, v = (t.reshape(b, n, heads, w // heads).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(w // heads)
    scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))  # causal
    attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, w)
    x = x + linear(attended, state, f"{p}.attn.proj")
    h = rms(x, state[f"{p}.post_attention_layernorm.weight"])
    gated = F.gelu(linear(h, state, f"{p}.mlp.gate_proj", False)) * linear(h, state, f"{p}.mlp.up_proj", False)
    return x + linear(gated, state, f"{p}.mlp.down_proj", False)


def mamba_block(x, state, p, reverse):
    """h = LayerNorm(x); h + Mamba(h), over the sequence in reverse for even layers; the recurrence step by step."""
    if reverse:
        x = x.flip(1)
    h = F.layer_norm(x, x.shape[-1:], state[f"{p}.norm.weight"], state[f"{p}.norm.bias"])
    m = f"{p}.mixer"
    d_inner, d_state = state[f"{m}.A_log"].shape
    xz = linear(h, state, f"{m}.in_proj", False)
    u, z = xz[..., :d_inner], xz[..., d_inner:]
    kernel = state[f"{m}.conv1d.weight"]
    u = F.conv1d(F.pad(u.transpose(1, 2), (kernel.shape[-1] - 1, 0)), kernel, state[f"{m}.conv1d.bias"], groups=d_inner)
    u = F.silu(u).transpose(1, 2)  # (b, L, d)
    rank = state[f"{m}.dt_proj.weight"].shape[1]
    projected = linear(u, state, f"{m}.x_proj", False)
    dt = F.softplus(linear(projected[..., :rank], state, f"{m}.dt_proj"))
    B, C = projected[..., rank : rank + d_state], projected[..., rank + d_state :]
    A = -torch.exp(state[f"{m}.A_log"])
    s = torch.zeros(x.shape[0], d_inner, d_state)
    ys = []
    for i in range(x.shape[1]):
        s = torch.exp(dt[:, i, :, None] * A) * s + dt[:, i, :, None] * B[:, i, None, :] * u[:, i, :, None]
        ys.append((s * C[:, i, None, :]).sum(-1) + state[f"{m}.D"] * u[:, i])
    y = torch.stack(ys, dim=1) * F.silu(z)
    out = h + linear(y, state, f"{m}.out_proj", False)
    return out.flip(1) if reverse else out


CASES = [  # variant, context width (narrowed from 768 to keep the CPU test short), image side
    ("swin-t-hyper-512-256", 128, 512),
    ("swin-t-mamba-512-256", 64, 512),
    ("swin-t-nonxl-256", None, 512),
    ("hiera-b-hyper-448-224", 128, 448),
]


@pytest.mark.parametrize(("name", "width", "side"), CASES)
def test_loaded_official_model_matches_the_reference(tmp_path, name, width, side):
    torch.manual_seed(0)
    state = official_state(name, width=width)
    path = save_official(tmp_path, state)
    model, report = load_official_xt(path)
    assert report.loaded == len(state) and report.architecture.head == VARIANTS[name]["head"]
    assert report.sha256 and "loaded all" in report.summary()
    images = torch.randn(1, 3, side, side)  # normalised pixels
    region = model.config.region_size
    with torch.no_grad():
        ours = model(images * model.std + model.mean)["classification"]  # napari-xt takes raw values
        reference = reference_logits(state, model.config.region_encoder.name, images, region)
    assert ours.shape == (1, 284)
    assert (ours - reference).abs().max() < 1e-4, float((ours - reference).abs().max())
    assert reference.std() > 0.05  # logits that differ from class to class: the comparison can fail


def test_partial_foreign_and_misshapen_files_are_refused(tmp_path):
    state = official_state("swin-t-hyper-512-256", width=128)
    partial = dict(state)
    del partial["decoder.layers.1.mlp.up_proj.weight"]
    with pytest.raises(CheckpointError, match=r"1 tensors .* are not in the file.*layers\.1\.mlp\.up_proj"):
        load_official_xt(save_official(tmp_path, partial, "partial.pth"))
    extra = {**state, "decoder.layers.0.attn.q_proj.weight": torch.zeros(128, 128)}
    with pytest.raises(CheckpointError, match="cannot place"):
        load_official_xt(save_official(tmp_path, extra, "extra.pth"))
    bent = {**state, "decoder.cls_token": torch.zeros(1, 2, 128)}
    with pytest.raises(CheckpointError, match="cls_token has shape"):
        load_official_xt(save_official(tmp_path, bent, "bent.pth"))
    with pytest.raises(CheckpointError, match="not an official xT checkpoint"):
        load_official_xt(save_official(tmp_path, {"conv.weight": torch.zeros(2)}, "other.pth"))


def test_pickles_with_code_are_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hook": Path("x")}, path)  # an object that only unpickling code rebuilds
    with pytest.raises(CheckpointError, match="never unpickles code"):
        load_official_xt(path)


def test_convert_writes_a_checkpoint_with_provenance_that_loads_alone(tmp_path):
    state = official_state("swin-t-mamba-512-256", width=64)
    path = save_official(tmp_path, state)
    names = [f"species {i}" for i in range(284)]
    sha, report = convert_official(path, tmp_path / "model.safetensors", class_names=names)
    model, info = load_checkpoint(tmp_path / "model.safetensors")
    assert info.sha256 == sha
    assert info.provenance["source_sha256"] == report.sha256 and info.provenance["architecture"]["head"] == "mamba"
    assert info.config.heads.classification_classes == names
    original, _ = load_official_xt(path)
    images = torch.rand(1, 3, 512, 512) * 255
    with torch.no_grad():
        torch.testing.assert_close(model(images)["classification"], original(images)["classification"])
    with pytest.raises(CheckpointError, match="284 classes, but 3 class names"):
        convert_official(path, tmp_path / "other.safetensors", class_names=["a", "b", "c"])
