"""Evaluation metrics: segmentation IoU per class, detection precision/recall/F1 with a distance tolerance."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, n_classes: int, valid: np.ndarray | None = None):
    """``(n_classes, n_classes)`` counts, rows = truth, columns = prediction (pixels where ``valid``)."""
    truth, predicted = truth.ravel().astype(np.int64), predicted.ravel().astype(np.int64)
    if valid is not None:
        keep = valid.ravel()
        truth, predicted = truth[keep], predicted[keep]
    return np.bincount(truth * n_classes + predicted, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """IoU of each class; NaN for a class absent from both truth and prediction."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


@dataclass
class DetectionScores:
    precision: float
    recall: float
    f1: float
    true_positives: int
    false_positives: int
    false_negatives: int

    def as_dict(self) -> dict:
        return asdict(self)


def _scores(tp: int, fp: int, fn: int) -> DetectionScores:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return DetectionScores(precision, recall, f1, tp, fp, fn)


def match_points(truth_yx: np.ndarray, pred_yx: np.ndarray, pred_score: np.ndarray, tolerance: float) -> np.ndarray:
    """Greedy matching by descending score: each prediction takes the nearest unmatched truth within ``tolerance``.

    Returns:
        For each prediction, the index of its truth point, or -1.
    """
    matched = np.full(len(pred_yx), -1, dtype=np.int64)
    if len(truth_yx) == 0 or len(pred_yx) == 0:
        return matched
    taken = np.zeros(len(truth_yx), dtype=bool)
    for index in np.argsort(-pred_score, kind="stable"):
        distance = np.hypot(*(truth_yx - pred_yx[index]).T)
        distance[taken] = np.inf
        best = int(np.argmin(distance))
        if distance[best] <= tolerance:
            matched[index] = best
            taken[best] = True
    return matched


def detection_scores(
    truth_yx: np.ndarray,
    truth_label: np.ndarray,
    pred_yx: np.ndarray,
    pred_label: np.ndarray,
    pred_score: np.ndarray,
    tolerance: float,
    n_classes: int,
) -> dict:
    """Class-agnostic and per-class precision, recall and F1.

    Per class ``k``: the predictions labelled ``k`` against the truths labelled ``k`` (a detection in the right
    place with the wrong class counts as a false positive of its class and a miss of the true one).
    """
    truth_yx, pred_yx = np.asarray(truth_yx, float).reshape(-1, 2), np.asarray(pred_yx, float).reshape(-1, 2)
    matched = match_points(truth_yx, pred_yx, pred_score, tolerance)
    tp = int((matched >= 0).sum())
    result = {"all": _scores(tp, len(pred_yx) - tp, len(truth_yx) - tp).as_dict()}
    for k in range(n_classes):
        mine_t, mine_p = truth_label == k, pred_label == k
        m = match_points(truth_yx[mine_t], pred_yx[mine_p], pred_score[mine_p], tolerance)
        tp_k = int((m >= 0).sum())
        result[k] = _scores(tp_k, int(mine_p.sum()) - tp_k, int(mine_t.sum()) - tp_k).as_dict()
    return result
