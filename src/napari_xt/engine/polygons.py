"""The segmentation as polygons: one per class and connected component, holes kept, built tile by tile.

A label raster of a 100k² slide does not fit in memory as polygons of the whole image at once, so the raster
is read in tiles of ``tile`` analysis pixels. Within a tile GDAL's polygonizer (``rasterio.features.shapes``)
traces each 4-connected component of a class along its pixel edges. A piece that does not touch a border the
tile shares with a neighbour is complete and leaves at once. Pieces that do are merged with ``shapely`` along
one row of tiles, and a merged component leaves as soon as it no longer reaches the row's lower border; only
components that cross that border are kept for the next row. Memory is one row of border pieces, plus the
components that are still growing downwards, plus the tile that a worker thread labels ahead of the tracing
(with local ids; the merging gives them global ids in tile order, so the polygons are the same with or without
the worker).

Coordinates are analysis-level pixel corners, ``(x, y)``: the top-left corner of the top-left analysis pixel is
``(0, 0)``. ``to_level0`` scales them to level-0 pixel corners, the convention QuPath uses.

Needs the ``geo`` extra (rasterio, shapely).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

DEFAULT_TILE = 2048


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
    labels, classes: int | list[int], tile: int = DEFAULT_TILE, simplify: float = 0.75, workers: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``polygons`` as they are finished, a tile's (or a tile row's merged components) at a time: their classes
    (int array) and Polygons (object array), for callers that measure and write them as arrays.

    ``workers``: threads that label the tiles ahead of the tracing and merging, which run in this thread with
    the reading (default: one; 0 labels here too). The result does not depend on it.
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
        done_classes, done = [], []
        for local_id, geometry in _tile_pieces(local, y0, x0):
            if local_id in on_border:
                pieces.keep(local_id + base, geometry)
            else:
                done_classes.append(class_of[local_id])
                done.append(geometry)
        if done:
            yield np.asarray(done_classes, dtype=np.int64), _objects(simplified(done, simplify))
        if x1 < width:
            continue
        still_open = pieces.roots(below) if y1 < height else set()  # the tile row is complete
        closed = list(pieces.close_all_but(still_open))
        pieces.forget_all_but(below)
        if closed:
            closed_classes = np.asarray([label for label, _ in closed], dtype=np.int64)
            yield closed_classes, _objects(simplified([g for _, g in closed], simplify))
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
    threads. Labelling runs outside the GIL (eight 2,048² speckle tiles: 1.06 s alone, 0.50 s on two threads)
    and a tile's ids are 16 MB. The tiles are read here, between the tracing of one tile and the next: reading
    a zarr tile takes the GIL hundreds of times, and a worker thread waits up to the switch interval (5 ms) for
    each against a thread that traces; the export of an 8,192² speckle map waited 3.5 s of its 12.3 s on a
    worker that read. The tracing is kept in one thread: it holds the GIL (1.27 → 1.14 s) and a speckle
    tile's polygons ahead would cost hundreds of MB."""
    workers = 1 if workers is None else workers
    if workers <= 0 or len(tiles) == 1:
        for box in tiles:
            yield (box, *_label(_read(labels, box), wanted))
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        ahead = deque((box, pool.submit(_label, _read(labels, box), wanted)) for box in tiles[:workers])
        for box in tiles[workers:]:
            done_box, labelled = ahead.popleft()
            ahead.append((box, pool.submit(_label, _read(labels, box), wanted)))
            yield (done_box, *labelled.result())
        while ahead:
            done_box, labelled = ahead.popleft()
            yield (done_box, *labelled.result())


