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


def seam_score(values: np.ndarray, region_size: int, valid: np.ndarray | None = None, origin=(0, 0)) -> dict:
    """How much more a map changes across region borders than across lines inside regions.

    ``values``: labels (disagreement of neighbouring pixels counts) or probabilities (their absolute difference
    counts), ``(H, W)``; region borders lie at ``origin + k × region_size`` in both axes. The same is measured
    across lines a quarter, half and three quarters into each region. Only pairs with both pixels ``valid``
    count. A map without seams scores a ``ratio`` near 1 (its borders are like any other line); each region
    decoded alone scores above.

    Returns:
        ``border`` and ``inside`` (mean change per pixel pair across each kind of line), their ``ratio`` and the
        number of pairs of each.
    """
    values = np.asarray(values)
    ok = np.ones(values.shape, bool) if valid is None else np.asarray(valid, bool)
    if values.shape != ok.shape or values.ndim != 2:
        raise ValueError(f"seam_score: values {values.shape} and valid {ok.shape} must be the same 2-D shape")
    continuous = np.issubdtype(values.dtype, np.floating)
    sums = {"border": 0.0, "inside": 0.0}
    counts = {"border": 0, "inside": 0}
    for axis in (0, 1):
        n = values.shape[axis]
        start = origin[axis] % region_size
        for kind, offsets in (("border", [0]), ("inside", [region_size // 4, region_size // 2, 3 * region_size // 4])):
            lines = np.array(
                sorted(p for o in offsets for p in range(start + o, n, region_size) if 0 < p < n), dtype=np.int64
            )
            if not len(lines):
                continue
            a, b = np.take(values, lines - 1, axis=axis), np.take(values, lines, axis=axis)
            both = np.take(ok, lines - 1, axis=axis) & np.take(ok, lines, axis=axis)
            change = np.abs(a.astype(np.float64) - b) if continuous else (a != b).astype(np.float64)
            sums[kind] += float(change[both].sum())
            counts[kind] += int(both.sum())
    border = sums["border"] / counts["border"] if counts["border"] else float("nan")
    inside = sums["inside"] / counts["inside"] if counts["inside"] else float("nan")
    # when nothing changes inside regions, any change at a border is an infinite seam
    infinite = float("inf") if border > 0 else float("nan")
    ratio = border / inside if inside > 0 else infinite
    return {"border": border, "inside": inside, "ratio": ratio, "pairs": counts}
