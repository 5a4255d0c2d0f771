"""Layers from a run directory: segmentation Labels (lazy, multiscale), detections Points with a features
table, the ROI as Shapes, class probabilities as an Image. All in the image's physical coordinates."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import zarr

from napari_xt.engine.detections import DetectionTable
from napari_xt.engine.exports import hex_to_rgba
from napari_xt.io.pyramid import ome_unit

MIN_POINT_SIZE_SCREEN = 6.0


def run_spec(run_dir: str | Path) -> dict:
    return dict(zarr.open_group(str(run_dir), mode="r").attrs["napari_xt"])


def level0_scale(spec: dict) -> tuple[float, float]:
    size = spec.get("pixel_size")
    return (float(size[0]), float(size[1])) if size else (1.0, 1.0)


def labels_layer_data(run_dir: str | Path, name: str | None = None) -> tuple:
    """A multiscale Labels layer reading the run's label levels from disk (never a full-size array)."""
    group = zarr.open_group(str(run_dir), mode="r")
    spec = dict(group.attrs["napari_xt"])
    segmentation = group["labels/segmentation"]
    meta = segmentation.attrs["ome"]["multiscales"][0]["datasets"]
    levels = [da.from_zarr(segmentation[d["path"]]) for d in meta]
    kwargs = labels_kwargs(spec, name or f"{Path(run_dir).name} segmentation")
    kwargs["metadata"] = {"napari_xt": {"run_dir": str(run_dir), "classes": spec.get("segmentation_classes", [])}}
    return (levels if len(levels) > 1 else levels[0], kwargs, "labels")


def labels_kwargs(spec: dict, name: str) -> dict:
    """Layer settings of the segmentation: transforms to level 0, class colours (background transparent)."""
    classes = spec.get("segmentation_classes", [])
    colours = {i: np.array(hex_to_rgba(spec.get("colours", {}).get(n, "#808080"))) / 255 for i, n in enumerate(classes)}
    colours[0] = np.zeros(4)  # background stays transparent
    colours[None] = np.zeros(4)
    kwargs = {
        "name": name,
        "scale": list(spec["layer_scale"]),
        "translate": list(spec["layer_translate"]),
        "opacity": 0.5,
    }
    try:
        from napari.utils.colormaps import DirectLabelColormap

        kwargs["colormap"] = DirectLabelColormap(color_dict=colours)
    except ImportError:  # older napari
        kwargs["color"] = colours
    if spec.get("unit"):
        kwargs["units"] = (ome_unit(spec["unit"]),) * 2
    return kwargs


def detections_table(run_dir: str | Path) -> DetectionTable:
    """The merged table of a finished run, or what finished regions have produced so far."""
    from napari_xt.engine.store import OutputStore

    group = zarr.open_group(str(run_dir), mode="r")
    if "detections/y" in group:
        d = group["detections"]
        return DetectionTable(*(np.asarray(d[c][:]) for c in ("y", "x", "label", "score", "size")))
    store = OutputStore(Path(run_dir), zarr.open_group(str(run_dir), mode="r+"))
    return store.region_detections()


def points_properties(table: DetectionTable, spec: dict, threshold: float) -> dict:
    """Data and per-point settings of the detections Points layer (level-0 pixels → physical units)."""
    classes = spec.get("detection_classes", []) or ["object"]
    s0 = level0_scale(spec)
    names = np.array([classes[int(i)] if int(i) < len(classes) else str(i) for i in table.label], dtype=object)
    colours = np.array([hex_to_rgba(spec.get("colours", {}).get(n, "#ffff00")) for n in names] or np.zeros((0, 4)))
    return {
        "data": np.stack([table.y, table.x], axis=1) if len(table) else np.zeros((0, 2)),
        "features": {"class": names, "score": table.score.astype(float), "size": table.size.astype(float)},
        "face_color": (colours / 255.0) if len(table) else "yellow",
        "size": np.maximum(table.size, 1.0) if len(table) else 10,
        "shown": table.score >= threshold,
        "scale": s0,
    }


def points_layer_data(table: DetectionTable, spec: dict, threshold: float, name: str) -> tuple:
    props = points_properties(table, spec, threshold)
    kwargs = {
        "name": name,
        "features": props["features"],
        "face_color": props["face_color"],
        "border_color": "white",
        "border_width": 0.1,
        "size": props["size"],
        "shown": props["shown"],
        "scale": props["scale"],
        "opacity": 0.9,
        "metadata": {"napari_xt": {"threshold": threshold}},
    }
    if spec.get("unit"):
        kwargs["units"] = (ome_unit(spec["unit"]),) * 2
    return (props["data"], kwargs, "points")


def roi_layer_data(spec: dict, name: str) -> tuple:
    """The ROIs of the run as rectangles (level-0 pixel edges, scaled to physical units)."""
    rectangles = [np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float) for y0, x0, y1, x1 in spec.get("rois", [])]
    kwargs = {
        "name": name,
        "shape_type": "rectangle",
        "edge_color": "cyan",
        "face_color": "transparent",
        "edge_width": 2,
        "scale": level0_scale(spec),
        "opacity": 0.8,
    }
    if spec.get("unit"):
        kwargs["units"] = (ome_unit(spec["unit"]),) * 2
    return (rectangles, kwargs, "shapes")


def probability_layer_data(run_dir: str | Path, name: str) -> tuple | None:
    group = zarr.open_group(str(run_dir), mode="r")
    if "probabilities/0" not in group:
        return None
    spec = dict(group.attrs["napari_xt"])
    scale = spec["layer_scale"]
    translate = spec["layer_translate"]
    kwargs = {
        "name": name,
        "scale": (1.0, *scale),
        "translate": (0.0, *translate),
        "colormap": "magma",
        "contrast_limits": (0.0, 1.0),
        "opacity": 0.6,
        "blending": "additive",
        "axis_labels": ("class", "y", "x"),
    }
    return (da.from_zarr(group["probabilities/0"]), kwargs, "image")


def run_layers(run_dir: str | Path, threshold: float = 0.5) -> list[tuple]:
    """All layers of a run directory, for reopening it."""
    spec = run_spec(run_dir)
    name = Path(run_dir).name.removesuffix(".xt.zarr")
    layers = [labels_layer_data(run_dir, f"{name} segmentation")]
    if spec.get("detection_classes"):
        layers.append(points_layer_data(detections_table(run_dir), spec, threshold, f"{name} detections"))
    probabilities = probability_layer_data(run_dir, f"{name} probabilities")
    if probabilities is not None:
        layers.append(probabilities)
    layers.append(roi_layer_data(spec, f"{name} ROI"))
    return layers
