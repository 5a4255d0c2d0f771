"""The streaming runner: a generator of events that analyses a whole image or an ROI in bounded memory.

Whole-image context, two passes (DESIGN.md):

1. every foreground region is read and encoded; a few pooled tokens per region are kept (float16, reused from
   the token cache when this image was seen before), and the region's features are kept for pass 2 in memory
   or on disk within budgets;
2. the context encoder runs over the tokens of all regions at once (xl: windows with carried memory; mamba:
   chunked scans in both directions; hyper: bucketed attention), giving each region its context;
3. regions are decoded batch by batch with their features and context, and written to the run directory.

Memory: O(batch × region pixels) + O(regions × tokens × width). Reading runs ahead in a thread pool while the
model computes. Cancellation is checked between batches. No Qt here: the napari widget consumes the events.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_xt.engine.cache import FeatureKeeper, TokenCache, default_cache_dir, weights_hash
from napari_xt.engine.detections import DetectionTable, merge_duplicates
from napari_xt.engine.events import Cancelled, Failed, Finished, PartialResult, Progress, Started
from napari_xt.engine.grid import RegionGrid, active_regions, choose_level, make_grid
from napari_xt.engine.reading import read_batch
from napari_xt.engine.store import OutputStore
from napari_xt.io import Pyramid, open_pyramid


class CancelToken:
    """Set from any thread; the runner stops after the batch it is on."""

    def __init__(self):
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclass
class RunOptions:
    """How to run.

    Attributes:
        level, pixel_size: analysis level, or a target pixel size (in the image's unit); default: the model's
            pixel size when both the model and the image know theirs, else level 0.
        roi: level-0 box ``(y0, x0, y1, x1)``; None: the whole image.
        context_scope: ``image`` (context from every foreground region of the image, so an ROI gets the same
            predictions as in a whole-image run; tokens outside the ROI come from the token cache when this
            image was seen before) or ``roi`` (context from the ROI only: faster for a first look).
        device: ``auto`` (cuda, then mps, then cpu), or a torch device string.
        batch_size: regions per batch; None: chosen from free memory.
        precision: ``auto`` (bf16/fp16 autocast on CUDA, fp32 elsewhere), ``fp32``, ``bf16`` or ``fp16``.
        background: ``auto``, ``tissue``, ``nodata`` or ``none``; regions under ``min_foreground`` are skipped.
        store_threshold: detections down to this score are stored (display thresholds filter them later).
        feature_memory_budget, feature_disk_budget: bytes for keeping pass-1 features for pass 2. Memory is
            kept small by default (a few batches) so that memory does not grow with the image; the rest goes
            to float16 files in a scratch folder beside the output, and only past both is a region encoded twice.
        cache_dir: token cache folder; None: the default (``$NAPARI_XT_CACHE`` or ``~/.cache/napari-xt``); "": off.
        cache_max_bytes: size cap of the token cache.
        save_probabilities: also store class probabilities (float16, one map per class).
        overwrite: replace an existing run directory.
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
    feature_memory_budget: int = 64 * 2**20
    feature_disk_budget: int = 16 * 2**30
    prefetch: int = 2
    cache_dir: str | None = None
    cache_max_bytes: int = 4 * 2**30
    save_probabilities: bool = False
    overwrite: bool = False


def pick_device(requested: str = "auto"):
    import torch

    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


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
    """Where a run's context comes from: ``image`` (every prediction is the whole-image one) or ``roi``.

    Predictions made with context from an ROI only differ from whole-image ones, so the two are never mixed in
    one run directory (it is part of a run's identity).
    """
    roi_only = options.roi is not None and options.context_scope == "roi" and config.context_encoder.kind != "none"
    return "roi" if roi_only else "image"


def display_spec(pyramid: Pyramid, config, grid: RegionGrid) -> dict:
    """How a run's outputs sit on the image: analysis shape, classes, colours, and the layer transform that
    puts analysis pixel centres on level-0 pixel centres (DESIGN.md, Coordinates) in physical units."""
    heads = config.heads
    s0 = pyramid.pixel_size or (1.0, 1.0)
    scale = (s0[0] * grid.downsample[0], s0[1] * grid.downsample[1])
    return {
        "image_shape": list(grid.image_shape),
        "pixel_size": list(pyramid.pixel_size) if pyramid.pixel_size else None,
        "unit": pyramid.unit,
        "layer_scale": list(scale),
        "layer_translate": [scale[0] / 2 - s0[0] / 2, scale[1] / 2 - s0[1] / 2],
        "region_level0": [grid.region_size * grid.downsample[0], grid.region_size * grid.downsample[1]],
        "segmentation_classes": list(heads.segmentation_classes),
        "detection_classes": list(heads.detection_classes),
        "colours": dict(heads.colours),
    }


def run(
    image, model_or_checkpoint, out: str | Path, options: RunOptions | None = None, cancel: CancelToken | None = None
) -> Iterator:
    """Analyse ``image`` with a model or checkpoint, writing the run directory ``out``; yield events.

    Ends with exactly one of ``Finished``, ``Cancelled`` or ``Failed``. Bad input (an unreadable image, a
    checkpoint that does not fit, an ROI outside the image, an output that must not be overwritten) raises
    before the first event, with a message saying what to do.
    """
    from napari_xt.model import check_fits_image

    options = options or RunOptions()
    cancel = cancel or CancelToken()
    pyramid = open_pyramid(image)
    device = pick_device(options.device)
    model, weights_sha, checkpoint_path = load_model(model_or_checkpoint, device)
    check_fits_image(model.config, pyramid.n_channels, pyramid.source)
    if options.context_scope not in ("image", "roi"):
        raise ValueError(f"context_scope must be 'image' or 'roi', not {options.context_scope!r}")
    grid = plan(pyramid, model.config, options)
    whole_image = options.context_scope == "image" and options.roi is not None
    context_grid = plan(pyramid, model.config, options, roi=(0, 0, *pyramid.shape[:2])) if whole_image else grid
    spec = _spec(pyramid, model, grid, weights_sha, checkpoint_path)
    spec["save_probabilities"] = options.save_probabilities
    spec["context_from"] = context_from(model.config, options)
    store = OutputStore.open(out, spec, options.overwrite)
    return _Run(pyramid, model, grid, context_grid, store, options, cancel, device, weights_sha).events()


def _spec(pyramid: Pyramid, model, grid: RegionGrid, weights_sha: str, checkpoint_path) -> dict:
    import torch

    import napari_xt

    return {
        "image_source": pyramid.source,
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
        **display_spec(pyramid, model.config, grid),
        "versions": {"napari_xt": napari_xt.__version__, "torch": torch.__version__},
        "rois": [],
    }


class _Run:
    def __init__(self, pyramid, model, grid, context_grid, store, options, cancel, device, weights_sha):
        self.pyramid, self.model, self.grid, self.context_grid, self.store = pyramid, model, grid, context_grid, store
        self.options, self.cancel, self.device, self.weights_sha = options, cancel, device, weights_sha
        self.timings = {"read_wait": 0.0, "encode": 0.0, "context": 0.0, "decode": 0.0, "write": 0.0}
        self.uses_context = model.config.context_encoder.kind != "none"
        if not self.uses_context:  # no context: only the ROI's own regions matter
            self.context_grid = grid
        self.positions = self.context_grid.positions()  # active regions that give context, global (row, col)
        self.index = {(int(r), int(c)): i for i, (r, c) in enumerate(self.positions)}

    # -- the event stream -----------------------------------------------------------------------------------

    def events(self) -> Iterator:
        start = time.perf_counter()
        grid, store = self.grid, self.store
        store.mark_active(grid.rows, grid.cols, grid.active)
        store.update(rois=[*store.spec.get("rois", []), list(grid.roi)], status="running")
        done_all = store.done_mask()
        done = done_all[grid.rows.start : grid.rows.stop, grid.cols.start : grid.cols.stop]
        todo = np.array([p for p in grid.positions() if not done[p[0] - grid.rows.start, p[1] - grid.cols.start]])
        todo = todo.reshape(-1, 2)
        yield Started(str(store.path), grid.n_regions, grid.n_active, grid.n_active - len(todo), grid.describe())
        try:
            import torch

            with torch.inference_mode():
                self.batch_size = self.options.batch_size or self._auto_batch_size()
                keeper = self._keeper(len(todo))
                try:
                    context = yield from self._context(todo, keeper)
                    if context is None:
                        store.update(status="cancelled")
                        yield Cancelled(str(store.path), grid.n_active - len(todo))
                        return
                    finished = yield from self._predict(todo, context, keeper, done_before=grid.n_active - len(todo))
                finally:
                    keeper.close()
            if not finished:
                store.update(status="cancelled", timings=self._timings(start))
                yield Cancelled(str(store.path), int(store.done_mask().sum()))
                return
            merged = merge_duplicates(store.region_detections()).sorted()
            store.finish(merged, self._timings(start), self.pyramid.geotransform)
            elapsed = time.perf_counter() - start
            yield Finished(str(store.path), len(merged), elapsed, self._timings(start))
        except OSError as error:
            message = _os_error_message(error, store.path)
            _try_update(store, status="failed", error=message)
            yield Failed(str(store.path), message, error)
        except Exception as error:  # the run must end with an event, whatever broke
            message = f"{type(error).__name__}: {error}"
            _try_update(store, status="failed", error=message)
            yield Failed(str(store.path), message, error)

    def _timings(self, start: float) -> dict:
        return {
            **{k: round(v, 3) for k, v in self.timings.items()},
            "total": round(time.perf_counter() - start, 3),
            "batch_size": self.batch_size,
            "device": str(self.device),
        }

    # -- pass 1: tokens and context ---------------------------------------------------------------------------

    def _context(self, todo: np.ndarray, keeper: FeatureKeeper):
        """Context per active region ``(M, T, W)`` (a tensor), or None when cancelled. Pass 1 lives here."""
        import torch

        if not self.uses_context:
            return {}
        model, grid = self.model, self.context_grid
        config = model.config.context_encoder
        n_tokens, width = config.tokens_per_region**2, config.width
        tokens = np.zeros((len(self.positions), n_tokens, width), dtype=np.float16)
        cache = self._token_cache(n_tokens, width)
        have = np.zeros(len(self.positions), dtype=bool)
        if cache is not None:
            cached, present = cache.lookup(grid.rows, grid.cols)
            local = self.positions - [grid.rows.start, grid.cols.start]
            have = present[local[:, 0], local[:, 1]]
            tokens[have] = cached[local[have, 0], local[have, 1]]
        n_cached = int(have.sum())
        todo_set = {(int(r), int(c)) for r, c in todo}
        # regions to encode now: those without tokens, and those still to predict (their features are kept)
        need = [i for i, (r, c) in enumerate(self.positions) if not have[i] or (int(r), int(c)) in todo_set]
        started = time.perf_counter()
        new_positions, new_tokens = [], []
        for batch, pixels in self._batches(self.positions[need], self.context_grid):
            if self.cancel.cancelled:
                return None
            features, batch_tokens = self._encode(pixels, want_tokens=True)
            for k, position in enumerate(batch):
                i = self.index[(int(position[0]), int(position[1]))]
                tokens[i] = batch_tokens[k].float().cpu().numpy().astype(np.float16)
                if (int(position[0]), int(position[1])) in todo_set:
                    keeper.put(i, [f[k : k + 1].cpu().clone() for f in features])
                if not have[i]:
                    new_positions.append(position)
                    new_tokens.append(tokens[i])
            done = len(new_positions) + n_cached
            yield Progress("encode", done, len(self.positions), time.perf_counter() - started, n_cached)
        if cache is not None and new_positions:
            cache.store(np.array(new_positions), np.array(new_tokens))
            TokenCache.enforce_cap(cache.root, self.options.cache_max_bytes)
        t0 = time.perf_counter()
        sequence = torch.from_numpy(tokens).float().to(self.device)[None]
        positions = torch.from_numpy(self.positions).to(self.device)[None]
        with self._autocast():
            context = model.contextualise(sequence, positions)[0]
        self.timings["context"] += time.perf_counter() - t0
        yield Progress("context", len(self.positions), len(self.positions), time.perf_counter() - started, n_cached)
        return context

    # -- pass 2: outputs --------------------------------------------------------------------------------------

    def _predict(self, todo: np.ndarray, context, keeper: FeatureKeeper, done_before: int):
        import torch

        from napari_xt.model.heads import decode_detections

        model = self.model
        started = time.perf_counter()
        total, done = len(todo) + done_before, done_before
        stride = model.config.heads.detection_stride
        to_read = np.array([p for p in todo if not keeper.has(self.index[(int(p[0]), int(p[1]))])]).reshape(-1, 2)
        read_iter = self._batches(to_read, self.grid)
        pending = None  # the batch being written while the next one computes
        with ThreadPoolExecutor(max_workers=1) as writer:
            for batch in _chunks(todo, self.batch_size):
                if self.cancel.cancelled:
                    break
                indices = [self.index[(int(r), int(c))] for r, c in batch]
                features = self._features_for(indices, keeper, read_iter)
                t0 = time.perf_counter()
                with self._autocast():
                    if self.uses_context:
                        region_context = context[torch.tensor(indices, device=self.device)]
                    else:
                        region_context = model.region_tokens(features)
                    outputs = model.decode(features, region_context)
                results = self._results(batch, outputs, stride, decode_detections)
                self.timings["decode"] += time.perf_counter() - t0
                if pending is not None:
                    done = yield from self._written(*pending, done, total, started, done_before)
                pending = (writer.submit(self.store.write_batch, results), batch, results)
            if pending is not None:
                done = yield from self._written(*pending, done, total, started, done_before)
        return not self.cancel.cancelled

    def _written(self, future, batch, results, done: int, total: int, started: float, done_before: int):
        """Wait for a batch's write (re-raising its error), then report it; returns the new done count."""
        t0 = time.perf_counter()
        future.result()
        self.timings["write"] += time.perf_counter() - t0
        boxes = np.array([self.grid.level0_box(int(r), int(c)) for r, c in batch])
        yield PartialResult(boxes, DetectionTable.concatenate([r["detections"] for r in results]))
        done += len(batch)
        yield Progress("predict", done, total, time.perf_counter() - started, done_before)
        return done

    def _features_for(self, indices: list[int], keeper: FeatureKeeper, read_iter):
        """Features of a batch: kept from pass 1 (popped now, so memory stays per batch) or encoded afresh."""
        import torch

        parts = {i: keeper.pop(i) for i in indices}
        while any(part is None for part in parts.values()):
            positions, pixels = next(read_iter)  # regions to encode come in the same order as the batches
            features, _ = self._encode(pixels, want_tokens=False)
            for k, (r, c) in enumerate(positions):
                parts[self.index[(int(r), int(c))]] = [f[k : k + 1] for f in features]
        levels = len(parts[indices[0]])
        return [torch.cat([parts[i][level].to(self.device).float() for i in indices]) for level in range(levels)]

    def _results(self, batch, outputs, stride, decode_detections) -> list[dict]:
        import torch

        grid = self.grid
        segmentation = outputs.get("segmentation")
        # max().indices is ~15× faster than argmax() over the class axis on CPU (same result)
        labels = segmentation.max(dim=1).indices.to(torch.uint8).cpu().numpy() if segmentation is not None else None
        probabilities = None
        if segmentation is not None and self.options.save_probabilities:
            probabilities = segmentation.float().softmax(dim=1).half().cpu().numpy()
        found = None
        if "detection" in outputs:
            found = decode_detections(outputs["detection"], stride, threshold=self.options.store_threshold)
        results = []
        for k, (row, col) in enumerate(batch):
            box = grid.analysis_box(int(row), int(col))
            h, w = box[2] - box[0], box[3] - box[1]
            table = DetectionTable.empty()
            if found is not None:
                mine = (found.batch == k).cpu().numpy()
                y = found.y.cpu().numpy()[mine]
                x = found.x.cpu().numpy()[mine]
                inside = (y < h) & (x < w)  # padding beyond the image edge holds nothing
                y0, x0 = grid.to_level0(y[inside] + box[0], x[inside] + box[1])
                table = DetectionTable(
                    y0,
                    x0,
                    found.label.cpu().numpy()[mine][inside],
                    found.score.cpu().numpy()[mine][inside],
                    found.size.cpu().numpy()[mine][inside] * grid.downsample[0],
                )
            region_labels = labels[k, :h, :w] if labels is not None else np.zeros((h, w), np.uint8)
            result = {"row": int(row), "col": int(col), "box": box, "labels": region_labels, "detections": table}
            if probabilities is not None:
                result["probabilities"] = probabilities[k, :, :h, :w]
            results.append(result)
        return results

    # -- helpers ----------------------------------------------------------------------------------------------

    def _encode(self, pixels: np.ndarray, want_tokens: bool):
        import torch

        t0 = time.perf_counter()
        x = torch.from_numpy(pixels).to(self.device)
        with self._autocast():
            features = self.model.encode(self.model.normalise(x))
            tokens = self.model.region_tokens(features) if want_tokens else None
        self.timings["encode"] += time.perf_counter() - t0
        return features, tokens

    def _batches(self, positions: np.ndarray, grid: RegionGrid):
        """``(positions, pixels)`` batches, read ahead in a thread pool while the model computes."""
        chunks = list(_chunks(positions, self.batch_size))
        if not chunks:
            return
        with ThreadPoolExecutor(max_workers=max(1, self.options.prefetch)) as pool:
            futures = [pool.submit(read_batch, self.pyramid, grid, chunk) for chunk in chunks[: self.options.prefetch]]
            for i, chunk in enumerate(chunks):
                t0 = time.perf_counter()
                pixels = futures[i].result()
                self.timings["read_wait"] += time.perf_counter() - t0
                ahead = i + self.options.prefetch
                if ahead < len(chunks):
                    futures.append(pool.submit(read_batch, self.pyramid, grid, chunks[ahead]))
                futures[i] = None
                yield chunk, pixels

    def _autocast(self):
        import torch

        precision = self.options.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _auto_batch_size(self) -> int:
        import psutil
        import torch

        probe = torch.zeros(1, self.model.config.in_channels, self.grid.region_size, self.grid.region_size)
        features = self.model.encode(self.model.normalise(probe.to(self.device)))
        per_region = 8 * sum(f.numel() * 4 for f in features) + probe.numel() * 4 * 4
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info()
            return int(max(1, min(64, free * 0.5 // per_region)))
        available = psutil.virtual_memory().available
        return int(max(1, min(8, available * 0.25 // per_region)))

    def _keeper(self, n_todo: int) -> FeatureKeeper:
        if not self.uses_context:
            return FeatureKeeper(0, 0)
        free = shutil.disk_usage(self.store.path.parent).free
        disk = int(min(self.options.feature_disk_budget, free * 0.5))
        return FeatureKeeper(self.options.feature_memory_budget, disk, scratch=self.store.path.parent)

    def _token_cache(self, n_tokens: int, width: int) -> TokenCache | None:
        if self.options.cache_dir == "":
            return None
        root = Path(self.options.cache_dir) if self.options.cache_dir else default_cache_dir() / "tokens"
        key = TokenCache.key(
            self.pyramid.signature, self.grid.level, self.grid.resample, self.grid.region_size, self.weights_sha
        )
        try:
            return TokenCache(root, key, self.grid.shape, n_tokens, width)
        except OSError:
            return None  # a cache that cannot be written is no reason to fail the run


def _chunks(items: np.ndarray, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


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


def run_to_end(image, model_or_checkpoint, out, options: RunOptions | None = None, cancel=None, on_event=None):
    """Run and return the last event (``Finished``, ``Cancelled`` or ``Failed``), calling ``on_event`` for each."""
    last = None
    for event in run(image, model_or_checkpoint, out, options, cancel):
        if on_event is not None:
            on_event(event)
        last = event
    return last
