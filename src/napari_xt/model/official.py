"""Official xT checkpoints (bair-climate-initiative/xT): recognise the architecture from the tensors, build the
napari-xt model that computes the same function, and load every tensor.

An official checkpoint is a pickled ``{"state_dict": ...}`` (DDP ``module.`` prefixes possible) of an
iNaturalist classifier: a timm Swin-v2 or a Hiera region encoder (``encoder.model.*``) and one of three heads
(``decoder.*``):

- ``naive``: the mean of the stitched deepest feature map, then linear → GELU → LayerNorm → linear;
- ``hyper``: a linear projection of every stride-32 feature pixel of every region, MAE 2-D sin-cos positions over
  the stitched token grid read row by row, a cls token appended last, causal LLaMA-style layers (RMSNorm,
  HyperAttention with ``dim // 128`` heads, gated GELU MLP), and LayerNorm → linear on the cls token;
- ``mamba``: as ``hyper`` with Mamba blocks (``h = norm(x); h + mixer(h)``, the first scanning in reverse).

Everything here works on tensor *shapes* first (``plan_official``), so an architecture can be checked without
loading gigabytes; ``load_official_xt`` then loads strictly: every model tensor filled, every file tensor placed.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from napari_xt.model.checkpoint import CheckpointError, file_sha256, read_state_dict
from napari_xt.model.config import ContextEncoderConfig, HeadsConfig, RegionEncoderConfig, XTConfig

# Swin-v2: (embed dim, blocks of stage 3) → (size, timm name); official xT uses the window-16 models at 256²
SWIN_SIZES = {
    (96, 6): ("T", "swinv2_tiny_window16_256"),
    (96, 18): ("S", "swinv2_small_window16_256"),
    (128, 18): ("B", "swinv2_base_window16_256"),
    (192, 18): ("L", "swinv2_large_window12to16_192to256"),
}
# Hiera: (embed dim, blocks) → (size, timm name)
HIERA_SIZES = {
    (96, 12): ("T", "hiera_tiny_224"),
    (96, 16): ("S", "hiera_small_224"),
    (96, 24): ("B", "hiera_base_224"),
    (112, 24): ("B+", "hiera_base_plus_224"),
    (144, 48): ("L", "hiera_large_224"),
    (256, 48): ("H", "hiera_huge_224"),
}
# buffers the architecture computes (attention masks, relative-position tables): older timm saved some of them;
# they are checked against ours, never loaded
# official xT normalises 0–1 pixels with ImageNet's statistics; napari-xt normalises raw 8-bit values
IMAGENET_MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
IMAGENET_STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]
DERIVED = ("attn_mask", "relative_position_index", "relative_coords_table", "k_bias")


@dataclass
class OfficialArchitecture:
    """What an official checkpoint holds, read from its tensors."""

    family: str  # swinv2 | hiera
    size: str  # T, S, B, B+, L, H
    timm_name: str
    input_size: int
    in_channels: int
    head: str  # naive | hyper | mamba
    width: int  # the context encoder's (hyper/mamba) or the deepest feature channels (naive)
    depth: int
    classes: int

    def describe(self) -> str:
        family = "Swin-v2" if self.family == "swinv2" else "Hiera"
        encoder = f"{family}-{self.size} ({self.timm_name}, {self.input_size}²)"
        if self.head == "naive":
            return f"official xT {encoder} with the naive head, {self.classes} classes"
        context = f"a {self.depth}-layer {self.head} context of width {self.width}"
        return f"official xT {encoder} with {context}, {self.classes} classes"


@dataclass
class OfficialPlan:
    """The napari-xt model for an official checkpoint and where each of its tensors goes."""

    architecture: OfficialArchitecture
    config: XTConfig
    keys: dict[str, str]  # official key → napari-xt key
    # official keys of computed buffers (checked, not loaded) → our key (None: no counterpart)
    derived: dict[str, str | None] = field(default_factory=dict)


@dataclass
class OfficialLoad:
    """What ``load_official_xt`` did: every tensor of the file placed, every tensor of the model filled."""

    source: str
    sha256: str
    architecture: OfficialArchitecture
    loaded: int
    checked_buffers: int

    def summary(self) -> str:
        extra = f" ({self.checked_buffers} saved buffers matched)" if self.checked_buffers else ""
        return f"{self.architecture.describe()}: loaded all {self.loaded} tensors{extra}"

    def provenance(self) -> dict:
        return {
            "converted_from": Path(self.source).name,
            "source_sha256": self.sha256,
            "architecture": asdict(self.architecture),
            "tensors": self.loaded,
        }


def _count(shapes: dict, pattern: str) -> int:
    found = {int(m.group(1)) for key in shapes if (m := re.match(pattern, key))}
    return max(found) + 1 if found else 0


def _need(shapes: dict, key: str, path) -> tuple[int, ...]:
    if key not in shapes:
        raise CheckpointError(f"{path}: not an official xT checkpoint this napari-xt knows: it has no {key}")
    return tuple(shapes[key])


def _encoder(shapes: dict, path) -> tuple[str, str, str, int, int, str]:
    """(family, size, timm name, input size, in channels, our key prefix)."""
    stem = _need(shapes, "encoder.model.patch_embed.proj.weight", path)
    embed, in_channels = stem[0], stem[1]
    if "encoder.model.pos_embed" in shapes:  # Hiera: absolute positions of the 4 × 4 patches
        blocks = _count(shapes, r"encoder\.model\.blocks\.(\d+)\.")
        if (embed, blocks) not in HIERA_SIZES:
            raise CheckpointError(
                f"{path}: a Hiera region encoder of width {embed} with {blocks} blocks, which no Hiera size has"
            )
        size, name = HIERA_SIZES[embed, blocks]
        tokens = _need(shapes, "encoder.model.pos_embed", path)[1]
        side = round(tokens**0.5)
        if side * side != tokens:
            raise CheckpointError(f"{path}: Hiera position embedding of {tokens} tokens is not a square grid")
        return "hiera", size, name, side * 4, in_channels, "region_encoder.backbone.model."
    if any(key.startswith("encoder.model.layers_0.") for key in shapes):
        stage3 = _count(shapes, r"encoder\.model\.layers_2\.blocks\.(\d+)\.")
        if (embed, stage3) not in SWIN_SIZES:
            raise CheckpointError(
                f"{path}: a Swin region encoder of width {embed} with {stage3} blocks in stage 3, which none of "
                "Swin-v2 T/S/B/L has"
            )
        size, name = SWIN_SIZES[embed, stage3]
        return "swinv2", size, name, 256, in_channels, "region_encoder.backbone."
    raise CheckpointError(f"{path}: its region encoder (encoder.model.*) is neither a timm Swin-v2 nor a Hiera")


def plan_official(shapes: dict[str, tuple[int, ...]], path="the checkpoint", class_names=None) -> OfficialPlan:
    """Read the architecture of an official xT checkpoint from its tensor ``shapes`` (key → shape).

    Raises ``CheckpointError`` naming what does not fit: an unknown encoder or head, or keys it cannot place.
    """
    family, size, timm_name, input_size, in_channels, encoder_prefix = _encoder(shapes, path)
    if "decoder.input_proj.weight" in shapes:
        if "decoder.layers.0.mixer.A_log" in shapes:
            head = "mamba"
        elif "decoder.layers.0.attn.qkv.weight" in shapes:
            head = "hyper"
        else:
            raise CheckpointError(f"{path}: its context layers are neither the official Hyper nor the Mamba layers")
        width = _need(shapes, "decoder.input_proj.weight", path)[0]
        depth = _count(shapes, r"decoder\.layers\.(\d+)\.")
        classes = _need(shapes, "decoder.cls.1.weight", path)[0]
    elif "decoder.layers.3.weight" in shapes and len(_need(shapes, "decoder.layers.0.weight", path)) == 2:
        head, depth = "naive", 0
        width = _need(shapes, "decoder.layers.0.weight", path)[1]
        classes = _need(shapes, "decoder.layers.3.weight", path)[0]
    else:
        found = sorted({".".join(k.split(".")[:3]) for k in shapes if k.startswith("decoder.")})[:6]
        raise CheckpointError(f"{path}: its head is none of the official naive, hyper or mamba heads (has {found})")
    architecture = OfficialArchitecture(family, size, timm_name, input_size, in_channels, head, width, depth, classes)
    config = _config(architecture, shapes, path, class_names)
    own = model_shapes(config)
    keys, derived, unplaced = {}, {}, []
    for key, shape in shapes.items():
        target = _our_key(key, head, encoder_prefix)
        if key.rsplit(".", 1)[-1] in DERIVED:
            derived[key] = target
        elif target is None or target not in own:
            unplaced.append(key)
        elif own[target] != tuple(shape):
            raise CheckpointError(f"{path}: {key} has shape {tuple(shape)} but {target} is {own[target]}")
        else:
            keys[key] = target
    if unplaced:
        raise CheckpointError(
            f"{path}: {len(unplaced)} tensors napari-xt cannot place in {architecture.describe()} (e.g. {unplaced[:5]})"
        )
    missing = sorted(set(own) - set(keys.values()))
    if missing:
        raise CheckpointError(
            f"{path}: {len(missing)} tensors of {architecture.describe()} are not in the file "
            f"(e.g. {missing[:5]}); it is not a complete official checkpoint"
        )
    return OfficialPlan(architecture, config, keys, derived)


def model_shapes(config: XTConfig) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of the model ``config`` builds, without allocating it (built on the meta device)."""
    from napari_xt.model.xt import XTModel

    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in XTModel(config).state_dict().items()}


