"""Layers of a run directory: segmentation Labels and class probabilities (lazy, multiscale, read from disk),
detections Points with a features table, and the ROIs as Shapes, all in the image's physical coordinates.

The same builders serve a run that is still going (the widget shows its layers before anything is written)
and a finished run directory opened again.
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

import numpy as np
import zarr

from napari_xt.engine.detections import DetectionTable
from napari_xt.engine.exports import hex_to_rgba
from napari_xt.engine.run_reader import RunReader
from napari_xt.engine.stages import label_dtype
from napari_xt.engine.store import label_level_shapes
from napari_xt.io.pyramid import ome_unit


class RunArray:
    """One array of a run directory as napari reads it: opened at the first read that finds it, zeros before.

    napari reads only the tiles in view, from disk, on each refresh. There is no dask graph in between, so no
    cache can hand back a tile that the run has since rewritten.
    """

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype):
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self._array = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def _open(self):
        if self._array is None:
            try:
                self._array = zarr.open_array(str(self.path), mode="r")
            except FileNotFoundError:  # the run has not created it yet
                return None
        return self._array

    def __getitem__(self, index):
        array = self._open()
        if array is None:
            return np.zeros(np.broadcast_to(np.zeros((), self.dtype), self.shape)[index].shape, self.dtype)
        return array[index]

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[...], dtype=dtype)

    def __repr__(self) -> str:
        return f"RunArray({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"


def _levels_data(levels: list[RunArray]) -> tuple:
    """napari's ``(data, multiscale)`` for levels: one level (at most 1024², see ``label_level_shapes``) is
    passed on its own, since napari unwraps a list of one."""
    return (levels, True) if len(levels) > 1 else (levels[0], False)


def run_spec(run_dir: str | Path) -> dict:
    return RunReader(run_dir).spec


def level0_scale(spec: dict) -> tuple[float, float]:
    size = spec.get("pixel_size")
    return (float(size[0]), float(size[1])) if size else (1.0, 1.0)


def _metadata(run_dir, role: str, **more) -> dict:
    """Layer metadata that marks a layer as a napari-xt output (the widget never takes it for user input)."""
    return {"napari_xt": {"run_dir": str(run_dir), "role": role, **more}}


def _units(spec: dict, kwargs: dict, leading: int = 0) -> dict:
    if spec.get("unit"):
        kwargs["units"] = ("pixel",) * leading + (ome_unit(spec["unit"]),) * 2
    return kwargs


def label_colormap(names: list[str], colours: dict[str, str], fallback: str = "#808080", transparent=(0,)):
    """napari's colormap for labels whose value ``i`` is class ``names[i]``, in the class colours (``fallback``
    for a class without one); the ``transparent`` values (background, "nothing said") are not drawn."""
    from napari.utils.colormaps import DirectLabelColormap

    colour_dict = {i: np.array(hex_to_rgba(colours.get(n, fallback)), float) / 255 for i, n in enumerate(names)}
    colour_dict.update({value: np.zeros(4) for value in transparent})
    colour_dict[None] = np.zeros(4)
    return DirectLabelColormap(color_dict=colour_dict)


SEGMENTATION_OPACITY = 0.5
"""The segmentation's opacity: the shipped palettes change the canvas by ΔE ≥ 20 at it over H&E and SAR
(tests/_napari/test_overlay_contrast.py), and the tissue's texture still shows through."""


def labels_layer_data(run_dir: str | Path, spec: dict, name: str) -> tuple:
    """A multiscale Labels layer reading the run's label levels from disk (never a full-size array)."""
    levels = [
        RunArray(
            Path(run_dir) / "labels" / "segmentation" / str(k),
            shape,
            label_dtype(max(1, len(spec["segmentation_classes"]))),
        )
        for k, shape in enumerate(label_level_shapes(*spec["image_shape"]))
    ]
    classes = spec.get("segmentation_classes", [])
    data, multiscale = _levels_data(levels)
    kwargs = {
        "name": name,
        "scale": list(spec["layer_scale"]),
        "translate": list(spec["layer_translate"]),
        "opacity": SEGMENTATION_OPACITY,
        "colormap": label_colormap(classes, spec.get("colours", {})),
        "multiscale": multiscale,
        # hovering shows the class's name, not its number
        "features": {"index": np.arange(len(classes)), "class": [display_name(n, spec) for n in classes]},
        "metadata": _metadata(run_dir, "segmentation", classes=classes),
    }
    return (data, _units(spec, kwargs), "labels")


