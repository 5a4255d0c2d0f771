"""Checkpoints: one ``.safetensors`` file whose metadata carries the config and provenance.

Foreign weights: official xT checkpoints load through ``napari_xt.model.official``, timm weight files through
the region encoder's ``weights`` setting. Pickled files (``.ckpt``, ``.pth``, ``.pt``,
``.bin``) are read only with ``torch.load(weights_only=True)``, which refuses to run code; there is no fallback
to unsafe unpickling.
"""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from napari_xt._atomic import atomic_path
from napari_xt.model.config import XTConfig

FORMAT = "napari-xt/1"
PICKLE_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin")


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file and what to do."""


@dataclass
class CheckpointInfo:
    path: str
    sha256: str
    config: XTConfig
    provenance: dict = field(default_factory=dict)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(model, path: str | Path, provenance: dict | None = None, dtype=None) -> str:
    """Write ``model``'s weights, config and provenance to ``path`` (``.safetensors``); return its sha256.
    ``dtype`` (e.g. ``torch.float16``): floating-point tensors are written in it (``model`` is left as it is)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: napari-xt checkpoints are .safetensors files")
    state = {
        key: (value.detach().to(dtype) if dtype is not None and value.is_floating_point() else value.detach())
        .cpu()
        .contiguous()
        for key, value in model.state_dict().items()
    }
    metadata = {
        "format": FORMAT,
        "config": model.config.to_json(),
        "provenance": json.dumps(provenance or {}, sort_keys=True, default=str),
    }
    with atomic_path(path) as tmp:  # never a half-written checkpoint under the real name
        save_file(state, str(tmp), metadata=metadata)
    return file_sha256(path)


COLOUR = re.compile(r"^#[0-9a-fA-F]{6}([0-9a-fA-F]{2})?$")


def restyle_checkpoint(
    path: str | Path,
    out: str | Path,
    colours: dict[str, str] | None = None,
    display_names: dict[str, str] | None = None,
    command: str = "",
) -> str:
    """Write ``out``: checkpoint ``path`` with other class colours and display names, every tensor byte for
    byte the same; the provenance keeps the source's and records the source file's sha256. Returns ``out``'s
    sha256. Classes the model does not have and colours that are not ``#rrggbb[aa]`` are refused."""
    from safetensors.torch import load_file, save_file

    info = read_checkpoint_info(path)
    heads = info.config.heads
    known = {*heads.segmentation_classes, *heads.detection_classes, *heads.classification_classes}
    for kind, values in (("colour", colours or {}), ("display name", display_names or {})):
        unknown = sorted(set(values) - known)
        if unknown:
            raise CheckpointError(
                f"{path}: has no class {', '.join(unknown)} to give a {kind}; its classes: {', '.join(sorted(known))}"
            )
    bad = sorted(f"{name}={value}" for name, value in (colours or {}).items() if not COLOUR.match(str(value)))
    if bad:
        raise CheckpointError(f"colours must be #rrggbb or #rrggbbaa: {', '.join(bad)}")
    config = copy.deepcopy(info.config)
    config.heads.colours = {**heads.colours, **(colours or {})}
    config.heads.display_names = {**heads.display_names, **(display_names or {})}
    provenance = {**info.provenance, "restyled": {"from_sha256": info.sha256, "command": command}}
    state = load_file(str(path))
    metadata = {
        "format": FORMAT,
        "config": config.to_json(),
        "provenance": json.dumps(provenance, sort_keys=True, default=str),
    }
    with atomic_path(Path(out)) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return file_sha256(out)


