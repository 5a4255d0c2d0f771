"""The Train xT dock widget under Xvfb: train from painted layers, the new model in Run xT's picker and run on
the visible region, Cancel keeping the model, corrections copied from a run and learnt from."""

import shutil
import time

import numpy as np
import pytest
import zarr
from qtpy.QtCore import Qt

from napari_xt._napari.annotation_layers import annotations_from_layers
from napari_xt._napari.checkpoints import SHIPPED
from napari_xt._napari.sample_data import world_layer_data
from napari_xt._napari.train_widget import TrainWidget
from napari_xt._napari.widget import XTWidget
from napari_xt.model import read_checkpoint_info
from napari_xt.train.targets import IGNORE

pytestmark = pytest.mark.gui


@pytest.fixture
def models(tmp_path, monkeypatch, sar_checkpoint):
    monkeypatch.setenv("NAPARI_XT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(sar_checkpoint, folder / "tiny_sar_xl.safetensors")
    monkeypatch.setenv("NAPARI_XT_MODELS", str(folder))
    return folder


def _viewer(make_napari_viewer, size=1024):
    viewer = make_napari_viewer()
    data, kwargs, _ = world_layer_data("sar", size, 3, "scene")
    viewer.add_image(data, **kwargs)
    run = XTWidget(viewer)
    viewer.window.add_dock_widget(run)
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    return viewer, run, train


def _start_from(train, models, steps, minutes=0.0):
    train.start_combo.setCurrentIndex(train.start_combo.findData(str(models / "tiny_sar_xl.safetensors")))
    train.steps.value = steps
    train.minutes.value = minutes
    train.level_combo.setCurrentIndex(train.level_combo.findData(1))


def test_train_from_painted_layers_then_run_the_new_model(make_napari_viewer, qtbot, models):
    viewer, run, train = _viewer(make_napari_viewer)
    _start_from(train, models, steps=6)
    train.new_annotation_layer()
    painted = viewer.layers["scene · annotations"]
    image = viewer.layers["scene"]
    assert painted.data.shape == (512, 512)  # painted at the analysis level (level 1), aligned with it
    np.testing.assert_allclose(painted.scale, 2 * np.asarray(image.scale))
    np.testing.assert_allclose(painted.translate, np.asarray(image.translate) + np.asarray(image.scale) / 2)
    painted.data[50:200, 50:200] = 2  # class "a" (value i + 1 is class i)
    painted.data[300:450, 300:450] = 1  # background, painted
    painted.refresh()
    viewer.add_points(np.array([[700.0, 200.0]]), features={"class": ["b"]}, size=12, name="vessels")
    viewer.add_shapes([np.array([[0, 0], [0, 1000], [50, 1000], [50, 0]], float)], name="region")
    assert {layer.name for layer in train.annotation_layers()} == {"scene · annotations", "vessels", "region"}
    handled, handle = [], train.on_record

    def timed(record):
        began = time.perf_counter()
        handle(record)
        handled.append(time.perf_counter() - began)

    train.on_record = timed
    started = time.perf_counter()
    train.start()
    qtbot.waitUntil(lambda: train.done, timeout=180_000)
    elapsed = time.perf_counter() - started
    assert train.written is not None and train.written.parent == models, train.status.text()
    info = read_checkpoint_info(train.written)
    assert info.config.heads.segmentation_classes == ["background", "a", "b"]  # the starting model's, kept
    assert info.provenance["steps_done"] == 6 and "stopped" not in info.provenance
    assert info.provenance["annotations"]["detection_classes"] == ["a", "b"]
    assert "new: none" in " ".join(train.told)  # every class known: the heads are fine-tuned, not replaced
    assert len(train.curve.points) >= 2  # a loss every 5 steps and at the last
    # the main thread only shows the records: a small share of the training's time
    assert len(handled) >= 7 and sum(handled) < 0.1 * elapsed, (sum(handled), elapsed)
    # the new model is in Run xT's picker at once, chosen; one click runs it on the visible region
    assert run.checkpoint_path() == train.written
    assert train.run_button.isEnabled()
    train.run_new_model()
    qtbot.waitUntil(lambda: run.done, timeout=120_000)
    assert "finished" in run.status.text()
    assert run.layers["labels"].name == f"scene · segmentation ({train.written.stem})"
    assert run.region.value == "visible region"
    # the run's detections are offered as annotations (to correct) but not chosen: they are the model's guesses
    offered = [train.annotation_list.item(i).text() for i in range(train.annotation_list.count())]
    assert run.layers["points"].name in offered
    assert run.layers["points"] not in train.annotation_layers()
    assert train.start_combo.currentData() == str(train.written)  # the next round starts from the new model


def test_cancel_keeps_the_model_as_it_was(make_napari_viewer, qtbot, models, monkeypatch):
    import napari.utils.notifications as notifications

    viewer, _run, train = _viewer(make_napari_viewer)
    _start_from(train, models, steps=10_000)
    viewer.add_shapes([np.array([[0, 0], [0, 500], [500, 500], [500, 0]], float)], name="a")
    train.start()
    said = []
    monkeypatch.setattr(notifications, "show_info", said.append)
    train.start()  # a second one while the first goes: refused, with a word
    assert said and "already running" in said[-1]
    qtbot.waitUntil(lambda: train._progress is not None and train._progress.n >= 2, timeout=120_000)
    train.cancel()
    qtbot.waitUntil(lambda: train.done, timeout=120_000)
    assert train.written is not None
    stopped = read_checkpoint_info(train.written).provenance["stopped"]
    assert stopped.startswith("cancelled after step") and "of 10000" in stopped
    assert not list(models.glob("*.state.pt"))  # no training state left behind


def test_bad_choices_are_notified_at_the_click(make_napari_viewer, qtbot, models, monkeypatch):
    import napari.utils.notifications as notifications

    viewer, _run, train = _viewer(make_napari_viewer)
    said = []
    monkeypatch.setattr(notifications, "show_error", said.append)
    for item in range(train.annotation_list.count()):
        train.annotation_list.item(item).setCheckState(Qt.Unchecked)
    train.start()
    assert said and "at least one annotation layer" in said[-1] and train.done
    viewer.add_shapes([np.array([[0, 0], [4, 4]], float)], shape_type="line", name="a")
    train.start()
    assert "no polygon, point or painted annotation" in said[-1] and train.done
    # a model for other channels is refused at the click (the scene has one band; slide_xl takes RGB)
    viewer.add_shapes([np.array([[0, 0], [0, 50], [50, 50], [50, 0]], float)], name="b")
    train.start_combo.setCurrentIndex(train.start_combo.findData(str(SHIPPED / "slide_xl.safetensors")))
    train.start()
    assert "has 1 channel(s) but the model takes 3" in said[-1] and train.done
    # the budget and the freeze choice are kept for the next napari session (the same settings file)
    train.steps.value = 77
    train.minutes.value = 2.5
    train.freeze.value = True
    again = TrainWidget(viewer)
    assert (again.steps.value, again.minutes.value, again.freeze.value) == (77, 2.5, True)


def test_a_corrected_copy_of_a_run_is_training_truth(make_napari_viewer, qtbot, models):
    viewer, run, train = _viewer(make_napari_viewer)
    run.set_checkpoint(models / "tiny_sar_xl.safetensors")
    run.region.value = "whole image"
    run.scale_combo.setCurrentIndex(run.scale_combo.findData("level:1"))
    run.start()
    qtbot.waitUntil(lambda: run.done, timeout=120_000)
    segmentation = run.layers["labels"]
    stored = zarr.open_array(str(run.run_dir / "labels" / "segmentation" / "0"), mode="r")
    before = np.asarray(stored[:])
    viewer.layers.selection.active = segmentation
    train.copy_for_correction()
    copy = viewer.layers["scene · corrections (tiny_sar_xl)"]
    np.testing.assert_allclose(copy.scale, segmentation.scale)
    # the copy covers the visible part of the run at the run's analysis pixels, aligned with them
    y0, x0 = np.rint((np.asarray(copy.translate) - np.asarray(segmentation.translate)) / segmentation.scale)
    y0, x0 = int(y0), int(x0)
    np.testing.assert_array_equal(copy.data, before[y0 : y0 + copy.data.shape[0], x0 : x0 + copy.data.shape[1]])
    copy.data[10:30, 10:30] = 2  # corrected to class "b"
    copy.data[40:60, 40:60] = 0  # erased: background
    copy.refresh()
    np.testing.assert_array_equal(np.asarray(stored[:]), before)  # the run directory is untouched
    image = viewer.layers["scene"]
    found = annotations_from_layers(image, [copy])
    ds = 2.0  # level 1
    truth = found.labels(0, 0, 512, 512, ds)
    assert (truth[y0 + 10 : y0 + 30, x0 + 10 : x0 + 30] == 2).all()
    assert (truth[y0 + 40 : y0 + 60, x0 + 40 : x0 + 60] == 0).all()
    untouched = truth[y0 + 100 : y0 + 120, x0 + 100 : x0 + 120]
    np.testing.assert_array_equal(untouched, before[y0 + 100 : y0 + 120, x0 + 100 : x0 + 120])
    assert (truth != IGNORE).sum() == copy.data.size  # the whole copy is truth (the run finished everywhere)
