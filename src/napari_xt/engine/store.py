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

import fcntl
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from napari_xt._atomic import write_text_atomic
from napari_xt.engine import ngff
from napari_xt.engine.detections import COLUMNS, DetectionTable
from napari_xt.engine.exports import ExportSettings, PolygonsAhead, export_run, hex_to_rgba
from napari_xt.engine.grid import set_cells
from napari_xt.engine.identity import ADOPTED_OUTPUTS, differences, explain
from napari_xt.engine.run_reader import parse_parts, run_attributes, table_of_parts
from napari_xt.engine.stages import label_dtype
from napari_xt.engine.summary import write_summary
from napari_xt.io.pyramid import in_this_thread

logger = logging.getLogger(__name__)

RUN_FORMAT = "napari-xt-run/1"
LOCK_FILE = ".napari-xt.lock"


class OutputExistsError(FileExistsError):
    """The output path holds something this run must not overwrite."""


class RunInUseError(OutputExistsError):
    """Another process is writing this run directory."""


class StoreError(OSError):
    """The run directory cannot be created or written (permissions, full disk, …)."""


def is_run_dir(path: str | Path) -> bool:
    return run_attributes(path).get("format") == RUN_FORMAT


def _half_created(path: Path) -> bool:
    """A directory an interrupted creation left (our layout without the finished attributes)."""
    return path.is_dir() and not is_run_dir(path) and (path / "regions").is_dir() and (path / "labels").is_dir()


