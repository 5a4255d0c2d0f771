"""The "Run xT" dock widget: pick an image layer and a checkpoint, run on the visible region, the whole image
or a drawn rectangle in a background thread, and watch segmentation and detections stream in.

All work happens in the engine, on napari's ``thread_worker``; the main thread only turns events into layer
updates (``live.LiveRun``), spaced so that it never stalls.
"""

from __future__ import annotations

import itertools
import time
import weakref
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
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
from napari_xt._napari._napari_compat import main_window
from napari_xt._napari.geometry import clip_box, rectangle_box, view_box
from napari_xt._napari.live import LiveRun
from napari_xt._napari.run_layers import (
    display_name,
    is_napari_xt_output,
    legend_html,
    napari_xt_meta,
    run_spec,
    swatch,
)
from napari_xt.engine.cache import default_cache_dir
from napari_xt.engine.events import Cancelled, Failed, Finished, PartialResult, Progress, Started
from napari_xt.engine.store import is_run_dir
from napari_xt.io import ImageReadError, Pyramid, open_pyramid
from napari_xt.io.pyramid import normalise_unit

ROI_CHOICES = ("visible region", "whole image", "selected rectangle")
RUN_KEY, CANCEL_KEY = "Control-Shift-R", "Control-Shift-X"  # viewer key bindings of Run xT and Cancel
OUTLINE_PX = 2  # border width of the segmentation drawn as outlines
STATUS_INTERVAL_S = 0.25  # progress bar and status text: at most this often (each repaint may redraw the canvas)


def pyramid_of_layer(layer, sign: bool = True) -> Pyramid:
    """The Pyramid behind an Image layer: the one napari-xt opened, or one wrapped around the layer's data
    (``sign=False``: without hashing the pixels of in-memory data, for looking at its levels only)."""
    recipe = napari_xt_meta(layer).get("reopen") or {}
    if recipe.get("path"):
        return open_pyramid(recipe["path"])
    if recipe.get("world"):
        from napari_xt.data.worlds import synthetic_scene

        return synthetic_scene(recipe["world"], int(recipe["size"]), int(recipe["seed"])).pyramid()
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
    return open_pyramid(data, axes=axes, pixel_size=scale if known else None, unit=unit, sign=sign)


def camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def visible_box(viewer, layer) -> tuple[float, float, float, float]:
    """The part of the canvas in view as a box ``(y0, x0, y1, x1)`` in ``layer``'s level-0 pixels (not clipped
    to the image)."""
    view = camera(viewer)
    return view_box(view.center, viewer.canvas.size, view.zoom, layer.scale, layer.translate)


_RUN_WIDGETS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # by creation order
_created = itertools.count()


def run_widgets(viewer) -> list:
    """The Run xT widgets open on ``viewer``, the newest first (the Train xT widget hands them new models;
    the key bindings go to the newest)."""
    found = sorted(_RUN_WIDGETS.items(), key=lambda item: -item[0])
    return [widget for _, widget in found if widget.viewer is viewer and not widget.closed]


def _on_newest(method: str):
    def call(viewer) -> None:
        widgets = run_widgets(viewer)
        if widgets:
            getattr(widgets[0], method)()

    return call


CONTEXT_WORDS = {
    "none": "each region on its own",
    "xl": "context across regions (Transformer-XL)",
    "hyper": "context across regions (HyperAttention)",
    "mamba": "context across regions (Mamba)",
}


def model_description(config) -> str:
    """What a person needs to know of a checkpoint before running it, in words: the pixels it was trained on,
    what it sees, what it finds."""
    bands = "RGB" if config.in_channels == 3 else f"{config.in_channels}-channel"
    size = f"{config.pixel_size:g} {config.pixel_unit} per pixel" if config.pixel_size else "any pixel size"
    heads, finds = config.heads, []
    if len(heads.segmentation_classes) > 1:
        finds.append(f"maps {len(heads.segmentation_classes) - 1} classes")
    if heads.detection_classes:
        finds.append(f"detects {len(heads.detection_classes)} kinds of object")
    if not finds and heads.classification_classes:
        finds.append(
            f"classifies whole images into {len(heads.classification_classes)} classes; it maps and detects nothing "
            "until fine-tuned on your annotations (Train xT)"
        )
    return (
        f"For {bands} images at {size}; {CONTEXT_WORDS.get(config.context_encoder.kind, config.context_encoder.kind)}"
        + (f"; {' and '.join(finds)}" if finds else "")
    )


