"""Set-up shim: lets the registry's CUDA-built torchvision import next to the CPU-only torch of our dev machines.

This is not part of napari-xt. ``scripts/setup.sh`` copies it into the venv's site-packages, with a ``.pth``
line that installs it, only when ``import torchvision`` fails there with ``operator torchvision::nms does not
exist`` (torchvision's compiled ops need CUDA libraries that a CPU torch does not have, and its fake-op
registrations then find no ``nms`` schema). A user with a matching torch/torchvision pair never gets it.

``install()`` costs nothing at start-up: it only adds an import hook. The first ``import torchvision`` triggers the
hook once, which defines the ``torchvision::nms`` and ``torchvision::qnms`` schemas (with a plain CPU ``nms``)
if, and only if, the compiled library does not load. torchvision's own ``_has_ops()`` stays False, so its
compiled-op functions keep raising their own clear error instead of silently running a slow fallback.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_definitions = None  # keeps the torch.library definitions alive for the life of the process


def _nms(boxes, scores, iou_threshold: float):
    import torch

    order = torch.argsort(scores, descending=True)
    boxes = boxes[order].float()
    areas = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        top_left = torch.maximum(boxes[i, :2], boxes[i + 1 :, :2])
        bottom_right = torch.minimum(boxes[i, 2:], boxes[i + 1 :, 2:])
        inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
        suppressed[i + 1 :] |= inter / (areas[i] + areas[i + 1 :] - inter).clamp(min=1e-12) > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


def _compiled_ops_load(spec) -> bool:
    import os

    import torch

    folder = os.path.dirname(spec.origin)
    candidates = [name for name in os.listdir(folder) if name.startswith("_C.") or name == "_C.so"]
    for name in candidates:
        try:
            torch.ops.load_library(os.path.join(folder, name))
            return True
        except OSError:
            continue
    return False


def _define_schemas() -> None:
    global _definitions
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018  (defined already, by the compiled library or another shim)
        return
    except (AttributeError, RuntimeError):
        pass

    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    library.impl("nms", _nms, "CPU")
    _definitions = library


class _FirstTorchvisionImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.origin and not _compiled_ops_load(spec):
            _define_schemas()
        return None  # the ordinary finders import torchvision as usual


def install() -> None:
    """Add the import hook (once); the venv's ``.pth`` line calls this at interpreter start."""
    if not any(type(finder).__name__ == _FirstTorchvisionImport.__name__ for finder in sys.meta_path):
        sys.meta_path.insert(0, _FirstTorchvisionImport())
