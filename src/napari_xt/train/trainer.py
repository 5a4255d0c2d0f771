"""The training loop: crops of N × N regions, AdamW with a cosine schedule, AMP on CUDA, resumable.

The model's ``grad_ratio`` stops gradients through a share of the regions of each crop (as xT does) to bound
memory. A state file beside the output (``<out>.state.pt``, tensors and plain values only, loaded with
``weights_only=True``) lets an interrupted run continue where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from napari_xt._atomic import atomic_path
from napari_xt.engine.runner import pick_device
from napari_xt.model import XTModel, save_checkpoint
from napari_xt.train.data import Source, sample_crop
from napari_xt.train.losses import detection_loss, region_class_loss, segmentation_loss


@dataclass
class TrainSettings:
    steps: int = 600
    crop_regions: int = 6
    batch: int = 2
    lr: float = 2e-3
    weight_decay: float = 0.02
    warmup: int = 30
    seed: int = 0
    max_grid_offset: int = 256
    log_every: int = 25
    save_every: int = 100
    device: str = "auto"
    max_seconds: float | None = None  # a time budget: the schedule is fitted to the steps that fit in it
    command: str = ""
    history: list = field(default_factory=list)


def train_mode(model: torch.nn.Module) -> None:
    """Training mode, except that BatchNorm layers (ResNet, EfficientNet region encoders) keep their running
    statistics: a training batch is the regions of a few crops, and batch statistics would pass information
    between regions that inference, with running statistics, does not have. Their scale and shift still train.
    """
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def _batch(sources: list[Source], settings: TrainSettings, crop: int, rng: np.random.Generator, device):
    crops = [sample_crop(sources[int(rng.integers(len(sources)))], crop, rng) for _ in range(settings.batch)]
    stack = {key: torch.from_numpy(np.stack([c[key] for c in crops])) for key in crops[0] if key != "origin"}
    return {key: value.to(device) for key, value in stack.items()}


def compute_loss(model: XTModel, batch: dict, grid_offset: tuple[int, int] = (0, 0)) -> tuple[torch.Tensor, dict]:
    outputs = model(batch["image"], grid_offset=grid_offset)
    parts = {}
    if "segmentation" in outputs:
        parts["segmentation"] = segmentation_loss(outputs["segmentation"], batch["segmentation"])
        parts["regions"] = region_class_loss(outputs["region_classes"], batch["segmentation"])
    if "detection" in outputs:
        parts.update(detection_loss(outputs["detection"], batch))
    return sum(parts.values()), {k: float(v.detach()) for k, v in parts.items()}


def initialise_from(model: XTModel, checkpoint: str | Path) -> tuple[int, list[str]]:
    """Copy every tensor of ``checkpoint`` whose name and shape fit ``model`` (encoders, context, decoder);
    heads whose classes differ (by name, not only by number) keep their fresh initialisation. Returns the count
    copied and the model's top-level parts that got nothing."""
    from safetensors.torch import load_file

    from napari_xt.model.checkpoint import read_checkpoint_info

    info = read_checkpoint_info(checkpoint)  # a napari-xt checkpoint, or CheckpointError naming what it is
    state = load_file(str(checkpoint), device="cpu")
    own = model.state_dict()
    theirs, mine = info.config.heads, model.config.heads
    new_heads = set()
    if theirs.segmentation_classes != mine.segmentation_classes:
        new_heads |= {"segmentation", "region_classes"}
    if theirs.detection_classes != mine.detection_classes:
        new_heads.add("detection")
    if theirs.classification_classes != mine.classification_classes:
        new_heads.add("classification")
    fits = {
        k: v
        for k, v in state.items()
        if k in own and tuple(v.shape) == tuple(own[k].shape) and k.split(".")[0] not in new_heads
    }
    model.load_state_dict(fits, strict=False)
    fresh = sorted({k.split(".")[0] for k in own if k not in fits})
    return len(fits), fresh


def model_for_data(config, sources: list[Source], name: str, init: str | Path | None = None, freeze: str = "none"):
    """The model to train on ``sources``: ``config`` (a preset's, or the ``init`` checkpoint's architecture)
    with the data's classes, colours and pixel size, initialised from ``init`` when given (new heads where the
    classes differ) and its region encoder frozen with ``freeze="encoder"``. Returns the model and what a
    person should be told about its weights.

    Raises ``ValueError`` when the data does not fit the architecture (channels), ``WeightsError`` for backbone
    weights that do not load."""
    first = sources[0]
    config.heads.segmentation_classes = first.segmentation_classes or config.heads.segmentation_classes
    config.heads.detection_classes = first.detection_classes or config.heads.detection_classes
    if first.colours:
        config.heads.colours = {**config.heads.colours, **first.colours}
    if first.pyramid.pixel_size:
        config.pixel_size = first.pyramid.pixel_size[0] * first.downsample
        config.pixel_unit = first.pyramid.unit
    if first.pyramid.n_channels != config.in_channels:
        raise ValueError(
            f"the data has {first.pyramid.n_channels} channel(s) but the model ({config.name or 'preset'}) takes "
            f"{config.in_channels}; start from a model for this data"
        )
    config.name = name
    model = XTModel(config)
    told = []
    if model.region_encoder.weights_report is not None:
        told.append(f"region encoder initialised with {model.region_encoder.weights_report.describe()}")
    if init:
        kept, fresh = initialise_from(model, init)
        told.append(f"{kept} tensors from {init}; new: {', '.join(fresh) or 'none'}")
    if freeze == "encoder":
        model.region_encoder.requires_grad_(False)
    return model, told


