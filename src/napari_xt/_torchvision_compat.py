"""Make ``import torchvision`` (and so ``import timm``) work when torchvision's compiled ops cannot load.

The package registry's torchvision wheel is a CUDA build. Next to a CPU-only torch its ``_C`` library does not
load, and torchvision's import then fails with ``operator torchvision::nms does not exist``, because its fake
(meta) registrations expect the ``nms`` and ``qnms`` schemas to exist. When, and only when, that happens we
define those two schemas with a pure-PyTorch CPU implementation, log a warning, and import torchvision again.
Where the compiled library loads this module does nothing.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)

_MISSING_OP_MESSAGE = "torchvision::nms does not exist"
_library_handle = None  # keeps the torch.library definitions alive for the life of the process


def box_nms(boxes, scores, iou_threshold: float):
    """Greedy non-maximum suppression on ``(N, 4)`` boxes ``(x1, y1, x2, y2)``; indices kept, best first."""
    import torch

    order = torch.argsort(scores, descending=True)
    boxes = boxes[order].float()
    areas = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    suppressed = torch.zeros(len(order), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        top_left = torch.maximum(boxes[i, :2], boxes[i + 1 :, :2])
        bottom_right = torch.minimum(boxes[i, 2:], boxes[i + 1 :, 2:])
        inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
        iou = inter / (areas[i] + areas[i + 1 :] - inter).clamp(min=1e-12)
        suppressed[i + 1 :] |= iou > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def _define_fallback_ops() -> None:
    global _library_handle
    import torch

    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.impl("nms", box_nms, "CPU")
    library.impl("qnms", lambda dets, scores, iou: box_nms(dets.dequantize(), scores.dequantize(), iou), "CPU")
    _library_handle = library


def ensure_torchvision() -> bool:
    """Import torchvision, installing the CPU fallback ops first if its compiled library does not load.

    Returns:
        True if the fallback was needed and installed, False if torchvision imported as it is.
    """
    if "torchvision" in sys.modules and _library_handle is None:
        return False
    if _library_handle is not None:
        return True
    try:
        import torchvision

        return False
    except RuntimeError as error:
        if _MISSING_OP_MESSAGE not in str(error):
            raise
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    _define_fallback_ops()
    import torchvision.extension

    # torchvision.ops.nms checks this flag before dispatching; our schema now answers the call.
    torchvision.extension._has_ops = lambda: True

    logger.warning(
        "torchvision's compiled ops did not load (a CUDA build next to a CPU torch); using napari-xt's "
        "pure-PyTorch nms instead. Install a torchvision build that matches your torch to silence this."
    )
    return True


def import_timm():
    """Return the ``timm`` module, importing torchvision safely first."""
    ensure_torchvision()
    import timm

    return timm