def _our_key(key: str, head: str, encoder_prefix: str) -> str | None:
    if key.startswith("encoder.model."):
        return encoder_prefix + key[len("encoder.model.") :]
    if head == "naive":
        match = re.match(r"decoder\.layers\.(\d+)\.(weight|bias)$", key)
        return f"classification.layers.{match.group(1)}.{match.group(2)}" if match else None
    if key.startswith("decoder.input_proj."):
        return "token_proj." + key[len("decoder.input_proj.") :]
    if key == "decoder.cls_token":
        return "context_encoder.cls_token"
    if key.startswith("decoder.layers."):
        return "context_encoder.layers." + key[len("decoder.layers.") :]
    match = re.match(r"decoder\.cls\.([01])\.(weight|bias)$", key)
    return f"classification.layers.{match.group(1)}.{match.group(2)}" if match else None


def _config(arch: OfficialArchitecture, shapes: dict, path, class_names) -> XTConfig:
    """The config of ``arch`` with the widths read from ``shapes``."""
    hidden_ratio, d_state, d_conv, expand = 4.0, 16, 4, 2
    if arch.head == "naive":
        hidden = _need(shapes, "decoder.layers.0.weight", path)[0]
        if hidden % arch.width:
            raise CheckpointError(f"{path}: its naive head's hidden width {hidden} is not a multiple of {arch.width}")
        hidden_ratio = hidden // arch.width
    if arch.head == "hyper":
        hidden_ratio = _need(shapes, "decoder.layers.0.mlp.gate_proj.weight", path)[0] / arch.width
    if arch.head == "mamba":
        d_inner, d_state = _need(shapes, "decoder.layers.0.mixer.A_log", path)
        d_conv = _need(shapes, "decoder.layers.0.mixer.conv1d.weight", path)[-1]
        if d_inner % arch.width:
            raise CheckpointError(f"{path}: Mamba inner width {d_inner} is not a multiple of the width {arch.width}")
        expand = d_inner // arch.width
    try:
        return official_config(
            arch.timm_name, arch.head, arch.depth, arch.width, arch.classes, arch.input_size, arch.in_channels,
            hidden_ratio, d_state, d_conv, expand, class_names,
        )  # fmt: skip
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from error