class OutputStore:
    """Write side of a run directory. Use ``OutputStore.open(path, spec, overwrite)``; ``close()`` unlocks it."""

    def __init__(self, path: Path, group: zarr.Group, lock=None):
        self.path = path
        self.group = group
        self.spec = dict(group.attrs["napari_xt"])
        self._parts = path / "detections" / "parts.csv"
        self._lock = lock

    # -- creating and resuming ----------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, spec: dict, overwrite: bool = False, replace_stale: bool = False) -> OutputStore:
        """Create the run directory, or resume the same run there, holding its lock until ``close()``.

        Args:
            spec: identity and settings of the run (``identity.IDENTITY_KEYS`` and the rest), JSON-serialisable.
            overwrite: replace whatever is at ``path``.
            replace_stale: replace a run directory whose identity differs (a cache the caller owns).

        Raises:
            OutputExistsError: ``path`` holds something else (another run, or not a run at all).
            RunInUseError: another process is writing the run directory.
            StoreError: the directory cannot be written.
        """
        path = Path(path)
        try:
            if path.exists() and not path.is_dir() and not overwrite:
                raise OutputExistsError(f"{path}: is a file, not a run directory; choose another output")
            if path.exists() and not overwrite and not is_run_dir(path) and not _half_created(path):
                raise OutputExistsError(
                    f"{path}: exists and is not a napari-xt run directory; choose another output or pass --overwrite"
                )
            if path.is_dir() and (is_run_dir(path) or _half_created(path)):
                lock = _RunLock.acquire(path)
                try:
                    return cls._resume_or_replace(path, spec, overwrite, replace_stale, lock)
                except BaseException:
                    lock.release()
                    raise
            if path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            return cls._create(path, spec)
        except OSError as error:
            if isinstance(error, OutputExistsError | StoreError):
                raise
            reason = error.strerror or str(error)
            raise StoreError(
                f"{path}: cannot write the run directory here ({reason}); choose another output"
            ) from error

    @classmethod
    def _resume_or_replace(cls, path: Path, spec: dict, overwrite: bool, replace_stale: bool, lock) -> OutputStore:
        previous = run_attributes(path)
        different = differences(previous, spec) if is_run_dir(path) else ["half-created"]
        if overwrite or different == ["half-created"] or (different and replace_stale):
            lock.release()
            shutil.rmtree(path)
            return cls._create(path, spec)
        if different:
            raise OutputExistsError(
                f"{path}: holds another run ({explain(different)}); pass --overwrite to replace it, or choose "
                "another --out"
            )
        group = zarr.open_group(str(path), mode="r+")
        store = cls(path, group, lock)
        kept = {key: previous[key] for key in ADOPTED_OUTPUTS if key in previous}
        store.update(status="running" if previous.get("status") != "finished" else "finished", **kept)
        store._check_done_flags()
        store._drop_unfinished_parts()
        return store

    @classmethod
    def _create(cls, path: Path, spec: dict) -> OutputStore:
        """Build the layout in a hidden sibling folder and rename it into place, so ``path`` is never half-made."""
        path.parent.mkdir(parents=True, exist_ok=True)
        for leftover in path.parent.glob(f".{path.name}.creating-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        building = Path(tempfile.mkdtemp(prefix=f".{path.name}.creating-", dir=path.parent))
        try:
            group = zarr.open_group(str(building), mode="w", zarr_format=3)
            _create_layout(group, building, spec)
            os.replace(building, path)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        lock = _RunLock.acquire(path)
        return cls(path, zarr.open_group(str(path), mode="r+"), lock)

    def close(self) -> None:
        """Release the run directory's lock (the run is over, or was interrupted)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

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

    def write_batch(self, results: list) -> None:
        """Write finished regions (``stages.RegionResult``): labels, probabilities when the run keeps them,
        detection lines (fsynced), and only then their ``done`` flags.

        Every label level is written at once (nearest sampling), so a viewer sees the regions at every zoom
        while the run goes on. Region boxes start at multiples of the region size, so they stay aligned.
        """
        labels, probabilities = self.label_levels(), self.probability_levels()
        for run in side_by_side(results):  # one write per run of neighbours: whole chunks, fewer rewrites
            y0, x0, _, _ = run[0].box
            write_into_levels(labels, np.concatenate([r.labels for r in run], axis=-1), y0, x0)
            if probabilities and run[0].probabilities is not None:
                write_into_levels(probabilities, np.concatenate([r.probabilities for r in run], axis=-1), y0, x0)
        lines = []
        for result in results:
            table: DetectionTable = result.detections
            for i in range(len(table)):
                lines.append(
                    f"{result.row},{result.col},{table.y[i]:.3f},{table.x[i]:.3f},{int(table.label[i])},"
                    f"{table.score[i]:.5f},{table.size[i]:.3f}\n"
                )
        if lines:
            with open(self._parts, "a") as handle:
                handle.writelines(lines)
                handle.flush()
                os.fsync(handle.fileno())
        positions = np.array([(result.row, result.col) for result in results])
        counts = self.group["regions/class_pixels"]
        n_classes = counts.shape[2]
        histograms = [np.bincount(result.labels.ravel(), minlength=n_classes)[:n_classes] for result in results]
        set_cells(counts, positions, np.array(histograms, dtype=np.uint32))
        set_cells(self.group["regions/done"], positions, True)  # last: the batch's regions are done together

    def write_preview(self, pyramid) -> None:
        """Fill the root preview (nearest samples of the coarsest pyramid level that is fine enough) and its
        display window, once per run directory."""
        if self.spec.get("preview_written"):
            return
        if "ome" not in self.group.attrs:  # a run directory from before the root was an image: add it
            image = {"image_dtype": str(pyramid.dtype), "channel_names": list(pyramid.channel_names)}
            _create_preview(self.group, {**self.spec, **image})
        _first, shapes = preview_levels(*self.spec["image_shape"])
        height, width = shapes[0]
        level0_height, level0_width = self.spec["image_shape_level0"]
        want_y, want_x = level0_height / height, level0_width / width  # level-0 pixels per preview pixel
        fine_enough = [i for i, (dy, dx) in enumerate(pyramid.downsample) if dy <= want_y and dx <= want_x]
        index = max(fine_enough) if fine_enough else 0
        level = pyramid.levels[index]
        dy, dx = pyramid.downsample[index]
        rows = np.minimum(((np.arange(height) + 0.5) * want_y / dy).astype(int), level.shape[0] - 1)
        cols = np.minimum(((np.arange(width) + 0.5) * want_x / dx).astype(int), level.shape[1] - 1)
        preview = np.moveaxis(_nearest_samples(level, rows, cols), 2, 0)
        arrays = _levels(self.group)
        for k, array in enumerate(arrays):
            array[:] = preview[:, :: 2**k, :: 2**k][:, : array.shape[1], : array.shape[2]]
        attrs = dict(self.group.attrs["ome"])
        if preview.dtype.kind == "f" or preview.dtype.itemsize > 1:
            finite = preview[np.isfinite(preview)] if preview.dtype.kind == "f" else preview.ravel()
            low, high = np.percentile(finite, [0.5, 99.5]).tolist() if finite.size else [0.0, 1.0]
        else:
            low, high = 0.0, 255.0
        for channel in attrs.get("omero", {}).get("channels", []):
            channel["window"] = {"start": low, "end": high, "min": low, "max": high}
        self.group.attrs["ome"] = attrs
        self.update(preview_written=True)

    def region_detections(self) -> DetectionTable:
        """All detections written so far (finished regions only), before merging."""
        return table_of_parts(self._read_parts())

    def update(self, **values) -> None:
        attrs = dict(self.group.attrs["napari_xt"])
        attrs.update(values)
        self.group.attrs["napari_xt"] = json.loads(json.dumps(attrs, default=str))
        self.spec = attrs

    # -- at the end ---------------------------------------------------------------------------------------

    def finish(
        self,
        merged: DetectionTable,
        timings: dict,
        exports: ExportSettings,
        no_foreground: bool = False,
        polygons: PolygonsAhead | None = None,
    ) -> None:
        """Write the merged detections, the exports (``engine.exports``: detections scoring at least the
        threshold, the segmentation polygons, map exports) and the summary, and mark the run finished
        (``no_foreground``: there was nothing to analyse; ``polygons``: the polygons traced while the labels were
        written). The export time (what the run waited for here) joins the timings."""
        started = time.perf_counter()
        group = self.group.require_group("detections")
        for column in COLUMNS:
            values = getattr(merged, column)
            if column in group:
                del group[column]
            group.create_array(column, data=np.asarray(values), chunks=(max(1, min(len(values), 1 << 16)),))
        exported = merged.above(exports.threshold)
        manifest = export_run(self.path, self.spec, self.label_levels()[0], exported, exports, polygons)
        for name, reason in manifest["skipped"].items():
            logger.warning("napari-xt: %s: no %s: %s", self.path, name, reason)
        seconds = time.perf_counter() - started
        timings = {**timings, "export": seconds, "total": timings.get("total", 0.0) + seconds}
        self.update(
            status="finished",
            finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
            timings=timings,
            n_detections=len(merged),
            export_threshold=exports.threshold,
            exports=exports.to_dict(),
            export_files=manifest["files"],
            exports_skipped=manifest["skipped"],
            polygons_traced_during_run=None if polygons is None else round(polygons.seconds, 3),
            n_exported=len(exported),
            no_foreground=no_foreground,
        )
        write_summary(
            self.path, self.spec, np.asarray(self.group["regions/class_pixels"][:]), self.done_mask(), exported
        )

    # -- internals ----------------------------------------------------------------------------------------

    def _read_parts(self) -> np.ndarray:
        text = self._parts.read_text() if self._parts.exists() else ""
        return parse_parts(text, self.done_mask())

    def _check_done_flags(self) -> None:
        """A damaged record of finished regions cannot be trusted: start it again (every region is recomputed)."""
        try:
            self.done_mask()
        except Exception as error:  # any zarr or codec failure on the flags
            logger.warning(
                "napari-xt: %s: the record of finished regions is damaged (%s); recomputing", self.path, error
            )
            grid_shape = tuple(self.spec["grid_shape"])
            regions = self.group["regions"]
            del regions["done"]
            _flags(regions, "done", grid_shape)
            self._parts.write_text("")

    def _drop_unfinished_parts(self) -> None:
        """Rewrite the parts file with only lines of finished regions (a killed batch may have left others)."""
        rows = self._read_parts()
        lines = (f"{int(r[0])},{int(r[1])},{r[2]:.3f},{r[3]:.3f},{int(r[4])},{r[5]:.5f},{r[6]:.3f}\n" for r in rows)
        write_text_atomic(self._parts, "".join(lines))


def side_by_side(results: list) -> list[list]:
    """Results grouped into runs of regions that touch left to right in one region row (a batch in reading
    order is one or two such runs), so that each run is written as one block."""
    runs: list[list] = []
    for result in sorted(results, key=lambda r: (r.row, r.col)):
        last = runs[-1][-1] if runs else None
        if last is not None and last.row == result.row and last.box[3] == result.box[1]:
            runs[-1].append(result)
        else:
            runs.append([result])
    return runs


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


class _RunLock:
    """An exclusive ``flock`` on ``<run dir>/.napari-xt.lock``, held by the process writing the run directory.

    The kernel releases it when the process dies, so a killed run never leaves a stale lock behind.
    """

    def __init__(self, handle):
        self._handle = handle

    @classmethod
    def acquire(cls, run_dir: Path) -> _RunLock:
        handle = open(run_dir / LOCK_FILE, "a+")  # noqa: SIM115  (held open for the life of the run)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunInUseError(
                f"{run_dir}: is being written by {holder}; wait for that run to finish (it resumes where it "
                "is), or choose another --out"
            ) from error
        handle.seek(0)
        handle.truncate()
        handle.write(f"napari-xt process {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        return cls(handle)

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def _flags(group: zarr.Group, name: str, grid_shape: tuple[int, int]) -> None:
    chunks = (min(256, grid_shape[0]), min(256, grid_shape[1]))
    group.create_array(name, shape=grid_shape, chunks=chunks, dtype="bool", fill_value=False)


def _levels(group: zarr.Group) -> list:
    return [group[d["path"]] for d in group.attrs["ome"]["multiscales"][0]["datasets"]]


PREVIEW_SIDE = 2048


def preview_levels(height: int, width: int) -> tuple[int, list[tuple[int, int]]]:
    """The root preview's levels: from the first label level that fits in ``PREVIEW_SIDE`` on, halving, as many
    as the label levels (OME-Zarr wants a label image to have its image's number of levels). Returns the index
    of that first label level and the shapes."""
    shapes = label_level_shapes(height, width)
    first = next((k for k, shape in enumerate(shapes) if max(shape) <= PREVIEW_SIDE), len(shapes) - 1)
    factors = [2 ** (first + k) for k in range(len(shapes))]
    return first, [(-(-height // f), -(-width // f)) for f in factors]


PREVIEW_BAND = 1024
"""Rows of a pyramid level read at once for the preview (at least one chunk's height)."""


def _nearest_samples(level, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``level[rows][:, cols]`` (ascending ``rows``) read a band of rows at a time, so that memory is one band
    of the level, not the whole level: the level a preview samples can be up to twice the preview's side each
    way (a 4,096² float32 SAR level is 64 MB, its 1,024-row band 16 MB)."""
    band = PREVIEW_BAND
    if getattr(level, "chunks", None):  # a dask array: whole chunks, each read once
        band = max(band, int(max(level.chunks[0])))
    out = None
    for low in range(0, int(rows[-1]) + 1, band):
        inside = (rows >= low) & (rows < low + band)
        if not inside.any():
            continue
        first, last = int(rows[inside][0]), int(rows[inside][-1])
        strip = level[first : last + 1]
        strip = in_this_thread(strip)
        block = strip[rows[inside] - first][:, cols]
        if out is None:
            out = np.empty((len(rows), len(cols), *block.shape[2:]), dtype=block.dtype)
        out[inside] = block
    return out


def _create_preview(group: zarr.Group, spec: dict) -> None:
    """The root's preview arrays (zeros until ``write_preview``) and its ``ome`` image metadata, so that
    OME-Zarr readers find an image with its labels."""
    first, shapes = preview_levels(*spec["image_shape"])
    n_channels = len(spec.get("channel_names") or []) or 1
    for k, shape in enumerate(shapes):
        group.create_array(
            str(k),
            shape=(n_channels, *shape),
            chunks=(1, min(1024, shape[0]), min(1024, shape[1])),
            dtype=spec.get("image_dtype") or "float32",
            fill_value=0,
            dimension_names=("c", "y", "x"),
            overwrite=True,
        )
    group.attrs["ome"] = ngff.image_attrs(
        "image preview",
        spec,
        [2 ** (first + k) for k in range(len(shapes))],
        spec.get("channel_names") or ["channel 0"],
        window=spec.get("display_window"),
    )


def _create_layout(group: zarr.Group, path: Path, spec: dict) -> None:
    spec = json.loads(json.dumps({**spec, "format": RUN_FORMAT, "status": "running"}, default=str))
    height, width = spec["image_shape"]
    region = spec["region_size"]
    classes = spec.get("segmentation_classes", [])
    side = max(region, 256)
    levels = label_level_shapes(height, width)
    _create_preview(group, spec)
    labels_group = group.require_group("labels")
    labels_group.attrs["ome"] = ngff.labels_group_attrs()
    segmentation = labels_group.require_group("segmentation")
    dtype = label_dtype(max(1, len(classes)))
    for k, shape in enumerate(levels):
        chunk = (min(side, shape[0]), min(side, shape[1]))
        segmentation.create_array(
            str(k), shape=shape, chunks=chunk, dtype=dtype, fill_value=0, dimension_names=("y", "x")
        )
    colours = spec.get("colours", {})
    rgba = [hex_to_rgba(colours.get(name, "#808080")) for name in classes]
    segmentation.attrs["ome"] = ngff.label_attrs(spec, len(levels), rgba)
    if spec.get("save_probabilities") and classes:
        probabilities = group.require_group("probabilities")
        for k, shape in enumerate(levels):
            chunk = (1, min(side, shape[0]), min(side, shape[1]))
            probabilities.create_array(
                str(k),
                shape=(len(classes), *shape),
                chunks=chunk,
                dtype="float16",
                fill_value=0,
                dimension_names=("c", "y", "x"),
            )
        probabilities.attrs["ome"] = ngff.image_attrs(
            "probabilities", spec, [2**k for k in range(len(levels))], classes, window=(0.0, 1.0)
        )
    grid_shape = tuple(spec["grid_shape"])
    regions = group.require_group("regions")
    for name in ("done", "active"):
        _flags(regions, name, grid_shape)
    n_classes = max(1, len(classes))
    regions.create_array(
        "class_pixels",
        shape=(*grid_shape, n_classes),
        chunks=(min(256, grid_shape[0]), min(256, grid_shape[1]), n_classes),
        dtype="uint32",
        fill_value=0,
    )
    detections = path / "detections"
    detections.mkdir(parents=True, exist_ok=True)
    (detections / "parts.csv").touch()
    group.attrs["napari_xt"] = spec
