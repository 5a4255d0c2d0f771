"""The "Run xT" dock widget: pick an image layer and a checkpoint, run on the visible region, the whole image
or a drawn rectangle in a background thread, and watch segmentation and detections stream in.

All work happens in the engine, on napari's ``thread_worker``; the main thread only turns events into layer
updates, throttled so that it never stalls.
"""

from __future__ import annotations

import gc
import re
import time
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_xt._napari import checkpoints as catalogue
from napari_xt._napari.run_layers import points_properties, run_layers
from napari_xt.engine.cache import default_cache_dir
from napari_xt.engine.detections import DetectionTable
from napari_xt.engine.events import Cancelled, Failed, Finished, PartialResult, Progress, Started
from napari_xt.io import ImageReadError, Pyramid, open_pyramid
from napari_xt.io.pyramid import make_signature, normalise_unit

ROI_CHOICES = ("visible region", "whole image", "selected rectangle")
REFRESH_INTERVAL_S = 0.4


def pyramid_of_layer(layer) -> Pyramid:
    """The Pyramid behind an Image layer: the one napari-xt opened, or one wrapped around the layer's data."""
    meta = layer.metadata.get("napari_xt", {}) if isinstance(layer.metadata, dict) else {}
    if isinstance(meta.get("pyramid"), Pyramid):
        return meta["pyramid"]
    data = list(layer.data) if layer.multiscale else [layer.data]
    axes = "yxc" if layer.rgb else ("yx" if data[0].ndim == 2 else "cyx")
    if data[0].ndim > 3 or (data[0].ndim == 3 and not layer.rgb and data[0].shape[0] > 4):
        raise ImageReadError(
            layer.name,
            f"layer data of shape {data[0].shape} is not a 2-D image",
            "choose a 2-D image layer (Y, X), RGB, or with up to 4 channels first",
        )
    scale = tuple(float(s) for s in layer.scale[-2:])
    units = [str(u) for u in getattr(layer, "units", ())][-2:]
    unit = normalise_unit(units[0]) if units and units[0] != "pixel" else None
    known = unit is not None or scale != (1.0, 1.0)
    return open_pyramid(data, axes=axes, pixel_size=scale if known else None, unit=unit)


def camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "image"


class XTWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.cancel_token = None
        self.done = True  # no run in progress
        self.run_dir: Path | None = None
        self.spec: dict = {}
        self.detections = DetectionTable.empty()
        self.layers: dict = {}
        self._last_refresh = 0.0
        self._started_at = 0.0
        import pandas  # noqa: F401  (napari needs it for the detections' features: load it now, not mid-run)

        from napari_xt._torchvision_compat import import_timm

        import_timm()  # native libraries load while holding the GIL: do it when the widget opens, not mid-run

        self._build()
        self.refresh_images()
        self.refresh_checkpoints()
        napari_viewer.layers.events.inserted.connect(self.refresh_images)
        napari_viewer.layers.events.removed.connect(self.refresh_images)
        self.destroyed.connect(lambda *_: self.stop())
        qt_window = getattr(getattr(napari_viewer, "window", None), "_qt_window", None)
        if qt_window is not None:
            qt_window.destroyed.connect(lambda *_: self.stop())

    # -- layout ---------------------------------------------------------------------------------------------

    def _build(self) -> None:
        form = QFormLayout()
        self.image_combo = QComboBox()
        form.addRow("Image", self.image_combo)
        self.checkpoint_combo = QComboBox()
        self.checkpoint_combo.currentIndexChanged.connect(self._checkpoint_changed)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.checkpoint_combo, 1)
        row.addWidget(browse)
        form.addRow("Checkpoint", row)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.RichText)
        form.addRow(self.summary)
        self.device_combo = QComboBox()
        for label, device in self._devices():
            self.device_combo.addItem(label, device)
        form.addRow("Device", self.device_combo)
        self.scale_combo = QComboBox()
        form.addRow("Analysis", self.scale_combo)
        self.image_combo.currentIndexChanged.connect(self._update_scales)
        self.roi_combo = QComboBox()
        self.roi_combo.addItems(ROI_CHOICES)
        form.addRow("Region", self.roi_combo)
        self.whole_context = QCheckBox("context from the whole image")
        self.whole_context.setChecked(False)
        self.whole_context.setToolTip(
            "Off: context comes from the chosen region (fast). On: from every region of the image, so the region "
            "gets the same predictions as a whole-image run; the first time this encodes the whole image "
            "(minutes on a CPU for a gigapixel image), later runs reuse the cached encodings."
        )
        form.addRow(self.whole_context)
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(0.5)
        self.threshold.valueChanged.connect(self._apply_threshold)
        form.addRow("Detection threshold", self.threshold)
        self.probabilities = QCheckBox("class probability layer")
        form.addRow(self.probabilities)
        self.run_button = QPushButton("Run xT")
        self.run_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)

    def _devices(self) -> list[tuple[str, str]]:
        import psutil

        choices = [("auto", "auto"), (f"cpu ({psutil.virtual_memory().available / 2**30:.1f} GiB free)", "cpu")]
        try:
            import torch

            for index in range(torch.cuda.device_count()):
                free, total = torch.cuda.mem_get_info(index)
                name = torch.cuda.get_device_name(index)
                choices.append(
                    (f"cuda:{index} {name} ({free / 2**30:.1f} of {total / 2**30:.0f} GiB free)", f"cuda:{index}")
                )
        except (ImportError, RuntimeError):
            pass
        return choices

    # -- choices --------------------------------------------------------------------------------------------

    def image_layers(self) -> list:
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def refresh_images(self, *_) -> None:
        current = self.image_combo.currentText()
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        for layer in self.image_layers():
            self.image_combo.addItem(layer.name, layer)
        index = self.image_combo.findText(current)
        self.image_combo.setCurrentIndex(max(index, 0))
        self.image_combo.blockSignals(False)
        self._update_scales()

    def refresh_checkpoints(self, select: Path | None = None) -> None:
        self.checkpoint_combo.blockSignals(True)
        self.checkpoint_combo.clear()
        for label, path in catalogue.available_checkpoints():
            self.checkpoint_combo.addItem(label, str(path))
        if select is not None:
            index = self.checkpoint_combo.findData(str(select))
            if index < 0:
                self.checkpoint_combo.insertItem(0, f"{Path(select).stem} (file)", str(select))
                index = 0
            self.checkpoint_combo.setCurrentIndex(index)
        self.checkpoint_combo.blockSignals(False)
        self._checkpoint_changed()

    def set_checkpoint(self, path: str | Path) -> None:
        self.refresh_checkpoints(select=Path(path))

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose an xT checkpoint", str(catalogue.models_folder()), "napari-xt checkpoints (*.safetensors)"
        )
        if path:
            self.set_checkpoint(path)

    def checkpoint_path(self) -> Path | None:
        data = self.checkpoint_combo.currentData()
        return Path(data) if data else None

    def _checkpoint_changed(self, *_) -> None:
        from napari_xt.model import CheckpointError, read_checkpoint_info

        path = self.checkpoint_path()
        self.config = None
        if path is None:
            self.summary.setText("<i>No checkpoint: train one with <code>napari-xt train</code> or browse.</i>")
            return
        try:
            info = read_checkpoint_info(path, with_hash=False)
        except CheckpointError as error:
            self.summary.setText(f"<span style='color:#e66'>{error}</span>")
            return
        self.config = config = info.config
        swatches = " ".join(
            f"<span style='color:{config.heads.colours.get(name, '#ccc')[:7]}'>■</span> {name}"
            for name in dict.fromkeys([*config.heads.segmentation_classes[1:], *config.heads.detection_classes])
        )
        size = f"{config.pixel_size:g} {config.pixel_unit}" if config.pixel_size else "any"
        self.summary.setText(
            f"<b>{config.region_encoder.name}</b> regions of {config.region_size}², "
            f"<b>{config.context_encoder.kind}</b> context; {config.in_channels} channel(s); "
            f"trained at {size}<br>{swatches}"
        )
        self._update_scales()

    def _update_scales(self, *_) -> None:
        self.scale_combo.clear()
        layer = self.image_combo.currentData()
        if layer is None:
            return
        try:
            pyramid = pyramid_of_layer(layer)
        except ImageReadError as error:
            self.status.setText(str(error))
            return
        config = getattr(self, "config", None)
        if config is not None and config.pixel_size and pyramid.pixel_size and config.pixel_unit == pyramid.unit:
            self.scale_combo.addItem(
                f"checkpoint pixel size ({config.pixel_size:g} {config.pixel_unit})",
                f"pixel_size:{config.pixel_size!r}",
            )
        for level, (dy, _) in enumerate(pyramid.downsample):
            shape = pyramid.levels[level].shape
            self.scale_combo.addItem(f"level {level} ({shape[0]} × {shape[1]}, ×{dy:g})", f"level:{level}")

    # -- ROI ------------------------------------------------------------------------------------------------

    def roi(self, pyramid: Pyramid, layer) -> tuple[float, float, float, float] | None:
        """The chosen region as a level-0 box, or None for the whole image."""
        choice = self.roi_combo.currentText()
        scale = np.asarray(layer.scale[-2:], float)
        translate = np.asarray(layer.translate[-2:], float)
        if choice == "whole image":
            return None
        if choice == "selected rectangle":
            return self._selected_rectangle(scale, translate)
        view = camera(self.viewer)
        centre = np.asarray(view.center[-2:], float)
        extent = np.asarray(self.viewer.canvas.size, float) / view.zoom
        low, high = (centre - extent / 2 - translate) / scale, (centre + extent / 2 - translate) / scale
        h, w = pyramid.shape[:2]
        return (max(low[0], 0), max(low[1], 0), min(high[0], h), min(high[1], w))

    def _selected_rectangle(self, scale, translate):
        from napari.layers import Shapes

        for layer in [*self.viewer.layers.selection, *self.viewer.layers]:
            if isinstance(layer, Shapes) and len(layer.data):
                index = next(iter(layer.selected_data), len(layer.data) - 1)
                vertices = np.asarray(layer.data[index])[:, -2:] * np.asarray(layer.scale[-2:]) + np.asarray(
                    layer.translate[-2:]
                )
                low, high = (vertices.min(0) - translate) / scale, (vertices.max(0) - translate) / scale
                return (low[0], low[1], high[0], high[1])
        raise ValueError("no rectangle to run on: draw one in a Shapes layer and select it, or choose another region")

    # -- running --------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True from Run until the worker has finished (also before its thread has started)."""
        return not self.done

    def start(self) -> None:
        """Start a run with the current choices (refused, with a message, while one is going)."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error, show_info

        from napari_xt.engine.runner import CancelToken, RunOptions

        if self.running:
            show_info("xT is already running: wait for it or press Cancel first.")
            return
        layer, checkpoint = self.image_combo.currentData(), self.checkpoint_path()
        if layer is None or checkpoint is None or getattr(self, "config", None) is None:
            show_error("Choose an image layer and a usable checkpoint first (the summary says what is wrong).")
            return
        try:
            pyramid = pyramid_of_layer(layer)
            roi = self.roi(pyramid, layer)
        except (ImageReadError, ValueError) as error:
            show_error(f"napari-xt: {error}")
            return
        kind, value = (self.scale_combo.currentData() or "level:0").split(":")
        options = RunOptions(
            level=int(value) if kind == "level" else None,
            pixel_size=float(value) if kind == "pixel_size" else None,
            roi=roi,
            device=self.device_combo.currentData() or "auto",
            context_scope="image" if self.whole_context.isChecked() else "roi",
            save_probabilities=self.probabilities.isChecked(),
            store_threshold=min(0.1, self.threshold.value()),
        )
        # one run directory per image and checkpoint file version: a re-trained checkpoint under the same name
        # gets its own directory instead of colliding with (or overwriting) the earlier results
        stat = checkpoint.stat()
        weights = make_signature(str(checkpoint.resolve()), stat.st_size, stat.st_mtime_ns)[:8]
        name = f"{safe_name(layer.name)}-{pyramid.signature[:8]}__{safe_name(checkpoint.stem)}-{weights}.xt.zarr"
        self.run_dir = default_cache_dir() / "runs" / name
        catalogue.remember(checkpoint)
        self.cancel_token = CancelToken()
        self.image_layer = layer
        self.detections = DetectionTable.empty()
        try:
            self._prepare_layers(pyramid, options)
        except (ValueError, OSError) as error:  # a bad level or ROI: the engine would refuse it too
            show_error(f"napari-xt: {error}")
            return
        self.worker = create_worker(
            _events, pyramid, str(checkpoint), self.run_dir, options, self.cancel_token, _start_thread=False
        )
        self.worker.yielded.connect(self.on_event)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_worker_done)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText("starting…")
        self._started_at = time.monotonic()
        self.done = False
        # a full garbage collection scans every object of the process (napari's are many) while holding the
        # GIL; triggered by the worker's allocations it froze the interface for ~0.5 s. Objects that exist now
        # are long-lived: move them out of the collector's way.
        gc.freeze()
        self.worker.start()

    def cancel(self) -> None:
        if self.cancel_token is not None:
            self.cancel_token.cancel()
            self.status.setText("cancelling after the current batch…")

    def stop(self, wait_ms: int = 10_000) -> None:
        """Cancel and wait for the worker (the viewer is closing)."""
        if self.cancel_token is not None:
            self.cancel_token.cancel()
        worker = self.worker
        if worker is not None and not self.done:
            worker.quit()
            from napari.qt.threading import WorkerBase

            WorkerBase.await_workers(msecs=wait_ms)

    def _on_error(self, error: Exception) -> None:
        from napari.utils.notifications import show_error

        show_error(f"napari-xt could not run: {error}")
        self.status.setText(f"<span style='color:#e66'>{error}</span>")

    def _on_worker_done(self) -> None:
        self.done = True
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    # -- events → layers ------------------------------------------------------------------------------------

    def on_event(self, event) -> None:
        if isinstance(event, Started):
            self.progress.setRange(0, max(1, event.n_active))
            self.progress.setValue(event.n_done)
            self.status.setText(event.description)
            self._attach_run()
        elif isinstance(event, Progress):
            if event.phase == "predict":
                self.progress.setRange(0, max(1, event.total))
                self.progress.setValue(event.done)
            eta = f", ETA {event.eta:.0f} s" if event.eta is not None else ""
            self.status.setText(f"{event.phase}: {event.done}/{event.total} regions, {event.rate:.1f}/s{eta}")
        elif isinstance(event, PartialResult):
            if event.detections is not None and len(event.detections):
                self.detections = DetectionTable.concatenate([self.detections, event.detections])
            if time.monotonic() - self._last_refresh > REFRESH_INTERVAL_S:
                self._refresh_layers()
        elif isinstance(event, Finished):
            from napari.utils.notifications import show_info

            self._ensure_layers(reload=True)
            self.status.setText(f"finished in {event.seconds:.0f} s: {event.n_detections} detections → {event.run_dir}")
            show_info(f"xT finished: {event.n_detections} detections")
        elif isinstance(event, Cancelled):
            self._refresh_layers()
            self.status.setText(f"cancelled; {event.n_done} regions kept in {event.run_dir}")
        elif isinstance(event, Failed):
            from napari.utils.notifications import show_error

            self._refresh_layers()
            show_error(f"napari-xt: {event.message}")
            self.status.setText(f"<span style='color:#e66'>{event.message}</span>")

    def _prepare_layers(self, pyramid: Pyramid, options) -> None:
        """Create the result layers before the run starts (napari's layer creation takes ~0.5 s per layer on a
        software-rendered display; during the run the main thread then only refreshes them). The labels start
        as lazy zeros of the run's shapes and are switched to the run directory when it exists."""
        import dask.array as da

        from napari_xt.engine.grid import choose_level
        from napari_xt.engine.store import label_level_shapes

        config = self.config
        level, resample = choose_level(
            pyramid,
            options.level,
            options.pixel_size
            or (config.pixel_size if options.level is None and config.pixel_size and pyramid.pixel_size else None),
        )
        height, width = (int(n / resample) for n in pyramid.levels[level].shape[:2])
        s0 = pyramid.pixel_size or (1.0, 1.0)
        scale = (s0[0] * pyramid.shape[0] / height, s0[1] * pyramid.shape[1] / width)
        self.spec = {
            "pixel_size": list(s0) if pyramid.pixel_size else None,
            "unit": pyramid.unit,
            "detection_classes": list(config.heads.detection_classes),
            "segmentation_classes": list(config.heads.segmentation_classes),
            "colours": dict(config.heads.colours),
            "layer_scale": list(scale),
            "layer_translate": [(scale[0] - s0[0]) / 2, (scale[1] - s0[1]) / 2],
            "rois": [list(options.roi or (0, 0, *pyramid.shape[:2]))],
        }
        placeholder = [da.zeros(shape, dtype=np.uint8, chunks=1024) for shape in label_level_shapes(height, width)]
        from napari_xt._napari.run_layers import labels_kwargs, points_layer_data, roi_layer_data

        for name in ("labels", "points", "shapes"):
            old = self.layers.pop(name, None)
            if old is not None and old in self.viewer.layers:
                self.viewer.layers.remove(old)
        stem = self.run_dir.name.removesuffix(".xt.zarr")
        labels_data = placeholder if len(placeholder) > 1 else placeholder[0]
        self.layers["labels"] = self.viewer.add_labels(labels_data, **labels_kwargs(self.spec, f"{stem} segmentation"))
        if config.heads.detection_classes:
            data, kwargs, _ = points_layer_data(
                DetectionTable.empty(), self.spec, self.threshold.value(), f"{stem} detections"
            )
            self.layers["points"] = self.viewer.add_points(data, **kwargs)
        data, kwargs, _ = roi_layer_data(self.spec, f"{stem} ROI")
        self.layers["shapes"] = self.viewer.add_shapes(data, **kwargs)
        self.viewer.layers.selection.active = self.image_layer

    def _attach_run(self) -> None:
        """Point the labels layer at the run directory's levels (now that the run has created them)."""
        from napari_xt._napari.run_layers import labels_layer_data, run_spec

        self.spec = run_spec(self.run_dir)
        labels = self.layers.get("labels")
        if labels is not None and labels in self.viewer.layers:
            labels.data = labels_layer_data(self.run_dir)[0]
        shapes = self.layers.get("shapes")
        if shapes is not None and shapes in self.viewer.layers and self.spec.get("rois"):
            from napari_xt._napari.run_layers import roi_layer_data

            shapes.data = roi_layer_data(self.spec, shapes.name)[0]

    def _ensure_layers(self, reload: bool = False) -> None:
        """Create (or, at the end, reload) the run's layers above the image."""
        from napari_xt._napari.run_layers import run_spec

        self.spec = run_spec(self.run_dir)
        for data, kwargs, kind in run_layers(self.run_dir, self.threshold.value()):
            name = kwargs["name"]
            if kind == "points" and not reload:
                data, kwargs = self._live_points(kwargs)
            existing = self.layers.get(kind)
            if existing is not None and existing in self.viewer.layers:
                if kind == "points":
                    self._update_points(existing, data if reload else None)
                elif kind == "shapes":
                    existing.data = data
                else:
                    existing.refresh()
                continue
            layer = getattr(self.viewer, f"add_{kind}")(data, **kwargs)
            self.layers[kind] = layer
            layer.name = name
        self.viewer.layers.selection.active = self.image_layer if self.image_layer in self.viewer.layers else None

    def _live_points(self, kwargs: dict):
        props = points_properties(self.detections, self.spec, self.threshold.value())
        kwargs = {
            **kwargs,
            "features": props["features"],
            "face_color": props["face_color"],
            "size": props["size"],
            "shown": props["shown"],
        }
        return props["data"], kwargs

    def _update_points(self, layer, data=None) -> None:
        table = self.detections
        if data is not None:
            from napari_xt._napari.run_layers import detections_table

            table = self.detections = detections_table(self.run_dir)
        props = points_properties(table, self.spec, self.threshold.value())
        layer.data = props["data"]
        layer.features = props["features"]
        if len(table):
            layer.face_color = props["face_color"]
            layer.size = props["size"]
            layer.shown = props["shown"]

    def _refresh_layers(self) -> None:
        self._last_refresh = time.monotonic()
        labels = self.layers.get("labels")
        if labels is not None and labels in self.viewer.layers:
            labels.refresh()
        points = self.layers.get("points")
        if points is not None and points in self.viewer.layers:
            self._update_points(points)

    def _apply_threshold(self, *_) -> None:
        """Filter detections by score without recomputing anything."""
        points = self.layers.get("points")
        if points is not None and points in self.viewer.layers and len(points.data):
            points.shown = np.asarray(points.features["score"]) >= self.threshold.value()


def _events(pyramid, checkpoint, run_dir, options, cancel):
    """The worker's generator: the engine's events (bad input raises here, reaching ``errored``).

    Compute leaves one core to the interface, so that napari stays responsive on small machines.
    """
    import os

    import torch

    from napari_xt.engine.runner import run

    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    yield from run(pyramid, checkpoint, run_dir, options, cancel)
