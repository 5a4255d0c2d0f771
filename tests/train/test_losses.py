import math

import pytest
import torch

from napari_xt.train.losses import region_class_loss
from napari_xt.train.targets import IGNORE


def test_region_class_loss_is_the_cross_entropy_to_each_regions_label_histogram():
    target = torch.zeros(1, 4, 8, dtype=torch.long)  # 1 × 2 regions of 4 × 4
    target[0, :, 4:] = 2
    target[0, :2, 4:] = 1  # right region: half class 1, half class 2
    target[0, 0, 0] = IGNORE  # ignored pixels do not count
    logits = torch.zeros(1, 1, 2, 3)
    logits[0, 0, 0] = torch.tensor([2.0, 0.0, 0.0])
    loss = region_class_loss(logits, target)
    left = -math.log(math.exp(2) / (math.exp(2) + 2))  # all class 0
    right = -math.log(1 / 3)  # uniform prediction, any histogram
    assert abs(loss.item() - (left + right) / 2) < 1e-6


def test_region_class_loss_skips_regions_without_labels():
    target = torch.full((1, 4, 8), IGNORE, dtype=torch.long)
    target[0, :, 4:] = 1
    logits = torch.zeros(1, 1, 2, 2, requires_grad=True)
    loss = region_class_loss(logits, target)
    assert abs(loss.item() - math.log(2)) < 1e-6
    loss.backward()
    assert logits.grad[0, 0, 0].abs().sum() == 0  # the unlabelled region gets no gradient
    assert region_class_loss(logits, torch.full((1, 4, 8), IGNORE)).item() == 0


def test_heatmap_negatives_count_only_where_the_absence_of_objects_is_known():
    import torch

    from napari_xt.train.losses import focal_heatmap_loss

    logits = torch.full((1, 8, 8), 2.0)  # confident detections everywhere
    target = torch.zeros(1, 8, 8)
    target[0, 1, 1] = 1.0
    known = torch.zeros(1, 8, 8, dtype=torch.bool)
    known[0, :4, :4] = True
    everywhere = float(focal_heatmap_loss(logits, target))
    partial = float(focal_heatmap_loss(logits, target, known=known))
    only_centre = float(focal_heatmap_loss(logits, target, known=torch.zeros_like(known)))
    assert only_centre < partial < everywhere
    assert partial == pytest.approx(only_centre + (everywhere - only_centre) * 15 / 63, rel=1e-4)
