"""The segmentation as polygons: one per class and connected component, holes kept, built tile by tile.

A label raster of a 100k² slide does not fit in memory as polygons of the whole image at once, so the raster
is read in tiles of ``tile`` analysis pixels. Within a tile GDAL's polygonizer (``rasterio.features.shapes``)
traces each 4-connected component of a class along its pixel edges. A piece that does not touch a border the
tile shares with a neighbour is complete and leaves at once. Pieces that do are merged (``shapely``'s union,
or for large components the pieces' edges stitched in arrays) along one row of tiles, and a merged component
leaves as soon as it no longer reaches the row's lower border; only components that cross that border are kept
for the next row. Memory is one row of border pieces, plus the components that are still growing downwards,
plus the tile that a worker thread labels ahead of the tracing (with local ids; the merging gives them global
ids in tile order, so the polygons are the same with or without the worker).

Coordinates are analysis-level pixel corners, ``(x, y)``: the top-left corner of the top-left analysis pixel is
``(0, 0)``. ``to_level0`` scales them to level-0 pixel corners, the convention QuPath uses.

Needs the ``geo`` extra (rasterio, shapely).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from napari_xt.engine.allocator import release_free

DEFAULT_TILE = 1024
"""Side of the tiles the label map is traced in, in analysis pixels. GDAL's polygonizer holds a whole tile's
polygons while it traces (a 2,048² speckle tile of 19,328 components: +42–54 MB before the first comes out),
and the worker labels the next tile meanwhile (its ids: 16 MB at 2,048²). The export alone of the speckled
16,384² SAR map of ``benchmarks/engine.py``, run after run: 541–552 MB and 124.5–125.2 s with tiles of 2,048²,
512–513 MB and 129.8–130.6 s with 1,024² (the same polygons in another order; areas within 0.0003%)."""


class MissingGeoExtra(ImportError):
    """A vector or map export needs packages of the ``geo`` extra."""


def require_geo() -> None:
    """Raise ``MissingGeoExtra`` with the command that fixes it when rasterio or shapely is missing."""
    try:
        import rasterio.features  # noqa: F401
        import shapely  # noqa: F401
    except ImportError as error:
        raise MissingGeoExtra(
            f"segmentation polygons need rasterio and shapely ({error.name} is missing); install them with "
            "pip install 'napari-xt[geo]'"
        ) from error


@dataclass(frozen=True)
class ClassPolygon:
    """One connected component of one class: ``label`` (class index) and its shapely Polygon."""

    label: int
    geometry: object


def polygons(
    labels, classes: int | list[int], tile: int = DEFAULT_TILE, simplify: float = 0.75
) -> Iterator[ClassPolygon]:
    """Yield every 4-connected component of the classes in ``classes`` (an int ``n``: classes 1 .. n-1) of a
    2-D label array (numpy, zarr or dask, read tile by tile), as valid Polygons with holes, in analysis-pixel
    corner coordinates.

    Args:
        tile: side of the tiles read at once, in analysis pixels.
        simplify: Douglas–Peucker tolerance in analysis pixels (topology kept); the default 0.75 removes the
            one-pixel staircases (their corners lie 0.71 px off the edge), 0 keeps the pixel edges.
    """
    for classes_of, geometries in polygon_batches(labels, classes, tile, simplify):
        for label, geometry in zip(classes_of.tolist(), geometries):
            yield ClassPolygon(label, geometry)


def polygon_batches(
    labels,
    classes: int | list[int],
    tile: int = DEFAULT_TILE,
    simplify: float = 0.75,
    workers: int | None = None,
    arrays: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``polygons`` as they are finished, a tile's (or a tile row's merged components) at a time: their classes
    (int array) and Polygons (object array), for callers that measure and write them as arrays.

    ``workers``: threads that label the tiles ahead of the tracing and merging, which run in this thread with
    the reading (default: one; 0 labels here too). The result does not depend on it.
    ``arrays``: a merged component of ``ARRAYS_FROM`` whole-pixel vertices or more comes as a ``PackedPolygon``
    (its vertex arrays), never built as a GEOS polygon; ``measured``, ``built`` and ``polygon_arrays`` take it.
    """
    require_geo()
    wanted = np.array(list(range(1, classes)) if isinstance(classes, int) else classes, dtype=np.int64)
    height, width = labels.shape
    tiles = [
        (y0, min(y0 + tile, height), x0, min(x0 + tile, width))
        for y0 in range(0, height, tile)
        for x0 in range(0, width, tile)
    ]
    pieces = _Pieces()
    above = np.zeros(width, dtype=np.int64)  # component ids along the last pixel row of the previous tile row
    below = np.zeros(width, dtype=np.int64)
    left = None  # ids along the last column of the previous tile in this row
    for (y0, y1, x0, x1), local, local_classes in _labelled_in_order(labels, wanted, tiles, workers):
        base = pieces.add(local, local_classes)  # global id = local id + base
        if x0 > 0:
            pieces.join(left, _global(local[:, 0], base))
        if y0 > 0:
            pieces.join(above[x0:x1], _global(local[0, :], base))
        left = _global(local[:, -1], base)
        below[x0:x1] = _global(local[-1, :], base)
        edges = [local[:, 0]] if x0 > 0 else []
        edges += [local[:, -1]] if x1 < width else []
        edges += [local[0, :]] if y0 > 0 else []
        edges += [local[-1, :]] if y1 < height else []
        on_border = set(np.unique(np.concatenate(edges)).tolist()) if edges else set()
        class_of = local_classes.tolist()
        done_classes, done, border_ids, border = [], [], [], []
        for local_id, geometry in _tile_pieces(local, y0, x0):
            if local_id in on_border:
                border_ids.append(local_id + base)
                border.append(geometry)
            else:
                done_classes.append(class_of[local_id])
                done.append(geometry)
        pieces.keep(border_ids, border)
        del border_ids, border
        if done:
            done = _objects(simplified(done, simplify))  # the exact polygons go before the caller writes
            yield np.asarray(done_classes, dtype=np.int64), done
        # the tile goes before the next is traced or a row's components are merged: a speckle tile is 16 MB of
        # ids and up to 19,328 polygons (the 16,384² SAR map of benchmarks/engine.py)
        del local, local_classes, class_of, on_border, edges, done, done_classes
        if x1 < width:
            continue
        still_open = pieces.roots(below) if y1 < height else set()  # the tile row is complete
        closed = list(pieces.close_all_but(still_open, tile))
        pieces.forget_all_but(below)
        if closed:
            closed_classes = np.asarray([label for label, _ in closed], dtype=np.int64)
            closed = _objects(simplified([g for _, g in closed], simplify, arrays))
            yield closed_classes, closed
            del closed_classes
        del closed  # nor a row's components while the next rows are traced
        above, below = below, np.zeros(width, dtype=np.int64)


def _global(edge: np.ndarray, base: int) -> np.ndarray:
    """A tile's local ids along one edge as global ids (0 stays 0)."""
    return np.where(edge > 0, edge.astype(np.int64) + base, 0)


