"""The streaming runner: a generator of events that analyses a whole image or an ROI in bounded memory.

Whole-image context in two passes, composed from ``stages``:

1. every region that gives context is read and encoded; its pooled tokens are kept (float16, reused from the
   token cache when this image was seen with these weights), and the features of regions still to predict are
   kept for pass 2 in memory and then on disk, within budgets;
2. the context encoder runs over the tokens of all those regions at once, giving each region its context;
3. the regions to predict are decoded batch by batch with their features and context, and written.

Memory: O(batch × region pixels) + O(regions × tokens × width). Reading runs ahead in a thread pool and writing
in a writer thread while the model computes. Cancellation is checked between batches. No Qt here.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_xt.engine.allocator import few_arenas
from napari_xt.engine.cache import FeatureKeeper, TokenCache, default_cache_dir, weights_hash
from napari_xt.engine.detections import DetectionTable, merge_duplicates
from napari_xt.engine.events import Cancelled, Failed, Finished, PartialResult, Progress, Started
from napari_xt.engine.exports import ExportSettings, PolygonsAhead, wants_polygons
from napari_xt.engine.grid import RegionGrid, active_regions, choose_level, make_grid, undone_positions
from napari_xt.engine.identity import image_key_of, roi_scope
from napari_xt.engine.neighbours import Blender, FeaturePool, Present, decode_set, key, neighbourhood
from napari_xt.engine.stages import (
    Compute,
    Neighbourhood,
    ResultSettings,
    Timings,
    chunks,
    contextualise,
    decode,
    encode,
    read_batches,
    region_results,
)
from napari_xt.engine.store import OutputStore
from napari_xt.io import Pyramid, open_pyramid

logger = logging.getLogger(__name__)

BACKGROUND_KINDS = ("auto", "tissue", "nodata", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class CancelToken:
    """Set from any thread; the runner stops after the batch it is on."""

    def __init__(self):
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


class DeviceError(ValueError):
    """The requested device does not exist in this torch installation."""


@dataclass
class RunOptions:
    """How to run.

    Attributes:
        level, pixel_size: analysis level, or a target pixel size (in the image's unit); default: the model's
            pixel size when both the model and the image know theirs, else level 0.
        roi: level-0 box ``(y0, x0, y1, x1)``; None: the whole image.
        context_scope: ``image`` (context from every foreground region of the image, so an ROI gets the same
            predictions as a whole-image run; tokens outside the ROI come from the token cache when this
            image was seen before) or ``roi`` (context from the ROI only: faster for a first look).
        device: ``auto`` (cuda, then mps, then cpu), or a torch device string.
        batch_size: regions per batch; None: chosen from free memory.
        precision: ``auto`` (bf16 autocast on CUDA, fp32 elsewhere), ``fp32``, ``bf16`` or ``fp16``.
        background: ``auto``, ``tissue``, ``nodata`` or ``none``; regions under ``min_foreground`` are skipped.
        store_threshold: detections down to this score are stored (display thresholds filter them later).
        export_threshold: detections at or above this score go into the exports (CSV, GeoJSON) and the summary;
            it is recorded with them (the widget's default threshold).
        export_circles: detections in ``detections.geojson`` as circles of their size instead of points.
        export_polygons: write the segmentation as polygons (QuPath annotations; map layers for GeoTIFFs).
        feature_memory_budget, feature_disk_budget: bytes for keeping features until pass 2 has decoded every
            region that needs them (the region and its neighbours): in memory first, then as files (the same
            dtype) in a scratch folder beside the output; past both, a region is encoded again. Pass 2 also
            holds the features it used last in memory, in what the kept ones leave of ``feature_memory_budget``
            (so features in memory never pass it). Results do not depend on these budgets.
        cache_dir: token cache folder; None: the default (``$NAPARI_XT_CACHE`` or ``~/.cache/napari-xt``); "": off.
        cache_max_bytes: size cap of the token cache.
        save_probabilities: also store class probabilities (float16, one map per class).
        overwrite: replace an existing run directory (and forget this image's cached tokens).
        replace_stale: replace a run directory whose identity differs from this run's instead of refusing
            (for run directories the application owns, such as the widget's cache).
    """

    level: int | None = None
    pixel_size: float | None = None
    roi: tuple[float, float, float, float] | None = None
    context_scope: str = "image"
    device: str = "auto"
    batch_size: int | None = None
    precision: str = "auto"
    background: str = "auto"
    min_foreground: float = 0.02
    store_threshold: float = 0.1
    export_threshold: float = 0.5
    export_circles: bool = False
    export_polygons: bool = True
    feature_memory_budget: int = 64 * 2**20
    feature_disk_budget: int = 16 * 2**30
    prefetch: int = 2
    cache_dir: str | None = None
    cache_max_bytes: int = 4 * 2**30
    save_probabilities: bool = False
    overwrite: bool = False
    replace_stale: bool = False

    @property
    def exports(self) -> ExportSettings:
        return ExportSettings(self.export_threshold, self.export_circles, self.export_polygons)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first setting out of range."""
        if self.level is not None and (not isinstance(self.level, int) or self.level < 0):
            raise ValueError(f"level must be a whole number ≥ 0, not {self.level!r}")
        if self.pixel_size is not None and not (math.isfinite(self.pixel_size) and self.pixel_size > 0):
            raise ValueError(f"pixel size must be a positive number, not {self.pixel_size!r}")
        if self.roi is not None:
            values = [float(v) for v in self.roi]
            if len(values) != 4 or not all(math.isfinite(v) for v in values):
                raise ValueError(f"the ROI must be four finite numbers y0, x0, y1, x1, not {self.roi!r}")
            if values[2] <= values[0] or values[3] <= values[1]:
                raise ValueError(f"the ROI {tuple(self.roi)} is empty: y1 must exceed y0 and x1 must exceed x0")
        if self.context_scope not in ("image", "roi"):
            raise ValueError(f"context_scope must be 'image' or 'roi', not {self.context_scope!r}")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ValueError(f"batch size must be a whole number ≥ 1, not {self.batch_size!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if self.background not in BACKGROUND_KINDS:
            raise ValueError(f"background must be one of {BACKGROUND_KINDS}, not {self.background!r}")
        for name in ("min_foreground", "store_threshold", "export_threshold"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= 1):
                raise ValueError(f"{name} must be between 0 and 1, not {value!r}")
        if self.prefetch < 1:
            raise ValueError(f"prefetch must be ≥ 1, not {self.prefetch!r}")
        for name in ("feature_memory_budget", "feature_disk_budget", "cache_max_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0")


def pick_device(requested: str = "auto"):
    """The torch device for ``requested`` (``auto``: CUDA, then MPS, then CPU); refuses devices not present."""
    import torch

    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as error:
        raise DeviceError(f"unknown device {requested!r}: use auto, cpu, cuda, cuda:N or mps") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DeviceError(
                f"device {requested!r} asked for, but this torch ({torch.__version__}) has {build}; use "
                "--device cpu (or auto), or install a CUDA build of torch"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {requested!r} asked for, but only {torch.cuda.device_count()} GPU(s) exist")
    if device.type == "mps" and not has_mps:
        raise DeviceError(f"device {requested!r} asked for, but MPS is not available; use --device cpu")
    return device


def load_model(model_or_checkpoint, device):
    """An XTModel (used as is) or a checkpoint path → ``(model on device, weights sha256, checkpoint path)``."""
    from napari_xt.model import load_checkpoint

    if isinstance(model_or_checkpoint, str | Path):
        model, info = load_checkpoint(model_or_checkpoint, device=device)
        return model, info.sha256, str(model_or_checkpoint)
    model = model_or_checkpoint.to(device).eval()
    return model, weights_hash(model), None


def plan(pyramid: Pyramid, config, options: RunOptions, roi=None, background: bool = True) -> RegionGrid:
    """The grid a run of a model with ``config`` will use: level (or pixel size) and ROI; with ``background``,
    regions that are background are marked inactive (this reads a low pyramid level; without it, only
    metadata is read)."""
    roi = options.roi if roi is None else roi
    level, pixel_size = options.level, options.pixel_size
    knows_scale = config.pixel_size and pyramid.pixel_size and config.pixel_unit in (None, pyramid.unit)
    if level is None and pixel_size is None and knows_scale:
        pixel_size = config.pixel_size
    level, resample = choose_level(pyramid, level, pixel_size)
    grid = make_grid(pyramid, config.region_size, level, resample, roi)
    if not background:
        return grid
    active = active_regions(pyramid, grid, options.background, options.min_foreground)
    return make_grid(pyramid, config.region_size, level, resample, roi, active)


def context_from(config, options: RunOptions) -> str:
    """Where a run's context comes from: ``image`` (every prediction is the whole-image one) or ``roi``."""
    roi_only = options.roi is not None and options.context_scope == "roi" and config.context_encoder.kind != "none"
    return "roi" if roi_only else "image"


def display_spec(pyramid: Pyramid, config, grid: RegionGrid) -> dict:
    """How a run's outputs sit on the image: analysis shape, classes, colours, and the layer transform that
    puts analysis pixel centres on level-0 pixel centres (docs/ARCHITECTURE.md, Coordinates) in physical units."""
    heads = config.heads
    s0 = pyramid.pixel_size or (1.0, 1.0)
    scale = (s0[0] * grid.downsample[0], s0[1] * grid.downsample[1])
    return {
        "image_shape": list(grid.image_shape),
        "image_dtype": str(pyramid.dtype),
        "channel_names": list(pyramid.channel_names),
        "pixel_size": list(pyramid.pixel_size) if pyramid.pixel_size else None,
        "unit": pyramid.unit,
        "layer_scale": list(scale),
        "layer_translate": [scale[0] / 2 - s0[0] / 2, scale[1] / 2 - s0[1] / 2],
        "region_level0": [grid.region_size * grid.downsample[0], grid.region_size * grid.downsample[1]],
        "segmentation_classes": list(heads.segmentation_classes),
        "detection_classes": list(heads.detection_classes),
        "colours": dict(heads.colours),
        "display_names": dict(heads.display_names),
    }


def run_spec(pyramid: Pyramid, model, grid: RegionGrid, weights_sha: str, checkpoint_path, options) -> dict:
    """Identity, settings and provenance of a run, as stored in its run directory."""
    import torch

    import napari_xt

    scope = context_from(model.config, options)
    return {
        "image_source": pyramid.source,
        "image_key": image_key_of(pyramid.source, pyramid.signature),
        "image_signature": pyramid.signature,
        "image_shape_level0": list(pyramid.shape[:2]),
        "checkpoint": checkpoint_path,
        "checkpoint_sha256": weights_sha,
        "config": model.config.to_dict(),
        "level": grid.level,
        "resample": grid.resample,
        "region_size": grid.region_size,
        "grid_shape": list(grid.shape),
        "downsample": list(grid.downsample),
        "geotransform": list(pyramid.geotransform) if pyramid.geotransform else None,
        "crs": pyramid.crs,
        **display_spec(pyramid, model.config, grid),
        "context_from": scope,
        "roi_scope": roi_scope(scope, grid.roi),
        "store_threshold": options.store_threshold,
        "decoding": decoding_spec(model),
        "save_probabilities": options.save_probabilities,
        "versions": {"napari_xt": napari_xt.__version__, "torch": torch.__version__},
        "rois": [],
    }


def decoding_spec(model) -> dict:
    """How regions are decoded (part of a run's identity): each with ``halo`` pixels of its neighbours'
    features and the context field of its neighbourhood, its outputs blended with its neighbours' or not."""
    halo = int(getattr(model, "halo", 0))
    blend = "linear" if getattr(model, "blends", False) else "none"
    return {"neighbourhood": "3x3", "halo": halo, "context": "field", "blend": blend}


@dataclass
class PreparedRun:
    """Everything a run needs that input checking produces: the opened image, the model, the grids, the spec."""

    pyramid: Pyramid
    model: object
    weights_sha: str
    grid: RegionGrid
    context_grid: RegionGrid
    spec: dict
    options: RunOptions
    device: object
    seconds: float = 0.0  # opening and checking everything (the run's "open" stage)
    neighbour_grid: RegionGrid | None = None  # the regions that count as neighbours (None: context_grid)
    start_up: float = 0.0  # what the run waited on before it opened its image (the "start_up" stage)


def prepare(
    image,
    model_or_checkpoint,
    options: RunOptions | None = None,
    weights_sha: str | None = None,
    checkpoint_path: str | None = None,
    image_name: str | None = None,
) -> PreparedRun:
    """Check and open everything a run needs, writing nothing.

    Args:
        weights_sha, checkpoint_path: the sha256 and file of a model passed in that came from a checkpoint file
            (saves loading and hashing it again).
        image_name: how the person calls the image (a layer's name), recorded for the layers of the run.

    Raises:
        ValueError (``ImageReadError``, ``CheckpointError``, ``GridError``, ``DeviceError``): bad input, with a
            message that names it and says what to do.
    """
    from napari_xt.model import check_fits_image

    started = time.perf_counter()
    options = options or RunOptions()
    options.validate()
    pyramid = open_pyramid(image)
    device = pick_device(options.device)
    if weights_sha is not None and not isinstance(model_or_checkpoint, str | Path):
        model = model_or_checkpoint.to(device).eval()
    else:
        model, weights_sha, checkpoint_path = load_model(model_or_checkpoint, device)
    check_fits_image(model.config, pyramid.n_channels, pyramid.source)
    grid = plan(pyramid, model.config, options)
    uses_context = model.config.context_encoder.kind != "none"
    whole_image = uses_context and options.context_scope == "image" and options.roi is not None
    context_grid = plan(pyramid, model.config, options, roi=(0, 0, *pyramid.shape[:2])) if whole_image else grid
    spec = run_spec(pyramid, model, grid, weights_sha, checkpoint_path, options)
    if image_name:
        spec["image_name"] = image_name
    return PreparedRun(
        pyramid,
        model,
        weights_sha,
        grid,
        context_grid,
        spec,
        options,
        device,
        time.perf_counter() - started,
        _neighbour_grid(pyramid, model, options, grid, context_grid, uses_context),
    )


def _neighbour_grid(pyramid, model, options, grid: RegionGrid, context_grid: RegionGrid, uses_context: bool):
    """The regions that count as neighbours when decoding: those giving context; without a context encoder,
    the run's regions with a ring around an ROI, so that an ROI's results are the whole image's: one region
    wide, or two when outputs are blended (the ring's own windows are decoded with their neighbours)."""
    if uses_context or options.roi is None:
        return context_grid
    reach = 2 if getattr(model, "blends", False) else 1
    ry, rx = (reach * grid.region_size * d for d in grid.downsample)
    y0, x0, y1, x1 = options.roi
    h0, w0 = pyramid.shape[:2]
    ring = (max(0.0, y0 - ry), max(0.0, x0 - rx), min(float(h0), y1 + ry), min(float(w0), x1 + rx))
    return plan(pyramid, model.config, options, roi=ring)


def start(prepared: PreparedRun, out: str | Path, cancel: CancelToken | None = None) -> Iterator:
    """Open (or resume) the run directory ``out`` for a prepared run and return its event stream."""
    began = time.perf_counter()
    few_arenas()  # before the run's threads allocate (see ``allocator``)
    options = prepared.options
    store = OutputStore.open(out, prepared.spec, options.overwrite, replace_stale=options.replace_stale)
    cache_root = _cache_root(options)
    if options.overwrite and cache_root is not None:
        TokenCache.forget(cache_root, prepared.pyramid.signature)
    context = _RunContext(
        pyramid=prepared.pyramid,
        model=prepared.model,
        grid=prepared.grid,
        context_grid=prepared.context_grid,
        store=store,
        options=options,
        cancel=cancel or CancelToken(),
        compute=Compute(prepared.device, options.precision),
        weights_sha=prepared.weights_sha,
        cache_root=cache_root,
        uses_context=prepared.model.config.context_encoder.kind != "none",
        neighbour_grid=prepared.neighbour_grid or prepared.context_grid,
    )
    context.timings.seconds["open"] = prepared.seconds + (time.perf_counter() - began)  # with the run directory
    context.timings.seconds["start_up"] = prepared.start_up
    return _events(context)


def run(
    image, model_or_checkpoint, out: str | Path, options: RunOptions | None = None, cancel: CancelToken | None = None
) -> Iterator:
    """Analyse ``image`` with a model or checkpoint, writing the run directory ``out``; yield events.

    Ends with exactly one of ``Finished``, ``Cancelled`` or ``Failed``. Bad input (an unreadable image, a
    checkpoint that does not fit, settings out of range, an ROI outside the image, an output that holds another
    run or is in use) raises before the first event, with a message saying what to do.
    """
    return start(prepare(image, model_or_checkpoint, options), out, cancel)


def run_to_end(image, model_or_checkpoint, out, options: RunOptions | None = None, cancel=None, on_event=None):
    """Run and return the last event (``Finished``, ``Cancelled`` or ``Failed``), calling ``on_event`` for each."""
    last = None
    for event in run(image, model_or_checkpoint, out, options, cancel):
        if on_event is not None:
            on_event(event)
        last = event
    return last


# -- the run ------------------------------------------------------------------------------------------------


@dataclass
class _RunContext:
    pyramid: Pyramid
    model: object
    grid: RegionGrid
    context_grid: RegionGrid
    store: OutputStore
    options: RunOptions
    cancel: CancelToken
    compute: Compute
    weights_sha: str
    cache_root: Path | None
    uses_context: bool
    neighbour_grid: RegionGrid
    timings: Timings = field(default_factory=Timings)
    batch_size: int = 1
    positions: np.ndarray = field(init=False)  # regions that give context, global (row, col)
    present: Present = field(init=False)  # regions that count as neighbours
    _index: dict = field(init=False)

    def __post_init__(self):
        self.positions = self.context_grid.positions()
        self._index = {(int(r), int(c)): i for i, (r, c) in enumerate(self.positions)}
        self.present = Present(self.neighbour_grid.positions())

    @property
    def with_neighbour_features(self) -> bool:
        """Whether a region's decoding needs its neighbours' features: for the halo, or, without a context
        encoder, for their tokens (the context field)."""
        return bool(getattr(self.model, "halo", 0)) or not self.uses_context

    @property
    def blends(self) -> bool:
        """Whether region outputs are blended from their neighbourhoods' decoded windows."""
        return bool(getattr(self.model, "blends", False))

    def index_of(self, positions: np.ndarray) -> np.ndarray:
        return np.array([self._index[(int(r), int(c))] for r, c in positions], dtype=np.int64)

    def timings_dict(self, start: float) -> dict:
        """Seconds per stage, ``other`` for what no stage holds, and ``total`` from the start-up on (from opening
        the image where the run waited on nothing before)."""
        seconds = self.timings.seconds
        total = time.perf_counter() - start + seconds.get("open", 0.0) + seconds.get("start_up", 0.0)
        return {
            **{name: round(value, 3) for name, value in seconds.items()},
            "other": round(max(0.0, total - sum(seconds.values())), 3),
            "total": round(total, 3),
            "batch_size": self.batch_size,
            "device": str(self.compute.device),
        }


_CANCELLED = object()


def _write_preview(store: OutputStore, pyramid: Pyramid) -> None:
    """The run directory's image preview; a failure costs the preview only, never the run."""
    try:
        store.write_preview(pyramid)
    except Exception as error:  # any reader or codec failure on the low level
        logger.warning("napari-xt: %s: no image preview (%s: %s)", store.path, type(error).__name__, error)


def _events(ctx: _RunContext) -> Iterator:
    start = time.perf_counter()
    grid, store = ctx.grid, ctx.store
    polygons, rows = None, None  # the segmentation polygons, traced while pass 2 writes the labels
    try:
        with ctx.timings.stage("plan"):
            store.mark_active(grid.rows, grid.cols, grid.active)
            store.update(rois=[*store.spec.get("rois", []), list(grid.roi)], status="running")
            todo = undone_positions(grid, store.done_mask())
        n_done_before = grid.n_active - len(todo)
        yield Started(str(store.path), grid.n_regions, grid.n_active, n_done_before, grid.describe())
        if grid.n_active == 0:
            with ctx.timings.stage("preview"):
                _write_preview(store, ctx.pyramid)
            store.finish(
                DetectionTable.empty(), ctx.timings_dict(start), no_foreground=True, exports=ctx.options.exports
            )
            timings = store.spec["timings"]
            yield Finished(str(store.path), 0, timings["total"], timings, _NO_FOREGROUND)
            return
        finished = True
        if len(todo):
            with ctx.timings.stage("plan"):
                # a resumed run keeps its batch size, so its regions come out as in an uninterrupted run
                ctx.batch_size = store.spec.get("batch_size") or ctx.options.batch_size or _auto_batch_size(ctx)
                store.update(batch_size=ctx.batch_size)
                keeper = _keeper(ctx)
            try:
                with ctx.timings.stage("plan"):
                    decoding = _DecodePlan.of(ctx, todo)
                context = yield from _pass1(ctx, decoding, keeper)
                if context is not _CANCELLED and _traces_during_run(ctx):
                    labels = store.label_levels()[0]
                    polygons = PolygonsAhead(store.path, store.spec, labels)
                    rows = _FinalLabelRows(ctx.grid, decoding.targets, labels, polygons)
                finished = context is not _CANCELLED and (
                    yield from _pass2(ctx, decoding, context, keeper, n_done_before, rows)
                )
            finally:
                with ctx.timings.stage("keep"):
                    keeper.close()  # its scratch file goes
        if not finished:
            store.update(status="cancelled", timings=ctx.timings_dict(start))
            yield Cancelled(str(store.path), int(store.done_mask().sum()))
            return
        with ctx.timings.stage("preview"):
            _write_preview(store, ctx.pyramid)  # at the end, so that it delays neither the first result nor a cancel
        with ctx.timings.stage("merge"):
            merged = merge_duplicates(store.region_detections()).sorted()
        store.finish(merged, ctx.timings_dict(start), exports=ctx.options.exports, polygons=polygons)
        timings = store.spec["timings"]
        yield Finished(str(store.path), len(merged), timings["total"], timings)
    except OSError as error:
        message = _os_error_message(error, store.path)
        _try_update(store, status="failed", error=message)
        yield Failed(str(store.path), message, error)
    except Exception as error:  # the run must end with an event, whatever broke
        message = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
        _try_update(store, status="failed", error=message)
        yield Failed(str(store.path), message, error)
    except BaseException:  # interrupted (Ctrl-C, SIGTERM, generator closed): finished regions are kept
        _try_update(store, status="interrupted", timings=ctx.timings_dict(start))
        raise
    finally:
        if polygons is not None:
            polygons.abandon()  # a run that stopped early: its partial polygon files go (none after finish)
        store.close()


_NO_FOREGROUND = (
    "no foreground: every region asked for is background (blank glass, nodata or zeros); nothing to analyse"
)


@dataclass
class _DecodePlan:
    """Pass 2's batches, each with the regions it is decoded with (``local``: the batch's, then its present
    neighbours') and their table, the regions whose features it needs, and how often each region is needed;
    ``targets``: the regions it writes (the batches' regions, unless outputs are blended: then the batches
    also decode the targets' present neighbours, ``neighbours.decode_set``)."""

    batches: list
    locals: list
    tables: list
    needs: list
    uses: dict
    targets: np.ndarray

    @classmethod
    def of(cls, ctx: _RunContext, todo: np.ndarray) -> _DecodePlan:
        batches = chunks(decode_set(todo, ctx.present, ctx.blends), ctx.batch_size)
        locals_, tables = zip(*(neighbourhood(batch, ctx.present) for batch in batches)) if batches else ((), ())
        needs = list(locals_) if ctx.with_neighbour_features else list(batches)
        uses: dict[int, int] = {}
        for positions in needs:
            for r, c in positions:
                uses[key(r, c)] = uses.get(key(r, c), 0) + 1
        return cls(batches, list(locals_), list(tables), needs, uses, todo)


def _pass1(ctx: _RunContext, decoding: _DecodePlan, keeper: FeatureKeeper):
    """Encode the regions that give context and return their context (or ``None`` without a context encoder,
    ``_CANCELLED`` when cancelled); the features pass 2 needs (``decoding.needs``) are kept for it."""
    if not ctx.uses_context:
        return None
    config = ctx.model.config.context_encoder
    n_tokens, width = config.tokens_per_region**2, config.width
    tokens = np.zeros((len(ctx.positions), n_tokens, width), dtype=np.float16)
    with ctx.timings.stage("cache"):
        cache = _token_cache(ctx, n_tokens, width)
        cached = cache.lookup(ctx.positions) if cache is not None else None
    have = np.zeros(len(ctx.positions), dtype=bool)
    if cache is not None:
        if cached is None:  # the entry was corrupt and has been dropped
            cache = None
        else:
            have, cached_tokens = cached
            tokens[have] = cached_tokens[have]
    n_cached = int(have.sum())
    # which regions pass 2 needs, and when first: encoded in that order, the first needed are the ones the
    # keeper holds in memory (the rest waits on disk), and they leave its memory to pass 2's pool soonest
    first_use = np.full(len(ctx.positions), len(decoding.needs), dtype=np.int64)
    for step in reversed(range(len(decoding.needs))):
        first_use[ctx.index_of(decoding.needs[step])] = step
    to_keep = first_use < len(decoding.needs)
    need = np.flatnonzero(~have | to_keep)
    need = need[np.argsort(first_use[need], kind="stable")]
    started = time.perf_counter()
    new = []
    batches = chunks(ctx.positions[need], ctx.batch_size)
    for pixels in read_batches(ctx.pyramid, ctx.context_grid, batches, ctx.options.prefetch, ctx.timings):
        if ctx.cancel.cancelled:
            return _CANCELLED
        with ctx.timings.stage("encode"):
            encoded = encode(ctx.model, pixels, ctx.compute, want_tokens=True, pad_to=ctx.batch_size)
            indices = ctx.index_of(encoded.positions)
            tokens[indices] = encoded.tokens.float().cpu().numpy().astype(np.float16)
        with ctx.timings.stage("keep"):
            for k, (i, (r, c)) in enumerate(zip(indices, encoded.positions)):
                if to_keep[i]:  # a quarter of the memory budget at most: the rest is pass 2's pool and sums
                    in_memory = keeper.memory_used < keeper.memory_budget // 4
                    # kept in memory, a region's own copy; on its way to disk, a view of the batch is enough
                    features = [f[k : k + 1].to("cpu", copy=in_memory) for f in encoded.features]
                    keeper.put(key(r, c), features, in_memory)
        new.extend(int(i) for i in indices if not have[i])
        done = len(new) + n_cached
        yield Progress("encode", done, len(ctx.positions), time.perf_counter() - started, n_cached)
    if cache is not None and new:
        with ctx.timings.stage("cache"):
            cache.store(ctx.positions[new], tokens[new])
    context = _context(ctx, tokens, cache, reuse=not new)
    if cache is not None:
        with ctx.timings.stage("cache"):
            TokenCache.enforce_cap(cache.root, ctx.options.cache_max_bytes)
    yield Progress("context", len(ctx.positions), len(ctx.positions), time.perf_counter() - started, n_cached)
    return context


def _context(ctx: _RunContext, tokens: np.ndarray, cache: TokenCache | None, reuse: bool):
    """The context of the run's context regions from their ``tokens``: computed, or, when every token came from
    the cache (``reuse``), the context an earlier run computed from the same tokens the same way. A float32
    context is kept in the cache for the next run (a half-precision one is computed again each time)."""
    import torch

    tag = None
    if cache is not None:
        tag = TokenCache.context_tag(ctx.positions, ctx.compute.device.type, ctx.compute.precision)
    if reuse and tag is not None:
        with ctx.timings.stage("cache"):
            stored = cache.context(tag, tokens.shape)  # the context has the tokens' shape
        if stored is not None:
            return torch.from_numpy(stored).to(ctx.compute.device)
    with ctx.timings.stage("context"):
        context = contextualise(ctx.model, tokens, ctx.positions, ctx.compute)
    if tag is not None and context.dtype == torch.float32:
        with ctx.timings.stage("cache"):
            try:
                cache.store_context(tag, context.cpu().numpy())
            except OSError as error:  # a cache that cannot be written is no reason to fail the run
                logger.warning("napari-xt: the context was not cached in %s (%s)", cache.path, error)
    return context


def _pass2(
    ctx: _RunContext,
    decoding: _DecodePlan,
    context,
    keeper: FeatureKeeper,
    done_before: int,
    rows: _FinalLabelRows | None = None,
):
    """Decode and write the regions of ``decoding`` batch by batch, each with its neighbours; True unless
    cancelled. Features not kept from pass 1 are encoded when a batch first needs them (a strip row ahead, for
    the neighbours below) and kept until their last use. ``rows`` learns of each batch written."""
    heads = ctx.model.config.heads
    settings = ResultSettings(
        heads.detection_stride,
        ctx.options.store_threshold,
        bool(ctx.store.spec.get("save_probabilities")),
        max(1, len(heads.segmentation_classes)),
    )
    # what each batch encodes first (not kept from pass 1), in model batches of the run's batch size
    seen = {k for k in decoding.uses if keeper.has(k)}
    first = []
    for positions in decoding.needs:
        new = [p for p in positions if key(*p) not in seen]
        seen.update(key(*p) for p in new)
        first.append(chunks(np.array(new, dtype=np.int64).reshape(-1, 2), ctx.batch_size) if new else [])
    reader = read_batches(
        ctx.pyramid, ctx.neighbour_grid, [c for f in first for c in f], ctx.options.prefetch, ctx.timings
    )
    pool = FeaturePool(keeper)  # in what the keeper's memory leaves of the budget; the rest waits on disk
    uses = dict(decoding.uses)
    started = time.perf_counter()
    done, total = done_before, len(decoding.targets) + done_before
    blender = None
    if ctx.blends:  # the sums of regions waiting for their neighbours' windows wait beside the features
        with ctx.timings.stage("blend"):
            blender = Blender(decoding.targets, ctx.present, ctx.model.output_halos(), keeper, decoding.batches)
    pending = None  # the batch being written while the next one computes
    with ThreadPoolExecutor(max_workers=1) as writer, contextlib.closing(reader):
        for batch, local, table, needs, to_encode in zip(
            decoding.batches, decoding.locals, decoding.tables, decoding.needs, first
        ):
            if ctx.cancel.cancelled:
                break
            features = _gather(ctx, needs, to_encode, uses, keeper, pool, reader)
            with ctx.timings.stage("decode"):
                local_context = context[ctx.index_of(local)] if context is not None else None
                outputs = decode(
                    ctx.model, Neighbourhood(features, local_context, table), ctx.compute, pad_to=ctx.batch_size
                )
            if blender is not None:
                with ctx.timings.stage("blend"):
                    batch, outputs = blender.add(batch, outputs)  # the targets now complete
            with ctx.timings.stage("decode"):
                results = region_results(ctx.grid, batch, outputs, settings) if len(batch) else []
            with ctx.timings.stage("keep"):
                for r, c in needs:
                    k = key(r, c)
                    uses[k] -= 1
                    if uses[k] == 0:
                        pool.drop(k)
                        keeper.drop(k)
            if not results:
                continue
            if pending is not None:
                done = yield from _written(ctx, *pending, done, total, started, done_before, rows)
            pending = (writer.submit(ctx.store.write_batch, results), batch, results)
        if blender is not None and blender.pending and not ctx.cancel.cancelled:
            raise RuntimeError(f"pass 2 ended with {blender.pending} regions still waiting for neighbours' windows")
        if pending is not None:
            done = yield from _written(ctx, *pending, done, total, started, done_before, rows)
    return not ctx.cancel.cancelled


def _gather(ctx: _RunContext, needs, to_encode, uses: dict, keeper: FeatureKeeper, pool: FeaturePool, reader):
    """Features of the regions ``needs``, per level a list of their maps ``(C, m, m)`` in order (for
    ``tokenization.halo_windows``): from the pool, the keeper (pass 1), or encoded now (``to_encode``, the
    reader's next batches; anything else missing is read and encoded here)."""
    from napari_xt.engine.reading import read_batch
    from napari_xt.engine.stages import PixelBatch

    fresh = {}  # encoded for this batch: it has them whatever the budgets let the pool and the keeper hold

    def encoded_now(pixels):
        with ctx.timings.stage("encode"):
            encoded = encode(ctx.model, pixels, ctx.compute, want_tokens=False, pad_to=ctx.batch_size)
        with ctx.timings.stage("keep"):
            for k_, (r, c) in enumerate(pixels.positions):
                features = [f[k_ : k_ + 1].to("cpu", copy=True) for f in encoded.features]  # not views of the batch
                fresh[key(r, c)] = features
                if uses.get(key(r, c), 0) > 1:  # needed again later: keep it beyond the pool
                    keeper.put(key(r, c), features)
                if not keeper.in_memory(key(r, c)):
                    pool.put(key(r, c), features)

    pool.fit()  # the keeper may hold more since the last batch (the blend's sums)
    for positions in to_encode:
        pixels = next(reader)
        if not np.array_equal(pixels.positions, positions):
            raise RuntimeError("pass 2 read regions out of step with its batches")
        encoded_now(pixels)
    parts = []
    for r, c in needs:
        k = key(r, c)
        with ctx.timings.stage("keep"):
            features = fresh.get(k)
            if features is None:
                features = pool.get(k)
            if features is None:
                features = keeper.get(k)
                if features is not None and not keeper.in_memory(k):  # loaded from disk
                    pool.put(k, features)
        if features is None:  # let go by both the pool and the keeper's budgets: encode again
            position = np.array([[r, c]], dtype=np.int64)
            with ctx.timings.stage("read_wait"):
                pixels = PixelBatch(position, read_batch(ctx.pyramid, ctx.neighbour_grid, position))
            encoded_now(pixels)
            features = fresh[k]
        parts.append(features)
    device = ctx.compute.device
    with ctx.timings.stage("keep"):  # per level, the regions' maps as they are: the decoder copies only its strips
        return [[p[level][0].to(device) for p in parts] for level in range(len(parts[0]))]


def _written(ctx, future, batch, results, done: int, total: int, started: float, done_before: int, rows=None):
    """Wait for a batch's write (re-raising its error), then report it; returns the new done count."""
    with ctx.timings.stage("write"):
        future.result()
    if rows is not None:
        rows.written(batch)
    boxes = np.array([ctx.grid.level0_box(int(r), int(c)) for r, c in batch])
    yield PartialResult(boxes, DetectionTable.concatenate([r.detections for r in results]))
    done += len(batch)
    yield Progress("predict", done, total, time.perf_counter() - started, done_before)
    return done


def _traces_during_run(ctx: _RunContext) -> bool:
    """Whether the run's segmentation polygons are traced while pass 2 writes the labels (``PolygonsAhead``)
    rather than after it: where they are wanted and the model leaves a CPU core free for the tracing (it runs
    on a GPU, or on fewer torch threads than the process has cores). Where torch uses every core, the tracing
    only takes turns with it. On 2 cores, an 8,192² slide (``benchmarks/predict.py``): at 2 torch threads, the
    export of 5 s left 1 s after pass 2, but decoding, blending and keeping took 4.9–5.1 s longer (polygons
    added 6.2–6.9 s to the run, against 4.7–6.6 s traced after it) and the export's memory came on top of
    pass 2's (peak RSS 0.75 → 0.82–0.83 GB); at 1 torch thread, polygons added 2.7–3.2 s, against 4.7–5.8 s
    traced after."""
    import torch

    if not wants_polygons(ctx.store.spec, ctx.options.exports):
        return False
    if ctx.compute.device.type != "cpu":
        return True
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return torch.get_num_threads() < cores


class _FinalLabelRows:
    """Tells ``PolygonsAhead`` which rows of the label map pass 2 has finished: those above the first grid row
    that still has a region to write (``targets``), down to a whole label chunk (a read must never meet a chunk
    being rewritten). Rows of regions the run does not write (background, outside the ROI, finished before a
    resume) hold their final labels already."""

    def __init__(self, grid: RegionGrid, targets: np.ndarray, labels, polygons: PolygonsAhead):
        self._region, self._height = grid.region_size, int(labels.shape[0])
        self._chunk = int(labels.chunks[0])
        self._polygons = polygons
        rows, counts = np.unique(np.asarray(targets, dtype=np.int64).reshape(-1, 2)[:, 0], return_counts=True)
        self._left = dict(zip(rows.tolist(), counts.tolist()))  # regions still to write, per grid row
        self._tell()

    def written(self, positions) -> None:
        for row in np.asarray(positions, dtype=np.int64).reshape(-1, 2)[:, 0].tolist():
            self._left[row] -= 1
            if self._left[row] == 0:
                del self._left[row]
        self._tell()

    def _tell(self) -> None:
        if not self._left:
            self._polygons.final_rows(self._height)
            return
        first = min(self._left) * self._region
        self._polygons.final_rows(first // self._chunk * self._chunk)


def _auto_batch_size(ctx: _RunContext) -> int:
    import psutil
    import torch

    from napari_xt.engine.stages import PixelBatch

    config = ctx.model.config
    probe = PixelBatch(
        np.zeros((1, 2), int), np.zeros((1, config.in_channels, config.region_size, config.region_size), np.float32)
    )
    features = encode(ctx.model, probe, ctx.compute, want_tokens=False).features
    per_region = 8 * sum(f.numel() * 4 for f in features) + probe.pixels.nbytes * 4
    if ctx.compute.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(ctx.compute.device)  # the run's GPU, not the current one (cuda:0)
        return int(max(1, min(64, free * 0.5 // per_region)))
    return int(max(1, min(8, psutil.virtual_memory().available * 0.25 // per_region)))


def _keeper(ctx: _RunContext) -> FeatureKeeper:
    """Where features wait for pass 2 (every run needs one: without context, neighbours' features always count)."""
    scratch = ctx.store.path.parent
    FeatureKeeper.clean_stale(scratch)
    disk = int(min(ctx.options.feature_disk_budget, shutil.disk_usage(scratch).free * 0.5))
    return FeatureKeeper(ctx.options.feature_memory_budget, disk, scratch=scratch)


def _cache_root(options: RunOptions) -> Path | None:
    if options.cache_dir == "":
        return None
    return Path(options.cache_dir) if options.cache_dir else default_cache_dir() / "tokens"


def _token_cache(ctx: _RunContext, n_tokens: int, width: int) -> TokenCache | None:
    if ctx.cache_root is None:
        return None
    grid = ctx.context_grid
    key = TokenCache.key(ctx.pyramid.signature, grid.level, grid.resample, grid.region_size, ctx.weights_sha)
    try:
        return TokenCache(ctx.cache_root, key, grid.shape, n_tokens, width)
    except OSError as error:  # a cache that cannot be written is no reason to fail the run
        logger.warning(
            "napari-xt: the token cache at %s cannot be used (%s); running without it", ctx.cache_root, error
        )
        return None


def _os_error_message(error: OSError, path: Path) -> str:
    if error.errno == errno.ENOSPC:
        return (
            f"the disk is full while writing {path}; what finished is kept: free space and run the same command "
            "again to resume"
        )
    if error.errno in (errno.EACCES, errno.EROFS):
        return f"cannot write {path} ({error.strerror}); choose another output"
    return f"{type(error).__name__}: {error}"


def _try_update(store: OutputStore, **values) -> None:
    with contextlib.suppress(OSError):  # a full disk may refuse even this; the event still reports it
        store.update(**values)