def probability_layer_data(run_dir: str | Path, spec: dict, name: str) -> tuple:
    """Class probabilities as a multiscale ``(class, y, x)`` Image layer read from disk."""
    classes = spec.get("segmentation_classes", [])
    levels = [
        RunArray(Path(run_dir) / "probabilities" / str(k), (len(classes), *shape), np.float16)
        for k, shape in enumerate(label_level_shapes(*spec["image_shape"]))
    ]
    data, multiscale = _levels_data(levels)
    kwargs = {
        "name": name,
        "scale": (1.0, *spec["layer_scale"]),
        "translate": (0.0, *spec["layer_translate"]),
        "colormap": "magma",
        "contrast_limits": (0.0, 1.0),
        "opacity": 0.6,
        "blending": "additive",
        "multiscale": multiscale,
        "axis_labels": ("class", "y", "x"),
        "metadata": _metadata(run_dir, "probabilities", classes=classes),
    }
    return (data, _units(spec, kwargs, leading=1), "image")


def detections_table(run_dir: str | Path) -> DetectionTable:
    """The merged table of a finished run, or what finished regions have produced so far."""
    return RunReader(run_dir).detections()


def points_properties(table: DetectionTable, spec: dict, threshold: float) -> dict:
    """Data and per-point settings of the detections Points layer (level-0 pixels; the layer scales them)."""
    classes = list(spec.get("detection_classes", []) or ["object"])
    labels = np.asarray(table.label, dtype=np.int64)
    # labels the checkpoint does not name keep their number (one lookup per class, not per detection)
    classes += [str(i) for i in range(len(classes), int(labels.max(initial=-1)) + 1)]
    names = np.array(classes, dtype=object)[labels]
    palette = np.array([hex_to_rgba(spec.get("colours", {}).get(n, "#ffff00")) for n in classes], float) / 255.0
    palette[:, 3] = 1.0
    colours = palette[labels]
    fill = colours.copy()
    fill[:, 3] = RING_FILL_ALPHA
    return {
        "data": np.stack([table.y, table.x], axis=1) if len(table) else np.zeros((0, 2)),
        "features": {"class": names, "score": table.score.astype(float), "size": table.size.astype(float)},
        "border_color": colours,
        "face_color": fill,
        "size": np.maximum(table.size, 1.0).astype(float),
        "shown": table.score >= threshold,
    }


RING_FILL_ALPHA = 0.15
"""Detections are rings of the object's size in the class colour, filled faintly: the cell or vessel they
mark stays visible inside."""


def display_name(name: str, spec: dict | None = None) -> str:
    """A class name as people read it: the checkpoint's display name (``display_names`` of its heads, or of a
    run's spec), else the name with spaces for underscores (``invasive_margin`` → ``invasive margin``)."""
    given = ((spec or {}).get("display_names") or {}).get(name)
    return str(given) if given else str(name).replace("_", " ").strip()


def swatch(colour: str, text: str, mark: str = "■") -> str:
    """Rich text of a class: a mark in its colour and its name, both escaped (they come from checkpoint files)."""
    return f"<span style='color:{escape(str(colour)[:7])}'>{mark}</span> {escape(text)}"


def legend_html(summary: dict, colours: dict[str, str], names: dict[str, str] | None = None) -> str:
    """The run's legend as rich text for the widget: a colour swatch, the class in words, its area (and share
    of the tissue) and, for detection classes, the count; the largest area first. ``names``: display names."""
    spec = {"display_names": names or {}}
    area_unit = summary.get("area_unit") or "px²"
    rows = []
    classes = summary.get("classes") or {}
    for name, value in sorted(classes.items(), key=lambda item: -float(item[1].get("area") or 0)):
        share = value.get("share_of_foreground")
        share_text = f" ({100 * share:.1f}%)" if isinstance(share, int | float) else ""
        rows.append(
            f"{swatch(colours.get(name, '#cccccc'), display_name(name, spec))}: "
            f"{float(value.get('area') or 0):.4g} {area_unit}{share_text}"
        )
    for name, value in (summary.get("detections") or {}).items():
        rows.append(
            f"{swatch(colours.get(name, '#ffff00'), display_name(name, spec), '○')}: "
            f"{int(value.get('count') or 0)} detected"
        )
    return "<br>".join(rows)


def points_layer_data(run_dir: str | Path, table: DetectionTable, spec: dict, threshold: float, name: str) -> tuple:
    props = points_properties(table, spec, threshold)
    kwargs = {
        "name": name,
        "features": props["features"],
        "face_color": props["face_color"] if len(table) else "transparent",
        "border_color": props["border_color"] if len(table) else "yellow",
        "border_width": 0.12,
        "border_width_is_relative": True,
        "size": props["size"] if len(table) else 10,
        "shown": props["shown"],
        "scale": level0_scale(spec),
        "opacity": 1.0,
        "metadata": _metadata(run_dir, "detections", threshold=threshold),
    }
    return (props["data"], _units(spec, kwargs), "points")


MAX_GRID_LINES = 1000  # per axis and ROI; beyond, every 2nd, 4th, … region border is drawn