def _objects(items: list) -> np.ndarray:
    """A list as a 1-D object array (``np.asarray`` would try to unpack the geometries)."""
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _read(labels, box: tuple[int, int, int, int]) -> np.ndarray:
    y0, y1, x0, x1 = box
    return np.asarray(labels[y0:y1, x0:x1])


def _labelled_in_order(labels, wanted: np.ndarray, tiles: list, workers: int | None) -> Iterator[tuple]:
    """``(box, local ids, class of each id)`` of each tile, in order; with workers, labelled a tile ahead in
    threads. Labelling runs outside the GIL (eight 1,024² tiles of random four-class noise: 0.19 s alone,
    0.09 s on two threads) and a tile's ids are 4 MB. The tiles are read here, between the tracing of one tile
    and the next: reading a zarr tile takes the GIL hundreds of times, and a worker thread waits up to the
    switch interval (5 ms) for each against a thread that traces; the export of an 8,192² speckle map waited
    3.5 s of its 12.3 s on a worker that read. The tracing is kept in one thread: it holds the GIL
    (1.27 → 1.14 s) and a speckle tile's polygons ahead would cost hundreds of MB."""
    workers = 1 if workers is None else workers
    if workers <= 0 or len(tiles) == 1:
        for box in tiles:
            yield (box, *_label(_read(labels, box), wanted))
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        ahead = deque((box, pool.submit(_label, _read(labels, box), wanted)) for box in tiles[:workers])
        for box in tiles[workers:]:
            ahead.append((box, pool.submit(_label, _read(labels, box), wanted)))
            yield _result(*ahead.popleft())
        while ahead:
            yield _result(*ahead.popleft())


def _result(box: tuple, labelled) -> tuple:
    """``(box, local ids, classes)`` of a tile labelled in a worker, with nothing left holding them here: the
    generator would otherwise keep the last tile's ids (16 MB) while the last row's components are merged."""
    return (box, *labelled.result())


