"""What defines a run, and where it lives: one identity checked before any skip or resume, one naming rule.

A run directory belongs to exactly one (image pixels, checkpoint weights, analysis level and resampling,
region size, context scope, outputs asked for). With context from the whole image an ROI's predictions are the
whole-image ones, so ROIs accumulate in one run directory; with context from the ROI only, the ROI is part of
the identity. The CLI, the widget and the dask batch all name run directories with ``run_dir_for``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from napari_xt.io.signature import digest
from napari_xt.io.tiff_reader import TIFF_SUFFIXES

IDENTITY_KEYS = (
    "image_signature",
    "checkpoint_sha256",
    "level",
    "resample",
    "region_size",
    "image_shape",
    "context_from",
    "roi_scope",
    "store_threshold",
    "decoding",
)
"""Keys of a run's spec that must agree for a run directory to be resumed, extended or skipped."""

ADOPTED_OUTPUTS = ("save_probabilities",)
"""Outputs a resumed run keeps as they were started (asking for fewer does not drop them)."""

_IMAGE_SUFFIXES = (".ome.zarr", ".xt.zarr", ".zarr", *TIFF_SUFFIXES)

IDENTITY_HINTS = {
    "image_signature": "the image's pixels changed since that run",
    "checkpoint_sha256": "it was made with other weights",
    "level": "it analysed another pyramid level",
    "resample": "it analysed another pixel size",
    "region_size": "its model uses another region size",
    "image_shape": "it analysed an image of another size",
    "context_from": "its context came from another scope (ROI vs whole image)",
    "roi_scope": "its context came from another ROI",
    "store_threshold": "it kept detections from another score threshold",
    "decoding": "its regions were decoded another way (alone, or with another halo of neighbours)",
    "save_probabilities": "it was started without class probabilities",
}


def image_stem(image: str | Path) -> str:
    """The image's file name without its image extensions, made safe for a file name."""
    name = Path(str(image).rstrip("/")).name
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return safe_name(name)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")[:60] or "image"


def analysis_tag(level: int, resample: float) -> str:
    """``L1``, or ``L1x1.5`` when the level is resampled to a pixel size between levels."""
    return f"L{level}" + (f"x{resample:.4g}" if abs(resample - 1.0) > 1e-9 else "")


def roi_scope(context_from: str, roi) -> list | None:
    """The ROI that is part of a run's identity: only when context comes from the ROI alone."""
    return [round(float(v), 3) for v in roi] if context_from == "roi" and roi is not None else None


def run_dir_for(
    out_dir: str | Path,
    image_name: str,
    image_key: str,
    checkpoint_name: str,
    level: int,
    resample: float,
    scope: list | None = None,
) -> Path:
    """``OUT/<image>__<checkpoint>__<level>[__roi-<id>].xt.zarr``.

    Args:
        image_name: the image's path or name (its stem names the run).
        image_key: what tells two images of the same name apart (the resolved path, or the signature of an
            in-memory image); when ``<image>`` is taken by a run of another image, a short digest of the key is
            added to the name, so images of the same name in different folders never share a run directory.
        checkpoint_name: the checkpoint's path or name.
        scope: the ROI, when it is part of the identity (``roi_scope``).
    """
    checkpoint = image_stem(checkpoint_name).removesuffix(".safetensors")
    tail = f"__{safe_name(checkpoint)}__{analysis_tag(level, resample)}"
    if scope is not None:
        tail += f"__roi-{digest(scope)[:8]}"
    plain = Path(out_dir) / f"{image_stem(image_name)}{tail}.xt.zarr"
    recorded = recorded_image_key(plain)
    if recorded is None or recorded == image_key:
        return plain
    return Path(out_dir) / f"{image_stem(image_name)}-{digest(image_key)[:6]}{tail}.xt.zarr"


def image_key_of(source: str, signature: str) -> str:
    """The key ``run_dir_for`` tells images apart by: the resolved path of a file, else the signature."""
    path = Path(source)
    return str(path.resolve()) if source and path.exists() else signature


def recorded_image_key(run_dir: Path) -> str | None:
    """The image key a run directory records, or None when there is no run there."""
    from napari_xt.engine.run_reader import run_attributes

    return run_attributes(run_dir).get("image_key")


def differences(previous: dict, requested: dict) -> list[str]:
    """Identity keys whose values differ between a stored run and a requested one."""
    different = [key for key in IDENTITY_KEYS if _canonical(previous.get(key)) != _canonical(requested.get(key))]
    if requested.get("save_probabilities") and not previous.get("save_probabilities"):
        different.append("save_probabilities")
    return different


def explain(different: list[str]) -> str:
    return "; ".join(f"{key}: {IDENTITY_HINTS.get(key, 'differs')}" for key in different)


def _canonical(value):
    return json.loads(json.dumps(value, default=str)) if value is not None else None