def roi_layer_data(run_dir: str | Path, spec: dict, name: str, region_grid: bool = False) -> tuple:
    """The ROIs of the run as rectangles (level-0 pixel edges, scaled to physical units) and, with
    ``region_grid``, the borders of the regions inside them as lines (on the image's global region grid)."""
    rois = spec.get("rois", [])
    shapes = [np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float) for y0, x0, y1, x1 in rois]
    types, widths = ["rectangle"] * len(shapes), [2.0] * len(shapes)
    if region_grid and spec.get("region_level0"):
        lines = [line for roi in rois for line in region_grid_lines(roi, spec["region_level0"])]
        shapes += lines
        types += ["line"] * len(lines)
        widths += [1.0] * len(lines)
    scale = level0_scale(spec)
    kwargs = {
        "name": name,
        "shape_type": types,
        "edge_color": "cyan",
        "face_color": "transparent",
        "edge_width": widths,
        "scale": scale,
        "translate": (-scale[0] / 2, -scale[1] / 2),  # vertices are pixel edges; napari puts pixel centres on integers
        "opacity": 0.8,
        "metadata": _metadata(run_dir, "roi"),
    }
    return (shapes, _units(spec, kwargs), "shapes")


def region_grid_lines(roi, region: tuple[float, float]) -> list[np.ndarray]:
    """Lines ``[[y, x], [y, x]]`` along the region borders crossing the level-0 box ``roi`` (regions of
    ``region`` level-0 pixels, the grid anchored at the image origin, as the engine lays it out)."""
    y0, x0, y1, x1 = (float(v) for v in roi)
    lines = []
    for axis, (start, stop), (across0, across1) in ((0, (y0, y1), (x0, x1)), (1, (x0, x1), (y0, y1))):
        side = float(region[axis])
        first, last = math.ceil(start / side), math.floor(stop / side)
        step = 1
        while (last - first) // step + 1 > MAX_GRID_LINES:
            step *= 2
        for k in range(first, last + 1, step):
            at = k * side
            lines.append(np.array([[at, across0], [at, across1]] if axis == 0 else [[across0, at], [across1, at]]))
    return lines


def layer_data(
    run_dir: str | Path,
    spec: dict,
    table: DetectionTable,
    threshold: float,
    probabilities: bool,
    region_grid: bool = False,
) -> dict[str, tuple]:
    """The layers of a run by role (``labels``, ``probabilities``, ``points``, ``shapes``), bottom to top, named
    for people (``scene · segmentation (sar_xl)``); the run directory stays in each layer's metadata."""
    image, model = run_names(run_dir, spec)
    layers = {"labels": labels_layer_data(run_dir, spec, f"{image} · segmentation ({model})")}
    if probabilities and spec.get("segmentation_classes"):
        layers["probabilities"] = probability_layer_data(run_dir, spec, f"{image} · probabilities ({model})")
    if spec.get("detection_classes"):
        layers["points"] = points_layer_data(run_dir, table, spec, threshold, f"{image} · detections ({model})")
    layers["shapes"] = roi_layer_data(run_dir, spec, f"{image} · ROI ({model})", region_grid=region_grid)
    return layers


def run_names(run_dir: str | Path, spec: dict) -> tuple[str, str]:
    """The image's and the model's names as a person knows them: the image layer's (or file's) name and the
    checkpoint's file name, falling back to the run directory's name."""
    from napari_xt.engine.identity import image_stem

    source = str(spec.get("image_source") or "")
    image = spec.get("image_name") or ("" if source.startswith("<") else image_stem(source))  # <numpy array …>
    image = image or Path(run_dir).name.split("__")[0]
    checkpoint = spec.get("checkpoint")
    model = image_stem(checkpoint) if checkpoint else (spec.get("config") or {}).get("name") or "xT"
    model = model.removesuffix(".safetensors")
    return image, f"{model}, {spec['name_note']}" if spec.get("name_note") else model


def run_layers(run_dir: str | Path, threshold: float = 0.5) -> list[tuple]:
    """All layers of a run directory, for opening it again."""
    spec = run_spec(run_dir)
    table = detections_table(run_dir) if spec.get("detection_classes") else DetectionTable.empty()
    saved = RunReader(run_dir).has_probabilities
    return list(layer_data(run_dir, spec, table, threshold, saved).values())


def is_napari_xt_output(layer) -> bool:
    """True for layers napari-xt made from a run (their ROI rectangles are no user's selection)."""
    return "role" in napari_xt_meta(layer)


def napari_xt_meta(layer) -> dict:
    """What napari-xt keeps in a layer's metadata (its ``napari_xt`` entry; empty for other layers)."""
    meta = layer.metadata.get("napari_xt") if isinstance(layer.metadata, dict) else None
    return meta if isinstance(meta, dict) else {}
