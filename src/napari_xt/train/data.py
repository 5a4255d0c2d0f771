"""Training data: sources of (image, class labels, point objects) and crops of N × N regions from them.

A source is either a synthetic scene (``synthetic:sar`` / ``synthetic:slide``) or a user's own files: an image
(anything ``open_pyramid`` reads), a label image of the same size (zarr or TIFF, class per pixel) and/or points
(CSV with ``y, x, class[, size]`` columns in level-0 pixels, or GeoJSON Points as QuPath exports them).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_xt.data.synthetic import ObjectTable, SarScene, SlideScene
from napari_xt.data.worlds import synthetic_scene
from napari_xt.io import ImageReadError, Pyramid, open_pyramid
from napari_xt.train.annotations import Annotations, read_annotations
from napari_xt.train.targets import IGNORE, detection_targets

DEFAULT_OBJECT_SIZE = 16.0
MATERIALISE_BYTES = 2**30


@dataclass
class Source:
    """One training or evaluation image with its truth, analysed at ``level``."""

    pyramid: Pyramid
    level: int
    segmentation_classes: list[str]
    detection_classes: list[str]
    label_levels: list | None = None  # per pyramid level, lazy (Y, X) class arrays; None: no segmentation truth
    points: ObjectTable | None = None
    annotations: Annotations | None = None  # QuPath / GIS annotations (segmentation truth, unlabelled elsewhere)
    scene: SarScene | SlideScene | None = None
    description: str = ""
    colours: dict = field(default_factory=dict)
    _image: np.ndarray | None = field(default=None, repr=False)
    _labels: np.ndarray | None = field(default=None, repr=False)
    _objects: ObjectTable | None = field(default=None, repr=False)

    def materialise(self, max_bytes: int = MATERIALISE_BYTES) -> Source:
        """Hold the analysis level and its labels in memory when they fit in ``max_bytes`` (a training scene, an
        image at a coarse level); a slide at full resolution stays on disk and each crop reads its window.
        The object list is always loaded."""
        level = self.pyramid.levels[self.level]
        h, w = (int(n) for n in level.shape[:2])
        if level.nbytes + 2 * h * w <= max_bytes:
            self._image = np.asarray(level)
            self._labels = self.labels(0, 0, h, w)
        self._objects = self.objects()
        return self

    def pixels(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Analysis-level pixels ``[y0:y1, x0:x1]`` as ``(Y, X, C)``."""
        if self._image is not None:
            return self._image[y0:y1, x0:x1]
        return np.asarray(self.pyramid.levels[self.level][y0:y1, x0:x1])

    @property
    def downsample(self) -> float:
        return float(self.pyramid.downsample[self.level][0])

    def level_shape(self) -> tuple[int, int]:
        return tuple(int(n) for n in self.pyramid.levels[self.level].shape[:2])

    def labels(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray | None:
        """Class labels of analysis pixels ``[y0:y1, x0:x1]`` (None without segmentation truth)."""
        if self._labels is not None:
            return self._labels[y0:y1, x0:x1]
        if self.scene is not None:
            return self.scene.render(self.level, y0, y1, x0, x1, "labels")
        if self.annotations is not None and self.annotations.segmentation_classes:
            return self.annotations.labels(y0, x0, y1, x1, self.downsample)
        if self.label_levels is None:
            return None
        return np.asarray(self.label_levels[self.level][y0:y1, x0:x1])

    def objects(self, box: tuple[float, float, float, float] | None = None) -> ObjectTable:
        """Point objects whose centre lies in the level-0 ``box`` (the whole image when None)."""
        if self._objects is not None:
            points = self._objects
        elif self.scene is not None:
            return self.scene.objects(None if box is None else tuple(int(v) for v in box))
        else:
            points = self.points or ObjectTable(np.zeros(0), np.zeros(0), np.zeros(0, np.int64), np.zeros(0))
        if box is None:
            return points
        y0, x0, y1, x1 = box
        keep = (points.y >= y0) & (points.y < y1) & (points.x >= x0) & (points.x < x1)
        return ObjectTable(points.y[keep], points.x[keep], points.label[keep], points.size[keep])


def synthetic_source(kind: str, size: int, seed: int, level: int) -> Source:
    scene = synthetic_scene(kind, size, seed)
    return Source(
        pyramid=scene.pyramid(),
        level=level,
        segmentation_classes=list(scene.label_classes),
        detection_classes=list(scene.object_classes),
        scene=scene,
        description=f"synthetic:{kind} size={size} seed={seed}",
    )


def file_source(
    image: str,
    level: int,
    labels: str | None,
    points: str | None,
    classes: list[str],
    label_names: list[str] | None = None,
    annotations: str | None = None,
    known: tuple[list[str], list[str]] | None = None,
) -> Source:
    """A user's image with a label image, annotations (QuPath GeoJSON, GIS vectors; ``train.annotations``)
    and/or points; ``classes`` names the detection classes in order, ``label_names`` the segmentation classes
    of a label image (label value i is ``label_names[i]``; default ``class i``); ``known``: the classes of a
    checkpoint being fine-tuned: annotations whose classes are all among them keep its indices (and its heads)."""
    pyramid = open_pyramid(image)
    if annotations:
        if labels:
            raise ValueError(f"{image}: give --labels or --annotations, not both")
        found = read_annotations(annotations, pyramid, classes or None, known)
        if points:
            found.points = read_points(points, found.detection_classes or classes)
        return annotation_source(pyramid, level, found, f"{image} annotations={annotations} points={points}", classes)
    label_levels = None
    n_classes = 0
    if labels:
        label_pyramid = open_pyramid(labels)
        if label_pyramid.shape[:2] != pyramid.shape[:2]:
            raise ImageReadError(
                labels,
                f"is {label_pyramid.shape[:2]} but the image is {pyramid.shape[:2]}",
                "the label image must have the image's level-0 size",
            )
        label_levels = [_nearest_level(label_pyramid, pyramid, i) for i in range(len(pyramid.levels))]
        n_classes = label_class_count(label_pyramid, labels)
    table = read_points(points, classes) if points else None
    segmentation_classes = [f"class {i}" for i in range(n_classes)] if labels else []
    if labels and label_names:
        if len(label_names) < n_classes:
            raise ValueError(
                f"{labels}: holds label values up to {n_classes - 1} but {len(label_names)} class names were given"
            )
        segmentation_classes = list(label_names)
    return Source(
        pyramid,
        level,
        segmentation_classes,
        list(classes),
        label_levels,
        table,
        description=f"{image} labels={labels} points={points}",
    )


def annotation_source(
    pyramid: Pyramid, level: int, found: Annotations, description: str, classes: list[str] = ()
) -> Source:
    """A source whose truth is ``found`` (a file's annotations or napari layers'): unlabelled elsewhere."""
    return Source(
        pyramid,
        level,
        found.segmentation_classes,
        found.detection_classes or list(classes),
        points=found.points,
        annotations=found,
        description=description,
        colours=found.colours,
    )


def label_class_count(labels: Pyramid, path) -> int:
    """How many segmentation classes a label image holds: its largest value at level 0 plus one, read chunk by
    chunk (never from a coarser level: averaging invents values and drops small objects)."""
    import dask

    values = labels.levels[0][..., 0]
    if labels.n_channels != 1:
        raise ImageReadError(path, f"has {labels.n_channels} channels", "a label image holds one class index per pixel")
    if not np.issubdtype(values.dtype, np.integer):
        raise ImageReadError(
            path, f"holds {values.dtype} values, not class indices", "save it with an integer type (uint8, uint16)"
        )
    low, high = (int(v) for v in dask.compute(values.min(), values.max()))
    if low < 0:
        raise ImageReadError(path, f"holds negative labels ({low})", "classes are 0, 1, 2, …")
    return high + 1


def _nearest_level(labels: Pyramid, image: Pyramid, level: int):
    """Labels at the image's ``level`` by nearest sampling of label level 0 (labels must not be averaged)."""
    step = int(round(image.downsample[level][0]))
    return labels.levels[0][::step, ::step, 0][: image.levels[level].shape[0], : image.levels[level].shape[1]]


def read_points(path: str, classes: list[str]) -> ObjectTable:
    """Points from CSV (``y, x, class[, size]``: level-0 pixel centres) or GeoJSON Points (QuPath:
    ``classification.name``; QuPath's pixel convention puts (0, 0) at the top-left pixel's corner, so half a
    pixel is taken off to get pixel centres)."""
    index = {name: i for i, name in enumerate(classes)}
    ys, xs, labels, sizes = [], [], [], []
    if str(path).lower().endswith((".geojson", ".json")):
        data = json.loads(Path(path).read_text())
        for feature in data.get("features", []):
            geometry, properties = feature.get("geometry") or {}, feature.get("properties") or {}
            if geometry.get("type") != "Point":
                continue
            name = (properties.get("classification") or {}).get("name", classes[0])
            x, y = (float(v) - 0.5 for v in geometry["coordinates"][:2])
            measurements = properties.get("measurements") or {}
            size = measurements.get("Size px", measurements.get("size", DEFAULT_OBJECT_SIZE))
            ys.append(y), xs.append(x), labels.append(_class_index(index, name, path)), sizes.append(float(size))
    else:
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                ys.append(float(row["y"])), xs.append(float(row["x"]))
                labels.append(_class_index(index, row.get("class", classes[0]), path))
                sizes.append(float(row.get("size") or DEFAULT_OBJECT_SIZE))
    return ObjectTable(np.array(ys), np.array(xs), np.array(labels, dtype=np.int64), np.array(sizes, dtype=float))


def _class_index(index: dict, name: str, path) -> int:
    if name not in index:
        raise ValueError(f"{path}: class {name!r} is not one of the model's detection classes {sorted(index)}")
    return index[name]


def sample_crop(source: Source, crop: int, rng: np.random.Generator, object_bias: float = 0.8) -> dict:
    """A crop of ``crop`` analysis pixels: image ``(C, H, W)``, segmentation ``(H, W)`` and detection targets.

    With probability ``object_bias`` the crop is centred near a random object (objects are rare); otherwise,
    for annotated images, inside an annotated area (chosen by its area: outside them nothing is labelled), else
    anywhere.
    The object stays well inside the crop (jitter of an eighth of it), so that the context its label depends on
    is in the crop too.
    """
    height, width = source.level_shape()
    ds = source.downsample
    objects = source.objects()
    boxes = source.annotations.boxes(ds) if source.annotations is not None else np.zeros((0, 4))
    if len(objects) and rng.random() < object_bias:
        pick = rng.integers(len(objects))
        cy, cx = objects.y[pick] / ds, objects.x[pick] / ds
        jitter = crop // 8
        y0 = int(np.clip(cy - crop / 2 + rng.integers(-jitter, jitter + 1), 0, max(0, height - crop)))
        x0 = int(np.clip(cx - crop / 2 + rng.integers(-jitter, jitter + 1), 0, max(0, width - crop)))
    elif len(boxes):
        # annotated areas hold all the truth there is: a crop centred in one, chosen by its area
        areas = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1.0)
        by0, bx0, by1, bx1 = boxes[rng.choice(len(boxes), p=areas / areas.sum())]
        cy, cx = rng.uniform(by0, max(by1, by0 + 1)), rng.uniform(bx0, max(bx1, bx0 + 1))
        y0 = int(np.clip(cy - crop / 2, 0, max(0, height - crop)))
        x0 = int(np.clip(cx - crop / 2, 0, max(0, width - crop)))
    else:
        y0 = int(rng.integers(0, max(1, height - crop + 1)))
        x0 = int(rng.integers(0, max(1, width - crop + 1)))
    y1, x1 = y0 + crop, x0 + crop
    image = source.pixels(y0, x0, y1, x1).astype(np.float32)
    pad = ((0, crop - image.shape[0]), (0, crop - image.shape[1]), (0, 0))
    image = np.pad(image, pad, constant_values=np.nan).transpose(2, 0, 1)
    labels = source.labels(y0, x0, y1, x1)
    segmentation = np.full((crop, crop), IGNORE, np.int64)
    if labels is not None:
        segmentation[: labels.shape[0], : labels.shape[1]] = labels
    inside = source.objects((y0 * ds, x0 * ds, y1 * ds, x1 * ds))
    ys = (inside.y + 0.5) / ds - 0.5 - y0  # level-0 pixel centres → crop analysis pixels
    xs = (inside.x + 0.5) / ds - 0.5 - x0
    targets = detection_targets(ys, xs, inside.label, inside.size / ds, (crop, crop))
    cells = targets["heatmap"].shape
    annotated = np.ones(cells, bool)
    if source.annotations is not None and source.annotations.points is None:
        annotated[:] = False  # no object was marked at all: the areas say nothing about objects, either way
    elif source.annotations is not None and source.annotations.says_where_objects_are_not:
        # only annotated areas say where objects are not: elsewhere the heatmap learns nothing either way
        stride = crop // cells[0]
        known = (segmentation != IGNORE)[: cells[0] * stride, : cells[1] * stride]
        annotated = known.reshape(cells[0], stride, cells[1], stride).any(axis=(1, 3)) | targets["centres"]
    targets["annotated"] = annotated
    return {"image": image, "segmentation": segmentation, **targets, "origin": (y0, x0)}
