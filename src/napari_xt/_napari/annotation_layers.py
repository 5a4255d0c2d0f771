"""napari layers as training truth: painted Labels, Points and Shapes with a class, and editable copies of a
run's segmentation ("corrections"), turned into ``train.annotations.Annotations`` on the image they annotate.

The rules (also in the README):

- **Labels**: a label value names a class through the layer's features (an ``index`` column and a ``class`` or
  ``name`` column, as napari shows on hover), or through the table napari-xt stores when it makes the layer
  ("New annotation layer", "Editable copy"). Without either, value *v* is ``class v``. Value 0, what an
  untouched or erased pixel holds, says nothing, except in an editable copy of a run, where 0 is background
  (erasing a wrong object makes it background).
- **Points**: one object per shown point; its class from a ``class``/``label``/``name`` feature, else the layer's
  name (unless napari named it, "Points [1]"), its size from a ``size`` feature or the point's size.
- **Shapes**: rectangles, polygons and ellipses are areas; their class from a feature or the layer's name as
  for points. A shape without a class (in a layer napari named, or one named "region"/"ROI") marks a fully
  annotated region: inside it, what no class covers is background. Lines and paths are not areas.

Layers may sit anywhere on the image (scale and translate); rotated, sheared or affine layers are refused.
"""

from __future__ import annotations

import re

import numpy as np

from napari_xt._napari.run_layers import napari_xt_meta
from napari_xt.train.annotations import BACKGROUND, Annotations, LabelRaster, collect

CLASS_FEATURES = ("class", "label", "name", "classification")
NAPARI_DEFAULT_NAME = re.compile(r"^(Points|Shapes|Labels)( \[\d+\])?$")
REGION_NAMES = {"region", "regions", "roi", "rois", "annotated region", "annotated regions"}
UNANALYSED = "not analysed"  # the value past the classes in an editable copy: regions the run did not reach


def annotations_from_layers(
    image_layer,
    layers: list,
    detection_classes: list[str] | None = None,
    known: tuple[list[str], list[str]] | None = None,
) -> Annotations:
    """The ``Annotations`` of ``layers`` (napari Labels, Points, Shapes) on ``image_layer``'s level-0 pixels
    (module docstring); ``detection_classes`` and ``known`` as ``train.annotations.read_annotations`` takes
    them. Raises ``ValueError`` naming the layer and what to do."""
    from napari.layers import Labels, Points, Shapes

    features, rasters = [], []
    for layer in layers:
        step, offset = _to_image(layer, image_layer)
        if isinstance(layer, Labels):
            rasters.append(_raster(layer, step, offset))
        elif isinstance(layer, Points):
            features += _point_features(layer, step, offset)
        elif isinstance(layer, Shapes):
            features += _shape_features(layer, step, offset)
        else:
            raise ValueError(f"layer {layer.name!r}: a {type(layer).__name__} layer cannot be an annotation")
    names = ", ".join(repr(layer.name) for layer in layers) or "no layer"
    found = collect(features, f"layers {names}", detection_classes, known, rasters)
    found.source = f"napari layers {names} on {image_layer.name!r}"
    return found


def _to_image(layer, image_layer) -> tuple[np.ndarray, np.ndarray]:
    """``(step, offset)``: layer data coordinate ``d`` lies on image level-0 coordinate ``d * step + offset``."""
    for which in (layer, image_layer):
        rotate = np.asarray(which.rotate)[-2:, -2:]
        affine = np.asarray(which.affine.affine_matrix)[-3:, -3:]
        if not (np.allclose(rotate, np.eye(2)) and np.allclose(which.shear, 0) and np.allclose(affine, np.eye(3))):
            raise ValueError(
                f"layer {which.name!r} is rotated, sheared or has an affine transform; napari-xt takes annotations "
                "on axis-aligned layers (reset the layer's transform)"
            )
    layer_scale, layer_translate = np.asarray(layer.scale[-2:], float), np.asarray(layer.translate[-2:], float)
    image_scale, image_translate = np.asarray(image_layer.scale[-2:], float), np.asarray(image_layer.translate[-2:])
    return layer_scale / image_scale, (layer_translate - image_translate) / image_scale


def _named_by_layer(layer) -> str | None:
    """The class a layer's name gives its items (None: napari named it, or it names annotated regions)."""
    name = str(layer.name).strip()
    if NAPARI_DEFAULT_NAME.match(name) or name.lower() in REGION_NAMES:
        return None
    return name


def _feature_column(layer) -> str | None:
    table = layer.features
    return next((column for column in CLASS_FEATURES if column in table.columns), None)