def _label(block: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local ids (1, 2, …; 0 elsewhere) of the 4-connected components of each wanted class in ``block``, and
    the class of each id (``[0]`` unused)."""
    from scipy import ndimage

    ids = np.zeros(block.shape, dtype=np.int32)
    components = np.empty(block.shape, dtype=np.int32)
    classes = [np.zeros(1, dtype=np.int64)]
    count = 0
    for label in np.intersect1d(np.unique(block), wanted):
        n = ndimage.label(block == label, output=components)
        np.add(components, count, out=ids, where=components > 0)  # classes never share a pixel
        classes.append(np.full(n, label, dtype=np.int64))
        count += n
    return ids, np.concatenate(classes)


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

    def keep(self, piece_id: int, geometry) -> None:
        self._kept.setdefault(piece_id, []).append(geometry)

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

    def close_all_but(self, still_open: set[int]):
        """Merge and yield ``(class, polygon)`` for every kept component whose root is not ``still_open``."""
        groups: dict[int, list] = {}
        for piece_id in list(self._kept):
            root = self._find(piece_id)
            if root not in still_open:
                groups.setdefault(root, []).extend(self._kept.pop(piece_id))
        for root, group in groups.items():
            for component in _components(_merged(group) if len(group) > 1 else group[0]):
                yield self._class[root], component


def _merged(pieces: list):
    """The union of one component's pieces from several tiles. A piece's holes lie inside its tile, a pixel
    or more from its edges (a region that reached an edge would not be closed there), so no other piece can
    meet them: the outlines alone are joined, and the holes are put back. A speckled 16,384² map's largest
    component, 488 pieces with 29,351 holes: 28.6 s for the union of the pieces, 5.1 s for this, the same
    polygon."""
    import shapely

    holes = [hole for piece in pieces for hole in piece.interiors]
    if not holes:
        return shapely.union_all(pieces)
    union = shapely.union_all(shapely.polygons(shapely.get_exterior_ring(np.asarray(pieces, dtype=object))))
    if union.geom_type != "Polygon":  # pieces that only touch at corners: let GEOS sort the holes out
        return shapely.union_all(pieces)
    return shapely.Polygon(union.exterior, [*union.interiors, *holes])


def _tile_pieces(ids: np.ndarray, y0: int, x0: int) -> Iterator[tuple[int, object]]:
    """``(id, Polygon)`` of every component of a tile's int32 ``ids`` (0: none), in analysis-pixel corner
    coordinates.

    GDAL's tracing hands each ring over as Python tuples (over 100 bytes a vertex): they are packed into float64
    arrays every ``_POINTS_AT_ONCE`` vertices, and the polygons are built from those arrays in one call. On a
    2,048² tile of random three-class noise (1.04 million components, 6.8 million vertices) this took the peak
    from 1.92 to 0.99 GB above the tile and the time from 17.3 to 10.7 s."""
    from array import array

    import shapely
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
    offsets = (_offsets(ring_sizes), _offsets(rings_per_polygon))
    built = shapely.from_ragged_array(shapely.GeometryType.POLYGON, coordinates, offsets)
    yield from zip(values.tolist(), built.tolist())


_POINTS_AT_ONCE = 65_536


def _offsets(sizes) -> np.ndarray:
    """Sizes as the start offsets of a ragged array, with the end appended."""
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(np.frombuffer(sizes, dtype=np.int64), out=offsets[1:])
    return offsets


def _components(geometry) -> list:
    """The Polygons of a union (a Polygon, a MultiPolygon or a collection)."""
    if geometry.is_empty:
        return []
    if geometry.geom_type == "Polygon":
        return [geometry]
    return [part for part in getattr(geometry, "geoms", []) if part.geom_type == "Polygon" and not part.is_empty]


MAX_AREA_CHANGE = 0.02
"""A simplified polygon may differ in area from its pixel-exact outline by this share at most; beyond (small
objects, where cutting a staircase corner cuts the object: a one-pixel square would become half a triangle)
the pixel-exact outline is kept."""


def simplified(geometries: list, tolerance: float) -> list:
    """Douglas–Peucker simplification of pixel-edge polygons, valid results only, and only where it keeps the
    shape: rectangles (5 coordinates) have no staircase to remove, and a result that is invalid,
    empty or off in area by more than ``MAX_AREA_CHANGE`` is replaced by the pixel-exact polygon."""
    if tolerance <= 0 or not geometries:
        return list(geometries)
    import shapely

    exact = np.empty(len(geometries), dtype=object)
    exact[:] = geometries
    result = exact.copy()
    worth = shapely.get_num_coordinates(exact) > 5
    if worth.any():
        # plain Douglas–Peucker (3× faster); GEOS's topology-preserving variant only where that is not valid
        simple = _simplified_rings(exact[worth], tolerance)
        keep = is_valid(simple) & ~shapely.is_empty(simple)  # validity is GEOS's dearest test: once
        if not keep.all():
            broken = ~keep
            simple[broken] = shapely.simplify(exact[worth][broken], tolerance, preserve_topology=True)
            keep[broken] = is_valid(simple[broken]) & ~shapely.is_empty(simple[broken])
        area = shapely.area(exact[worth])
        keep &= np.abs(shapely.area(simple) - area) <= MAX_AREA_CHANGE * area
        chosen = result[worth]
        chosen[keep] = simple[keep]
        result[worth] = chosen
    return list(result)


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

    rings, owner = shapely.get_rings(polygons, return_index=True)
    simple = shapely.simplify(rings, tolerance, preserve_topology=False)
    alive = shapely.get_type_id(simple) == shapely.GeometryType.LINEARRING
    shell = np.r_[True, owner[1:] != owner[:-1]]  # each polygon's first ring
    alive &= ~np.isin(owner, owner[shell & ~alive])  # nothing is left of a polygon whose shell collapsed
    result = np.full(len(polygons), shapely.Polygon(), dtype=object)
    standing, index = np.unique(owner[alive], return_inverse=True)
    if len(standing):
        result[standing] = shapely.polygons(simple[alive], indices=index)
    return result


MANY_HOLES = 64
"""From this many holes on, ``is_valid`` tests a polygon by parts."""


def is_valid(polygons: np.ndarray, many_holes: int = MANY_HOLES) -> np.ndarray:
    """``shapely.is_valid`` of each polygon, the same answer, with polygons of ``many_holes`` holes or more
    tested by parts (``_valid_by_parts``): GEOS's own test costs about the holes times the shell's vertices
    (a speckled component with 29,351 holes and a 449,000-vertex shell: 12.9 s)."""
    import shapely

    polygons = np.asarray(polygons, dtype=object)
    many = shapely.get_num_interior_rings(polygons) >= many_holes
    valid = np.zeros(len(polygons), dtype=bool)
    valid[~many] = shapely.is_valid(polygons[~many])
    for i in np.flatnonzero(many):
        valid[i] = _valid_by_parts(polygons[i])
    return valid


def _valid_by_parts(polygon) -> bool:
    """Whether ``polygon`` is valid, from three cheaper tests. The holes among themselves (crossing, nested,
    touching so that the interior falls apart): GEOS's test of the holes inside a rectangle. The holes that
    reach the shell (touch, cross or lie outside it), with every hole they touch, directly or through others:
    GEOS's test of the shell with those holes alone. The other holes then lie strictly inside the shell, and
    a part of the interior can only be cut off by a chain of holes from the shell back to it, all of which
    the second test has."""
    import shapely

    holes = np.asarray(polygon.interiors, dtype=object)
    x0, y0, x1, y1 = polygon.bounds
    frame = shapely.box(x0 - 1, y0 - 1, x1 + 1, y1 + 1).exterior
    if not shapely.is_valid(shapely.Polygon(frame, holes)):
        return False
    shell = shapely.Polygon(polygon.exterior)
    shapely.prepare(shell)
    reaching = ~shapely.contains_properly(shell, holes)
    if reaching.any():  # grown from the reaching holes, a ring of touching holes at a time
        tree = shapely.STRtree(holes)
        frontier = np.flatnonzero(reaching)
        while len(frontier):
            _, touched = tree.query(holes[frontier], predicate="intersects")
            frontier = np.unique(touched[~reaching[touched]])
            reaching[frontier] = True
    return bool(shapely.is_valid(shapely.Polygon(polygon.exterior, holes[reaching])))
