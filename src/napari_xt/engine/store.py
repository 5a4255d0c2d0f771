"""The run directory ``*.xt.zarr`` (zarr v3, OME-Zarr 0.5 metadata), written batch by batch so that an
interruption loses nothing already computed, and a record of finished regions so that a run resumes.

Layout::

    run.xt.zarr/
      zarr.json                       attrs: napari_xt (provenance, status), ome (labels list)
      labels/segmentation/0, 1, …     class labels at the analysis level and coarser (multiscale, NGFF 0.5)
      probabilities/0, 1, …           optional class probabilities (c, y, x), float16, the same levels
      regions/done, regions/active    one flag per global grid region
      detections/parts.csv            appended per batch (row, col, y, x, label, score, size), fsynced
      detections/y, x, label, …       the merged table (written when the run finishes)
      detections.csv, detections.geojson

Per batch the order is: labels, then detection lines (fsync), then the ``done`` flags. A region is only
``done`` once everything it produced is on disk; on resume, lines of regions not marked done are dropped.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import zarr

from napari_xt.engine.detections import COLUMNS, DetectionTable
from napari_xt.engine.exports import hex_to_rgba, write_csv, write_geojson
from napari_xt.io.pyramid import ome_unit

RUN_FORMAT = "napari-xt-run/1"
IDENTITY_KEYS = (
    "image_signature",
    "checkpoint_sha256",
    "level",
    "resample",
    "region_size",
    "image_shape",
    "context_from",
)


class OutputExistsError(FileExistsError):
    """The output path holds something this run must not overwrite."""


class StoreError(OSError):
    """The run directory cannot be created or written (permissions, full disk, …)."""


def is_run_dir(path: str | Path) -> bool:
    path = Path(path)
    meta = path / "zarr.json"
    if not meta.exists():
        return False
    try:
        return json.loads(meta.read_text()).get("attributes", {}).get("napari_xt", {}).get("format") == RUN_FORMAT
    except (OSError, json.JSONDecodeError):
        return False


class OutputStore:
    """Write side of a run directory. Use ``OutputStore.open(path, spec, overwrite)``."""

    def __init__(self, path: Path, group: zarr.Group):
        self.path = path
        self.group = group
        self.spec = dict(group.attrs["napari_xt"])
        self._parts = path / "detections" / "parts.csv"

    # -- creating and resuming ----------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, spec: dict, overwrite: bool = False) -> OutputStore:
        """Create the run directory, or resume the same run there.

        Args:
            spec: identity and settings of the run (image signature, checkpoint sha256, level, resample,
                region size, image shape, grid shape, classes, colours, geometry, …), JSON-serialisable.
            overwrite: replace whatever is at ``path``.

        Raises:
            OutputExistsError: ``path`` holds something else (another run, or not a run at all).
            StoreError: the directory cannot be written.
        """
        path = Path(path)
        if path.exists():
            if overwrite:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            elif not is_run_dir(path):
                raise OutputExistsError(
                    f"{path}: exists and is not a napari-xt run directory; choose another output or pass --overwrite"
                )
            else:
                group = zarr.open_group(str(path), mode="r+")
                previous = dict(group.attrs["napari_xt"])
                different = [k for k in IDENTITY_KEYS if _canonical(previous.get(k)) != _canonical(spec.get(k))]
                if different:
                    raise OutputExistsError(
                        f"{path}: holds a run with other settings ({', '.join(different)} differ); choose another "
                        "output or pass --overwrite"
                    )
                store = cls(path, group)
                store.update(status="running" if previous.get("status") != "finished" else "finished")
                store._drop_unfinished_parts()
                return store
        try:
            group = zarr.open_group(str(path), mode="w", zarr_format=3)
            _create_layout(group, path, spec)
        except OSError as error:
            reason = error.strerror or str(error)
            raise StoreError(
                f"{path}: cannot write the run directory here ({reason}); choose another output"
            ) from error
        return cls(path, group)

    # -- during the run -----------------------------------------------------------------------------------

    @property
    def status(self) -> str:
        return self.group.attrs["napari_xt"].get("status", "")

    def done_mask(self) -> np.ndarray:
        return np.asarray(self.group["regions/done"][:])

    def mark_active(self, rows: range, cols: range, active: np.ndarray) -> None:
        self.group["regions/active"][rows.start : rows.stop, cols.start : cols.stop] = active

    def label_levels(self) -> list:
        return _levels(self.group["labels/segmentation"])

    def probability_levels(self) -> list:
        return _levels(self.group["probabilities"]) if "probabilities" in self.group else []

    def write_batch(self, results: list[dict]) -> None:
        """Write finished regions: ``{"row", "col", "box": analysis (y0, x0, y1, x1), "labels", "detections"}``
        (and ``"probabilities"`` ``(K, h, w)`` when the run keeps them).

        Every label level is written at once (nearest sampling), so a viewer sees the regions at every zoom
        while the run goes on. Region boxes start at multiples of the region size, so they stay aligned.
        """
        labels, probabilities = self.label_levels(), self.probability_levels()
        for result in results:
            y0, x0, _, _ = result["box"]
            write_into_levels(labels, result["labels"], y0, x0)
            if "probabilities" in result:
                write_into_levels(probabilities, result["probabilities"], y0, x0)
        lines = []
        for result in results:
            table: DetectionTable = result["detections"]
            for i in range(len(table)):
                lines.append(
                    f"{result['row']},{result['col']},{table.y[i]:.3f},{table.x[i]:.3f},{int(table.label[i])},"
                    f"{table.score[i]:.5f},{table.size[i]:.3f}\n"
                )
        if lines:
            with open(self._parts, "a") as handle:
                handle.writelines(lines)
                handle.flush()
                os.fsync(handle.fileno())
        done = self.group["regions/done"]
        for result in results:
            done[result["row"], result["col"]] = True

    def region_detections(self) -> DetectionTable:
        """All detections written so far (finished regions only), before merging."""
        rows = self._read_parts()
        if rows.size == 0:
            return DetectionTable.empty()
        return DetectionTable(rows[:, 2], rows[:, 3], rows[:, 4].astype(np.int64), rows[:, 5], rows[:, 6])

    def update(self, **values) -> None:
        attrs = dict(self.group.attrs["napari_xt"])
        attrs.update(values)
        self.group.attrs["napari_xt"] = json.loads(json.dumps(attrs, default=str))
        self.spec = attrs

    # -- at the end ---------------------------------------------------------------------------------------

    def finish(self, merged: DetectionTable, timings: dict, geotransform=None) -> None:
        """Write the merged detections and exports, and mark the run finished."""
        group = self.group.require_group("detections")
        for column in COLUMNS:
            values = getattr(merged, column)
            if column in group:
                del group[column]
            group.create_array(column, data=np.asarray(values), chunks=(max(1, min(len(values), 1 << 16)),))
        names, colours = self.spec["detection_classes"], self.spec.get("colours", {})
        if names:
            write_csv(merged, self.path / "detections.csv", names, geotransform)
            write_geojson(merged, self.path / "detections.geojson", names, colours)
            if geotransform:
                write_geojson(merged, self.path / "detections.map.geojson", names, colours, geotransform)
        self.update(
            status="finished", finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"), timings=timings, n_detections=len(merged)
        )

    # -- internals ----------------------------------------------------------------------------------------

    def _read_parts(self) -> np.ndarray:
        if not self._parts.exists() or self._parts.stat().st_size == 0:
            return np.zeros((0, 7))
        lines = [line for line in self._parts.read_text().splitlines() if line.count(",") == 6]
        if not lines:
            return np.zeros((0, 7))
        rows = np.array([[float(v) for v in line.split(",")] for line in lines])
        done = self.done_mask()
        keep = done[rows[:, 0].astype(int), rows[:, 1].astype(int)]
        return rows[keep]

    def _drop_unfinished_parts(self) -> None:
        """Rewrite the parts file with only lines of finished regions (a killed batch may have left others)."""
        rows = self._read_parts()
        tmp = self._parts.with_name("parts.csv.tmp")
        with open(tmp, "w") as handle:
            for r in rows:
                handle.write(f"{int(r[0])},{int(r[1])},{r[2]:.3f},{r[3]:.3f},{int(r[4])},{r[5]:.5f},{r[6]:.3f}\n")
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self._parts)


def write_into_levels(levels: list, block: np.ndarray, y0: int, x0: int) -> None:
    """Write ``block`` ``(..., h, w)`` of analysis pixels starting at ``(y0, x0)`` into every level; level k holds
    every ``2**k``-th analysis pixel (nearest sampling), whatever the block's alignment."""
    for k, level in enumerate(levels):
        step = 2**k
        oy, ox = -y0 % step, -x0 % step  # the block's first pixels that level k keeps
        part = block[..., oy::step, ox::step]
        ly0, lx0 = (y0 + oy) // step, (x0 + ox) // step
        level[..., ly0 : ly0 + part.shape[-2], lx0 : lx0 + part.shape[-1]] = part