def _classes_of_items(layer, count: int) -> list[str | None]:
    column = _feature_column(layer)
    if column is not None:
        values = layer.features[column].tolist()[:count]
        return [None if _blank(v) else str(v) for v in values] + [None] * (count - len(values))
    return [_named_by_layer(layer)] * count


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() in ("", "nan")


def _point_features(layer, step, offset) -> list:
    import shapely

    data = np.asarray(layer.data, float)[:, -2:]
    shown = np.asarray(layer.shown, bool) if len(data) else np.zeros(0, bool)
    classes = _classes_of_items(layer, len(data))
    if "size" in layer.features.columns:
        sizes = np.asarray(layer.features["size"], float)
    else:
        sizes = np.asarray(layer.size, float).reshape(len(data), -1).mean(axis=1) * float(np.mean(step))
    out = []
    for (y, x), keep, name, size in zip(data * step + offset, shown, classes, sizes):
        if not keep:  # hidden points (under the score threshold) are not objects
            continue
        properties = {"objectType": "detection", "size": float(size) if np.isfinite(size) else None}
        if name is not None:
            properties["class"] = name
        out.append((shapely.Point(x + 0.5, y + 0.5), properties))  # pixel centres → QuPath's corners
    return out


def _shape_features(layer, step, offset) -> list:
    import shapely

    classes = _classes_of_items(layer, len(layer.data))
    out = []
    for vertices, kind, name in zip(layer.data, layer.shape_type, classes):
        yx = np.asarray(vertices, float)[:, -2:] * step + offset + 0.5  # napari centres → pixel corners
        if kind == "ellipse":
            centre = yx.mean(axis=0)
            a, b = (yx[1] - yx[0]) / 2, (yx[2] - yx[1]) / 2
            t = np.linspace(0, 2 * np.pi, 64, endpoint=False)[:, None]
            yx = centre + np.cos(t) * a + np.sin(t) * b
        elif kind not in ("rectangle", "polygon"):
            continue  # lines and paths enclose no area
        polygon = shapely.Polygon(yx[:, ::-1])
        out.append((polygon, {"objectType": "annotation", **({"class": name} if name else {})}))
    return out


def _raster(layer, step, offset) -> LabelRaster:
    data = layer.data[0] if layer.multiscale else layer.data
    if data.ndim != 2:
        raise ValueError(f"layer {layer.name!r}: labels of shape {data.shape} are not a 2-D image")
    if np.asarray(step).min() <= 0:
        raise ValueError(f"layer {layer.name!r}: a flipped layer (negative scale) cannot be an annotation")
    return LabelRaster(data, tuple(float(v) for v in step), tuple(float(v) for v in offset), label_names(layer))


def label_names(layer) -> dict[int, str | None]:
    """The class each value of a Labels layer names (module docstring); None: the value says nothing."""
    stored = napari_xt_meta(layer).get("annotation")
    if stored:
        values = {i: name for i, name in enumerate(stored["classes"])}
        if stored.get("zero") != BACKGROUND:
            values[0] = None
        values = {v: (None if name == UNANALYSED else name) for v, name in values.items()}
        return values
    table = layer.features
    column = next((c for c in CLASS_FEATURES if c in table.columns), None)
    if "index" in table.columns and column is not None:
        values = {int(v): (None if _blank(n) else str(n)) for v, n in zip(table["index"], table[column])}
        values.setdefault(0, None)
        if values[0] is not None and values[0].strip().lower() != BACKGROUND:
            values[0] = None  # 0 is what erasing paints: it never names a class but background
        return values
    data = layer.data[0] if layer.multiscale else layer.data
    top = _largest_value(data)
    return {0: None, **{v: f"class {v}" for v in range(1, top + 1)}}