def _label(block: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local ids (1, 2, …; 0 elsewhere) of the 4-connected components of each wanted class in ``block``, and
    the class of each id (``[0]`` unused). One pass over the tile for all classes (scikit-image's labelling
    of equal values, outside the GIL): the 64 tiles of an 8,192² slide's five-class map took 0.50 s, against
    1.13 s labelled class by class with SciPy."""
    from skimage.measure import label

    block = np.asarray(block)
    kept = np.isin(block, wanted)
    if not kept.all():
        block = np.where(kept, block, 0)
    del kept
    ids = label(block, background=0, connectivity=1).astype(np.int32, copy=False)
    classes = np.zeros(int(ids.max(initial=0)) + 1, dtype=np.int64)
    classes[ids.ravel()] = block.ravel()  # every pixel of a component holds its class
    classes[0] = 0
    return ids, classes


class _Pieces:
    """Which components meet across tile borders (union–find over global ids), the classes of those on tile
    borders, and the border pieces still waiting for the rest of their component."""

    def __init__(self):
        self._parent: dict[int, int] = {}
        self._class: dict[int, int] = {}
        self._kept: dict[int, list] = {}
        self._next = 1

    def add(self, local: np.ndarray, classes: np.ndarray) -> int:
        """Take a tile's components, its local ids and their ``classes``, and return ``base``: a global id is
        its local id plus ``base``. The classes of the ids on its edges, which other tiles may join, are kept."""
        base = self._next - 1
        self._next += len(classes) - 1
        edge = np.unique(np.concatenate([local[0, :], local[-1, :], local[:, 0], local[:, -1]]))
        edge = edge[edge > 0]
        self._class.update(zip((edge + base).tolist(), classes[edge].tolist()))
        return base

    def _find(self, i: int) -> int:
        root = i
        while self._parent.get(root, root) != root:
            root = self._parent[root]
        while self._parent.get(i, i) != root:  # path compression
            self._parent[i], i = root, self._parent[i]
        return root

    def join(self, side_a: np.ndarray, side_b: np.ndarray) -> None:
        """Join the components that face each other across a border with the same class."""
        both = (side_a > 0) & (side_b > 0)
        for a, b in set(zip(side_a[both].tolist(), side_b[both].tolist())):
            if self._class[a] == self._class[b]:
                root_a, root_b = self._find(a), self._find(b)
                if root_a != root_b:
                    self._parent[root_b] = root_a

    def keep(self, piece_ids: list[int], geometries: list) -> None:
        """Keep a tile's border pieces (their global ids and Polygons) until their components are complete."""
        for piece_id, piece in zip(piece_ids, _KeptPiece.many(geometries)):
            self._kept.setdefault(piece_id, []).append(piece)

    def roots(self, ids: np.ndarray) -> set[int]:
        return {self._find(i) for i in np.unique(ids[ids > 0]).tolist()}

    def forget_all_but(self, border: np.ndarray) -> None:
        """Drop the bookkeeping of every component that is finished: only ids on ``border`` (the row the next
        tile row joins) and the kept pieces can still matter. Without this, the class and parent tables grow with
        every component of the image (millions on a noisy 100k² segmentation)."""
        live = set(np.unique(border[border > 0]).tolist()) | set(self._kept)
        parent, classes = {}, {}
        for i in live:
            root = self._find(i)
            if root != i:
                parent[i] = root
            classes[i], classes[root] = self._class[i], self._class[root]
        self._parent, self._class = parent, classes

    def close_all_but(self, still_open: set[int], tile: int):
        """Merge and yield ``(class, polygon)`` for every kept component whose root is not ``still_open``
        (``tile``: the side of the tiles, whose borders the pieces meet along)."""
        groups: dict[int, list] = {}
        for piece_id in list(self._kept):
            root = self._find(piece_id)
            if root not in still_open:
                groups.setdefault(root, []).extend(self._kept.pop(piece_id))
        for root in list(groups):
            merged = _merged(groups.pop(root), tile)  # the pieces go as soon as their component is built
            for component in _components(merged):
                yield self._class[root], component


@dataclass
class _KeptPiece:
    """A border piece waiting for the rest of its component, as arrays: its outline (the shell's vertices,
    int32 where they are whole pixel corners, as traced) and its holes (their vertices, the offsets of each
    ring), never as GEOS geometries.

    A piece's holes lie inside its tile, a pixel or more from its edges (a region that reached an edge would not
    be closed there), so no other piece can meet them: only the outlines take part in the merging. A component
    that grows down a whole image keeps every hole of every piece until its last row (the open sea of a
    speckled 16,384² SAR map at its last row, in tiles of 2,048²: 1,991 pieces, holes of 44.4 MB as int32 and
    22.9 MB so, outlines of 1.4 million vertices). A hole's vertex is 4 bytes here (uint16 from the holes'
    smallest corner, ``low``, where they span less than 65,536 pixels) and an outline's 8 (as GEOS geometries,
    16 and more). The export of that map alone peaked at 548–565 MB with int32 holes and GEOS outlines, and at
    527–552 MB so; at the start of the last row it held 455 MB, and 409 MB so."""

    shell: np.ndarray
    vertices: np.ndarray
    offsets: np.ndarray
    low: np.ndarray  # added to ``vertices`` for the holes' coordinates

    @classmethod
    def many(cls, polygons: list) -> list[_KeptPiece]:
        """The pieces of these Polygons, their arrays made in one call (a tile can have thousands)."""
        import shapely

        if not polygons:
            return []
        _, vertices, (ring_offsets, polygon_offsets) = shapely.to_ragged_array(_objects(polygons))
        whole = vertices.astype(np.int32)
        if np.array_equal(whole, vertices):
            vertices = whole
        kept = []
        for first_ring, last_ring in zip(polygon_offsets[:-1].tolist(), polygon_offsets[1:].tolist()):
            shell_end = int(ring_offsets[first_ring + 1])
            shell = vertices[int(ring_offsets[first_ring]) : shell_end].copy()
            holes = vertices[shell_end : int(ring_offsets[last_ring])]
            offsets = ring_offsets[first_ring + 1 : last_ring + 1] - shell_end
            hole_vertices, low = _compact(holes)
            kept.append(cls(shell, hole_vertices, offsets, low))
        return kept

    @property
    def holes(self) -> int:
        return len(self.offsets) - 1

    def outline(self):
        """The outline as a GEOS Polygon."""
        import shapely

        return shapely.polygons(np.asarray(self.shell, dtype=np.float64))

    def polygon(self):
        """The piece as it was traced (from a copy: ``_merged`` lets go of its pieces' holes)."""
        return _exact(_merged([replace(self)]))


def _compact(holes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(vertices, low)`` of a piece's hole vertices: uint16 from their smallest corner where they are whole
    and span less than 65,536 pixels, otherwise as they are (and ``low`` zero)."""
    low = np.zeros(2, dtype=holes.dtype)
    if holes.dtype == np.int32 and len(holes):
        corner = holes.min(axis=0)
        if int((holes.max(axis=0) - corner).max()) < 1 << 16:
            return (holes - corner).astype(np.uint16), corner
    return holes.copy(), low


@dataclass
class PackedPolygon:
    """A polygon as arrays: its vertices (``(n, 2)``, int32 where they are whole pixel corners) and the offsets
    of its rings, the shell first. A component merged from kept pieces is handed on like this, and simplified
    ring by ring from the arrays, so that its exact GEOS polygon is built only where the simplified one cannot
    be used. The open sea of a speckled 16,384² SAR map, 5.1 million vertices and 249,951 holes, is 164 MB as a
    GEOS polygon, 81 MB as float64 arrays and 41 MB as int32; with the holes kept as arrays too, the export's
    peak on that map went from 1,401 to 1,136 MB."""

    vertices: np.ndarray
    offsets: np.ndarray

    def polygon(self):
        return _built(self.vertices, self.offsets, self._one)[0]

    @property
    def empty(self) -> bool:
        return len(self.offsets) < 2

    @property
    def large(self) -> bool:
        """Whether its steps release the heap's free pages first (``_RELEASE_FROM``)."""
        return len(self.vertices) >= _RELEASE_FROM

    def valid(self) -> bool:
        """``shapely.is_valid`` of the polygon; by parts from the arrays from ``MANY_HOLES`` holes on."""
        import shapely

        if self.empty:
            return True
        if len(self.offsets) - 2 >= MANY_HOLES:
            return _valid_by_parts(self.vertices, self.offsets)
        return bool(shapely.is_valid(self.polygon()))

    def area(self) -> float:
        """The area: the shell's less the holes', each ring's by the shoelace formula (exact on whole pixel
        corners, as GEOS's), a chunk of rings at a time."""
        if self.empty:
            return 0.0
        twice = np.empty(len(self.offsets) - 1)
        for first, last in _ring_chunks(self.offsets):
            starts = self.offsets[first : last + 1] - self.offsets[first]
            part = self.vertices[self.offsets[first] : self.offsets[last]].astype(np.float64)
            x, y = part[:, 0], part[:, 1]
            cross = x[:-1] * y[1:] - x[1:] * y[:-1]
            cross[starts[1:-1] - 1] = 0.0  # the step from one ring's last vertex to the next ring's first
            twice[first:last] = np.abs(np.add.reduceat(cross, starts[:-1]))
        return float(twice[0] - twice[1:].sum()) / 2.0

    def length(self) -> float:
        """The perimeter as GEOS gives it: each ring's length by GEOS (made from the arrays a chunk of rings at
        a time), added in order from the shell on, as GEOS adds them."""
        import shapely

        if self.empty:
            return 0.0
        lengths = np.empty(len(self.offsets) - 1)
        for first, last in _ring_chunks(self.offsets):
            lengths[first:last] = shapely.length(_rings(self.vertices, self.offsets, np.arange(first, last)))
        return float(np.cumsum(lengths)[-1])  # one by one, as GEOS (a pairwise sum can differ in the last bit)

    def simplified(self, tolerance: float) -> PackedPolygon:
        """``_simplified_rings`` of the polygon, from the arrays, to arrays (empty where the shell collapsed)."""
        vertices, ring_offsets, _ = _simplified_ragged(self.vertices, self.offsets, self._one, tolerance)
        return PackedPolygon(vertices, ring_offsets)

    @property
    def _one(self) -> np.ndarray:
        """The polygon offsets of one polygon of all the rings."""
        return np.array([0, len(self.offsets) - 1])


def _built(vertices: np.ndarray, ring_offsets: np.ndarray, polygon_offsets: np.ndarray) -> np.ndarray:
    """Polygons from ragged arrays (a polygon with no rings is empty)."""
    import shapely

    offsets = (np.asarray(ring_offsets, dtype=np.int64), np.asarray(polygon_offsets, dtype=np.int64))
    return shapely.from_ragged_array(shapely.GeometryType.POLYGON, np.asarray(vertices, dtype=np.float64), offsets)


def _merged(pieces: list, tile: int | None = None):
    """One component from its ``_KeptPiece``s (of one tile or several): the union of the outlines, with every
    piece's holes put back as a ``PackedPolygon``. A speckled 16,384² map's largest component, 488 pieces with
    29,351 holes: 28.6 s for the union of the whole pieces, 5.1 s for the outlines alone, the same polygon.
    Outlines of ``_STITCHED_FROM`` vertices or more, on tiles of side ``tile``, are joined by ``_stitched``.
    The pieces' arrays are let go of as they are copied into the result."""
    import shapely

    outline_vertices = sum(len(piece.shell) for piece in pieces) if tile and len(pieces) > 1 else -1
    stitched = None
    if outline_vertices >= _STITCHED_FROM:
        if outline_vertices + sum(len(piece.vertices) for piece in pieces) >= _RELEASE_FROM:
            release_free()
        stitched = _stitched([piece.shell for piece in pieces], tile)
    if stitched is not None:
        vertices, ring_offsets = stitched
    elif len(pieces) == 1:
        vertices, ring_offsets = pieces[0].shell, np.array([0, len(pieces[0].shell)])
        if not pieces[0].holes:
            return pieces[0].outline()
    else:
        union = shapely.union_all([piece.outline() for piece in pieces])
        if not any(piece.holes for piece in pieces):
            return union
        if union.geom_type != "Polygon":  # pieces that only touch at corners: let GEOS sort the holes out
            return shapely.union_all([piece.polygon() for piece in pieces])
        _, vertices, (ring_offsets, _) = shapely.to_ragged_array([union])
        del union
    holed = [piece for piece in pieces if piece.holes]
    total = len(vertices) + sum(len(p.vertices) for p in holed)
    if total >= _RELEASE_FROM:
        for piece in pieces:  # the outlines are joined: they go before the holes are copied
            piece.shell = None
        release_free()
    whole = np.array_equal(vertices, vertices.astype(np.int32)) and all(p.vertices.dtype.kind in "iu" for p in holed)
    merged = np.empty((total, 2), np.int32 if whole else np.float64)  # whole: the outline cast to the values it has
    merged[: len(vertices)] = vertices
    offsets, end, released = [ring_offsets], len(vertices), len(vertices)
    del vertices
    for piece in holed:  # each piece's holes go as they are copied (the open sea's: 43 MB), and their pages too
        part = merged[end : end + len(piece.vertices)]
        part[:] = piece.vertices
        part += piece.low.astype(part.dtype)
        offsets.append(piece.offsets[1:] + end)
        end += len(piece.vertices)
        piece.vertices = None
        if end - released >= _RELEASE_FROM:
            release_free()
            released = end
    return PackedPolygon(merged, np.concatenate(offsets))


_STITCHED_FROM = 2_000
"""Outline vertices of a component from which ``_merged`` joins its pieces with ``_stitched`` rather than
GEOS's union. Each component of an 8,192² slide's export (547 across tiles of 1,024²) timed both ways, by
size: below 300 vertices 0.32–0.43 ms against GEOS's 0.05–0.16 ms; 1,000–3,000 alike (1.27 and 1.31 ms);
3,000–10,000 3.1 against 5.6 ms; 10,000–50,000 14 against 58 ms. From 2,000 rather than 50,000, the export
took 4.35–4.38 s against 4.86–4.88 s (runs alternating), the same 39,136 polygons (areas per class within
0.001%: the rings start at other vertices, and simplify a little differently)."""
_RELEASE_FROM = 1 << 20
"""Vertices of a component from which the free pages of the heap go back to the system before each of its
large steps (stitching, simplifying, testing, building; ``release_free``). Otherwise those steps' arrays
come on top of the pages that the tiles of small polygons before them left free: the export of a 16,384²
speckled SAR map alone peaked at 687–701 MB, and 643–664 MB with the releases, a few of 15–50 ms each."""

_INT32_CODES = 2**31
"""``_stitched`` codes its points and edges as int32 below this (the open sea of a speckled 16,384² SAR map:
+123 MB with int64, +86 MB with int32, the same rings)."""

_STEPS = np.array([(1, 0), (0, 1), (-1, 0), (0, -1)])  # directions 0-3, each a quarter turn left of the last


def _stitched(outlines: list, tile: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The union of one component's outlines (the closed shells, as ``(n, 2)`` vertex arrays, of pixel-edge
    polygons from tiles of side ``tile``, which meet only along tile borders and at corners) from their edges,
    as vertex arrays and ring offsets: the shell first, then the holes the union closes. ``None`` where the
    outlines are not such pieces (GEOS's union then).

    Each piece's boundary runs with its interior on the left. Where two pieces meet, each has the other's edges
    along the border in the opposite direction: the segments on tile borders are cut into pixel edges and the
    edges whose reverse is there cancel. What is left is the union's boundary; each edge is followed by the edge
    that starts where it ends, and at a corner where two pixels of the component touch diagonally (two edges
    start there) by the right turn, which keeps each region outside the component on a ring of its own, so
    every ring is simple (they may touch at such corners, as OGC allows). The open sea of a speckled 16,384² SAR
    map, 921 outlines of 1.0 million vertices: GEOS's union 13.7–14.7 s and +340–347 MB above them, this
    2.1–2.2 s and +115 MB."""
    ring_offsets = _offsets(np.array([len(outline) for outline in outlines], dtype=np.int64))
    coordinates = np.concatenate(outlines)
    low = coordinates.min(axis=0)
    if not np.array_equal(low, np.floor(low)):
        return None
    span = coordinates.max(axis=0) - low + 2
    stride = int(span[0])  # a point is y * stride + x: one integer, with room for a step beyond either end
    # int32 where the points times 4 directions fit (a 23,000² map): half the memory of int64 in every array
    code = np.int32 if 4 * float(span[0]) * float(span[1]) < _INT32_CODES else np.int64
    shifted = coordinates - low
    vertices = shifted.astype(code)
    if not np.array_equal(vertices, shifted):
        return None
    del coordinates, shifted
    low = low.astype(np.int64)
    starts = np.ones(len(vertices), dtype=bool)
    starts[ring_offsets[1:] - 1] = False  # a ring's closing vertex starts no segment
    a, b = vertices[starts], vertices[1:][starts[:-1]]
    del vertices, starts
    ring = np.repeat(np.arange(len(ring_offsets) - 1), np.diff(ring_offsets) - 1)
    cross = a[:, 0].astype(np.float64) * b[:, 1] - b[:, 0].astype(np.float64) * a[:, 1]
    backwards = np.bincount(ring, weights=cross)[ring] < 0
    del ring, cross
    step = np.sign(b - a)
    border = ((step[:, 0] == 0) & ((a[:, 0] + low[0]) % tile == 0)) | (
        (step[:, 1] == 0) & ((a[:, 1] + low[1]) % tile == 0)
    )
    pieces = np.where(border, np.abs(b - a).sum(axis=1), 1)  # border segments as pixel edges
    a = a[:, 1] * stride + a[:, 0]
    b = b[:, 1] * stride + b[:, 0]
    a, b = np.where(backwards, b, a), np.where(backwards, a, b)  # every interior on the left
    step[backwards] *= -1
    del backwards
    direction = np.argmax((step[:, None, :] == _STEPS[None]).all(axis=2), axis=1).astype(np.int8)
    step = step[:, 1] * stride + step[:, 0]
    segment = np.repeat(np.arange(len(a), dtype=code), pieces)
    along = np.arange(len(segment), dtype=code) - np.repeat((np.cumsum(pieces) - pieces).astype(code), pieces)
    start = a[segment] + step[segment] * along
    del along
    unit = border[segment]
    end = np.where(unit, start + step[segment], b[segment])
    direction = direction[segment]
    del a, b, step, border, pieces, segment
    # an edge cancels when the edge from its end back along it is there
    cancelled = np.zeros(len(start), dtype=bool)
    cancelled[unit] = np.isin(end[unit] * 4 + (direction[unit] + 2) % 4, start[unit] * 4 + direction[unit])
    kept = ~cancelled
    start, end, direction = start[kept], end[kept], direction[kept]
    del unit, cancelled, kept
    order = np.argsort(start, kind="stable").astype(code)
    in_order = start[order]
    first = np.searchsorted(in_order, end, side="left").astype(code)
    count = (np.searchsorted(in_order, end, side="right") - first).astype(np.int8)
    del in_order
    if not np.isin(count, (1, 2)).all() or len(start) != len(np.unique(start * 4 + direction)):
        return None
    following = order[np.minimum(first, len(order) - 1)]
    pinch = np.flatnonzero(count == 2)
    other = order[first[pinch] + 1]
    right = (direction[pinch] + 3) % 4
    turning = np.where(direction[following[pinch]] == right, following[pinch], other)
    if (direction[turning] != right).any():
        return None
    following[pinch] = turning
    del order, first, count, pinch, other, right, turning, end
    cycles, ring_sizes = _cycles(following)
    del following
    turns = direction[cycles] != direction[np.roll(cycles, 1)]
    ends = np.cumsum(ring_sizes)
    turns[ends - ring_sizes] = direction[cycles[ends - ring_sizes]] != direction[cycles[ends - 1]]
    corners = start[cycles[turns]]  # a ring's vertices: where its edges turn, in order
    sizes = np.bincount(np.repeat(np.arange(len(ring_sizes)), ring_sizes)[turns], minlength=len(ring_sizes))
    del cycles, turns, direction, start
    if (sizes < 4).any():
        return None
    closing = np.insert(np.arange(len(corners)), np.cumsum(sizes), np.cumsum(sizes) - sizes)  # first again
    corners = corners[closing]
    points = np.column_stack([corners % stride + low[0], corners // stride + low[1]]).astype(np.float64)
    del corners, closing
    offsets = np.concatenate([[0], np.cumsum(sizes + 1)])
    x, y = points[:, 0], points[:, 1]
    cross = x[:-1] * y[1:] - x[1:] * y[:-1]
    cross[offsets[1:-1] - 1] = 0.0
    twice = np.add.reduceat(cross, offsets[:-1])
    del cross
    shells = np.flatnonzero(twice > 0)
    if len(shells) != 1:
        return None
    lengths = np.diff(offsets)
    holes = np.repeat(np.arange(len(lengths)) != shells[0], lengths)
    take = np.argsort(holes, kind="stable")  # the shell's vertices first, the rest in their order
    lengths = np.concatenate([lengths[shells], np.delete(lengths, shells)])
    return points[take], np.concatenate([[0], np.cumsum(lengths)])


def _cycles(following: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cycles of a permutation (``following[i]`` comes after ``i``): every index once, cycle by cycle in
    order, and the length of each cycle."""
    from array import array

    seen = bytearray(len(following))
    ordered, sizes = array("q"), array("q")  # machine ints: a Python list of them is 36 bytes an item
    item = following.item
    for i in range(len(following)):
        if seen[i]:
            continue
        size, j = 0, i
        while not seen[j]:
            seen[j] = 1
            ordered.append(j)
            size += 1
            j = item(j)
        sizes.append(size)
    return np.frombuffer(ordered, dtype=np.int64), np.frombuffer(sizes, dtype=np.int64)


def _tile_pieces(ids: np.ndarray, y0: int, x0: int) -> Iterator[tuple[int, object]]:
    """``(id, Polygon)`` of every component of a tile's int32 ``ids`` (0: none), in analysis-pixel corner
    coordinates.

    GDAL's tracing hands each ring over as Python tuples (over 100 bytes a vertex): they are packed into float64
    arrays every ``_POINTS_AT_ONCE`` vertices, and the polygons are built from those arrays in one call. On a
    2,048² tile of random three-class noise (1.04 million components, 6.8 million vertices) this took the peak
    from 1.92 to 0.99 GB above the tile and the time from 17.3 to 10.7 s."""
    from array import array

    from rasterio.features import shapes
    from rasterio.transform import Affine

    if not ids.any():
        return
    transform = Affine(1.0, 0.0, float(x0), 0.0, 1.0, float(y0))
    values, ring_sizes, rings_per_polygon = array("q"), array("q"), array("q")  # machine ints, not objects
    packed, points = [], []
    for geometry, value in shapes(ids, mask=ids > 0, connectivity=4, transform=transform):
        rings = geometry["coordinates"]  # the shell first, then the holes
        for ring in rings:
            points.extend(ring)
            ring_sizes.append(len(ring))
        rings_per_polygon.append(len(rings))
        values.append(int(value))
        if len(points) >= _POINTS_AT_ONCE:
            packed.append(np.array(points, dtype=np.float64))
            points = []
    packed.append(np.array(points, dtype=np.float64).reshape(-1, 2))
    coordinates = np.concatenate(packed)
    del packed
    built = _built(coordinates, _offsets(ring_sizes), _offsets(rings_per_polygon))
    yield from zip(values.tolist(), built.tolist())


_POINTS_AT_ONCE = 65_536


def _offsets(sizes) -> np.ndarray:
    """Sizes as the start offsets of a ragged array, with the end appended."""
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(np.frombuffer(sizes, dtype=np.int64), out=offsets[1:])
    return offsets


def _components(geometry) -> list:
    """The Polygons of a union (a Polygon, a MultiPolygon or a collection; a ``PackedPolygon`` as it is)."""
    if isinstance(geometry, PackedPolygon):
        return [geometry]
    if geometry.is_empty:
        return []
    if geometry.geom_type == "Polygon":
        return [geometry]
    return [part for part in getattr(geometry, "geoms", []) if part.geom_type == "Polygon" and not part.is_empty]


MAX_AREA_CHANGE = 0.02
"""A simplified polygon may differ in area from its pixel-exact outline by this share at most; beyond (small
objects, where cutting a staircase corner cuts the object: a one-pixel square would become half a triangle)
the pixel-exact outline is kept."""


def simplified(geometries: list, tolerance: float, arrays: bool = False) -> list:
    """Douglas–Peucker simplification of pixel-edge polygons, valid results only, and only where it keeps the
    shape: rectangles (5 coordinates) have no staircase to remove, and a result that is invalid,
    empty or off in area by more than ``MAX_AREA_CHANGE`` is replaced by the pixel-exact polygon.

    ``geometries`` are Polygons or ``PackedPolygon``s, whose exact polygon is built only where it is the
    result or the topology-preserving simplification needs it; the result is Polygons, and with ``arrays`` a
    ``PackedPolygon`` where one of ``ARRAYS_FROM`` whole-pixel vertices or more is the result."""
    if tolerance <= 0 or not geometries:
        return [_as_result(geometry, arrays) for geometry in geometries]
    import shapely

    given = _objects(geometries)
    packed = packed_ones(geometries)
    worth = packed.copy()  # a packed polygon has holes
    worth[~packed] = shapely.get_num_coordinates(given[~packed]) > 5
    if worth.any():
        candidates, packed = given[worth], packed[worth]
        simple, area = np.empty(len(candidates), dtype=object), np.empty(len(candidates))
        if not packed.all():
            # plain Douglas–Peucker (3× faster); GEOS's topology-preserving variant only where that is not valid
            simple[~packed] = _simplified_rings(candidates[~packed], tolerance)
            area[~packed] = shapely.area(candidates[~packed])
        keep = np.zeros(len(candidates), dtype=bool)
        for i in np.flatnonzero(packed):  # simplified, tested and measured as arrays
            if candidates[i].large:
                release_free()
            simple[i], area[i] = candidates[i].simplified(tolerance), candidates[i].area()
            if candidates[i].large:
                release_free()
            keep[i] = not simple[i].empty and simple[i].valid()
        plain = ~packed  # validity is GEOS's dearest test: once
        keep[plain] = is_valid(simple[plain]) & ~shapely.is_empty(simple[plain])
        if not keep.all():
            broken = ~keep
            exact = _objects([_exact(geometry) for geometry in candidates[broken]])
            simple[broken] = shapely.simplify(exact, tolerance, preserve_topology=True)
            keep[broken] = is_valid(simple[broken]) & ~shapely.is_empty(simple[broken])
        simple_area = np.array([g.area() if isinstance(g, PackedPolygon) else np.nan for g in simple])
        plain = np.isnan(simple_area)
        simple_area[plain] = shapely.area(simple[plain])
        keep &= np.abs(simple_area - area) <= MAX_AREA_CHANGE * area
        candidates[keep] = simple[keep]
        given[worth] = candidates
    return [_as_result(geometry, arrays) for geometry in given]


def _as_result(geometry, arrays: bool):
    """``_exact``, with the free pages released first where a large polygon is built; with ``arrays``, a
    ``PackedPolygon`` of ``ARRAYS_FROM`` whole-pixel vertices or more as it is."""
    if not isinstance(geometry, PackedPolygon):
        return geometry
    if arrays and geometry.vertices.dtype == np.int32 and len(geometry.vertices) >= ARRAYS_FROM:
        return geometry
    if geometry.large:
        release_free()
    return geometry.polygon()


ARRAYS_FROM = 100_000
"""Whole-pixel vertices from which ``polygon_batches(arrays=True)`` hands a merged component on as its arrays. The
simplified open sea of a speckled 16,384² SAR map (2.5 million vertices, 249,951 holes) took 128 MB to build as a
GEOS polygon from its int32 arrays (a float64 copy of them, and the polygon), and as a GEOS polygon the export
held it while it was measured and written."""


def measured(geometries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(shapely.area, shapely.length)`` of Polygons and ``PackedPolygon``s, the same numbers: a packed one's
    area from its whole-pixel vertices is exact, as GEOS's, and its length is GEOS's length of each ring added
    up in GEOS's order."""
    import shapely

    geometries = np.asarray(geometries, dtype=object)
    packed = packed_ones(geometries)
    areas, lengths = np.empty(len(geometries)), np.empty(len(geometries))
    areas[~packed] = shapely.area(geometries[~packed])
    lengths[~packed] = shapely.length(geometries[~packed])
    for i in np.flatnonzero(packed):
        areas[i], lengths[i] = geometries[i].area(), geometries[i].length()
    return areas, lengths


def packed_ones(geometries) -> np.ndarray:
    """Which of the geometries are ``PackedPolygon``s (a boolean array)."""
    return np.fromiter((isinstance(g, PackedPolygon) for g in geometries), dtype=bool, count=len(geometries))


def built(geometries: np.ndarray) -> np.ndarray:
    """The geometries with each ``PackedPolygon`` built as a GEOS Polygon (for writers that need GEOS)."""
    return _objects([_as_result(geometry, False) for geometry in geometries])


def _exact(geometry):
    return geometry.polygon() if isinstance(geometry, PackedPolygon) else geometry


def polygon_arrays(polygon) -> tuple[np.ndarray, np.ndarray]:
    """A Polygon's vertices (float64, the shell's first) and the offsets of its rings, without a copy of all its
    rings at once (``shapely.to_ragged_array`` makes one: about 100 MB for the open sea's 250,000 holes); a
    ``PackedPolygon``'s own arrays (its vertices int32 where they are whole)."""
    import shapely

    if isinstance(polygon, PackedPolygon):
        return polygon.vertices, polygon.offsets

    holes = int(shapely.get_num_interior_rings(polygon))
    sizes = np.zeros(holes + 1, dtype=np.int64)
    for first in range(0, holes, _RINGS_AT_ONCE):
        which = np.arange(first, min(first + _RINGS_AT_ONCE, holes))
        sizes[1 + which] = shapely.get_num_coordinates(shapely.get_interior_ring(polygon, which))
    sizes[0] = shapely.get_num_coordinates(polygon) - sizes[1:].sum()
    return shapely.get_coordinates(polygon), np.concatenate([[0], np.cumsum(sizes)])


def to_level0(geometry, downsample: tuple[float, float]):
    """Analysis-pixel corners → level-0 pixel corners (``downsample`` is ``(dy, dx)``); a geometry or an array
    of them. At a downsample of 1 the geometries are returned as they are."""
    import shapely

    dy, dx = float(downsample[0]), float(downsample[1])
    if dy == 1.0 and dx == 1.0:
        return geometry
    return shapely.transform(geometry, lambda xy: xy * np.array([dx, dy]))


def _simplified_rings(polygons: np.ndarray, tolerance: float) -> np.ndarray:
    """Plain Douglas–Peucker, ring by ring: the polygons rebuilt from their simplified rings, a hole that
    collapses left out, an empty polygon where the shell collapses. GEOS's own Douglas–Peucker for polygons
    repairs each result with a buffer of 0, which costs about 0.45 ms per hole (13.4 s for a speckled
    component with 29,351 holes, against 0.14 s for its rings alone); a result that needs repair is invalid
    here and takes the topology-preserving way instead."""
    import shapely

    _, vertices, (ring_offsets, polygon_offsets) = shapely.to_ragged_array(polygons)
    return _built(*_simplified_ragged(vertices, ring_offsets, polygon_offsets, tolerance))


_RINGS_AT_ONCE = 16_384
_VERTICES_AT_ONCE = 65_536
"""Rings made GEOS geometries at once. Simplifying the exact open sea of a speckled 16,384² SAR map (5.1 million
vertices, 272,116 rings) took +74–82 MB in chunks of 65,536 rings and 262,144 vertices, and +56–61 MB in chunks
of 16,384 and 65,536, in the same 1.4–1.9 s."""


def _ring_chunks(ring_offsets: np.ndarray) -> Iterator[tuple[int, int]]:
    """``(first, last)`` ranges of rings of at most ``_RINGS_AT_ONCE`` rings and ``_VERTICES_AT_ONCE`` vertices
    (a larger ring alone)."""
    rings, first = len(ring_offsets) - 1, 0
    while first < rings:
        by_vertices = int(np.searchsorted(ring_offsets, ring_offsets[first] + _VERTICES_AT_ONCE, side="right")) - 1
        last = max(first + 1, min(first + _RINGS_AT_ONCE, rings, by_vertices))
        yield first, last
        first = last


def _simplified_ragged(vertices: np.ndarray, ring_offsets: np.ndarray, polygon_offsets: np.ndarray, tolerance: float):
    """``_simplified_rings`` on ragged arrays (vertices, the offsets of the rings, the offsets of each polygon's
    rings), to ragged arrays: the rings are made GEOS geometries a chunk (``_ring_chunks``) at a time, and the
    result is assembled chunk by chunk. The open sea of a speckled 16,384² SAR map (6.8 million vertices) took
    251 MB above its arrays in chunks of 65,536 rings, and 130 MB so. Whole-pixel (int32) vertices give int32
    vertices: the result's 2.5 million vertices are 20 MB, not 40."""
    import shapely

    rings, count = len(ring_offsets) - 1, len(polygon_offsets) - 1
    sizes = np.zeros(rings, dtype=np.int64)  # vertices of each simplified ring; 0: it collapsed
    kept = []
    whole = vertices.dtype == np.int32  # Douglas–Peucker keeps a subset of the vertices: whole ones stay whole
    for first, last in _ring_chunks(ring_offsets):
        which = np.repeat(np.arange(last - first), np.diff(ring_offsets[first : last + 1]))
        chunk = shapely.linearrings(vertices[ring_offsets[first] : ring_offsets[last]], indices=which)
        del which
        simple = shapely.simplify(chunk, tolerance, preserve_topology=False)
        del chunk
        standing = shapely.get_type_id(simple) == shapely.GeometryType.LINEARRING
        coordinates, index = shapely.get_coordinates(simple[standing], return_index=True)
        sizes[first:last][standing] = np.bincount(index, minlength=int(standing.sum()))
        if whole:
            whole_coordinates = coordinates.astype(np.int32)
            whole = np.array_equal(whole_coordinates, coordinates)
            coordinates = whole_coordinates if whole else coordinates
        kept.append((first, last, coordinates))
    owner = np.repeat(np.arange(count), np.diff(polygon_offsets))
    shells = polygon_offsets[:-1][np.diff(polygon_offsets) > 0]
    fallen = np.zeros(count, dtype=bool)
    fallen[owner[shells][sizes[shells] == 0]] = True  # nothing is left of a polygon whose shell collapsed
    alive = (sizes > 0) & ~fallen[owner]
    whole = all(coordinates.dtype == np.int32 for _, _, coordinates in kept)
    simple_vertices = np.empty((int(sizes[alive].sum()), 2), dtype=np.int32 if whole else np.float64)
    end = 0
    while kept:  # each chunk's coordinates go as soon as they are copied
        first, last, coordinates = kept.pop(0)
        some = sizes[first:last] > 0
        coordinates = coordinates[np.repeat(alive[first:last][some], sizes[first:last][some])]
        simple_vertices[end : end + len(coordinates)] = coordinates
        end += len(coordinates)
    ring_offsets = np.concatenate([[0], np.cumsum(sizes[alive])])
    polygon_offsets = np.concatenate([[0], np.cumsum(np.bincount(owner[alive], minlength=count))])
    return simple_vertices, ring_offsets, polygon_offsets


MANY_HOLES = 64
"""From this many holes on, ``is_valid`` tests a polygon by parts."""


def is_valid(polygons: np.ndarray, many_holes: int = MANY_HOLES) -> np.ndarray:
    """``shapely.is_valid`` of each polygon, the same answer, with polygons of ``many_holes`` holes or more
    tested by parts from their vertex arrays (``_valid_by_parts``): GEOS's own test costs about the holes times
    the shell's vertices (a speckled component with 29,351 holes and a 449,000-vertex shell: 12.9 s)."""
    import shapely

    polygons = np.asarray(polygons, dtype=object)
    many = shapely.get_num_interior_rings(polygons) >= many_holes
    valid = np.zeros(len(polygons), dtype=bool)
    valid[~many] = shapely.is_valid(polygons[~many])
    for i in np.flatnonzero(many):
        valid[i] = _valid_by_parts(*polygon_arrays(polygons[i]))
    return valid


def _valid_by_parts(vertices: np.ndarray, offsets: np.ndarray) -> bool:
    """Whether the polygon of these rings (vertices and ring offsets, the shell first) is valid, from cheaper
    tests on GEOS rings made from the arrays a chunk at a time. The holes among themselves (crossing, nested,
    touching so that the interior falls apart): ``_hole_groups``. The holes that reach the shell (touch, cross
    or lie outside it), with every hole of their groups: GEOS's test of the shell with those holes alone. The
    other holes then lie strictly inside the shell and meet none of those, and a part of the interior can only be
    cut off by a chain of holes from the shell back to it, all of which the second test has.

    Nothing holds every hole as a GEOS ring at once: for the simplified open sea of a speckled 16,384² SAR map
    (2.5 million vertices, 249,951 holes) the test took 259 MB above the polygon with the holes cloned from a
    GEOS polygon, and 94 MB so (and 5.6 s against 4.7)."""
    import shapely

    holes = offsets[1:]
    group = _hole_groups(vertices, holes)
    if group is None:
        return False
    if len(vertices) >= _RELEASE_FROM:  # the groups' GEOS rings are gone: their pages, before the shell's
        release_free()
    shell = shapely.linearrings(np.asarray(vertices[offsets[0] : offsets[1]], dtype=np.float64))
    area = shapely.polygons(shell)
    shapely.prepare(area)
    reaching = np.zeros(len(group), dtype=bool)
    for first, last in _ring_chunks(holes):
        reaching[first:last] = ~shapely.contains_properly(area, _rings(vertices, holes, np.arange(first, last)))
    del area
    if reaching.any():
        reaching = np.isin(group, group[reaching])
    return bool(shapely.is_valid(shapely.polygons(shell, holes=_rings(vertices, holes, np.flatnonzero(reaching)))))


def _rings(vertices: np.ndarray, offsets: np.ndarray, which: np.ndarray) -> np.ndarray:
    """LinearRings of the rings ``which`` (indices into ``offsets``, ascending or not) made from the arrays."""
    import shapely

    which = np.asarray(which, dtype=np.int64)
    if not len(which):
        return np.empty(0, dtype=object)
    starts, sizes = offsets[which], offsets[which + 1] - offsets[which]
    ends = np.cumsum(sizes)
    index = np.arange(int(ends[-1]), dtype=np.int64) + np.repeat(starts - (ends - sizes), sizes)
    coordinates = np.asarray(vertices[index], dtype=np.float64)
    del index
    return shapely.linearrings(coordinates, indices=np.repeat(np.arange(len(which)), sizes))


def _ring_bounds(vertices: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``(xmin, ymin, xmax, ymax)`` of each ring, from the arrays."""
    bounds = np.empty((len(offsets) - 1, 4))
    for first, last in _ring_chunks(offsets):
        part = vertices[offsets[first] : offsets[last]]
        starts = offsets[first:last] - offsets[first]
        bounds[first:last, :2] = np.minimum.reduceat(part, starts, axis=0)
        bounds[first:last, 2:] = np.maximum.reduceat(part, starts, axis=0)
    return bounds


_CANDIDATES_AT_ONCE = 1 << 18


def _box_pairs(bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pairs ``(i, j)``, ``i < j``, of boxes (rows of ``(xmin, ymin, xmax, ymax)``) that meet, touching
    included: what an STRtree of the boxes would give, without a GEOS geometry per box (an STRtree of 250,000
    boxes takes 120 MB). The boxes are swept along x, or along y where that gives far fewer candidates (stripes
    across the image give many along their length; ``_sweep_axis``): in order of their start there, each
    meets, of those after it, only some of those that start before it ends, ``_CANDIDATES_AT_ONCE`` of which
    are compared at a time."""
    n = len(bounds)
    if _sweep_axis(bounds) == 1:
        bounds = bounds[:, [1, 0, 3, 2]]
    order = np.argsort(bounds[:, 0], kind="stable")
    swept = bounds[order]
    count = np.searchsorted(swept[:, 0], swept[:, 2], side="right") - np.arange(n) - 1
    total = np.concatenate([[0], np.cumsum(count)])
    firsts, seconds = [], []
    start = 0
    while start < n:
        stop = int(np.searchsorted(total, total[start] + _CANDIDATES_AT_ONCE, side="right")) - 1
        stop = min(n, max(start + 1, stop))
        some = count[start:stop]
        i = np.repeat(np.arange(start, stop), some)
        j = i + 1 + np.arange(len(i)) - np.repeat(total[start:stop] - total[start], some)
        meet = (swept[j, 1] <= swept[i, 3]) & (swept[i, 1] <= swept[j, 3])  # in x they meet by the sweep
        a, b = order[i[meet]], order[j[meet]]
        firsts.append(np.minimum(a, b))
        seconds.append(np.maximum(a, b))
        start = stop
    if not firsts:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return np.concatenate(firsts), np.concatenate(seconds)


def _sweep_axis(bounds: np.ndarray) -> int:
    """0 or 1: the axis to sweep these boxes along. A sweep compares each box with the boxes that start within
    its extent there. Along y only when that is fewer than half the comparisons along x: on the open sea of a
    speckled SAR map the two are within 6% of each other, and y gained nothing but another order of work."""
    n = len(bounds)
    candidates = []
    for axis in (0, 1):
        starts = np.sort(bounds[:, axis])
        # the boxes starting up to each box's end, less those before it in the sweep's order (n (n + 1) / 2)
        candidates.append(int(np.searchsorted(starts, bounds[:, axis + 2], side="right").sum()) - n * (n + 1) // 2)
    return int(2 * candidates[1] < candidates[0])


_PAIRS_AT_ONCE = 16_384
_HOLES_AT_ONCE = 4_096
"""Holes made GEOS rings at once to be tested in their groups' frames (a group is never split). On the
simplified open sea of a speckled 16,384² SAR map (249,951 holes) the test of the holes in groups took 92 MB at
16,384 holes at once and 69 MB at 4,096, in the same 4.0–4.2 s."""
_PREPARED_FROM = 256  # vertices: a hole this large is indexed once for the many small ones it may meet


def _hole_groups(vertices: np.ndarray, offsets: np.ndarray) -> np.ndarray | None:
    """The groups of holes whose areas meet (a label per ring of ``offsets``), or None if the rings are not
    valid holes of one polygon whose shell is far around them: each a valid ring, none crossing, inside or
    touching another so that the interior falls apart. Holes can only spoil that together where their areas
    meet, and two sets of holes that do not meet cannot cut off a part of the plane between them (Janiszewski's
    theorem), so the holes are tested in groups that meet, each inside a frame of its own. GEOS's test of one
    frame around all of them takes all their vertices at once: for the open sea of a speckled 16,384² SAR map
    (249,951 holes) 13.8–15.7 s and 330–440 MB at its peak, against 3.2 s and 38 MB in groups."""
    import shapely
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    count = len(offsets) - 1
    if not count:
        return np.zeros(0, dtype=np.int64)
    bounds = _ring_bounds(vertices, offsets)
    first, second = _box_pairs(bounds)  # the pairs whose boxes meet
    used, index = np.unique(np.concatenate([first, second]), return_inverse=True)
    size = np.diff(offsets)[used]
    a, b = np.split(index, 2)
    swap = size[a] < size[b]
    a, b = np.where(swap, b, a), np.where(swap, a, b)  # the larger, perhaps prepared, one first
    meet = np.zeros(len(first), dtype=bool)
    by_larger = np.argsort(a, kind="stable")  # a large hole's pairs together: made and prepared once
    for start in range(0, len(first), _PAIRS_AT_ONCE):
        part = by_larger[start : start + _PAIRS_AT_ONCE]
        needed, inverse = np.unique(np.concatenate([a[part], b[part]]), return_inverse=True)
        areas = shapely.polygons(_rings(vertices, offsets, used[needed]))  # a block's areas at a time
        shapely.prepare(areas[size[needed] > _PREPARED_FROM])
        in_a, in_b = np.split(inverse, 2)
        meet[part] = shapely.intersects(areas[in_a], areas[in_b])
        del areas
    del a, b, swap, by_larger, index, size
    if len(vertices) >= _RELEASE_FROM:  # the pairs' GEOS areas are gone: their pages, before the groups' rings
        release_free()
    graph = coo_matrix((np.ones(int(meet.sum())), (first[meet], second[meet])), shape=(count, count))
    _, group = connected_components(graph, directed=False)
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    start = 0
    while start < count:
        stop = min(start + _HOLES_AT_ONCE, count)
        while stop < count and sorted_group[stop] == sorted_group[stop - 1]:  # a group is never split
            stop += 1
        ids, members = np.unique(sorted_group[start:stop], return_inverse=True)
        low = np.full((len(ids), 2), np.inf)
        high = np.full((len(ids), 2), -np.inf)
        np.minimum.at(low, members, bounds[order[start:stop], :2])
        np.maximum.at(high, members, bounds[order[start:stop], 2:])
        frames = shapely.box(low[:, 0] - 1, low[:, 1] - 1, high[:, 0] + 1, high[:, 1] + 1)
        rings = np.concatenate([shapely.get_exterior_ring(frames), _rings(vertices, offsets, order[start:stop])])
        owner = np.concatenate([np.arange(len(ids)), members])
        arranged = np.argsort(owner, kind="stable")  # each frame before its holes
        if not shapely.is_valid(shapely.polygons(rings[arranged], indices=owner[arranged])).all():
            return None
        start = stop
    return group
