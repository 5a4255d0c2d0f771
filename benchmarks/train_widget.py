"""Human-in-the-loop benchmark: one round of "run, correct, train, run again" in napari on the 65,536² demo
slide, through the Run xT and Train xT dock widgets, as a pathologist would do it.

1. Run the shipped ``slide_xl`` on the visible region (view A) and on the region right of it (view B).
2. "Copy segmentation to correct" on view A, and correct the copy with the world's true classes (what the
   pathologist would paint).
3. Train from the corrected copy with the Train xT widget (fine-tuning ``slide_xl``) for ``--steps`` steps,
   while a 10 ms QTimer on the main thread measures its longest gap.
   The gaps are counted from the click's return, as ``benchmarks/widget.py`` counts them for Run xT.
4. "Run it on the visible region" on view B, held out, and compare with step 1's result there.

Prints the numbers and writes results/train_widget.json (and, with ``--screenshot``, a PNG of the viewer with
both widgets). Needs a display; without one it starts Xvfb like the demo.

    .venv/bin/python benchmarks/train_widget.py [--steps 40] [--screenshot docs/train-widget.png]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import main_thread_ticks, write_results


def _wait(condition, timeout_s: float = 1800) -> float:
    from qtpy.QtWidgets import QApplication

    started = time.perf_counter()
    while not condition() and time.perf_counter() - started < timeout_s:
        QApplication.processEvents()
        time.sleep(0.005)
    return time.perf_counter() - started


def _iou(truth, predicted, classes: list[str]) -> dict:
    out = {}
    for index, name in enumerate(classes):
        union = ((truth == index) | (predicted == index)).sum()
        if union:
            out[name] = round(float(((truth == index) & (predicted == index)).sum() / union), 3)
    return out


def _detection_f1(run, world, box_level0) -> float:
    """Class-agnostic detection F1 of the run's shown detections (score ≥ 0.5) against the world's objects in
    the level-0 box, matched within 8 level-0 px."""
    import numpy as np

    from napari_xt.engine.run_reader import RunReader
    from napari_xt.train.metrics import detection_scores

    found = RunReader(run.run_dir).detections()
    keep = found.score >= 0.5
    y0, x0, y1, x1 = box_level0
    inside = keep & (found.y >= y0) & (found.y < y1) & (found.x >= x0) & (found.x < x1)
    truth = world.objects(tuple(int(v) for v in box_level0))
    scores = detection_scores(
        np.stack([truth.y, truth.x], 1),
        truth.label,
        np.stack([found.y[inside], found.x[inside]], 1),
        found.label[inside],
        found.score[inside],
        8.0,
        2,
    )
    return round(float(scores["all"]["f1"]), 3)


def _run_view(run, centre, view) -> tuple:
    """Run on the visible region around ``centre`` (level-0 px); ``(seconds, run's labels over the ROI, box)``."""
    import numpy as np
    import zarr

    from napari_xt._napari.widget import camera

    s0 = run.viewer.layers[0].scale[-1]
    camera(run.viewer).center = (centre[0] * s0, centre[1] * s0)
    run.region.value = "visible region"
    started = time.perf_counter()
    run.start()
    _wait(lambda: run.done)
    seconds = time.perf_counter() - started
    spec = zarr.open_group(str(run.run_dir), mode="r").attrs["napari_xt"]
    ds = np.asarray(spec["downsample"], float)
    y0, x0, y1, x1 = spec["rois"][-1]
    box = (int(y0 // ds[0]), int(x0 // ds[1]), int(np.ceil(y1 / ds[0])), int(np.ceil(x1 / ds[1])))
    labels = np.asarray(
        zarr.open_array(str(run.run_dir / "labels" / "segmentation" / "0"), mode="r")[box[0] : box[2], box[1] : box[3]]
    )
    return seconds, labels, box, int(spec["level"])


def measure(steps: int, screenshot: Path | None) -> dict:
    import numpy as np
    from qtpy.QtCore import Qt

    from napari_xt._napari import checkpoints
    from napari_xt._napari.demo import show_demo_world
    from napari_xt._napari.train_widget import TrainWidget
    from napari_xt._napari.widget import visible_box

    shipped = checkpoints.demo_checkpoint("slide", "xl")
    viewer, run, world = show_demo_world("slide")
    run.set_checkpoint(shipped)
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train, name="Train xT", area="right")
    _wait(lambda: False, 1.0)  # the slide is drawn
    image = viewer.layers[0]
    view = visible_box(viewer, image)
    centre_a = ((view[0] + view[2]) / 2, (view[1] + view[3]) / 2)
    centre_b = (centre_a[0], centre_a[1] + (view[3] - view[1]))
    classes = list(run.config.heads.segmentation_classes)

    seconds_a, _, _, level = _run_view(run, centre_a, view)
    seconds_b, before_b, box_b, _ = _run_view(run, centre_b, view)
    truth_b = world.render(level, box_b[0], box_b[2], box_b[1], box_b[3], "labels")
    level0_b = tuple(float(v) * 2**level for v in box_b)
    f1_before = _detection_f1(run, world, level0_b)

    # back on view A: copy its segmentation, correct it with the truth, train from it
    from napari_xt._napari.widget import camera

    s0 = image.scale[-1]
    camera(viewer).center = (centre_a[0] * s0, centre_a[1] * s0)
    seg_a = next(layer for layer in viewer.layers if layer.name.endswith("segmentation (slide_xl)"))
    viewer.layers.selection.active = seg_a
    train.copy_for_correction()
    copy = viewer.layers[-1]
    ds = copy.scale[-1] / s0
    y0, x0 = (np.asarray(copy.translate[-2:]) - (ds - 1) * s0 / 2) / (ds * s0)
    y0, x0 = int(round(y0)), int(round(x0))
    h, w = copy.data.shape
    truth_a = world.render(level, y0, y0 + h, x0, x0 + w, "labels")
    wrong = float((copy.data != truth_a).mean())
    copy.data[...] = truth_a
    copy.refresh()
    for item in range(train.annotation_list.count()):  # learn from the corrected copy only
        entry = train.annotation_list.item(item)
        entry.setCheckState(Qt.Checked if entry.text() == copy.name else Qt.Unchecked)
    train.start_combo.setCurrentIndex(train.start_combo.findData(str(shipped)))
    train.steps.value = steps
    train.minutes.value = 0
    ticks, timer = main_thread_ticks()
    clicked = time.perf_counter()
    train.start()
    click_s = time.perf_counter() - clicked
    ticks.clear()  # from the click's return (napari's activity dock builds its progress bar in the click)
    train_s = _wait(lambda: train.done) + click_s
    timer.stop()
    gaps = np.diff(ticks) if len(ticks) > 1 else np.zeros(1)

    # the new model on held-out view B, from the Train widget's button
    camera(viewer).center = (centre_b[0] * s0, centre_b[1] * s0)
    started = time.perf_counter()
    train.run_new_model()
    _wait(lambda: run.done)
    after_s = time.perf_counter() - started
    import zarr

    after_b = np.asarray(
        zarr.open_array(str(run.run_dir / "labels" / "segmentation" / "0"), mode="r")[
            box_b[0] : box_b[2], box_b[1] : box_b[3]
        ]
    )
    f1_after = _detection_f1(run, world, level0_b)
    if screenshot is not None:
        _wait(lambda: False, 2.0)
        viewer.screenshot(str(screenshot), canvas_only=False)
    result = {
        "scene": f"slide {world.height}²",
        "view_regions_px": [int(box_b[2] - box_b[0]), int(box_b[3] - box_b[1])],
        "run_view_a_s": round(seconds_a, 1),
        "run_view_b_s": round(seconds_b, 1),
        "copy_px": [int(h), int(w)],
        "copy_wrong_share": round(wrong, 4),
        "train_steps": steps,
        "train_click_s": round(click_s, 2),
        "train_s": round(train_s, 1),
        "train_status": train.status.text(),
        "max_gap_ms_while_training": round(float(gaps.max()) * 1000, 1),
        "p99_gap_ms_while_training": round(float(np.percentile(gaps, 99)) * 1000, 1),
        "run_new_model_s": round(after_s, 1),
        "held_out_iou_before": _iou(truth_b, before_b, classes),
        "held_out_iou_after": _iou(truth_b, after_b, classes),
        "held_out_detection_f1_before": f1_before,
        "held_out_detection_f1_after": f1_after,
        "written": train.written.name if train.written else None,
    }
    for key in ("held_out_iou_before", "held_out_iou_after"):
        values = list(result[key].values())
        result[key.replace("iou", "miou")] = round(float(np.mean(values)), 3) if values else None
    train.stop()
    run.stop()
    viewer.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()
    os.environ["NAPARI_XT_CACHE"] = tempfile.mkdtemp(prefix="napari-xt-bench-")
    os.environ["NAPARI_XT_MODELS"] = tempfile.mkdtemp(prefix="napari-xt-models-")
    os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="napari-xt-config-")

    from napari_xt._napari.headless import display_available

    with display_available():
        result = measure(args.steps, args.screenshot)
    for key, value in result.items():
        print(f"{key}: {value}")
    write_results("train_widget", result)


if __name__ == "__main__":
    main()
