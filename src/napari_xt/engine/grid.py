"""The region grid: which regions of which level to analyse, and which of them are background (pure numpy).

Analysis pixels are pixels of a pyramid level, optionally resampled by ``resample`` (level pixels per analysis
pixel) when a target pixel size falls between levels. The grid is anchored at the image origin, so a region
has the same global ``(row, col)`` whatever ROI is asked for: context positions and cached encodings agree
between runs. Regions at the right and bottom edges are padded when read and cropped back when written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from napari_xt.io import ImageReadError, Pyramid
from napari_xt.io.pyramid import in_this_thread


class GridError(ValueError):
    """The requested analysis cannot be laid out on the image (ROI outside, image smaller than a region…)."""


@dataclass(frozen=True)
class RegionGrid:
    """Regions of ``region_size`` analysis pixels covering an ROI.

    Attributes:
        level: pyramid level read.
        resample: level pixels per analysis pixel (1.0: the level as it is).
        region_size: region side in analysis pixels.
        image_shape: ``(H, W)`` of the whole image in analysis pixels.
        downsample: level-0 pixels per analysis pixel ``(dy, dx)``.
        rows, cols: global grid indices covered by the ROI, as ranges.
        roi: the ROI as a level-0 box ``(y0, x0, y1, x1)``.
        active: ``(len(rows), len(cols))`` True where a region holds foreground and will be analysed.
    """

    level: int
    resample: float
    region_size: int
    image_shape: tuple[int, int]
    downsample: tuple[float, float]
    rows: range
    cols: range
    roi: tuple[int, int, int, int]
    active: np.ndarray = field(compare=False)

    @property
    def shape(self) -> tuple[int, int]:
        """Global grid shape (regions along y and x) over the whole image."""
        return (math.ceil(self.image_shape[0] / self.region_size), math.ceil(self.image_shape[1] / self.region_size))

    @property
    def n_regions(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def n_active(self) -> int:
        return int(self.active.sum())

    def positions(self, only_active: bool = True) -> np.ndarray:
        """Global ``(row, col)`` of the regions, row-major, ``(N, 2)``."""
        rr, cc = np.meshgrid(np.asarray(self.rows), np.asarray(self.cols), indexing="ij")
        keep = self.active if only_active else np.ones_like(self.active)
        return np.stack([rr[keep], cc[keep]], axis=-1)

    def analysis_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """Region ``(row, col)`` in analysis pixels ``(y0, x0, y1, x1)``, clipped to the image."""
        r = self.region_size
        y0, x0 = row * r, col * r
        return (y0, x0, min(y0 + r, self.image_shape[0]), min(x0 + r, self.image_shape[1]))

    def level_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """The level pixels to read for region ``(row, col)`` (before padding), clipped to the level."""
        y0, x0, y1, x1 = self.analysis_box(row, col)
        f = self.resample
        return (round(y0 * f), round(x0 * f), round(y1 * f), round(x1 * f))

    def level0_box(self, row: int, col: int) -> tuple[float, float, float, float]:
        """Region ``(row, col)`` in level-0 pixel edges ``(y0, x0, y1, x1)``."""
        y0, x0, y1, x1 = self.analysis_box(row, col)
        dy, dx = self.downsample
        return (y0 * dy, x0 * dx, y1 * dy, x1 * dx)

    def to_level0(self, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Analysis pixel-centre coordinates → level-0 pixel-centre coordinates."""
        dy, dx = self.downsample
        return (np.asarray(y) + 0.5) * dy - 0.5, (np.asarray(x) + 0.5) * dx - 0.5

    def describe(self) -> str:
        return (
            f"level {self.level} (×{self.resample:g} resampled), regions of {self.region_size}² analysis px "
            f"= {self.region_size * self.downsample[0]:g} level-0 px; {self.n_regions} regions in the ROI, "
            f"{self.n_active} with foreground"
        )


