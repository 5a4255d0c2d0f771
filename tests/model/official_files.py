"""Official xT checkpoint files for tests: random tensors with the official names and shapes of
``fixtures/official_xt_keys.json`` (written by ``scripts/official_parity.py`` from the official model definitions),
saved as the official trainer saves them."""

import json
import math
from pathlib import Path

import torch

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "official_xt_keys.json").read_text())
VARIANTS = FIXTURE["variants"]


def shapes_of(name: str) -> dict:
    variant = VARIANTS[name]
    return {k: tuple(v) for k, v in {**FIXTURE["encoders"][variant["encoder"]], **variant["decoder"]}.items()}


def official_state(name: str, seed: int = 0, width: int | None = None) -> dict:
    """Random tensors with the official names and shapes (optionally a narrower context, to keep tests fast)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes_of(name).items():
        if width is not None and key.startswith("decoder."):
            shape = narrowed(key, shape, width)
        tensor = torch.randn(shape, generator=generator) * 0.05
        if key.endswith(("norm.weight", "layernorm.weight", "cls.0.weight", "layers.2.weight")):
            tensor += 1.0
        if key.endswith("A_log"):
            tensor = torch.log(torch.arange(1, shape[1] + 1, dtype=torch.float32)).expand(shape).clone()
        state[key] = tensor
    return state


def narrowed(key: str, shape: tuple, width: int) -> tuple:
    """``shape`` of an official context tensor at context width ``width`` instead of 768: the widths built from it
    (qkv ×3, MLP ×4, Mamba inner ×2 and its dt rank ⌈width / 16⌉) likewise; the classes (284) and the encoder's
    channels going into ``input_proj`` keep theirs."""
    rank, d_state = 48, 16
    if key == "decoder.input_proj.weight":
        return (width, shape[1])
    if key.endswith("x_proj.weight"):
        return (math.ceil(width / 16) + 2 * d_state, 2 * width)
    if key.endswith("dt_proj.weight"):
        return (2 * width, math.ceil(width / 16))
    dims = []
    for dim in shape:
        factor = next((f for f in (1, 2, 3, 4) if dim == 768 * f), None)
        dims.append(width * factor if factor else dim)
    assert rank not in dims or key.endswith("A_log"), key
    return tuple(dims)


def save_official(tmp_path, state, name="official.ckpt"):
    path = tmp_path / name
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    return path