def train(
    model: XTModel, sources: list[Source], out: str | Path, settings: TrainSettings, resume: bool = True, on_log=None
) -> dict:
    """Train ``model`` on crops from ``sources``; return the provenance to write with its checkpoint."""
    steps = training(model, sources, out, settings, resume)
    while True:
        try:
            entry = next(steps)
        except StopIteration as done:
            return done.value
        if on_log and entry["logged"]:
            on_log(settings.history[-1])


def training(
    model: XTModel,
    sources: list[Source],
    out: str | Path,
    settings: TrainSettings,
    resume: bool = True,
    should_stop=lambda: False,
):
    """The training loop as a generator: it yields after every step (``{"step", "steps", "seconds", "total",
    …, "logged"}``; ``logged`` on the steps that enter the history) and returns the provenance. It stops early,
    with the model as it is after the last whole step, when ``should_stop()`` turns true (the provenance says
    so) or the time budget is spent."""
    out = Path(out)
    device = pick_device(settings.device)
    train_mode(model.to(device))
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]  # --freeze encoder leaves some out
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    state_path = out.with_name(out.name + ".state.pt")
    start_step = 0
    if resume and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step = int(state["step"])
        settings.history = list(state["history"])
        torch.set_rng_state(state["torch_rng"])
        rng.bit_generator.state = json.loads(state["numpy_rng"])
    crop = settings.crop_regions * model.config.region_size
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    started = time.perf_counter()
    running: dict[str, float] = {}
    stopped = None
    step = start_step
    while step < settings.steps:
        if should_stop():
            stopped = f"cancelled after step {step} of {settings.steps}"
            break
        lr = (
            settings.lr * min(1.0, (step + 1) / settings.warmup) * 0.5 * (1 + math.cos(math.pi * step / settings.steps))
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = _batch(sources, settings, crop, rng, device)
        # crops sit anywhere in an image at inference: train the context on global grid positions up to
        # max_grid_offset regions, not only on positions 0 … crop_regions - 1
        offset = tuple(int(v) for v in rng.integers(0, settings.max_grid_offset, size=2))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss, parts = compute_loss(model, batch, offset)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        scaler.step(optimizer)
        scaler.update()
        for key, value in {"total": float(loss.detach()), **parts}.items():
            running[key] = running.get(key, 0.0) + value
        elapsed = time.perf_counter() - started
        if settings.max_seconds and step + 1 - start_step == min(3, settings.steps):
            # the budget's step count, from the first steps' pace (the schedule follows it from here on)
            pace = elapsed / (step + 1 - start_step)
            settings.steps = max(step + 1, min(settings.steps, start_step + int(settings.max_seconds / pace)))
        logged = (step + 1) % settings.log_every == 0 or step + 1 == settings.steps
        if logged:
            count = (step % settings.log_every) + 1
            settings.history.append(
                {
                    "step": step + 1,
                    "seconds": round(elapsed, 1),
                    "lr": lr,
                    **{k: round(v / count, 4) for k, v in running.items()},
                }
            )
            running = {}
        if (step + 1) % settings.save_every == 0 and step + 1 < settings.steps:
            _save_state(state_path, model, optimizer, step + 1, settings, rng)
        step += 1
        yield {
            "step": step,
            "steps": settings.steps,
            "seconds": elapsed,
            **{
                k: float(v)
                for k, v in (settings.history[-1] if logged else {"total": float(loss.detach())}).items()
                if k not in ("step", "seconds", "lr")
            },
            "logged": logged,
        }
        if settings.max_seconds and elapsed >= settings.max_seconds and step < settings.steps:
            stopped = f"time budget of {settings.max_seconds:g} s spent after step {step} of {settings.steps}"
            break
    model.eval()
    provenance = {
        "command": settings.command,
        "seed": settings.seed,
        "data": [s.description for s in sources],
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("history", "command")},
        "final_losses": settings.history[-1] if settings.history else {},
        "train_seconds": round(time.perf_counter() - started, 1),
        "device": str(device),
        "steps_done": step,
    }
    if stopped:
        provenance["stopped"] = stopped
    return provenance


def _save_state(path: Path, model, optimizer, step: int, settings: TrainSettings, rng) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "history": settings.history,
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": json.dumps(rng.bit_generator.state),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def finish_checkpoint(model: XTModel, out: str | Path, provenance: dict, half: bool = True) -> str:
    """Write the checkpoint (float16 weights by default: half the size; ``model`` itself is left as it is) and
    remove the training state."""
    digest = save_checkpoint(model, out, provenance, dtype=torch.float16 if half else None)
    state_path = Path(out).with_name(Path(out).name + ".state.pt")
    state_path.unlink(missing_ok=True)
    return digest