def choose_level(pyramid: Pyramid, level: int | None = None, pixel_size: float | None = None) -> tuple[int, float]:
    """Pyramid level and resample factor for an analysis at ``level`` or at a target ``pixel_size``.

    With a target pixel size, the finest level not coarser than the target is read and resampled down to it,
    so no detail is invented by upsampling.
    """
    if level is not None and pixel_size is not None:
        raise GridError("give either a level or a pixel size, not both")
    if level is not None:
        if not 0 <= level < len(pyramid.levels):
            raise GridError(f"level {level} does not exist: {pyramid.source} has levels 0 to {len(pyramid.levels) - 1}")
        return level, 1.0
    if pixel_size is None:
        return 0, 1.0
    if pyramid.pixel_size is None:
        raise GridError(
            f"{pyramid.source} does not record its pixel size, so a target pixel size cannot be met; give a level"
        )
    target = pixel_size / pyramid.pixel_size[0]  # wanted level-0 pixels per analysis pixel
    candidates = [i for i, (dy, _) in enumerate(pyramid.downsample) if dy <= target * 1.001]
    chosen = max(candidates, key=lambda i: pyramid.downsample[i][0]) if candidates else 0
    resample = target / pyramid.downsample[chosen][0]
    return chosen, (1.0 if abs(resample - 1) < 0.01 else max(resample, 1.0))