def check_box(name: str, text: str, tooltip: str) -> CheckBox:
    """A magicgui check box whose text is its label (no second label beside it in the form)."""
    return CheckBox(name=name, label="", text=text, tooltip=tooltip)


def restore_settings(form, saved: dict) -> None:
    """Put the values kept from the last session back into a magicgui form; a value that no longer fits (of
    another type, a device that is gone, a choice since renamed) leaves that setting at its default."""
    for widget in form:
        value, default = saved.get(widget.name), widget.value
        if not _same_kind(value, default):
            continue
        try:
            widget.value = value
        except ValueError:  # not among the choices any more
            widget.value = default


def _same_kind(value, default) -> bool:
    if isinstance(value, bool) or isinstance(default, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, int | float)
    return value is not None and isinstance(value, type(default))


@dataclass(frozen=True)
class _Launch:
    """One run the widget starts: the image layer and what the engine needs for it."""

    layer: object
    pyramid: Pyramid
    checkpoint: Path
    options: object
    grid: object
    run_dir: Path
    spec: dict  # display spec with the ROIs to draw


def first_look_helps(config, options, grid) -> bool:
    """Context from the whole image for a part of it: worth a first look with context from the part alone,
    which is on screen in the time the part takes, while the whole image is encoded (minutes to hours)."""
    uses_context = config.context_encoder.kind != "none"
    return uses_context and options.context_scope == "image" and grid.n_regions < grid.shape[0] * grid.shape[1]


class XTWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        _RUN_WIDGETS[next(_created)] = self
        self.closed = False
        from napari_xt._napari.preferences import claim_readers

        claim_readers()  # slides, scenes and run directories open with napari-xt without asking (preferences.py)
        self.viewer = napari_viewer
        self.worker = None
        self.conversion = None  # the background conversion of an official checkpoint (Browse…)
        self.cancel_token = None
        self._worker_done = True  # no run in progress
        self.run_dir: Path | None = None
        self.live: LiveRun | None = None
        self._refine = None  # the whole-image-context run that follows a first look, until it is launched
        self._pending = None  # a launched run whose layers wait for its first results
        self._finished = False  # the last run's worker ended with Finished
        self._ended = True  # the last run's event stream has ended
        self.config = None
        self._last_status = 0.0
        import pandas  # noqa: F401  (napari needs it for the detections' features: load it now, not mid-run)
        import timm  # noqa: F401  (native libraries load holding the GIL: when the widget opens, not mid-run)

        self._progress = None  # the run's bar in napari's activity dock
        self._build()
        self._restore_settings()
        self.refresh_images()
        self.refresh_checkpoints()
        napari_viewer.bind_key(RUN_KEY, _on_newest("start"), overwrite=True)
        napari_viewer.bind_key(CANCEL_KEY, _on_newest("cancel"), overwrite=True)
        napari_viewer.layers.events.inserted.connect(self.refresh_images)
        napari_viewer.layers.events.removed.connect(self.refresh_images)
        # the main window emits ``destroyed`` before deleting its children, so this widget can still stop its run
        qt_window = main_window(napari_viewer)
        if qt_window is not None:
            qt_window.destroyed.connect(self.stop)

    # -- layout ---------------------------------------------------------------------------------------------

    def _build(self) -> None:
        form = QFormLayout()
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("the image layer to analyse")
        form.addRow("Image", self.image_combo)
        self.checkpoint_combo = QComboBox()
        self.checkpoint_combo.setToolTip("the trained xT model (a checkpoint): shipped, in the models folder, recent")
        self.checkpoint_combo.currentIndexChanged.connect(self._checkpoint_changed)
        browse = QPushButton("Browse…")
        browse.setToolTip(
            "open a napari-xt checkpoint (.safetensors) from disk, or an official xT checkpoint (.ckpt/.pth) to convert"
        )
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.checkpoint_combo, 1)
        row.addWidget(browse)
        form.addRow("Model", row)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.RichText)
        form.addRow(self.summary)
        self.scale_combo = QComboBox()
        self.scale_combo.setToolTip("the image level the model sees; the model's own pixel size first when known")
        form.addRow("Resolution", self.scale_combo)
        self.image_combo.currentIndexChanged.connect(self._update_scales)
        # the fixed choices as a magicgui form: typed values, and one place that lists what is kept across sessions
        self.device = ComboBox(
            name="device",
            label="Device",
            choices=self._devices(),
            tooltip="where the model runs: a CUDA GPU when there is one (auto), else the CPU",
        )
        self.region = ComboBox(
            name="region",
            label="Region",
            choices=ROI_CHOICES,
            tooltip="what to analyse: the part of the image in view, all of it, or a drawn rectangle",
        )
        self.whole_context = check_box(
            "whole_context",
            "Use whole-image context",
            "Off: context comes from the chosen region (fast). On: from every region of the image, so the "
            "region gets the same predictions as a whole-image run; the first time this encodes the whole image "
            "(minutes on a CPU for a gigapixel image), later runs reuse the cached encodings.",
        )
        self.threshold = FloatSpinBox(
            name="threshold",
            label="Detection threshold",
            value=0.5,
            min=0.0,
            max=1.0,
            step=0.05,
            tooltip="detections below this score are hidden (and left out of exports); no rerun",
        )
        self.threshold.changed.connect(self._apply_threshold)
        self.probabilities = check_box(
            "probabilities",
            "Show class probabilities",
            "also keep and show each class's probability (one channel per class)",
        )
        self.outlines = check_box(
            "outlines",
            "Segmentation as outlines",
            "draw each class's border only, so that the tissue or scene under it stays visible",
        )
        self.outlines.changed.connect(self._apply_outlines)
        self.region_grid = check_box(
            "region_grid",
            "Show the region grid",
            "Draw the borders of the regions xT analyses (one region each) in the ROI layer",
        )
        self.options = Container(
            widgets=[
                self.device,
                self.region,
                self.whole_context,
                self.threshold,
                self.probabilities,
                self.outlines,
                self.region_grid,
            ]
        )
        self.options.margins = (0, 0, 0, 0)
        form.addRow(self.options.native)
        self.run_button = QPushButton("Run xT")
        self.run_button.setToolTip(f"run on the chosen region ({RUN_KEY})")
        self.run_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip(f"stop after the current batch, keeping what finished ({CANCEL_KEY})")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.legend = QLabel("")
        self.legend.setTextFormat(Qt.RichText)
        self.legend.setToolTip("the last run's classes: area, share of the tissue, detections")
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.legend)
        layout.addStretch(1)

    # -- settings kept across napari sessions -----------------------------------------------------------------

    def _restore_settings(self) -> None:
        restore_settings(self.options, catalogue.load_settings("run"))
        self.options.changed.connect(self._save_settings)

    def _save_settings(self, *_) -> None:
        catalogue.save_settings("run", self.options.asdict())

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
        current = self.image_combo.currentData()
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        for layer in self.image_layers():
            if not is_napari_xt_output(layer):
                self.image_combo.addItem(layer.name, layer)
        index = self.image_combo.findData(current) if current is not None else -1
        self.image_combo.setCurrentIndex(max(index, 0))
        self.image_combo.blockSignals(False)
        self._update_scales(keep=self.image_combo.currentData() is current)

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
            self,
            "Choose an xT checkpoint",
            str(catalogue.models_folder()),
            "xT checkpoints (*.safetensors *.ckpt *.pth *.pt);;napari-xt checkpoints (*.safetensors);;"
            "official xT checkpoints (*.ckpt *.pth *.pt)",
        )
        if path:
            self.open_checkpoint_file(path)

    def open_checkpoint_file(self, path: str | Path) -> None:
        """Select a napari-xt checkpoint; an official xT checkpoint (``.ckpt``/``.pth``) is offered for conversion
        into the models folder first (in the background: a Swin-L file takes a while to read)."""
        path = Path(path)
        if path.suffix != ".safetensors":
            out = catalogue.conversion_target(path)
            question = (
                f"{path.name} is not a napari-xt checkpoint. If it is an official xT checkpoint, napari-xt can "
                f"convert it (every tensor checked) into\n{out}\nand select it. Convert it?"
            )
            if self._ask("Convert an official xT checkpoint?", question):
                self._convert(path, out)
            return
        self.set_checkpoint(path)

    def _ask(self, title: str, question: str) -> bool:
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(self, title, question, QMessageBox.Yes | QMessageBox.No, QMessageBox.Yes)
        return answer == QMessageBox.Yes

    def _convert(self, path: Path, out: Path) -> None:
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error, show_info

        from napari_xt.model.official import convert_official

        self.summary.setText(f"<i>Converting {path.name}…</i>")

        def done(result) -> None:
            _digest, report = result
            show_info(f"napari-xt: {report.summary()}; saved as {out.name}")
            catalogue.remember(out)
            self.set_checkpoint(out)

        def failed(error) -> None:
            show_error(f"napari-xt could not convert {path.name}: {error}")
            self._checkpoint_changed()

        self.conversion = create_worker(
            convert_official,
            path,
            out,
            command=f"napari-xt widget: convert {path.name}",
            _start_thread=False,
            _connect={"returned": done, "errored": failed},
        )
        self.conversion.start()

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
        heads, context = config.heads, config.context_encoder
        swatches = " ".join(
            swatch(heads.colours.get(name, "#ccc"), display_name(name, vars(heads)))
            for name in dict.fromkeys([*heads.segmentation_classes[1:], *heads.detection_classes])
        )
        self.summary.setText(f"{model_description(config)}<br>{swatches}")
        self.summary.setToolTip(
            f"region encoder {config.region_encoder.name}, regions of {config.region_size} px, context encoder "
            f"{context.kind} (width {context.width}, depth {context.depth})"
        )
        self._update_scales()

    def _update_scales(self, *_, keep: bool = False) -> None:
        """Offer the image's levels, the checkpoint's pixel size first when both know theirs (the default);
        with ``keep``, the current choice stays (layers were added, the image is the same)."""
        previous = self.scale_combo.currentData() if keep else None
        self.scale_combo.blockSignals(True)
        self.scale_combo.clear()
        try:
            self._fill_scales()
        finally:
            index = self.scale_combo.findData(previous) if previous is not None else -1
            if index >= 0:
                self.scale_combo.setCurrentIndex(index)
            self.scale_combo.blockSignals(False)

    def _fill_scales(self) -> None:
        layer = self.image_combo.currentData()
        if layer is None:
            return
        try:
            pyramid = pyramid_of_layer(layer, sign=False)
        except ImageReadError as error:
            self.status.setText(str(error))
            return
        config = self.config
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
        choice = self.region.value
        scale = np.asarray(layer.scale[-2:], float)
        translate = np.asarray(layer.translate[-2:], float)
        if choice == "whole image":
            return None
        if choice == "selected rectangle":
            return self._selected_rectangle(scale, translate)
        return clip_box(visible_box(self.viewer, layer), pyramid.shape)

    def _selected_rectangle(self, scale, translate):
        """The selected (else the last) shape of the user's Shapes layers, the selected layer first; the ROI
        layers napari-xt draws itself do not count."""
        from napari.layers import Shapes

        for layer in [*self.viewer.layers.selection, *self.viewer.layers]:
            if isinstance(layer, Shapes) and len(layer.data) and not is_napari_xt_output(layer):
                index = next(iter(layer.selected_data), len(layer.data) - 1)
                vertices = np.asarray(layer.data[index])[:, -2:] * np.asarray(layer.scale[-2:]) + np.asarray(
                    layer.translate[-2:]
                )
                return rectangle_box(vertices, scale, translate)
        raise ValueError("no rectangle to run on: draw one in a Shapes layer and select it, or choose another region")

    # -- running --------------------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True when no run is going: its worker has finished and its last results are on screen."""
        return self._worker_done and (self.live is None or not self.live.refreshing)

    @property
    def running(self) -> bool:
        """True from Run until the worker has finished and the results are shown (also before its thread has
        started)."""
        return not self.done

    @property
    def layers(self) -> dict:
        """The current run's layers by role: ``labels``, ``points``, ``shapes`` (ROIs), ``probabilities``."""
        return self.live.layers if self.live is not None else {}

    def _options(self, roi):
        from napari_xt.engine.runner import RunOptions

        kind, value = (self.scale_combo.currentData() or "level:0").split(":")
        return RunOptions(
            level=int(value) if kind == "level" else None,
            pixel_size=float(value) if kind == "pixel_size" else None,
            roi=roi,
            device=self.device.value,
            context_scope="image" if self.whole_context.value else "roi",
            save_probabilities=self.probabilities.value,
            store_threshold=min(0.1, self.threshold.value),
            export_threshold=self.threshold.value,
            replace_stale=True,  # the widget's run directories are its own cache: recompute, never reuse
        )

    def start(self) -> None:
        """Start a run with the current choices (refused, with a message, while one is going).

        Everything that can be checked without the model is checked here, so bad input gets its message at
        once and leaves no layers behind; what only the engine can find out arrives as a notification.
        """
        from napari.utils.notifications import show_error, show_info

        from napari_xt.engine.runner import CancelToken, display_spec, plan
        from napari_xt.model import CheckpointError, check_fits_image

        if not self._worker_done:  # (a last refresh under way is replaced)
            show_info("xT is already running: wait for it or press Cancel first.")
            return
        layer, checkpoint = self.image_combo.currentData(), self.checkpoint_path()
        if layer is None or checkpoint is None or self.config is None:
            show_error("Choose an image layer and a usable checkpoint first (the summary says what is wrong).")
            return
        try:
            pyramid = pyramid_of_layer(layer)
            check_fits_image(self.config, pyramid.n_channels, layer.name)
            options = self._options(self.roi(pyramid, layer))
            grid = plan(pyramid, self.config, options, background=False)
            self.run_dir = self._run_dir(layer, pyramid, checkpoint, grid, options)
        except (ImageReadError, CheckpointError, ValueError, OSError) as error:
            show_error(f"napari-xt: {error}")
            return
        catalogue.remember(checkpoint)
        self._worker_done = False  # from here on a second Run is refused
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText("starting…")
        self.legend.setText("")
        self.cancel_token = CancelToken()
        self._refine = None
        spec = {**display_spec(pyramid, self.config, grid), "image_name": layer.name, "checkpoint": str(checkpoint)}

        def launch(options, grid, run_dir, **more) -> _Launch:
            # the ROIs the run directory holds are read now, before a run records this one
            rois = [*self._earlier_rois(run_dir), list(grid.roi)]
            return _Launch(layer, pyramid, checkpoint, options, grid, run_dir, {**spec, "rois": rois, **more})

        run = launch(options, grid, self.run_dir)
        if first_look_helps(self.config, options, grid):
            # the ROI in seconds with context from the ROI alone, then again with context from the whole image
            look = replace(options, context_scope="roi")
            look_grid = plan(pyramid, self.config, look, background=False)
            self._refine = run
            look_dir = self._run_dir(layer, pyramid, checkpoint, look_grid, look)
            run = launch(look, look_grid, look_dir, name_note="first look")
        self._launch(run, show_now=True)

    def _launch(self, run: _Launch, show_now: bool) -> None:
        """Start the worker of ``run``; its layers appear at once (``show_now``) or with its first results (a
        refinement keeps the first look on screen until it has something better to show)."""
        from napari.qt.threading import create_worker
        from qtpy.QtWidgets import QApplication

        self.run_dir = run.run_dir
        self._pending = run
        self._finished = False  # until this run's Finished (an error before its first event leaves it False)
        if show_now:
            self._show_layers(run)
        self._started = False
        self._ended = False  # until this run's Finished, Cancelled or Failed: no progress is shown after it
        self._close_progress()
        from napari.utils import progress

        what = "xT on" if show_now else "whole-image context for"
        self._progress = progress(total=max(1, run.grid.n_active), desc=f"{what} {run.layer.name}")
        # the new layers' first draw (their shaders are compiled then) belongs to the click, not to the run
        QApplication.processEvents()
        self.worker = create_worker(
            _events,
            run.pyramid,
            str(run.checkpoint),
            run.run_dir,
            run.options,
            self.cancel_token,
            run.layer.name,
            _start_thread=False,
            _connect={"yielded": self.on_event, "errored": self._on_error, "finished": self._on_worker_done},
        )
        self.worker.start()

    def _show_layers(self, run: _Launch) -> None:
        """Replace the layers on screen by ``run``'s (bound to its run directory, read from disk)."""
        if self.live is not None:
            self.live.remove()
        self.live = LiveRun(
            self.viewer,
            run.run_dir,
            run.spec,
            self.threshold.value,
            probabilities=run.options.save_probabilities,
            region_grid=self.region_grid.value,
        )
        self._pending = None
        self._apply_outlines()
        self.viewer.layers.selection.active = run.layer

    def _run_dir(self, layer, pyramid: Pyramid, checkpoint: Path, grid, options) -> Path:
        """The run directory in napari-xt's cache, named by the engine's one rule (image, checkpoint, analysis
        level, and the ROI when context comes from it alone)."""
        from napari_xt.engine.identity import image_key_of, roi_scope, run_dir_for
        from napari_xt.engine.runner import context_from

        scope = roi_scope(context_from(self.config, options), grid.roi)
        image_key = image_key_of(pyramid.source, pyramid.signature)
        out = default_cache_dir() / "runs"
        return run_dir_for(out, layer.name, image_key, str(checkpoint), grid.level, grid.resample, scope)

    @staticmethod
    def _earlier_rois(run_dir: Path) -> list:
        if not is_run_dir(run_dir):
            return []
        try:
            return list(run_spec(run_dir).get("rois", []))
        except (OSError, KeyError, ValueError):
            return []

    def cancel(self) -> None:
        if self.cancel_token is not None and not self._worker_done:
            self.cancel_token.cancel()
            self.status.setText("cancelling after the current batch…")

    def closeEvent(self, event) -> None:
        self.closed = True
        self.stop()
        super().closeEvent(event)

    def stop(self, *_, wait_ms: int = 10_000) -> None:
        """Cancel and wait for the worker (the viewer or this widget is closing)."""
        if self.cancel_token is not None:
            self.cancel_token.cancel()
        worker = self.worker
        if worker is not None and not self._worker_done:
            worker.quit()
            from napari.qt.threading import WorkerBase

            WorkerBase.await_workers(msecs=wait_ms)

    def _on_error(self, error: Exception) -> None:
        """The engine refused the input (or broke) before its first event: say why, leave no empty layers."""
        from napari.utils.notifications import show_error

        show_error(f"napari-xt could not run: {error}")
        self.status.setText(f"<span style='color:#e66'>{error}</span>")
        if self.live is not None and not self._started and self._pending is None:  # (a first look stays)
            self.live.remove()
            self.live = None

    def _on_worker_done(self) -> None:
        refine, self._refine = self._refine, None
        if refine is not None and self._finished and not self.cancel_token.cancelled and not self.closed:
            self.status.setText(f"{self.status.text()}; now with context from the whole image…")
            self._launch(refine, show_now=False)
            return
        self._worker_done = True
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self._close_progress()

    def _close_progress(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    def _progress_to(self, done: int, total: int | None = None) -> None:
        bar = self._progress
        if bar is None:
            return
        if total is not None and total != bar.total:
            bar.total = max(1, total)
        if done != bar.n:
            bar.update(done - bar.n)

    # -- events → layers ------------------------------------------------------------------------------------

    def on_event(self, event) -> None:
        if self._pending is not None and isinstance(event, PartialResult | Finished):
            self._show_layers(self._pending)  # the refinement's first results replace the first look
        live = self.live
        if isinstance(event, Started):
            self._started = True
            self._finished = False
            self.progress.setRange(0, max(1, event.n_active))
            self.progress.setValue(event.n_done)
            self._progress_to(event.n_done, event.n_active)
            self.status.setText(event.description)
        elif isinstance(event, Progress):
            if not self._ended:  # (a progress bar's update may handle the run's last event before this returns)
                self._show_progress(event)
        elif isinstance(event, PartialResult):
            live.add_detections(event.detections)
            if live.refresh_due():
                live.refresh()
        elif isinstance(event, Finished):
            from napari.utils.notifications import show_info

            self._finished = self._ended = True
            live.finish()
            self._show_legend(event.run_dir)
            self.progress.setValue(self.progress.maximum())
            self.status.setText(f"finished in {event.seconds:.0f} s: {event.n_detections} detections")
            self.status.setToolTip(f"the results are in {event.run_dir} (File > Open shows them again)")
            show_info(f"xT finished: {event.n_detections} detections")
        elif isinstance(event, Cancelled):
            self._ended = True
            live.refresh()
            self.status.setText(f"cancelled; the {event.n_done} regions done are kept")
            self.status.setToolTip(f"the results are in {event.run_dir}; running again continues from them")
        elif isinstance(event, Failed):
            from napari.utils.notifications import show_error

            self._ended = True
            live.refresh()
            show_error(f"napari-xt: {event.message}")
            self.status.setText(f"<span style='color:#e66'>{event.message}</span>")

    def _show_legend(self, run_dir) -> None:
        import json

        try:
            summary = json.loads((Path(run_dir) / "summary.json").read_text())
        except (OSError, ValueError, TypeError):
            self.legend.setText("")
            return
        heads = self.config.heads if self.config else None
        self.legend.setText(legend_html(summary, heads.colours if heads else {}, heads.display_names if heads else {}))

    def _show_progress(self, event: Progress) -> None:
        now = time.monotonic()
        if now - self._last_status < STATUS_INTERVAL_S and event.done < event.total:
            return
        self._last_status = now
        eta = f", ETA {event.eta:.0f} s" if event.eta is not None else ""
        if self.cancel_token is None or not self.cancel_token.cancelled:  # else "cancelling…" stays
            self.status.setText(f"{event.phase}: {event.done}/{event.total} regions, {event.rate:.1f}/s{eta}")
        if event.phase == "predict":  # last: napari's progress bar handles pending events as it updates
            self.progress.setRange(0, max(1, event.total))
            self.progress.setValue(event.done)
            self._progress_to(event.done, event.total)

    @property
    def detections(self):
        from napari_xt.engine.detections import DetectionTable

        return self.live.detections if self.live is not None else DetectionTable.empty()

    def _apply_outlines(self, *_) -> None:
        """Filled classes, or their borders only (``OUTLINE_PX`` screen pixels wide) on the segmentation."""
        labels = self.layers.get("labels")
        if labels is not None:
            labels.contour = OUTLINE_PX if self.outlines.value else 0

    def _apply_threshold(self, *_) -> None:
        """Filter detections by score without recomputing anything."""
        if self.live is not None:
            self.live.set_threshold(self.threshold.value)


def _events(pyramid, checkpoint, run_dir, options, cancel, image_name):
    """The worker's generator: the engine's events (bad input raises here, reaching ``errored``)."""
    from napari_xt.engine.runner import prepare, start

    yield from start(prepare(pyramid, checkpoint, options, image_name=image_name), run_dir, cancel)