def _largest_value(data) -> int:
    band = max(1, 2**24 // max(1, data.shape[-1]))
    return max((int(np.asarray(data[r : r + band]).max(initial=0)) for r in range(0, data.shape[0], band)), default=0)


def annotation_layer_kwargs(
    classes: list[str],
    colours: dict[str, str],
    name: str,
    image_layer,
    downsample: float = 1.0,
    display_names: dict[str, str] | None = None,
) -> dict:
    """Keyword arguments for a new, empty Labels layer to paint ``classes`` in (value i + 1 is class i, so that
    background can be painted too and 0 stays "nothing said"), aligned with ``image_layer``: one label pixel
    per ``downsample`` × ``downsample`` level-0 pixels, centred on them as a pyramid level is."""
    from napari_xt._napari.run_layers import display_name, label_colormap

    names = ["", *classes]
    return {
        "name": name,
        "scale": tuple(np.asarray(image_layer.scale[-2:], float) * downsample),
        "translate": tuple(
            np.asarray(image_layer.translate[-2:], float) + np.asarray(image_layer.scale[-2:]) * (downsample - 1) / 2
        ),
        "opacity": 0.6,
        "colormap": label_colormap(names, {**colours, BACKGROUND: "#9e9e9e"}, fallback="#ffcc00"),
        "features": {
            "index": np.arange(len(names)),
            "class": [display_name(n, {"display_names": display_names}) or "unlabelled" for n in names],
        },
        "metadata": {"napari_xt": {"annotation": {"classes": [None, *classes], "zero": "unlabelled"}}},
    }


def editable_copy(segmentation_layer, view_box: tuple[float, float, float, float] | None = None) -> tuple:
    """``(data, kwargs)`` of a Labels layer holding a copy of a run's segmentation (its analysis-level pixels
    over ``view_box``, a level-0 box, else over the run's last ROI), to paint corrections on: value i is class
    i, 0 is background, regions the run did not reach hold the value past the classes and say nothing. The run
    directory is not touched.

    Raises ``ValueError`` when the layer is no run's segmentation or the copy would be too large to paint."""
    from napari_xt.engine.run_reader import RunReader

    meta = napari_xt_meta(segmentation_layer)
    if meta.get("role") != "segmentation":
        raise ValueError(f"layer {segmentation_layer.name!r} is not a napari-xt segmentation: run xT first")
    reader = RunReader(meta["run_dir"])
    spec = reader.spec
    classes = list(spec["segmentation_classes"])
    ds = np.asarray(spec["downsample"], float)
    h, w = spec["image_shape"]
    rois = spec.get("rois") or [[0, 0, *spec["image_shape_level0"]]]
    box = np.asarray(rois[-1], float)
    if view_box is not None:
        seen = np.array(
            [max(box[0], view_box[0]), max(box[1], view_box[1]), min(box[2], view_box[2]), min(box[3], view_box[3])]
        )
        box = seen if (seen[2] > seen[0] and seen[3] > seen[1]) else box
    y0, x0 = (int(np.floor(v)) for v in box[:2] / ds)
    y1, x1 = min(h, int(np.ceil(box[2] / ds[0]))), min(w, int(np.ceil(box[3] / ds[1])))
    if (y1 - y0) * (x1 - x0) > MAX_COPY_PIXELS:
        raise ValueError(
            f"the copy would be {y1 - y0} × {x1 - x0} pixels; zoom in on the area to correct "
            f"(at most {MAX_COPY_PIXELS / 1e6:.0f} megapixels)"
        )
    level0 = segmentation_layer.data[0] if segmentation_layer.multiscale else segmentation_layer.data
    data = np.array(level0[y0:y1, x0:x1], dtype=np.uint8 if len(classes) < 255 else np.uint16)
    side = int(spec["region_size"])
    done = reader.done_mask()
    rows, cols = np.arange(y0, y1) // side, np.arange(x0, x1) // side
    data[~done[np.ix_(rows.clip(0, done.shape[0] - 1), cols.clip(0, done.shape[1] - 1))]] = len(classes)
    scale = np.asarray(segmentation_layer.scale[-2:], float)
    colours = segmentation_layer.colormap.color_dict if hasattr(segmentation_layer.colormap, "color_dict") else {}
    colours = {**colours, len(classes): np.zeros(4)}
    from napari.utils.colormaps import DirectLabelColormap

    from napari_xt._napari.run_layers import display_name, run_names

    image, model = run_names(meta["run_dir"], spec)
    names = [*classes, UNANALYSED]
    kwargs = {
        "name": f"{image} · corrections ({model})",
        "scale": tuple(scale),
        "translate": tuple(np.asarray(segmentation_layer.translate[-2:], float) + np.array([y0, x0]) * scale),
        "opacity": 0.6,
        "colormap": DirectLabelColormap(color_dict=colours),
        "features": {"index": np.arange(len(names)), "class": [display_name(n, spec) for n in names]},
        "metadata": {"napari_xt": {"annotation": {"classes": names, "zero": BACKGROUND, "from_run": meta["run_dir"]}}},
    }
    if getattr(segmentation_layer, "units", None) is not None:
        kwargs["units"] = tuple(segmentation_layer.units[-2:])
    return data, kwargs


MAX_COPY_PIXELS = 64_000_000