def official_config(
    timm_name: str,
    head: str,
    depth: int = 2,
    width: int = 768,
    classes: int = 284,
    input_size: int = 256,
    in_channels: int = 3,
    hidden_ratio: float = 4.0,
    d_state: int = 16,
    d_conv: int = 4,
    expand: int = 2,
    class_names=None,
) -> XTConfig:
    """The napari-xt config that computes what the official xT model does.

    ``head``: ``naive``, ``hyper`` or ``mamba``; ``width``: the context width (for ``naive``: the encoder's
    deepest channels); ``hidden_ratio``: the MLP width of the Hyper layers (or of the naive head) over ``width``.
    The defaults are the official releases' (width 768, MLP ×4, 284 iNaturalist classes, Mamba d_state 16).
    """
    digits = len(str(classes - 1))
    names = list(class_names) if class_names else [f"class_{i:0{digits}d}" for i in range(classes)]
    if len(names) != classes or len(set(names)) != len(names):
        twice = " (some twice)" if len(set(names)) != len(names) else ""
        raise ValueError(f"the classifier has {classes} classes, but {len(names)} class names were given{twice}")
    context = ContextEncoderConfig(
        kind="none",
        width=width,
        tokens_per_region=input_size // 32,  # every stride-32 feature pixel is a token
        order="token_raster",
        positions="mae",
        final_norm=False,
    )
    heads = HeadsConfig(classification_classes=names)
    if head == "naive":
        heads.classification_input, heads.classification_mlp_ratio = "features", int(hidden_ratio)
    else:
        heads.classification_input = "cls_token"
        context.kind, context.depth, context.cls_token = head, depth, True
    if head == "hyper":
        # the official layer: heads = width // 128, causal, exact attention below 4,096 tokens, blocks and
        # samples of 256, 7 hash bits
        context.layer, context.causal, context.heads = "llama", True, max(1, width // 128)
        context.mlp_ratio = hidden_ratio
        context.hyper_exact_below, context.hyper_block, context.hyper_samples = 4096, 256, 256
        context.hyper_hash_bits = 7
    if head == "mamba":
        context.d_state, context.d_conv, context.expand = d_state, d_conv, expand
        context.mamba_residual = "normed"
    family = "Hiera" if timm_name.startswith("hiera") else "Swin-v2"
    size = next((s for s, n in (*SWIN_SIZES.values(), *HIERA_SIZES.values()) if n == timm_name), timm_name)
    return XTConfig(
        in_channels=in_channels,
        mean=IMAGENET_MEAN if in_channels == 3 else [0.449 * 255] * in_channels,
        std=IMAGENET_STD if in_channels == 3 else [0.226 * 255] * in_channels,
        region_size=input_size,
        region_encoder=RegionEncoderConfig(timm_name, input_size=input_size),
        context_encoder=context,
        heads=heads,
        name=f"xT {family}-{size} {head}",
    )


def is_official_xt(state: dict) -> bool:
    """Whether a state dict looks like an official xT checkpoint (``encoder.model.*`` and ``decoder.*``)."""
    return any(k.startswith("encoder.model.") for k in state) and any(k.startswith("decoder.") for k in state)


def load_official_xt(path: str | Path, class_names=None, device: str | torch.device = "cpu"):
    """Build the napari-xt model of an official xT checkpoint and load every tensor.

    ``path``: a ``.ckpt``/``.pth`` (read with ``weights_only=True``) or ``.safetensors`` of the official code.
    ``class_names``: the classes in the order of the classifier's outputs (default ``class_000`` …).

    Returns ``(model, OfficialLoad)``. Raises ``CheckpointError`` when a tensor has no place, a model tensor
    would stay unfilled, a shape differs, or a saved buffer disagrees with the architecture.
    """
    from napari_xt.model.xt import XTModel

    state = read_state_dict(path)
    if not is_official_xt(state):
        raise CheckpointError(
            f"{path}: not an official xT checkpoint (no encoder.model.* and decoder.* tensors); a napari-xt "
            "checkpoint loads with load_checkpoint, a timm backbone with the region encoder's weights setting"
        )
    plan = plan_official({k: tuple(v.shape) for k, v in state.items()}, path, class_names)
    model = XTModel(plan.config)  # the plan checked every key and shape against this very architecture
    model.load_state_dict({target: state[key] for key, target in plan.keys.items()}, strict=True)
    _check_derived(model, state, plan, path)
    report = OfficialLoad(str(path), file_sha256(path), plan.architecture, len(plan.keys), len(plan.derived))
    return model.to(device).eval(), report


def _check_derived(model, state: dict, plan: OfficialPlan, path) -> None:
    buffers = dict(model.named_buffers())
    for key, target in plan.derived.items():
        ours, theirs = buffers.get(target) if target else None, state[key]
        if ours is None:
            if theirs.numel() and theirs.abs().max() > 0 and not key.endswith("attn_mask"):
                raise CheckpointError(f"{path}: buffer {key} has no counterpart in {plan.architecture.describe()}")
            continue
        if tuple(ours.shape) != tuple(theirs.shape) or not torch.allclose(ours.float(), theirs.float(), atol=1e-4):
            raise CheckpointError(
                f"{path}: saved buffer {key} differs from what {plan.architecture.timm_name} computes at "
                f"{plan.architecture.input_size}²; the checkpoint was made for another input size"
            )


def convert_official(
    path: str | Path, out: str | Path, class_names=None, command: str = "", tokens_per_region: int | None = None
) -> tuple[str, OfficialLoad]:
    """Write ``out`` (``.safetensors``): the napari-xt checkpoint of official xT checkpoint ``path``, with its
    config and provenance (source file and sha256, the detected architecture). Returns ``out``'s sha256 and the
    load report.

    ``tokens_per_region``: pool each region's feature grid to this many tokens per side instead of every feature
    pixel (the official 8 × 8); the pooling has no weights, so every tensor still loads, and the engine's token
    memory on a whole slide shrinks by (8 / n)²."""
    import copy

    from napari_xt import __version__
    from napari_xt.model.checkpoint import save_checkpoint
    from napari_xt.model.xt import XTModel

    model, report = load_official_xt(path, class_names)
    if tokens_per_region and tokens_per_region != model.config.context_encoder.tokens_per_region:
        config = copy.deepcopy(model.config)
        config.context_encoder.tokens_per_region = tokens_per_region
        pooled = XTModel(config)
        pooled.load_state_dict(model.state_dict(), strict=True)
        model = pooled.eval()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    provenance = {**report.provenance(), "napari_xt": __version__, "command": command or "convert_official"}
    if tokens_per_region:
        provenance["tokens_per_region"] = tokens_per_region
    return save_checkpoint(model, out, provenance), report
