"""The "Train xT" dock widget: train or fine-tune a model on the layers painted and drawn in the viewer, watch
its loss fall, and run the new model on the visible region with one click.

Annotations are read from the chosen layers on the main thread (``annotation_layers``: a few milliseconds);
everything else (reading pixels, building the model, training, writing the checkpoint) runs in napari's
``thread_worker``, which hands back one small record per training step. The checkpoint is written into the
models folder, where the Run xT widget's picker finds it; Cancel stops after the current step and still writes
the model as it is then.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import numpy as np
from magicgui.widgets import Container, FloatSpinBox, SpinBox
from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_xt._napari import checkpoints as catalogue
from napari_xt._napari._napari_compat import main_window
from napari_xt._napari.annotation_layers import annotation_layer_kwargs, annotations_from_layers, editable_copy
from napari_xt._napari.run_layers import is_napari_xt_output, napari_xt_meta
from napari_xt._napari.widget import (
    STATUS_INTERVAL_S,
    check_box,
    pyramid_of_layer,
    restore_settings,
    run_widgets,
    visible_box,
)
from napari_xt.io import ImageReadError

NEW_MODELS = {  # "start from" choices that build a new model (its architecture from a preset)
    "new model for slides (RGB)": "demo_slide_xl",
    "new model for one-band scenes (SAR)": "demo_sar_xl",
}
MAX_PAINT_PIXELS = 2**28  # a painted layer is a numpy array, one byte a pixel: at most 16,384² (256 MiB)
DEFAULT_STEPS = 300
DEFAULT_MINUTES = 5.0


class LossCurve(QWidget):
    """The training loss against the step, on a log scale, redrawn as records arrive."""

    def __init__(self):
        super().__init__()
        self.setMinimumHeight(90)
        self.points: list[tuple[int, float]] = []
        self.setToolTip("training loss (log scale) by step")

    def add(self, step: int, loss: float) -> None:
        if np.isfinite(loss) and loss > 0:
            self.points.append((step, float(loss)))
            self.update()

    def clear(self) -> None:
        self.points = []
        self.update()

    def paintEvent(self, _event) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(38, 41, 48))
        if len(self.points) < 2:
            painter.end()
            return
        steps = np.array([p[0] for p in self.points], float)
        losses = np.log10(np.array([p[1] for p in self.points], float))
        low, high = losses.min(), max(losses.max(), losses.min() + 1e-6)
        w, h, margin = self.width(), self.height(), 6
        xs = margin + (steps - steps.min()) / max(1.0, steps.max() - steps.min()) * (w - 2 * margin)
        ys = margin + (high - losses) / (high - low) * (h - 2 * margin)
        painter.setRenderHint(QPainter.Antialiasing)
        painter.setPen(QPen(QColor(102, 204, 255), 1.5))
        painter.drawPolyline(QPolygonF([QPointF(x, y) for x, y in zip(xs, ys)]))
        painter.setPen(QColor(200, 200, 200))
        painter.drawText(margin, h - margin, f"loss {self.points[-1][1]:.3g} at step {self.points[-1][0]}")
        painter.end()


class TrainWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self._stop = False
        self._worker_done = True
        self._progress = None
        self._last_status = 0.0
        self.written: Path | None = None
        self.trained_level: int | None = None
        self.told: list[str] = []
        self._build()
        self._restore_settings()
        self.refresh_start_choices()
        self.refresh_layers()
        self._update_levels()
        napari_viewer.layers.events.inserted.connect(self.refresh_layers)
        napari_viewer.layers.events.removed.connect(self.refresh_layers)
        qt_window = main_window(napari_viewer)  # closing napari stops the training (after its current step)
        if qt_window is not None:
            qt_window.destroyed.connect(self.stop)

    # -- layout -----------------------------------------------------------------------------------------------

    def _build(self) -> None:
        form = QFormLayout()
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("the image the annotations are drawn on")
        self.image_combo.currentIndexChanged.connect(self._update_levels)
        form.addRow("Image", self.image_combo)
        self.annotation_list = QListWidget()
        self.annotation_list.setToolTip(
            "Labels, Points and Shapes layers to learn from. Only what they mark is learnt: unpainted pixels "
            "are ignored, not background. Shapes without a class mark areas that are fully annotated."
        )
        self.annotation_list.setMaximumHeight(110)
        form.addRow("Annotations", self.annotation_list)
        new_layer = QPushButton("New annotation layer")
        new_layer.setToolTip("a Labels layer to paint the starting model's classes in (hover shows the class)")
        new_layer.clicked.connect(self.new_annotation_layer)
        correct = QPushButton("Copy segmentation to correct")
        correct.setToolTip(
            "an editable copy of the latest xT segmentation of this image over the visible region: paint the "
            "right class where it is wrong (erasing makes background), then train again"
        )
        correct.clicked.connect(self.copy_for_correction)
        row = QHBoxLayout()
        row.addWidget(new_layer)
        row.addWidget(correct)
        form.addRow(row)
        self.start_combo = QComboBox()
        self.start_combo.setToolTip("fine-tune a model (its encoders kept, new heads for new classes) or start anew")
        self.start_combo.currentIndexChanged.connect(self._update_levels)
        form.addRow("Start from", self.start_combo)
        self.level_combo = QComboBox()
        self.level_combo.setToolTip("the image level the model sees (the starting model's pixel size first)")
        form.addRow("Resolution", self.level_combo)
        self.steps = SpinBox(
            name="steps", label="Steps", value=DEFAULT_STEPS, min=1, max=100_000, tooltip="training steps at most"
        )
        self.minutes = FloatSpinBox(
            name="minutes",
            label="Time budget (min)",
            value=DEFAULT_MINUTES,
            min=0.0,
            max=24 * 60,
            tooltip="a time budget (0: none): as many steps as fit, the schedule fitted to them",
        )
        self.freeze = check_box(
            "freeze",
            "keep the region encoder as it is",
            "train the context and the heads only: faster, and safer with few annotations",
        )
        self.options = Container(widgets=[self.steps, self.minutes, self.freeze])  # kept across sessions
        self.options.margins = (0, 0, 0, 0)
        form.addRow(self.options.native)
        self.name_edit = QLineEdit()
        self.name_edit.setToolTip(f"the new model's name; it is saved in {catalogue.models_folder()}")
        form.addRow("Model name", self.name_edit)
        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("stop after the current step and keep the model as it is then")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        self.run_button = QPushButton("Run it on the visible region")
        self.run_button.setEnabled(False)
        self.run_button.clicked.connect(self.run_new_model)
        buttons = QHBoxLayout()
        buttons.addWidget(self.train_button)
        buttons.addWidget(self.cancel_button)
        self.curve = LossCurve()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.curve)
        layout.addWidget(self.status)
        layout.addWidget(self.run_button)
        layout.addStretch(1)

    def _restore_settings(self) -> None:
        restore_settings(self.options, catalogue.load_settings("train"))
        self.options.changed.connect(self._save_settings)

    def _save_settings(self, *_) -> None:
        catalogue.save_settings("train", self.options.asdict())

    # -- choices ----------------------------------------------------------------------------------------------

    def refresh_layers(self, *_) -> None:
        from napari.layers import Image, Labels, Points, Shapes

        current = self.image_combo.currentData()
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        for layer in self.viewer.layers:
            if isinstance(layer, Image) and not is_napari_xt_output(layer):
                self.image_combo.addItem(layer.name, layer)
        index = self.image_combo.findData(current) if current is not None else -1
        self.image_combo.setCurrentIndex(max(index, 0))
        self.image_combo.blockSignals(False)
        checked = {id(layer) for layer in self.annotation_layers()}
        listed = {id(self.annotation_list.item(i).data(Qt.UserRole)) for i in range(self.annotation_list.count())}
        self.annotation_list.clear()
        for layer in self.viewer.layers:
            if not isinstance(layer, Labels | Points | Shapes) or _run_output(layer):
                continue
            item = QListWidgetItem(layer.name)
            item.setData(Qt.UserRole, layer)
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            # a user's new layer is checked; a run's detections (the model's guesses until corrected) are not
            new = id(layer) not in listed and not is_napari_xt_output(layer)
            item.setCheckState(Qt.Checked if (new or id(layer) in checked) else Qt.Unchecked)
            self.annotation_list.addItem(item)
        if current is not self.image_combo.currentData():
            self._update_levels()

    def annotation_layers(self) -> list:
        items = [self.annotation_list.item(i) for i in range(self.annotation_list.count())]
        return [item.data(Qt.UserRole) for item in items if item.checkState() == Qt.Checked]

    def refresh_start_choices(self, select: Path | None = None) -> None:
        """Offer every checkpoint and the new-model presets; ``select`` (else the current choice) stays chosen."""
        current = str(select) if select is not None else self.start_combo.currentData()
        self.start_combo.blockSignals(True)
        self.start_combo.clear()
        for label, path in catalogue.available_checkpoints():
            self.start_combo.addItem(f"fine-tune {label}", str(path))
        for label, preset in NEW_MODELS.items():
            self.start_combo.addItem(label, f"preset:{preset}")
        self.start_combo.setCurrentIndex(max(0, self.start_combo.findData(current)) if current else 0)
        self.start_combo.blockSignals(False)

    def start_config(self):
        """``(config, init checkpoint or None)`` of the chosen start."""
        from napari_xt.model import preset_config, read_checkpoint_info

        data = self.start_combo.currentData() or "preset:demo_slide_xl"
        if data.startswith("preset:"):
            preset = data.split(":", 1)[1]
            layer = self.image_combo.currentData()
            overrides = {}
            if layer is not None:
                channels = pyramid_of_layer(layer, sign=False).n_channels
                overrides["in_channels"] = channels
            config = preset_config(preset, **overrides)
            return config, None
        return read_checkpoint_info(data, with_hash=False).config, Path(data)

    def _update_levels(self, *_) -> None:
        self.level_combo.clear()
        layer = self.image_combo.currentData()
        if layer is None:
            return
        try:
            pyramid = pyramid_of_layer(layer, sign=False)
            config, _ = self.start_config()
        except (ImageReadError, ValueError, OSError) as error:
            self.status.setText(str(error))
            return
        best = _level_for(pyramid, config)
        for level, (dy, _) in enumerate(pyramid.downsample):
            shape = pyramid.levels[level].shape
            mark = " = the model's pixel size" if level == best and config.pixel_size else ""
            self.level_combo.addItem(f"level {level} ({shape[0]} × {shape[1]}, ×{dy:g}){mark}", level)
        self.level_combo.setCurrentIndex(best)
        if not self.name_edit.text():
            self.name_edit.setText(f"{layer.name}_{datetime.now():%Y%m%d-%H%M}".replace(" ", "_"))

    # -- annotation layers ------------------------------------------------------------------------------------

    def new_annotation_layer(self) -> None:
        """A Labels layer to paint the starting model's classes in, aligned with the image, at the analysis
        level (or the finest level that fits ``MAX_PAINT_PIXELS``)."""
        from napari.utils.notifications import show_error

        layer = self.image_combo.currentData()
        if layer is None:
            show_error("Open an image first: annotation layers are painted on an image.")
            return
        try:
            config, _ = self.start_config()
        except (ValueError, OSError) as error:
            show_error(f"napari-xt: {error}")
            return
        pyramid = pyramid_of_layer(layer, sign=False)
        level = paint_level(pyramid, int(self.level_combo.currentData() or 0))
        shape = tuple(int(n) for n in pyramid.levels[level].shape[:2])
        from napari_xt._napari.run_layers import display_name

        classes = list(config.heads.segmentation_classes) or ["background", "object"]
        kwargs = annotation_layer_kwargs(
            classes,
            config.heads.colours,
            f"{layer.name} · annotations",
            layer,
            pyramid.downsample[level][0],
            config.heads.display_names,
        )
        labels = self.viewer.add_labels(np.zeros(shape, np.uint8), **kwargs)  # napari paints into it in place
        labels.selected_label = min(2, len(classes))  # the first class after background
        labels.mode = "paint"
        where = f" at level {level} ({shape[0]} × {shape[1]})" if level else ""
        self.status.setText(
            f"paint{where} with: "
            + ", ".join(f"{i + 1} {display_name(n, vars(config.heads))}" for i, n in enumerate(classes))
        )

    def copy_for_correction(self) -> None:
        """An editable copy of the latest segmentation of the chosen image over the visible region."""
        from napari.utils.notifications import show_error

        layer = self._latest_segmentation()
        if layer is None:
            show_error("Run xT on this image first: the copy is made from its segmentation.")
            return
        try:
            image = self.image_combo.currentData()
            data, kwargs = editable_copy(layer, visible_box(self.viewer, image) if image is not None else None)
        except (ValueError, OSError, KeyError) as error:
            show_error(f"napari-xt: {error}")
            return
        copy = self.viewer.add_labels(data, **kwargs)
        copy.mode = "paint"
        self.status.setText(f"correct {copy.name!r} by painting; erasing makes background; then Train")

    def _latest_segmentation(self):
        image = self.image_combo.currentData()
        selected = [layer for layer in self.viewer.layers.selection if _role(layer) == "segmentation"]
        candidates = selected or [layer for layer in self.viewer.layers if _role(layer) == "segmentation"]
        if image is not None:
            own = [layer for layer in candidates if layer.name.startswith(f"{image.name} · ")]
            candidates = own or candidates
        return candidates[-1] if candidates else None

    # -- training ---------------------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._worker_done

    def start(self) -> None:
        from napari.qt.threading import create_worker
        from napari.utils import progress
        from napari.utils.notifications import show_error, show_info

        from napari_xt.model import CheckpointError

        if not self._worker_done:
            show_info("Training is already running: wait for it or press Cancel first.")
            return
        image = self.image_combo.currentData()
        layers = self.annotation_layers()
        if image is None or not layers:
            show_error("Choose an image and at least one annotation layer (Labels, Points or Shapes) first.")
            return
        try:
            config, init = self.start_config()
            known = (list(config.heads.segmentation_classes), list(config.heads.detection_classes)) if init else None
            found = annotations_from_layers(image, layers, known=known)
            pyramid = pyramid_of_layer(image, sign=False)
            if pyramid.n_channels != config.in_channels:
                raise ValueError(
                    f"{image.name} has {pyramid.n_channels} channel(s) but the model takes {config.in_channels}; "
                    "start from a model for this image (or a new one)"
                )
            name = _safe_name(self.name_edit.text() or image.name)
            out = _free_path(catalogue.models_folder() / f"{name}.safetensors")
        except (ValueError, OSError, ImageReadError, CheckpointError, ImportError) as error:
            show_error(f"napari-xt: {error}")
            return
        from napari_xt.train.trainer import TrainSettings

        level = int(self.level_combo.currentData() or 0)
        settings = TrainSettings(
            steps=self.steps.value,
            crop_regions=4,
            batch=2,
            lr=2e-4 if init else 2e-3,
            warmup=min(30, max(1, self.steps.value // 10)),
            log_every=5,
            save_every=10**9,  # no resumable state: the widget's runs are short, and Cancel writes the model
            max_seconds=self.minutes.value * 60 or None,
            command=f"napari Train xT widget on {image.name!r}",
        )
        self._stop = False
        self._worker_done = False
        self.written, self.trained_level, self.told = None, level, []
        self.train_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.run_button.setEnabled(False)
        self.curve.clear()
        self.status.setText(f"reading {found.source} …")
        self._progress = progress(total=settings.steps, desc=f"Training xT on {image.name}")
        self.worker = create_worker(
            _train_events,
            pyramid,
            level,
            found,
            config,
            init,
            "encoder" if self.freeze.value else "none",
            out,
            settings,
            lambda: self._stop,
            _start_thread=False,
            _connect={"yielded": self.on_record, "errored": self._on_error, "finished": self._on_worker_done},
        )
        self.worker.start()

    def cancel(self) -> None:
        if not self._worker_done:
            self._stop = True
            self.status.setText("stopping after the current step; the model is kept as it is then …")

    def stop(self, *_, wait_ms: int = 60_000) -> None:
        """Stop and wait for the worker (the widget or the viewer is closing)."""
        self._stop = True
        if self.worker is not None and not self._worker_done:
            from napari.qt.threading import WorkerBase

            WorkerBase.await_workers(msecs=wait_ms)

    def closeEvent(self, event) -> None:
        self.stop()
        super().closeEvent(event)

    def on_record(self, record: dict) -> None:
        if "told" in record:
            self.told = list(record["told"])
            self.status.setText("; ".join(self.told) or "training …")
            return
        if "written" in record:
            self._written(Path(record["written"]), record["provenance"])
            return
        if self._progress is not None:
            self._progress.total = record["steps"]
            self._progress.update(record["step"] - self._progress.n)
        if record.get("logged"):
            self.curve.add(record["step"], record["total"])
        now = time.monotonic()
        if now - self._last_status >= STATUS_INTERVAL_S:
            self._last_status = now
            rate = record["step"] / max(record["seconds"], 1e-6)
            self.status.setText(
                f"step {record['step']} of {record['steps']}, loss {record['total']:.3g}, "
                f"{rate:.2f} steps/s, {record['seconds']:.0f} s"
            )

    def _written(self, path: Path, provenance: dict) -> None:
        from napari.utils.notifications import show_info

        self.written = path
        catalogue.remember(path)
        for widget in run_widgets(self.viewer):
            widget.refresh_checkpoints(select=path)
        self.refresh_start_choices(select=path)  # the next round starts from this model
        stopped = provenance.get("stopped")
        done = f"{provenance.get('steps_done')} steps in {provenance.get('train_seconds'):.0f} s"
        self.status.setText(f"{'stopped: ' + stopped if stopped else 'trained'} ({done}); saved {path.name}")
        self.run_button.setEnabled(True)
        show_info(f"xT model {path.stem} saved: it is in Run xT's model list")

    def _on_error(self, error: Exception) -> None:
        from napari.utils.notifications import show_error

        show_error(f"napari-xt could not train: {error}")
        self.status.setText(f"<span style='color:#e66'>{error}</span>")

    def _on_worker_done(self) -> None:
        self._worker_done = True
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    def run_new_model(self) -> None:
        """Run the model just trained on the visible region, in the Run xT widget (docked if it is not)."""
        from napari_xt._napari.widget import XTWidget

        if self.written is None:
            return
        widgets = run_widgets(self.viewer)
        if not widgets:
            widget = XTWidget(self.viewer)
            self.viewer.window.add_dock_widget(widget, name="Run xT", area="right")
        else:
            widget = widgets[0]
        widget.set_checkpoint(self.written)
        image = self.image_combo.currentData()
        index = widget.image_combo.findData(image)
        if index >= 0:
            widget.image_combo.setCurrentIndex(index)
        widget.region.value = "visible region"
        level = widget.scale_combo.findData(f"level:{self.trained_level}")
        if level >= 0:
            widget.scale_combo.setCurrentIndex(level)
        widget.start()


def _train_events(pyramid, level, found, config, init, freeze, out, settings, should_stop):
    """The worker: read the data, build the model, train (a record per step), write the checkpoint."""
    import torch

    from napari_xt.train.data import annotation_source
    from napari_xt.train.trainer import finish_checkpoint, model_for_data, training

    source = annotation_source(pyramid, level, found, found.source).materialise()
    torch.manual_seed(settings.seed)
    if init is not None:
        config.region_encoder.weights = None
    model, told = model_for_data(config, [source], Path(out).stem, init, freeze)
    yield {"told": told}
    provenance = yield from training(model, [source], out, settings, resume=False, should_stop=should_stop)
    provenance["annotations"] = {
        "segmentation_classes": found.segmentation_classes,
        "detection_classes": found.detection_classes,
        "source": found.source,
    }
    if init is not None:
        provenance["init"] = str(init)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    finish_checkpoint(model, out, provenance)
    yield {"written": str(out), "provenance": provenance}


def paint_level(pyramid, analysis_level: int) -> int:
    """The level to paint annotations at: the analysis level, or the finest coarser level whose label image
    fits ``MAX_PAINT_PIXELS`` (a 100,000² slide is painted at level 3, one label pixel per 8 × 8)."""
    for level in range(analysis_level, len(pyramid.levels)):
        h, w = pyramid.levels[level].shape[:2]
        if h * w <= MAX_PAINT_PIXELS:
            return level
    return len(pyramid.levels) - 1


def _level_for(pyramid, config) -> int:
    """The level the engine would read for the model's pixel size (level 0 when either does not know it);
    training has no resampling, so this is the training level."""
    from napari_xt.engine.grid import choose_level

    if not (config.pixel_size and pyramid.pixel_size and config.pixel_unit == pyramid.unit):
        return 0
    return choose_level(pyramid, pixel_size=config.pixel_size)[0]


def _run_output(layer) -> bool:
    """A run's own layers (segmentation read from disk, ROIs, probabilities) are no annotations; its detections
    may be, once corrected (they are an in-memory copy)."""
    return is_napari_xt_output(layer) and _role(layer) != "detections"


def _role(layer) -> str | None:
    return napari_xt_meta(layer).get("role")


def _safe_name(text: str) -> str:
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in text.strip()).strip("._")
    return name or "model"


def _free_path(path: Path) -> Path:
    """``path``, or ``path`` with ``-2``, ``-3``, … when a model of that name exists (never overwrite one)."""
    candidate, k = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{k}{path.suffix}")
        k += 1
    return candidate
