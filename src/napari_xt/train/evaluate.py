"""Evaluate a checkpoint on whole held-out images through the engine (not on crops).

Report: IoU per segmentation class and mIoU; detection precision, recall and F1 overall and per class, with a
distance tolerance in level-0 pixels; and the context-dependent score of the synthetic worlds: the F1 of the
class that needs context (near-shore vessels for SAR, clusters in the invasive margin for slides).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import zarr

from napari_xt.engine.detections import DetectionTable
from napari_xt.engine.events import Finished
from napari_xt.engine.runner import RunOptions, run_to_end
from napari_xt.train.data import Source
from napari_xt.train.metrics import confusion_matrix, detection_scores, iou_per_class
from napari_xt.train.targets import IGNORE

CONTEXT_METRIC = {"near_shore": "near-shore F1", "margin_cluster": "margin-cluster F1"}


def evaluate(
    checkpoint,
    source: Source,
    tolerance: float | None = None,
    threshold: float = 0.3,
    run_dir: str | Path | None = None,
) -> dict:
    """Run ``checkpoint`` on ``source`` at its level with whole-image context and score the result."""
    from napari_xt.model import load_checkpoint

    model, info = load_checkpoint(checkpoint) if isinstance(checkpoint, str | Path) else (checkpoint, None)
    scratch = None if run_dir else tempfile.TemporaryDirectory(prefix="napari-xt-eval-")
    try:
        return _evaluate(
            model,
            info,
            checkpoint,
            source,
            Path(run_dir) if run_dir else Path(scratch.name) / "eval.xt.zarr",
            tolerance,
            threshold,
        )
    finally:
        if scratch is not None:
            scratch.cleanup()


def _evaluate(model, info, checkpoint, source, folder: Path, tolerance, threshold) -> dict:
    last = run_to_end(source.pyramid, model, folder, RunOptions(level=source.level, cache_dir="", overwrite=True))
    if not isinstance(last, Finished):
        raise RuntimeError(f"evaluation run did not finish: {last}")
    group = zarr.open_group(str(folder), mode="r")
    report: dict = {"data": source.description, "level": source.level, "threshold": threshold}
    if info is not None:
        report["checkpoint"] = {
            "path": str(checkpoint),
            "sha256": info.sha256,
            "name": info.config.name,
            "context": info.config.context_encoder.kind,
        }
    predicted = np.asarray(group["labels/segmentation/0"][:])
    truth = source.labels(0, 0, *predicted.shape)
    if truth is not None and source.segmentation_classes:
        n = len(source.segmentation_classes)
        valid = np.isfinite(np.asarray(source.pyramid.levels[source.level], dtype=np.float32)).all(axis=-1)
        valid &= truth != IGNORE  # unannotated pixels say nothing either way
        ious = iou_per_class(confusion_matrix(truth, predicted, n, valid))
        report["iou"] = {name: _round(v) for name, v in zip(source.segmentation_classes, ious)}
        report["miou"] = _round(np.nanmean(ious))
    table = _read_detections(group)
    keep = table.score >= threshold
    if source.annotations is not None and truth is not None:
        # annotations cover part of the image: score the predictions that fall where something was annotated
        rows = np.clip((table.y / source.downsample).astype(int), 0, truth.shape[0] - 1)
        cols = np.clip((table.x / source.downsample).astype(int), 0, truth.shape[1] - 1)
        keep &= truth[rows, cols] != IGNORE
    objects = source.objects()
    tolerance = tolerance or max(8.0, 2 * source.downsample * 4)
    scores = detection_scores(
        np.stack([objects.y, objects.x], 1),
        objects.label,
        np.stack([table.y[keep], table.x[keep]], 1),
        table.label[keep],
        table.score[keep],
        tolerance,
        len(source.detection_classes),
    )
    report["tolerance_px"] = tolerance
    report["detection"] = {"all": scores["all"]}
    report["detection"].update({name: scores[k] for k, name in enumerate(source.detection_classes)})
    report["n_truth"], report["n_predicted"] = len(objects), int(keep.sum())
    for key, label in CONTEXT_METRIC.items():
        if key in source.detection_classes:
            report["context_metric"] = {"name": label, "f1": report["detection"][key]["f1"]}
    return report


def _read_detections(group) -> DetectionTable:
    detections = group["detections"]
    return DetectionTable(*(np.asarray(detections[c][:]) for c in ("y", "x", "label", "score", "size")))


def _round(value) -> float | None:
    return None if value is None or np.isnan(value) else round(float(value), 4)


def write_report(report: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2))
