"""The shipped demo checkpoints: present, small, with provenance, and reproducing their recorded evaluation."""

import json

import pytest

from napari_xt._napari.checkpoints import SHIPPED
from napari_xt.model import read_checkpoint_info
from napari_xt.train.data import synthetic_source
from napari_xt.train.evaluate import evaluate

REQUIRED = ("sar_xl", "sar_none", "slide_xl", "slide_none")
SHIPPED_NAMES = sorted(p.stem for p in SHIPPED.glob("*.safetensors"))
TOLERANCE = {"miou": 0.01, "f1": 0.02}
"""Re-evaluation on the same small held-out scene, on another machine's BLAS: mIoU within 0.01, F1 within 0.02."""


def test_the_demo_checkpoints_are_shipped_and_small():
    for name in REQUIRED:
        path = SHIPPED / f"{name}.safetensors"
        assert path.exists(), f"{name} is missing: bash scripts/train_demo.sh {name}"
        assert path.stat().st_size < 20 * 2**20
        info = read_checkpoint_info(path)
        assert info.provenance["command"].startswith("napari-xt train")
        assert info.provenance["seed"] == 0 and info.provenance["data"]


@pytest.mark.parametrize("name", SHIPPED_NAMES)
def test_checkpoint_reproduces_its_recorded_evaluation(name, tmp_path):
    recorded = json.loads((SHIPPED / f"{name}.eval-small.json").read_text())
    kind = recorded["data"].split()[0].split(":")[1]
    size = int(recorded["data"].split("size=")[1].split()[0])
    seed = int(recorded["data"].split("seed=")[1])
    report = evaluate(
        SHIPPED / f"{name}.safetensors",
        synthetic_source(kind, size, seed, recorded["level"]),
        run_dir=tmp_path / "eval.xt.zarr",
    )
    assert report["miou"] == pytest.approx(recorded["miou"], abs=TOLERANCE["miou"])
    assert report["detection"]["all"]["f1"] == pytest.approx(recorded["detection"]["all"]["f1"], abs=TOLERANCE["f1"])
    assert report["context_metric"]["f1"] == pytest.approx(recorded["context_metric"]["f1"], abs=TOLERANCE["f1"])
