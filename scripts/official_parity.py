"""Compare napari-xt's loading of official xT checkpoints with the official code itself, and write the key fixture.

Needs a source checkout of bair-climate-initiative/xT (``--official``, the folder holding ``xt/``) and what its
models import: ``einops``, ``hiera-transformer`` and ``triton`` (``--site``: a folder they were installed into
with ``pip install --target``, never the project's venv), and for the Mamba head the ``mamba_ssm`` sources of
mamba-ssm 1.2 (``--mamba``: the folder holding ``mamba_ssm/``; its CUDA kernels are not needed: the official
block runs on mamba-ssm's own reference scan, ``selective_scan_ref``).

For each official variant it builds the official model (random weights, no download), saves its state dict as
the official trainer does (``{"state_dict": ...}`` with DDP's ``module.`` prefix), loads that file with
``napari_xt.model.load_official_xt`` and compares the classification logits on the same normalised input::

    python scripts/official_parity.py --official ~/src/xT --site /tmp/xt-deps --mamba /tmp/mamba-1.2.2 \
        --fixture tests/model/fixtures/official_xt_keys.json --json benchmarks/results/official_parity.json

``--fixture`` also writes every variant's key names and shapes (facts of the official model definitions) for
``tests/model/test_official.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import types
from pathlib import Path

# (name, backbone class of the official code, region input size, crop size, head, context layers)
VARIANTS = [
    ("swin-t-nonxl-256", "swinv2_tiny_window16_256_timm", 256, 256, "naive", 0),
    ("swin-t-hyper-512-256", "swinv2_tiny_window16_256_timm", 256, 512, "hyper", 2),
    ("swin-t-hyper-1layer-512-256", "swinv2_tiny_window16_256_timm", 256, 512, "hyper", 1),
    ("swin-t-mamba-512-256", "swinv2_tiny_window16_256_timm", 256, 512, "mamba", 4),
    ("swin-s-hyper-512-256", "swinv2_small_window16_256_timm", 256, 512, "hyper", 2),
    ("swin-b-hyper-512-256", "swinv2_base_window16_256_timm", 256, 512, "hyper", 2),
    ("swin-b-mamba-512-256", "swinv2_base_window16_256_timm", 256, 512, "mamba", 4),
    ("swin-l-hyper-512-256", "swinv2_large_window16_256_timm", 256, 512, "hyper", 2),
    ("swin-l-mamba-512-256", "swinv2_large_window16_256_timm", 256, 512, "mamba", 4),
    ("hiera-b-nonxl-224", "hiera_base", 224, 224, "naive", 0),
    ("hiera-b-hyper-448-224", "hiera_base", 224, 448, "hyper", 2),
]
CLASSES = 284  # iNaturalist-2018 Reptilia, as the official configs


def prepare_imports(official: Path, site: Path | None, mamba: Path | None) -> None:
    """Make the official code importable without its CUDA-only parts and without downloading weights."""
    import timm
    import torch

    for path in (site, official, mamba):
        if path is not None:
            sys.path.insert(0, str(path))
    create = timm.create_model

    def offline(name, *args, **kwargs):  # the official wrappers ask for pretrained=True
        kwargs["pretrained"] = False
        kwargs.pop("input_size", None)  # the official wrappers pass it; timm's Swin-v2 does not take it
        return create(name.split(".")[0], *args, **kwargs)

    timm.create_model = offline
    import hiera

    for size in ("tiny", "small", "base", "base_plus", "large"):  # hiera-transformer names them *_224 today
        builder = getattr(hiera, f"hiera_{size}_224")
        setattr(hiera, f"hiera_{size}", lambda *a, _b=builder, input_size=(224, 224), **k: _b(input_size=input_size))
    if mamba is not None:
        sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
        package = types.ModuleType("mamba_ssm")  # the package's __init__ imports CUDA-only modules
        package.__path__ = [str(mamba / "mamba_ssm")]
        sys.modules["mamba_ssm"] = package
        from mamba_ssm.modules import mamba_simple
        from mamba_ssm.ops import selective_scan_interface

        package.Mamba = mamba_simple.Mamba
        mamba_simple.selective_scan_fn = selective_scan_interface.selective_scan_ref
        mamba_simple.causal_conv1d_fn = None
    torch.set_grad_enabled(False)


def official_model(backbone_class: str, input_size: int, head: str, layers: int):
    from xt.models import backbones
    from xt.models.context_encoders import ContextEncoderConfig
    from xt.models.decoders.decoder import xT

    backbone = backbones.__dict__[backbone_class](input_size=input_size)
    context = ContextEncoderConfig(
        hidden_size=768, n_layer=max(layers, 1), attention_method="hyper" if head == "naive" else head
    )
    return xT(
        backbone=backbone,
        xl_config=context,
        channels_last=True,
        crop_size=input_size,
        backbone_name=backbone_class,
        dataset="inaturalist",
        num_classes=CLASSES,
        mlp_ratio=4,
        cls_head="naive" if head == "naive" else "xl",
    ).eval()


def randomise(model, seed: int) -> None:
    """Weights that are not an initialisation's (a zero bias or a 1e-6 cls token would hide a wrong mapping)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for _, parameter in sorted(model.named_parameters()):
        noise = torch.randn(parameter.shape, generator=generator) * 0.05
        parameter.add_(noise.to(parameter.dtype))


