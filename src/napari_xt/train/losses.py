"""Losses: segmentation (cross-entropy + Dice), detection (CenterNet focal heatmap, class, size, offset), and the
region class distributions predicted from the context (deep supervision of the context encoder)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from napari_xt.train.targets import IGNORE


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − mean soft Dice over the classes present in the target (ignored pixels left out)."""
    valid = target != IGNORE
    probabilities = logits.softmax(dim=1) * valid[:, None]
    one_hot = F.one_hot(target.clamp(min=0), logits.shape[1]).permute(0, 3, 1, 2).float() * valid[:, None]
    intersection = (probabilities * one_hot).sum(dim=(0, 2, 3))
    total = probabilities.sum(dim=(0, 2, 3)) + one_hot.sum(dim=(0, 2, 3))
    present = one_hot.sum(dim=(0, 2, 3)) > 0
    dice = (2 * intersection + 1) / (total + 1)
    return 1 - dice[present].mean() if present.any() else logits.sum() * 0


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target, ignore_index=IGNORE) + dice_loss(logits, target)


def focal_heatmap_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0, known: torch.Tensor | None = None
):
    """CenterNet's penalty-reduced focal loss, normalised by the number of object centres; ``known`` marks the
    cells where the absence of an object is known (annotated areas); elsewhere only centres count."""
    p = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    positive = target.eq(1).float()
    positive_loss = -torch.log(p) * (1 - p) ** alpha * positive
    negative_loss = -torch.log(1 - p) * p**alpha * (1 - target) ** beta * (1 - positive)
    if known is not None:
        negative_loss = negative_loss * known.float()
    return (positive_loss.sum() + negative_loss.sum()) / positive.sum().clamp(min=1)


def detection_loss(maps: dict, targets: dict) -> dict[str, torch.Tensor]:
    """Heatmap focal loss, class cross-entropy near centres, L1 on log size and on the offset at centres."""
    heat = focal_heatmap_loss(maps["heatmap"][:, 0], targets["heatmap"], known=targets.get("annotated"))
    classes = targets["classes"]
    if (classes != IGNORE).any():
        class_loss = F.cross_entropy(maps["classes"], classes, ignore_index=IGNORE)
    else:
        class_loss = maps["classes"].sum() * 0
    centres = targets["centres"]
    if centres.any():
        size = F.l1_loss(torch.log1p(maps["size"][:, 0][centres]), torch.log1p(targets["size"][centres]))
        offset = F.l1_loss(maps["offset"].permute(0, 2, 3, 1)[centres], targets["offset"].permute(0, 2, 3, 1)[centres])
    else:
        size = offset = maps["size"].sum() * 0
    return {"heatmap": heat, "class": class_loss, "size": 0.2 * size, "offset": offset}


def region_class_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft cross-entropy between each region's predicted class distribution ``(B, rows, cols, K)`` and the
    histogram of its labels in ``target`` ``(B, H, W)`` (ignored pixels left out; regions without labels too)."""
    b, rows, cols, k = logits.shape
    valid = target != IGNORE
    one_hot = F.one_hot(target.clamp(min=0), k).float() * valid[..., None]
    h, w = target.shape[-2] // rows, target.shape[-1] // cols
    counts = one_hot.view(b, rows, h, cols, w, k).sum(dim=(2, 4))
    total = counts.sum(-1, keepdim=True)
    labelled = total[..., 0] > 0
    if not labelled.any():
        return logits.sum() * 0
    histogram = counts / total.clamp(min=1)
    return -(histogram * logits.float().log_softmax(-1)).sum(-1)[labelled].mean()
