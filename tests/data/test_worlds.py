"""The demo worlds and the presets made for them name the same classes (the model never imports the data)."""

import subprocess
import sys

from napari_xt.data.synthetic import SarScene, SlideScene
from napari_xt.data.worlds import synthetic_scene
from napari_xt.model.presets import SAR_HEADS, SLIDE_HEADS


def test_preset_classes_are_the_worlds_classes():
    assert SAR_HEADS.segmentation_classes == list(SarScene.label_classes)
    assert SAR_HEADS.detection_classes == list(SarScene.object_classes)
    assert SLIDE_HEADS.segmentation_classes == list(SlideScene.label_classes)
    assert SLIDE_HEADS.detection_classes == list(SlideScene.object_classes)


def test_worlds_are_deterministic_and_sized():
    a, b = synthetic_scene("sar", 2048, 5), synthetic_scene("sar", 2048, 5)
    assert a.pyramid().shape[:2] == (2048, 2048)
    assert a.pyramid().signature == b.pyramid().signature


def test_the_model_does_not_pull_in_the_data_package():
    code = "import sys, napari_xt.model.presets; print('napari_xt.data' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )
