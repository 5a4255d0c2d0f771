"""Deterministic synthetic scenes of any size, generated lazily, with ground truth.

Both flavours are built so that a label is ambiguous inside one region and decidable with context:

* ``SarScene``: float32 speckle (1 or 2 bands), land masses with coastlines, bright point targets. Vessels at
  sea are ``near_shore`` when land lies within ``near_shore_distance`` (several regions) and ``open_sea``
  otherwise; a region that is all sea cannot tell the two apart on its own (as xView3's close-to-shore task).
  Look-alike clutter on land is not a target.
* ``SlideScene``: RGB tissue on a bright background, tumour nests (epithelium with gland lumens) and the
  invasive margin, the stroma within a few regions of a nest. Clusters of immune cells look the same wherever
  they lie and are ``margin_cluster`` in the margin and ``stroma_cluster`` beyond it; a margin cluster's own
  region usually holds no tumour, so its class (and the margin) needs the regions around it.

Every pixel of every pyramid level is computed from level-0 coordinates, so any level of any window is cheap
and identical on every machine. Objects live on a jittered grid of cells (one candidate per cell), so the
objects in any window are found without generating the whole scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import dask.array as da
import numpy as np

from napari_xt.data.noise import coarse_field, fractal_noise, hash_uniform
from napari_xt.io.pyramid import TARGET_CHUNK, Pyramid
from napari_xt.io.signature import digest

SMALLEST_SIDE = 512
RENDER_PIXELS = 1 << 17
"""Pixels rendered at once (``_Scene.render`` works in bands of rows of about this many pixels)."""


@dataclass(frozen=True)
class ObjectTable:
    """Point objects in level-0 pixel coordinates."""

    y: np.ndarray
    x: np.ndarray
    label: np.ndarray  # index into the scene's ``object_classes``
    size: np.ndarray  # length or diameter in level-0 pixels

    def __len__(self) -> int:
        return len(self.y)


def _pixel_centres(start: int, stop: int, factor: int) -> np.ndarray:
    """Level-0 coordinates of the centres of level pixels ``start..stop`` when a level pixel is ``factor`` wide."""
    return (np.arange(start, stop, dtype=np.float64) + 0.5) * factor - 0.5


class _Scene:
    """Shared machinery: levels, lazy views, object cells."""

    height: int
    width: int
    seed: int
    pixel_size: float
    unit: str
    name: str
    n_channels: int
    dtype: np.dtype

    def level_count(self) -> int:
        count = 1
        while max(self.height, self.width) // 2**count >= SMALLEST_SIDE:
            count += 1
        return count

    def level_shape(self, level: int) -> tuple[int, int]:
        return (self.height // 2**level, self.width // 2**level)

    def pyramid(self) -> Pyramid:
        """The scene's image as a lazy Pyramid (every level computed on demand)."""
        levels, views, downsample = [], [], []
        for level in range(self.level_count()):
            view = _SceneView(self, level, "image")
            chunks = (TARGET_CHUNK, TARGET_CHUNK, self.n_channels)
            levels.append(da.from_array(view, chunks=chunks, asarray=False, lock=False, inline_array=True))
            views.append(view)
            downsample.append((float(2**level), float(2**level)))
        return Pyramid(
            levels=tuple(levels),
            downsample=tuple(downsample),
            pixel_size=(self.pixel_size, self.pixel_size),
            unit=self.unit,
            channel_names=self.channel_names,
            signature=digest(repr(self)),
            source=f"synthetic {self.name} {self.height}×{self.width} seed {self.seed}",
            format="synthetic",
            views=tuple(views),
        )

    def labels(self, level: int = 0) -> da.Array:
        """Ground-truth class map ``(Y, X)`` uint8 at ``level`` (indices into ``label_classes``), lazy."""
        view = _SceneView(self, level, "labels")
        return da.from_array(view, chunks=(TARGET_CHUNK, TARGET_CHUNK), asarray=False, lock=False, inline_array=True)

    def render(self, level: int, y0: int, y1: int, x0: int, x1: int, what: str = "image") -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` of ``level`` (image ``(Y, X, C)`` or labels ``(Y, X)``).

        Rendered ``RENDER_PIXELS`` at a time, in bands of whole rows: the generator's float64 temporaries
        (about 25 per pixel) then stay near 30 MB, as a file reader's decode buffers do, and not 200 MB for a
        1,024² chunk, which would be counted against the engine in the memory benchmarks."""
        factor = 2**level
        rows = max(1, RENDER_PIXELS // max(1, x1 - x0))
        xs = _pixel_centres(x0, x1, factor)
        out = None
        for low in range(y0, max(y1, y0 + 1), rows):
            high = min(y1, low + rows)
            ys = _pixel_centres(low, high, factor)
            band = self._labels(ys, xs, factor) if what == "labels" else self._image(ys, xs, factor, (low, x0))
            if out is None:
                if high == y1:
                    return band
                out = np.empty((y1 - y0, *band.shape[1:]), dtype=band.dtype)
            out[low - y0 : high - y0] = band
        return out

    def _cells(self, spacing: int, ys: np.ndarray, xs: np.ndarray, margin: float = 0.0):
        """Integer cell indices covering the level-0 window spanned by ``ys`` and ``xs``."""
        cy = np.arange(math.floor((ys[0] - margin) / spacing), math.floor((ys[-1] + margin) / spacing) + 1)
        cx = np.arange(math.floor((xs[0] - margin) / spacing), math.floor((xs[-1] + margin) / spacing) + 1)
        return cy, cx


class _SceneView:
    """Array-like view of one level of a scene, for ``dask.array.from_array``."""

    def __init__(self, scene: _Scene, level: int, what: str):
        self.scene, self.level, self.what = scene, level, what
        h, w = scene.level_shape(level)
        self.shape = (h, w, scene.n_channels) if what == "image" else (h, w)
        self.dtype = np.dtype(scene.dtype) if what == "image" else np.dtype(np.uint8)
        self.ndim = len(self.shape)

    def __dask_tokenize__(self):
        return ("napari-xt-scene", repr(self.scene), self.level, self.what)

    def __getitem__(self, index):
        index = index if isinstance(index, tuple) else (index,)
        ys, xs = (index + (slice(None),) * 2)[:2]
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        out = self.scene.render(self.level, y0, y1, x0, x1, self.what)
        rest = index[2:]
        return out[(slice(None), slice(None), *rest)] if rest else out


# ---------------------------------------------------------------------------------------------------- SAR


@dataclass(frozen=True)
class SarScene(_Scene):
    """A SAR-like scene: sea, land, vessels (open sea / near shore) and clutter on land.

    Args:
        height, width: level-0 size in pixels.
        seed: everything follows from it.
        bands: 1 (VV) or 2 (VV, VH).
        land_scale: size of land masses in pixels.
        land_level: threshold on the land field; larger gives less land.
        vessel_spacing: one candidate target per cell of this many pixels.
        near_shore_distance: vessels closer than this to land (pixels) are ``near_shore``.
        pixel_size: metres per pixel.
    """

    height: int = 50_000
    width: int = 50_000
    seed: int = 0
    bands: int = 1
    land_scale: float = 16_000.0
    land_level: float = 0.56
    vessel_spacing: int = 384
    vessel_probability: float = 0.35
    clutter_probability: float = 0.2
    near_shore_distance: float = 1_536.0
    swath_edge: bool = True
    pixel_size: float = 10.0

    name = "SAR"
    unit = "m"
    dtype = np.dtype(np.float32)
    object_classes = ("open_sea", "near_shore")
    label_classes = ("background", "land", "open_sea", "near_shore")

    @property
    def n_channels(self) -> int:
        return self.bands

    @property
    def channel_names(self) -> tuple[str, ...]:
        return ("VV", "VH")[: self.bands]

    def land_field(self, y, x) -> np.ndarray:
        return fractal_noise(y, x, self.land_scale, self.seed, octaves=5)

    def is_land(self, y, x) -> np.ndarray:
        return self.land_field(y, x) > self.land_level

    def _nodata(self, ys, xs) -> np.ndarray:
        """A slanted swath edge: pixels beyond it hold no data (NaN)."""
        if not self.swath_edge:
            return np.zeros((len(ys), len(xs)), dtype=bool)
        return xs[None, :] > self.width * 0.94 + 0.03 * (ys[:, None] - self.height / 2)

    def _candidates(self, cy: np.ndarray, cx: np.ndarray):
        """Per-cell target candidates: position, length, heading, and whether one exists."""
        gy, gx = np.meshgrid(cy, cx, indexing="ij")
        s = self.vessel_spacing
        margin = 48
        py = (gy + 0.0) * s + margin + hash_uniform(gy, gx, 1, seed=self.seed) * (s - 2 * margin)
        px = (gx + 0.0) * s + margin + hash_uniform(gy, gx, 2, seed=self.seed) * (s - 2 * margin)
        length = 10 + 30 * hash_uniform(gy, gx, 3, seed=self.seed)
        heading = math.pi * hash_uniform(gy, gx, 4, seed=self.seed)
        draw = hash_uniform(gy, gx, 5, seed=self.seed)
        land = self.is_land(py, px)
        inside = (py >= 0) & (py < self.height) & (px >= 0) & (px < self.width)
        vessel = inside & ~land & (draw < self.vessel_probability)
        clutter = inside & land & (draw < self.clutter_probability)
        return py, px, length, heading, vessel, clutter

    def distance_to_land_below(self, y: np.ndarray, x: np.ndarray, distance: float) -> np.ndarray:
        """True where land lies within ``distance`` of ``(y, x)`` (sampled on rings; deterministic)."""
        radii = np.linspace(distance / 8, distance, 8)
        angles = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        ry = (radii[:, None] * np.sin(angles)[None, :]).ravel()
        rx = (radii[:, None] * np.cos(angles)[None, :]).ravel()
        sy = np.asarray(y)[..., None] + ry
        sx = np.asarray(x)[..., None] + rx
        return self.is_land(sy, sx).any(axis=-1)

    def objects(self, box: tuple[int, int, int, int] | None = None) -> ObjectTable:
        """Vessels (not clutter) whose centre lies in the level-0 ``box`` (y0, x0, y1, x1); whole scene if None."""
        y0, x0, y1, x1 = box or (0, 0, self.height, self.width)
        s = self.vessel_spacing
        cy = np.arange(y0 // s, (y1 - 1) // s + 1)
        cx = np.arange(x0 // s, (x1 - 1) // s + 1)
        py, px, length, _, vessel, _ = self._candidates(cy, cx)
        keep = vessel & (py >= y0) & (py < y1) & (px >= x0) & (px < x1)
        py, px, length = py[keep], px[keep], length[keep]
        near = self.distance_to_land_below(py, px, self.near_shore_distance)
        return ObjectTable(py, px, near.astype(np.int64), length)

    def _target_intensity(self, ys, xs, factor, which: str) -> np.ndarray:
        s = self.vessel_spacing
        cy, cx = self._cells(s, ys, xs)
        py, px, length, heading, vessel, clutter = self._candidates(cy, cx)
        present = vessel if which == "vessel" else clutter
        iy = (np.floor(ys / s).astype(np.int64) - cy[0])[:, None]
        ix = (np.floor(xs / s).astype(np.int64) - cx[0])[None, :]
        dy, dx = ys[:, None] - py[iy, ix], xs[None, :] - px[iy, ix]
        cos, sin = np.cos(heading[iy, ix]), np.sin(heading[iy, ix])
        along, across = dy * sin + dx * cos, -dy * cos + dx * sin
        sigma_a, sigma_c = length[iy, ix] / 4, np.maximum(1.0, length[iy, ix] / 12)
        blur = (factor / 2.0) ** 2
        wide_a, wide_c = np.sqrt(sigma_a**2 + blur), np.sqrt(sigma_c**2 + blur)
        peak = (sigma_a * sigma_c) / (wide_a * wide_c)
        value = peak * np.exp(-0.5 * ((along / wide_a) ** 2 + (across / wide_c) ** 2))
        return np.where(present[iy, ix], value, 0.0)

    def _image(self, ys, xs, factor, origin) -> np.ndarray:
        shape = (len(ys), len(xs))
        field = partial(coarse_field, i0=origin[0], j0=origin[1], factor=factor, shape=shape)
        land_field = field(self.land_field)
        texture = field(lambda y, x: fractal_noise(y, x, 900.0, self.seed + 11, 3))
        wind = field(lambda y, x: value_sea(y, x, self.seed))
        edge = np.clip((land_field - self.land_level) / 0.01, -1, 1) * 0.5 + 0.5
        backscatter = (1 - edge) * (0.02 + 0.03 * wind) + edge * (0.12 + 0.35 * texture)
        bands = []
        looks = min(float(factor * factor), 64.0)
        gy = np.floor(ys / factor).astype(np.int64)[:, None]
        gx = np.floor(xs / factor).astype(np.int64)[None, :]
        for band in range(self.bands):
            u = hash_uniform(gy, gx, factor, band, seed=self.seed + 101)
            speckle = 1.0 + (-np.log1p(-u) - 1.0) / math.sqrt(looks)
            gain = 1.0 if band == 0 else 0.25
            targets = 2.5 * self._target_intensity(ys, xs, factor, "vessel")
            targets += 1.2 * self._target_intensity(ys, xs, factor, "clutter")
            bands.append(gain * (backscatter * np.maximum(speckle, 0.02) + targets))
        image = np.stack(bands, axis=-1).astype(np.float32)
        image[self._nodata(ys, xs)] = np.nan
        return image

    def _labels(self, ys, xs, factor) -> np.ndarray:
        land = self.is_land(ys[:, None], xs[None, :])
        out = np.where(land, 1, 0).astype(np.uint8)
        s = self.vessel_spacing
        cy, cx = self._cells(s, ys, xs)
        py, px, length, _, vessel, _ = self._candidates(cy, cx)
        if vessel.any():
            near = np.zeros_like(vessel)
            near[vessel] = self.distance_to_land_below(py[vessel], px[vessel], self.near_shore_distance)
            iy = (np.floor(ys / s).astype(np.int64) - cy[0])[:, None]
            ix = (np.floor(xs / s).astype(np.int64) - cx[0])[None, :]
            inside = np.hypot(ys[:, None] - py[iy, ix], xs[None, :] - px[iy, ix]) <= np.maximum(
                length[iy, ix] / 2, factor / 2
            )
            hit = inside & vessel[iy, ix]
            out[hit] = np.where(near[iy, ix], 3, 2)[hit]
        out[self._nodata(ys, xs)] = 0
        return out


def value_sea(y, x, seed: int) -> np.ndarray:
    """Wind-roughness field of the sea surface."""
    return fractal_noise(y, x, 5000.0, seed + 23, 3)


# -------------------------------------------------------------------------------------------------- slide


@dataclass(frozen=True)
class SlideScene(_Scene):
    """A slide-like RGB scene: tissue on glass, tumour nests in the tissue, the invasive margin around them,
    and clusters of immune cells in the stroma.

    Tumour nests are large areas of epithelium (darker, denser nuclei, gland lumens). The stroma within
    ``margin_distance`` of a nest is the invasive margin. Immune-cell clusters look the same everywhere in the
    stroma and are ``margin_cluster`` in the margin and ``stroma_cluster`` beyond it: most margin clusters
    have no tumour in their own region, so their class, like the margin's extent, needs the regions around.

    Args:
        height, width: level-0 size in pixels.
        seed: everything follows from it.
        tissue_scale: size of tissue pieces in pixels.
        tissue_level: threshold on the tissue field; larger gives less tissue.
        nest_scale: size of tumour nests in pixels.
        nest_level: threshold on the nest field; larger gives fewer, smaller nests.
        margin_distance: stroma (and clusters) within this many pixels of a nest belong to the margin.
        cluster_spacing: one candidate immune-cell cluster per cell of this many pixels.
        cluster_probability: chance that a cell in the stroma holds its cluster.
        pixel_size: micrometres per pixel.
    """

    height: int = 65_536
    width: int = 65_536
    seed: int = 0
    tissue_scale: float = 20_000.0
    tissue_level: float = 0.45
    nest_scale: float = 4_000.0
    nest_level: float = 0.62
    margin_distance: float = 1_024.0
    gland_spacing: int = 96
    cluster_spacing: int = 320
    cluster_probability: float = 0.35
    nucleus_spacing: int = 24
    pixel_size: float = 0.5

    name = "slide"
    unit = "µm"
    dtype = np.dtype(np.uint8)
    n_channels = 3
    channel_names = ("red", "green", "blue")
    object_classes = ("margin_cluster", "stroma_cluster")
    label_classes = ("background", "stroma", "invasive_margin", "tumour", "margin_cluster", "stroma_cluster")
    MARGIN_GRID = 16  # level-0 pixels between the points where the distance to tumour is measured

    def tissue_field(self, y, x) -> np.ndarray:
        return fractal_noise(y, x, self.tissue_scale, self.seed, octaves=5)

    def is_tissue(self, y, x) -> np.ndarray:
        return self.tissue_field(y, x) > self.tissue_level

    def nest_field(self, y, x) -> np.ndarray:
        return fractal_noise(y, x, self.nest_scale, self.seed + 13, octaves=4)

    def is_tumour(self, y, x) -> np.ndarray:
        return (self.nest_field(y, x) > self.nest_level) & self.is_tissue(y, x)

    def near_tumour(self, y0: float, x0: float, y1: float, x1: float):
        """Whether tumour lies within ``margin_distance`` of each point of a grid over the level-0 box.

        Returns ``(near, gy, gx)``: a boolean grid and its level-0 coordinates. The grid is anchored at
        multiples of ``MARGIN_GRID`` (the same points whatever the box) and the distance is exact on it
        (Euclidean distance transform over the box grown by the margin), so labels do not depend on the window.
        """
        from scipy.ndimage import distance_transform_edt

        step, reach = self.MARGIN_GRID, self.margin_distance
        first_y, first_x = math.floor((y0 - reach) / step), math.floor((x0 - reach) / step)
        gy = (np.arange(first_y, math.ceil((y1 + reach) / step) + 1) * step).astype(np.float64)
        gx = (np.arange(first_x, math.ceil((x1 + reach) / step) + 1) * step).astype(np.float64)
        tumour = self.is_tumour(gy[:, None], gx[None, :])
        if not tumour.any():
            near = np.zeros(tumour.shape, dtype=bool)
        else:
            near = distance_transform_edt(~tumour) * step <= reach
        return near, gy, gx

    def _margin_at(self, y: np.ndarray, x: np.ndarray, near, gy, gx) -> np.ndarray:
        """Sample a ``near_tumour`` grid at level-0 points (nearest grid point)."""
        iy = np.clip(np.rint((np.asarray(y) - gy[0]) / self.MARGIN_GRID).astype(np.int64), 0, len(gy) - 1)
        ix = np.clip(np.rint((np.asarray(x) - gx[0]) / self.MARGIN_GRID).astype(np.int64), 0, len(gx) - 1)
        return near[iy, ix]

    def _scatter(self, cy, cx, spacing: int, margin: float, radius: tuple[float, float], salt: int):
        """One candidate object per cell ``(cy, cx)`` of a ``spacing`` grid: a centre jittered at least ``margin``
        from the cell's border, a radius ``radius[0] + radius[1] * u`` and a uniform draw for its presence."""
        gy, gx = np.meshgrid(cy, cx, indexing="ij")
        seed = self.seed + salt
        py = gy * spacing + margin + hash_uniform(gy, gx, 1, seed=seed) * (spacing - 2 * margin)
        px = gx * spacing + margin + hash_uniform(gy, gx, 2, seed=seed) * (spacing - 2 * margin)
        size = radius[0] + radius[1] * hash_uniform(gy, gx, 3, seed=seed)
        return py, px, size, hash_uniform(gy, gx, 4, seed=seed)

    def _clusters(self, cy: np.ndarray, cx: np.ndarray):
        py, px, radius, draw = self._scatter(cy, cx, self.cluster_spacing, 40, (14, 14), 31)
        inside = (py >= 0) & (py < self.height) & (px >= 0) & (px < self.width)
        present = inside & (draw < self.cluster_probability)
        present &= self.is_tissue(py, px) & ~self.is_tumour(py, px)
        return py, px, radius, present

    def objects(self, box: tuple[int, int, int, int] | None = None) -> ObjectTable:
        """Immune-cell clusters whose centre lies in the level-0 ``box`` (y0, x0, y1, x1); whole scene if None."""
        y0, x0, y1, x1 = box or (0, 0, self.height, self.width)
        s = self.cluster_spacing
        cy = np.arange(y0 // s, (y1 - 1) // s + 1)
        cx = np.arange(x0 // s, (x1 - 1) // s + 1)
        py, px, radius, present = self._clusters(cy, cx)
        keep = present & (py >= y0) & (py < y1) & (px >= x0) & (px < x1)
        py, px, radius = py[keep], px[keep], radius[keep]
        if len(py) == 0:
            return ObjectTable(py, px, np.zeros(0, np.int64), 2 * radius)
        near, gy, gx = self.near_tumour(py.min(), px.min(), py.max() + 1, px.max() + 1)
        label = np.where(self._margin_at(py, px, near, gy, gx), 0, 1)
        return ObjectTable(py, px, label.astype(np.int64), 2 * radius)

    def _own_cell(self, spacing, generator, ys, xs):
        cy, cx = self._cells(spacing, ys, xs)
        py, px, radius, present = generator(cy, cx)
        iy = (np.floor(ys / spacing).astype(np.int64) - cy[0])[:, None]
        ix = (np.floor(xs / spacing).astype(np.int64) - cx[0])[None, :]
        distance = np.hypot(ys[:, None] - py[iy, ix], xs[None, :] - px[iy, ix])
        return distance, radius[iy, ix], present[iy, ix], (py, px, iy, ix)

    def _image(self, ys, xs, factor, origin) -> np.ndarray:
        shape = (len(ys), len(xs))
        field = partial(coarse_field, i0=origin[0], j0=origin[1], factor=factor, shape=shape)
        tissue = field(self.tissue_field)
        tone = field(lambda y, x: fractal_noise(y, x, 1500.0, self.seed + 3, 3))
        alpha = np.clip((tissue - self.tissue_level) / 0.02, 0, 1)[..., None]
        nest = np.clip((field(self.nest_field) - self.nest_level) / 0.01, 0, 1)[..., None] * alpha
        background = np.array([242.0, 240.0, 244.0])
        stroma = np.array([232.0, 168.0, 196.0]) - 30 * tone[..., None] * np.array([0.3, 1.0, 0.6])
        epithelium = np.array([196.0, 118.0, 178.0]) - 20 * tone[..., None] * np.array([0.5, 1.0, 0.6])
        image = background * (1 - alpha) + (stroma * (1 - nest) + epithelium * nest) * alpha
        soft = max(1.0, factor / 2.0)
        # nuclei: a dark dot per small cell (packed in the epithelium), or their mean tint when below a pixel
        nucleus_colour = np.array([92.0, 58.0, 142.0])
        if factor <= 4:
            distance, radius, present, _ = self._own_cell(self.nucleus_spacing, self._nuclei, ys, xs)
            cover = np.clip((radius - distance) / soft + 0.5, 0, 1) * present
            dense = np.clip((radius + 1.5 - distance) / soft + 0.5, 0, 1)
            cover = cover * (1 - nest[..., 0]) + dense * nest[..., 0]
        else:
            cover = 0.09 + 0.2 * nest[..., 0]
        image = image * (1 - cover[..., None] * alpha * 0.85) + nucleus_colour * cover[..., None] * alpha * 0.85
        # gland lumens in the epithelium: pale, with a thin dark rim
        distance, radius, present, _ = self._own_cell(self.gland_spacing, self._glands, ys, xs)
        present = present * nest[..., 0]
        rim = np.clip(1 - np.abs(distance - radius) / (2 + soft), 0, 1) * present
        lumen = np.clip((radius - 3 - distance) / soft + 0.5, 0, 1) * present
        image = image * (1 - lumen[..., None]) + np.array([250.0, 236.0, 242.0]) * lumen[..., None]
        image = image * (1 - 0.7 * rim[..., None]) + np.array([120.0, 60.0, 130.0]) * 0.7 * rim[..., None]
        # immune-cell clusters: a dense dark blob, the same wherever it lies
        distance, radius, present, _ = self._own_cell(self.cluster_spacing, self._clusters, ys, xs)
        blob = np.clip((radius - distance) / soft + 0.5, 0, 1) * present
        image = image * (1 - blob[..., None]) + np.array([60.0, 30.0, 100.0]) * blob[..., None]
        grain = hash_uniform(np.floor(ys / factor)[:, None], np.floor(xs / factor)[None, :], factor, seed=self.seed)
        image += (grain[..., None] - 0.5) * 10
        return np.clip(np.rint(image), 0, 255).astype(np.uint8)

    def _nuclei(self, cy, cx):
        py, px, radius, draw = self._scatter(cy, cx, self.nucleus_spacing, 6, (2.5, 2.0), 59)
        return py, px, radius, draw < 0.6

    def _glands(self, cy, cx):
        py, px, radius, draw = self._scatter(cy, cx, self.gland_spacing, 22, (10, 10), 47)
        return py, px, radius, draw < 0.55

    def _labels(self, ys, xs, factor) -> np.ndarray:
        tissue = self.is_tissue(ys[:, None], xs[None, :])
        tumour = self.is_tumour(ys[:, None], xs[None, :])
        near, gy, gx = self.near_tumour(ys[0], xs[0], ys[-1] + 1, xs[-1] + 1)
        margin = self._margin_at(ys[:, None], xs[None, :], near, gy, gx)
        out = np.where(tissue, np.where(tumour, 3, np.where(margin, 2, 1)), 0).astype(np.uint8)
        distance, radius, present, (py, px, iy, ix) = self._own_cell(self.cluster_spacing, self._clusters, ys, xs)
        hit = (distance <= np.maximum(radius, factor / 2)) & present
        if hit.any():
            cluster_margin = self._margin_at(py, px, near, gy, gx)
            out[hit] = np.where(cluster_margin[iy, ix], 4, 5)[hit]
        return out