def make_grid(
    pyramid: Pyramid,
    region_size: int,
    level: int = 0,
    resample: float = 1.0,
    roi: tuple[float, float, float, float] | None = None,
    active: np.ndarray | None = None,
) -> RegionGrid:
    """Lay regions over ``roi`` (a level-0 box; the whole image when None) at ``level``.

    Raises:
        GridError: the ROI lies outside the image, or the image is smaller than one region.
    """
    h0, w0 = pyramid.shape[:2]
    lh, lw = pyramid.levels[level].shape[:2]
    image_shape = (int(lh / resample), int(lw / resample))
    if image_shape[0] < region_size // 4 or image_shape[1] < region_size // 4:
        raise GridError(
            f"{pyramid.source} is {image_shape[0]} × {image_shape[1]} analysis pixels at level {level}, smaller than "
            f"a region of {region_size}² can sensibly cover; choose a finer level or a model with smaller regions"
        )
    downsample = (h0 / image_shape[0], w0 / image_shape[1])
    if roi is None:
        roi = (0, 0, h0, w0)
    y0, x0, y1, x1 = (float(v) for v in roi)
    if y1 <= y0 or x1 <= x0:
        raise GridError(f"ROI {tuple(roi)} is empty (expected y0 < y1 and x0 < x1, in level-0 pixels)")
    if y1 <= 0 or x1 <= 0 or y0 >= h0 or x0 >= w0:
        raise GridError(f"ROI {tuple(roi)} lies outside the image ({h0} × {w0} level-0 pixels)")
    y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, h0), min(x1, w0)
    rows = range(int(y0 / downsample[0]) // region_size, math.ceil(y1 / downsample[0] / region_size))
    cols = range(int(x0 / downsample[1]) // region_size, math.ceil(x1 / downsample[1] / region_size))
    if active is None:
        active = np.ones((len(rows), len(cols)), dtype=bool)
    return RegionGrid(level, resample, region_size, image_shape, downsample, rows, cols, (y0, x0, y1, x1), active)


# ------------------------------------------------------------------------------------------- background


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample (finite values only)."""
    values = values[np.isfinite(values)]
    if values.size == 0 or values.min() == values.max():
        return float(values.min()) if values.size else 0.0
    histogram, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(histogram)
    mean = np.cumsum(histogram * centres)
    total_weight, total_mean = weight[-1], mean[-1]
    between = (total_mean * weight - mean * total_weight) ** 2 / np.maximum(weight * (total_weight - weight), 1e-12)
    between = between[:-1]
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))  # a flat optimum: take its middle
    return float(centres[best].mean())


def foreground_mask(image: np.ndarray, kind: str, nodata: float | None = None) -> np.ndarray:
    """Foreground of a low-resolution ``(Y, X, C)`` image.

    ``tissue``: RGB slides; tissue is darker and more saturated than the bright glass (Otsu on both).
    ``nodata``: SAR and other float data; valid where finite, not ``nodata`` and not exactly zero.
    ``none``: everything.
    """
    if kind == "none":
        return np.ones(image.shape[:2], dtype=bool)
    if kind == "nodata":
        values = image.astype(np.float64)
        valid = np.isfinite(values) & (values != 0)
        if nodata is not None:
            valid &= values != nodata
        return valid.any(axis=-1)
    if kind == "tissue":
        rgb = image[..., :3].astype(np.float64)
        darkness = 255.0 - rgb.mean(axis=-1)
        saturation = rgb.max(axis=-1) - rgb.min(axis=-1)
        return (darkness > otsu_threshold(darkness.ravel())) | (
            saturation > max(otsu_threshold(saturation.ravel()), 15)
        )
    raise ValueError(f"unknown background kind {kind!r} (tissue, nodata or none)")


def background_kind(pyramid: Pyramid) -> str:
    """``tissue`` for 8-bit RGB, ``nodata`` for float images, ``none`` otherwise."""
    if pyramid.is_rgb:
        return "tissue"
    if pyramid.dtype.kind == "f" or pyramid.nodata is not None:
        return "nodata"
    return "none"


def active_regions(pyramid: Pyramid, grid: RegionGrid, kind: str = "auto", min_foreground: float = 0.02) -> np.ndarray:
    """Which regions of ``grid`` hold at least ``min_foreground`` foreground, from a low pyramid level; for
    tissue, with the ring of regions around them."""
    kind = background_kind(pyramid) if kind == "auto" else kind
    if kind == "none":
        return np.ones((len(grid.rows), len(grid.cols)), dtype=bool)
    region_level0 = grid.region_size * grid.downsample[0]
    # the coarsest level where a region still spans at least 8 pixels
    candidates = [i for i, (dy, _) in enumerate(pyramid.downsample) if region_level0 / dy >= 8]
    mask_level = max(candidates) if candidates else 0
    dy, dx = pyramid.downsample[mask_level]
    try:
        # in this thread, as the reader reads (dask's default would look for a distributed client first: inside a
        # worker it would send the read to the cluster)
        low = in_this_thread(pyramid.levels[mask_level])
    except ImageReadError:
        raise
    except Exception as error:  # a codec, tifffile or zarr failed on the low level
        raise ImageReadError(
            pyramid.source,
            f"level {mask_level} cannot be read for the background mask ({type(error).__name__}: {str(error)[:200]})",
            "the file may be truncated or corrupt",
        ) from error
    mask = foreground_mask(low, kind, pyramid.nodata)
    active = np.zeros((len(grid.rows), len(grid.cols)), dtype=bool)
    for i, row in enumerate(grid.rows):
        for j, col in enumerate(grid.cols):
            y0, x0, y1, x1 = grid.level0_box(row, col)
            cell = mask[
                int(y0 / dy) : max(int(y0 / dy) + 1, math.ceil(y1 / dy)),
                int(x0 / dx) : max(int(x0 / dx) + 1, math.ceil(x1 / dx)),
            ]
            active[i, j] = cell.size > 0 and cell.mean() >= min_foreground
    if kind == "tissue":
        # the tissue's edge is the model's to find, not the mask's: the thresholds miss pale tissue (stroma,
        # fat) at the edge of what they find, and a region skipped beside tissue would cut it off along region
        # borders (a staircase); so the ring of regions around the found tissue is analysed too
        from scipy import ndimage

        active = ndimage.binary_dilation(active, structure=np.ones((3, 3), bool))
    return active


def undone_positions(grid: RegionGrid, done_all: np.ndarray) -> np.ndarray:
    """Active regions of ``grid`` whose flag in the global ``done_all`` is not set, ``(N, 2)`` global positions."""
    positions = grid.positions()
    if not len(positions):
        return positions.reshape(0, 2)
    return positions[~done_all[positions[:, 0], positions[:, 1]]].reshape(-1, 2)


def bounding_window(positions: np.ndarray) -> tuple[slice, slice]:
    """The smallest window of grid cells holding every position of ``positions`` ``(N, 2)``."""
    low, high = positions.min(axis=0), positions.max(axis=0) + 1
    return (slice(int(low[0]), int(high[0])), slice(int(low[1]), int(high[1])))


def set_cells(array, positions: np.ndarray, values) -> None:
    """Set grid cells ``positions`` of an array indexed by grid row and column (zarr or numpy) in one write of
    their bounding window (for a single writer: the window's other cells are written back as they were)."""
    window = bounding_window(positions)
    block = np.asarray(array[window])
    local = positions - [window[0].start, window[1].start]
    block[local[:, 0], local[:, 1]] = values
    array[window] = block
