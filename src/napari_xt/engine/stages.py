"""The runner's stages as small functions over typed records: read → encode → context → decode → results.

Each stage takes and returns plain records (``PixelBatch``, ``Encoded``, ``RegionResult``), so the runner is
a composition of them and each can be tested alone. Model work runs in ``torch.inference_mode`` inside each
stage, never across a ``yield``: the consumer of the event stream runs in normal mode.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from napari_xt.engine.detections import DetectionTable
from napari_xt.engine.grid import RegionGrid
from napari_xt.engine.reading import read_batch
from napari_xt.io import Pyramid


def label_dtype(n_classes: int) -> np.dtype:
    """uint8 labels for up to 255 classes, uint16 beyond."""
    return np.dtype(np.uint8 if n_classes <= 255 else np.uint16)


STAGES = (
    *("start_up", "open", "plan", "read_wait", "encode", "keep", "cache", "context"),
    *("decode", "blend", "write", "preview", "merge"),
)
"""The stages of a run, in order: the start-up that the run waited on before its image was opened (for the
first image of a ``napari-xt predict`` process, the process's own start and imports; loading the model from
its checkpoint where the run did), opening the image and model and creating the run directory, planning the
regions (foreground mask, batch size, pass 2's order), waiting for pixels, encoding, keeping features for
pass 2 (gathering each decoded batch's, removing the scratch file), the token cache, context, decoding (with
the detections' decoding), blending the regions' outputs with their neighbours', waiting for writes, the
preview, merging detections; ``export`` follows."""


@dataclass
class Timings:
    """Seconds spent in each named stage of a run (``STAGES``); what no stage holds is reported as ``other``."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @contextlib.contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass
class PixelBatch:
    """Regions at global ``positions`` ``(B, 2)`` and their pixels ``(B, C, R, R)`` float32."""

    positions: np.ndarray
    pixels: np.ndarray


@dataclass
class Encoded:
    """Region features (a list of ``(B, C_i, h_i, w_i)`` tensors) and, when asked, their pooled tokens."""

    positions: np.ndarray
    features: list
    tokens: object = None


@dataclass
class RegionResult:
    """What one region produced, in analysis pixels of its ``box`` ``(y0, x0, y1, x1)``."""

    row: int
    col: int
    box: tuple[int, int, int, int]
    labels: np.ndarray
    detections: DetectionTable
    probabilities: np.ndarray | None = None


@dataclass(frozen=True)
class Compute:
    """Where and how the model runs."""

    device: object
    precision: str = "auto"

    def autocast(self):
        import torch

        precision = self.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)


def _inference(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        import torch

        with torch.inference_mode():
            return function(*args, **kwargs)

    return wrapper


def chunks(positions: np.ndarray, size: int) -> list[np.ndarray]:
    """``positions`` ``(N, 2)`` cut into batches of at most ``size``."""
    return [positions[start : start + size] for start in range(0, len(positions), size)]


def read_batches(
    pyramid: Pyramid, grid: RegionGrid, batches: list[np.ndarray], prefetch: int, timings: Timings
) -> Iterator[PixelBatch]:
    """The pixels of ``batches``, in order, read ahead by ``prefetch`` batches in a thread pool."""
    if not batches:
        return
    ahead = max(1, prefetch)
    with ThreadPoolExecutor(max_workers=ahead) as pool:
        futures = {i: pool.submit(read_batch, pyramid, grid, batches[i]) for i in range(min(ahead, len(batches)))}
        for i, positions in enumerate(batches):
            with timings.stage("read_wait"):
                pixels = futures.pop(i).result()
            if i + ahead < len(batches):
                futures[i + ahead] = pool.submit(read_batch, pyramid, grid, batches[i + ahead])
            yield PixelBatch(positions, pixels)


def _padded(tensor, rows: int):
    """``tensor`` with its first axis padded to ``rows`` by repeating its last row."""
    import torch

    missing = rows - tensor.shape[0]
    return tensor if missing <= 0 else torch.cat([tensor, tensor[-1:].expand(missing, *tensor.shape[1:])])


@_inference
def encode(model, batch: PixelBatch, compute: Compute, want_tokens: bool, pad_to: int = 0) -> Encoded:
    """Region features of a batch (float32, on the model's device) and optionally its pooled tokens.

    ``pad_to``: run the model on exactly this many regions (the batch padded), so that a region's result does not
    depend on how many regions shared its batch (matrix kernels round differently for other batch sizes).
    """
    import torch

    n = len(batch.pixels)
    x = _padded(torch.from_numpy(batch.pixels).to(compute.device), pad_to)
    with compute.autocast():
        features = model.encode(model.normalise(x))
        tokens = model.region_tokens(features)[:n] if want_tokens else None
    return Encoded(batch.positions, [f[:n].float() for f in features], tokens)


@_inference
def contextualise(model, tokens: np.ndarray, positions: np.ndarray, compute: Compute):
    """Context per region ``(M, ...)`` from the tokens ``(M, T, W)`` of every region giving context."""
    import torch

    sequence = torch.from_numpy(tokens).float().to(compute.device)[None]
    where = torch.from_numpy(positions).to(compute.device)[None]
    with compute.autocast():
        return model.contextualise(sequence, where)[0]


@_inference
def decode(model, neighbourhood, compute: Compute, pad_to: int = 0) -> dict:
    """The heads' outputs for a batch of regions, each decoded with its neighbours (a ``Neighbourhood``): cropped
    to the regions, or, for a model that blends them, the whole windows.

    ``pad_to``: as for ``encode``.
    """
    import torch

    device = compute.device
    table = torch.from_numpy(neighbourhood.table).to(device)
    features = [
        f.to(device) if isinstance(f, torch.Tensor) else [m.to(device) for m in f] for f in neighbourhood.features
    ]
    n = table.shape[0]
    with compute.autocast():
        # without a context encoder, the field is made of the regions' own tokens
        context = neighbourhood.context
        if context is None:
            context = model.region_tokens([f if isinstance(f, torch.Tensor) else torch.stack(f) for f in features])
        else:
            context = torch.as_tensor(context).to(device)
        # the table padded (its last row repeated), so that the decoder's batch has ``pad_to`` rows
        crop = not getattr(model, "blends", False)  # else whole windows, for the blend (``neighbours.Blender``)
        outputs = model.decode_neighbourhoods(features, context.float(), _padded(table, pad_to), crop=crop)
    # float32 from here on, as the features are: the blend's sums, the detections' scores and sizes (numpy has no
    # bfloat16) and the probabilities do not depend on the precision the model ran at beyond its own outputs
    return _first_rows(outputs, n)


@dataclass
class Neighbourhood:
    """What decoding a batch of N regions needs: the features ``[(M, C, m, m)]`` (or per level a list of M maps
    ``(C, m, m)``) and (with a context encoder) the context ``(M, T, W)`` of M regions, the batch's and its
    neighbours', and ``table`` ``(N, 9)`` int64, each batch region's 3 × 3 neighbourhood as indices into them
    (-1: absent)."""

    features: list
    context: object
    table: np.ndarray


def _first_rows(outputs, n: int):
    """The first ``n`` rows of (nested dicts of) outputs, floating tensors as float32 (the padding is not cast)."""
    if isinstance(outputs, dict):
        return {key: _first_rows(value, n) for key, value in outputs.items()}
    if not (hasattr(outputs, "shape") and outputs.ndim > 0):
        return outputs
    rows = outputs[:n]
    return rows.float() if rows.is_floating_point() else rows


@dataclass(frozen=True)
class ResultSettings:
    """How raw outputs become region results."""

    detection_stride: int
    store_threshold: float
    save_probabilities: bool
    n_classes: int


@_inference
def region_results(grid: RegionGrid, positions: np.ndarray, outputs: dict, settings: ResultSettings) -> list:
    """Cut a batch's outputs into ``RegionResult`` s: labels cropped at image edges, detections in level-0 pixels."""
    from napari_xt.model.heads import decode_detections

    segmentation = outputs.get("segmentation")
    dtype = label_dtype(settings.n_classes)
    labels = None
    if segmentation is not None:
        labels = (
            segmentation.max(dim=1).indices.cpu().numpy().astype(dtype)
        )  # max() rather than argmax: faster on CPU, same result
    probabilities = None
    if segmentation is not None and settings.save_probabilities:
        probabilities = segmentation.float().softmax(dim=1).half().cpu().numpy()
    found = None
    if "detection" in outputs:
        found = decode_detections(outputs["detection"], settings.detection_stride, threshold=settings.store_threshold)
        found = {name: getattr(found, name).cpu().numpy() for name in ("batch", "y", "x", "label", "score", "size")}
    results = []
    for k, (row, col) in enumerate(positions):
        box = grid.analysis_box(int(row), int(col))
        h, w = box[2] - box[0], box[3] - box[1]
        table = DetectionTable.empty()
        if found is not None:
            mine = found["batch"] == k
            y, x = found["y"][mine], found["x"][mine]
            inside = (y < h) & (x < w)  # padding beyond the image edge holds nothing
            y0, x0 = grid.to_level0(y[inside] + box[0], x[inside] + box[1])
            table = DetectionTable(
                y0,
                x0,
                found["label"][mine][inside],
                found["score"][mine][inside],
                found["size"][mine][inside] * grid.downsample[0],
            )
        region_labels = labels[k, :h, :w] if labels is not None else np.zeros((h, w), dtype)
        region_probabilities = probabilities[k, :, :h, :w] if probabilities is not None else None
        results.append(RegionResult(int(row), int(col), box, region_labels, table, region_probabilities))
    return results