def compare(variant, workdir: Path, seed: int = 0) -> tuple[dict, dict]:
    import torch

    from napari_xt.model import load_official_xt

    name, backbone_class, input_size, crop, head, layers = variant
    torch.manual_seed(seed)
    official = official_model(backbone_class, input_size, head, layers)
    randomise(official, seed)
    state = official.state_dict()
    path = workdir / f"{name}.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 1}, path)
    shapes = {k: list(v.shape) for k, v in state.items()}

    ours, report = load_official_xt(path)
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(2, 3, crop, crop, generator=generator)  # normalised pixels, as the official code takes them
    started = time.perf_counter()
    theirs = official(x)["label"]
    official_s = time.perf_counter() - started
    mean, std = ours.mean, ours.std
    started = time.perf_counter()
    mine = ours(x * std + mean)["classification"]  # napari-xt normalises raw values itself
    ours_s = time.perf_counter() - started
    delta = float((mine - theirs).abs().max())
    row = {
        "variant": name,
        "architecture": report.architecture.describe(),
        "tensors": report.loaded,
        "max_abs_delta": delta,
        "max_abs_logit": float(theirs.abs().max()),
        "official_s": round(official_s, 2),
        "napari_xt_s": round(ours_s, 2),
    }
    return row, {"name": name, "crop": crop, "input_size": input_size, "head": head, "shapes": shapes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="folder holding the official xt/ package")
    parser.add_argument("--site", type=Path, help="folder with einops, hiera-transformer and triton")
    parser.add_argument("--mamba", type=Path, help="folder holding mamba-ssm 1.2's mamba_ssm/ sources")
    parser.add_argument("--only", nargs="*", help="variant names (default: all)")
    parser.add_argument("--fixture", type=Path, help="write the official key names and shapes here")
    parser.add_argument("--json", type=Path, help="write the comparison here")
    parser.add_argument("--keep", type=Path, help="keep the official-format checkpoints in this folder")
    args = parser.parse_args()
    prepare_imports(args.official, args.site, args.mamba)
    rows, fixture = [], []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for variant in VARIANTS:
            if args.only and variant[0] not in args.only:
                continue
            if variant[4] == "mamba" and args.mamba is None:
                print(f"{variant[0]}: skipped (no --mamba)")
                continue
            row, facts = compare(variant, workdir)
            if args.keep is None:
                (workdir / f"{variant[0]}.pth").unlink()
            rows.append(row)
            fixture.append(facts)
            print(
                f"{row['variant']:30s} {row['tensors']:4d} tensors  max|Δ| {row['max_abs_delta']:.2e} "
                f"(logits up to {row['max_abs_logit']:.1f})  "
                f"official {row['official_s']} s, ours {row['napari_xt_s']} s",
                flush=True,
            )
    worst = max((r["max_abs_delta"] for r in rows), default=float("nan"))
    print(f"worst max|Δ| {worst:.2e} over {len(rows)} variants")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "worst": worst}, indent=1))
    if args.fixture:
        args.fixture.parent.mkdir(parents=True, exist_ok=True)
        args.fixture.write_text(_fixture_json(fixture))
    return 0 if worst < 1e-4 else 1


def _fixture_json(fixture: list[dict]) -> str:
    """Encoder shapes once per backbone, then each variant's own; one tensor per line."""
    encoders, variants = {}, {}
    for facts in fixture:
        encoder = {k: v for k, v in facts["shapes"].items() if k.startswith("encoder.")}
        key = next((k for k, v in encoders.items() if v == encoder), "-".join(facts["name"].split("-")[:2]))
        encoders[key] = encoder
        variants[facts["name"]] = {
            "crop": facts["crop"],
            "input_size": facts["input_size"],
            "head": facts["head"],
            "encoder": key,
            "decoder": {k: v for k, v in facts["shapes"].items() if not k.startswith("encoder.")},
        }
    return _lines({"encoders": encoders, "variants": variants}, 0) + "\n"


def _lines(value, depth: int) -> str:
    if not isinstance(value, dict):
        return json.dumps(value)
    pad = " " * (depth + 1)
    items = [f"{pad}{json.dumps(k)}: {_lines(v, depth + 1)}" for k, v in sorted(value.items())]
    return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}"


if __name__ == "__main__":
    sys.exit(main())