def read_checkpoint_info(path: str | Path, with_hash: bool = True) -> CheckpointInfo:
    """Config and provenance of a napari-xt checkpoint, reading only its header (and hashing the file unless
    ``with_hash`` is False, for a quick summary)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: a PyTorch pickle, not a napari-xt checkpoint (.safetensors); an official xT checkpoint "
            f"converts with `napari-xt convert {path.name}`, timm backbone weights initialise a region encoder "
            "(train --backbone-weights)"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{path}: not a readable .safetensors file ({error})") from error
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise CheckpointError(
            f"{path}: has no napari-xt config in its metadata (a bare weight file?); load foreign weights "
            "with `napari-xt convert` (official xT) or the region encoder's `weights` setting (timm)"
        )
    try:
        data = json.loads(metadata["config"])
        if not isinstance(data, dict):
            raise ValueError("the config is not a JSON object")
        # checkpoints from before the region order was a setting read their regions row by row
        context = data.get("context_encoder", {})
        if isinstance(context, dict):
            context.setdefault("order", "raster")
        config = XTConfig.from_dict(data)
    except (ValueError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{path}: its config cannot be used ({error})") from error
    try:
        provenance = json.loads(metadata.get("provenance", "{}"))
    except ValueError:
        provenance = {"unreadable": metadata.get("provenance", "")[:200]}
    digest = file_sha256(path) if with_hash else ""
    return CheckpointInfo(str(path), digest, config, provenance if isinstance(provenance, dict) else {})


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """Build the model a checkpoint describes and load its weights (strictly). Returns ``(model, info)``."""
    from safetensors.torch import load_file

    info = read_checkpoint_info(path)
    model = build_checked(info.config, path)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as error:  # safetensors' own error types for damaged tensor data
        raise CheckpointError(f"{path}: its tensors cannot be read ({error}); the file may be damaged") from error
    check_state_fits(model, state, path)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), info


def build_checked(config: XTConfig, path: str | Path):
    """The model ``config`` describes, or ``CheckpointError`` naming what in the config cannot be built."""
    import timm

    from napari_xt.model.xt import XTModel

    name = config.region_encoder.name
    if config.region_encoder.weights:  # the checkpoint's own tensors replace them: never read that file again
        config = copy.deepcopy(config)
        config.region_encoder.weights = None
    if not timm.is_model(name):
        raise CheckpointError(
            f"{path}: region_encoder.name {name!r} is not a timm model this timm ({timm.__version__}) knows; "
            "upgrade timm or use another checkpoint"
        )
    try:
        return XTModel(config)
    except Exception as error:  # timm or torch refusing a combination of settings
        raise CheckpointError(f"{path}: its config cannot build a model ({type(error).__name__}: {error})") from error


def check_state_fits(model, state: dict, path: str | Path) -> None:
    """Every tensor of ``state`` must exist in ``model`` with the same shape, and none may be missing."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit its own config ({len(missing)} missing, e.g. {missing[:3]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:3]})"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise CheckpointError(
                f"{path}: tensor {key} has shape {tuple(tensor.shape)} but its config builds "
                f"{tuple(own[key].shape)}; the file does not belong to its config"
            )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weight file: safetensors, or a pickle read with ``weights_only=True`` (never code)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such weight file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: unknown weight file type (expected .safetensors, {', '.join(PICKLE_SUFFIXES)})")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError) as error:
        raise CheckpointError(
            f"{path}: refused to load: the file holds more than tensors and plain containers, and napari-xt "
            f"never unpickles code ({str(error).splitlines()[0][:200]}). Convert it to .safetensors where you "
            "trust it."
        ) from error
    return _tensors_of(loaded, path)


def _tensors_of(loaded, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(loaded, dict):
        for key in ("state_dict", "model", "model_state_dict", "module"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not any(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    return {
        (key[len("module.") :] if key.startswith("module.") else key): value
        for key, value in loaded.items()
        if isinstance(value, torch.Tensor)
    }


def check_fits_image(config: XTConfig, n_channels: int, source: str = "the image") -> None:
    """Refuse an image whose channel count the model was not built for, saying what would fit; and a model with
    nothing to show over an image (an image classifier, such as a converted official xT checkpoint)."""
    heads = config.heads
    if not heads.segmentation_classes and not heads.detection_classes:
        raise CheckpointError(
            f"the checkpoint ({config.name or 'unnamed'}) classifies whole images into "
            f"{len(heads.classification_classes)} classes and has no segmentation or detection head, so it has "
            "nothing to map or detect; fine-tune it on your annotations first (napari-xt train --init CHECKPOINT, "
            "or the Train xT widget), which keeps its region and context encoders"
        )
    if n_channels != config.in_channels:
        raise CheckpointError(
            f"the checkpoint expects {config.in_channels}-channel images but {source} has {n_channels} "
            f"channel(s); choose a checkpoint trained on {n_channels}-channel data"
        )
