"""The set-up's torchvision shim (scripts/torchvision_cpu_shim.py) and the rule that the package patches nothing."""

import importlib.util
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _shim():
    spec = importlib.util.spec_from_file_location("shim_under_test", ROOT / "scripts" / "torchvision_cpu_shim.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _brute_force_nms(boxes, scores, threshold):
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep = []
    for i in order:
        ok = True
        for j in keep:
            low = torch.maximum(boxes[i, :2], boxes[j, :2])
            high = torch.minimum(boxes[i, 2:], boxes[j, 2:])
            inter = (high - low).clamp(min=0).prod()
            union = (boxes[i, 2:] - boxes[i, :2]).prod() + (boxes[j, 2:] - boxes[j, :2]).prod() - inter
            ok &= bool(inter / union <= threshold)
        if ok:
            keep.append(i)
    return keep


def test_shim_nms_matches_brute_force():
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(60, 2, generator=generator) * 100
    boxes = torch.cat([corners, corners + 5 + torch.rand(60, 2, generator=generator) * 20], dim=1)
    scores = torch.rand(60, generator=generator)
    assert _shim()._nms(boxes, scores, 0.3).tolist() == _brute_force_nms(boxes, scores, 0.3)


def test_timm_imports_in_this_environment():
    import timm

    assert timm.create_model("test_convnext", pretrained=False, features_only=True) is not None


PATCHING = {
    r"\bsys\.modules\b": "touches sys.modules",
    r"\btorch\.library\b": "defines torch ops",
    r"\bgc\.(freeze|disable)\b": "changes the garbage collector for the process",
    r"\bset_num_threads\b": "sets torch's thread count",
    r"\._qt_\w+|\b_block_refresh\b": "reads a private napari attribute",
}
ALLOWED = {
    # the one isolated compatibility module for napari internals
    "src/napari_xt/_napari/_napari_compat.py": {r"\._qt_\w+|\b_block_refresh\b"},
    # the command line sets threads from its own --threads flag
    "src/napari_xt/cli.py": {r"\bset_num_threads\b"},
}


def test_the_package_patches_nothing_in_the_process():
    offences = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        for pattern, what in PATCHING.items():
            if pattern in ALLOWED.get(relative, set()):
                continue
            for match in re.finditer(pattern, text):
                line = text.count("\n", 0, match.start()) + 1
                offences.append(f"{relative}:{line} {what}")
    assert offences == []