def label_level_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """Shapes of the label levels of a run: halved (rounding up) until both sides fit in 1024."""
    levels = [(height, width)]
    while max(levels[-1]) > 1024:
        levels.append((-(-levels[-1][0] // 2), -(-levels[-1][1] // 2)))
    return levels


def _canonical(value):
    return json.loads(json.dumps(value, default=str)) if value is not None else None


def _levels(group: zarr.Group) -> list:
    return [group[d["path"]] for d in group.attrs["ome"]["multiscales"][0]["datasets"]]


def _multiscales(name: str, spec: dict, n_levels: int, channel_axis: bool = False) -> dict:
    """NGFF 0.5 ``multiscales`` of levels that halve the analysis level, placed on level-0 physical coordinates
    (level k's pixel centres are the centres of 2**k × 2**k blocks of analysis pixels)."""
    scale, translate, unit = spec["layer_scale"], spec["layer_translate"], spec.get("unit")
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    if unit:
        for axis in axes:
            axis["unit"] = ome_unit(unit)
    lead_axes, lead_scale, lead_translate = (
        ([{"name": "c", "type": "channel"}], [1.0], [0.0]) if channel_axis else ([], [], [])
    )
    datasets = []
    for k in range(n_levels):
        factor = 2**k
        transforms = [
            {"type": "scale", "scale": [*lead_scale, scale[0] * factor, scale[1] * factor]},
            {
                "type": "translation",
                "translation": [
                    *lead_translate,
                    translate[0] + (factor - 1) * scale[0] / 2,
                    translate[1] + (factor - 1) * scale[1] / 2,
                ],
            },
        ]
        datasets.append({"path": str(k), "coordinateTransformations": transforms})
    return {"name": name, "axes": [*lead_axes, *axes], "datasets": datasets}


def _create_layout(group: zarr.Group, path: Path, spec: dict) -> None:
    spec = json.loads(json.dumps({**spec, "format": RUN_FORMAT, "status": "running"}, default=str))
    height, width = spec["image_shape"]
    region = spec["region_size"]
    classes = spec.get("segmentation_classes", [])
    labels_group = group.require_group("labels")
    labels_group.attrs["ome"] = {"version": "0.5", "labels": ["segmentation"]}
    segmentation = labels_group.require_group("segmentation")
    dtype = "uint8" if max(1, len(classes)) < 256 else "uint16"
    levels = label_level_shapes(height, width)
    side = max(region, 256)
    for k, shape in enumerate(levels):
        chunk = (min(side, shape[0]), min(side, shape[1]))
        segmentation.create_array(str(k), shape=shape, chunks=chunk, dtype=dtype, fill_value=0)
    colours = spec.get("colours", {})
    segmentation.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [_multiscales("segmentation", spec, len(levels))],
        "image-label": {
            "version": "0.5",
            "colors": [
                {"label-value": i, "rgba": hex_to_rgba(colours.get(name, "#808080"))} for i, name in enumerate(classes)
            ],
            "properties": [{"label-value": i, "class": name} for i, name in enumerate(classes)],
        },
    }
    if spec.get("save_probabilities") and classes:
        probabilities = group.require_group("probabilities")
        for k, shape in enumerate(levels):
            chunk = (1, min(side, shape[0]), min(side, shape[1]))
            probabilities.create_array(
                str(k), shape=(len(classes), *shape), chunks=chunk, dtype="float16", fill_value=0
            )
        probabilities.attrs["ome"] = {
            "version": "0.5",
            "multiscales": [_multiscales("probabilities", spec, len(levels), channel_axis=True)],
            "omero": {"channels": [{"label": name} for name in classes]},
        }
    grid_shape = tuple(spec["grid_shape"])
    regions = group.require_group("regions")
    for name in ("done", "active"):
        regions.create_array(
            name,
            shape=grid_shape,
            chunks=(min(256, grid_shape[0]), min(256, grid_shape[1])),
            dtype="bool",
            fill_value=False,
        )
    detections = path / "detections"
    detections.mkdir(parents=True, exist_ok=True)
    (detections / "parts.csv").touch()
    group.attrs["napari_xt"] = spec
