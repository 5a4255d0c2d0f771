"""Segmentation polygons built tile by tile: the same components, holes and areas as the raster, whatever the
tiling; checked with shapely (validity, area) and scipy (connected components)."""

import sys

import numpy as np
import pytest
import scipy.ndimage as ndi
import shapely

from napari_xt.engine.polygons import MissingGeoExtra, polygon_batches, polygons, to_level0


def blobs(height=300, width=410, seed=0) -> np.ndarray:
    """Classes 0..3 as smooth blobs: large components that cross every tile border, holes, small islands."""
    noise = ndi.gaussian_filter(np.random.default_rng(seed).normal(size=(height, width)), 6)
    return np.digitize(noise, np.quantile(noise, [0.3, 0.6, 0.85])).astype(np.uint8)


def speckle(seed=5) -> np.ndarray:
    """An untrained model's map: one class percolates, with hundreds of holes of every small shape."""
    return np.random.default_rng(seed).choice(3, size=(120, 160), p=[0.25, 0.1, 0.65]).astype(np.uint8)


@pytest.mark.parametrize("tile", [37, 64, 1000])
def test_components_holes_and_areas_match_the_raster_for_any_tiling(tile):
    labels = blobs()
    found = list(polygons(labels, 4, tile=tile, simplify=0))
    for label in (1, 2, 3):
        mine = [p.geometry for p in found if p.label == label]
        assert len(mine) == ndi.label(labels == label)[1]  # one polygon per 4-connected component
        assert all(p.is_valid and p.geom_type == "Polygon" for p in mine)
        assert sum(p.area for p in mine) == (labels == label).sum()  # pixel edges: exact
    assert sum(len(p.geometry.interiors) for p in found) > 0  # holes are kept
    # every polygon covers exactly its own class: rasterised back, it gives the label image
    union = shapely.union_all([p.geometry for p in found if p.label == 3])
    centres = shapely.points(*np.meshgrid(np.arange(410) + 0.5, np.arange(300) + 0.5))
    np.testing.assert_array_equal(shapely.contains(union, centres), labels == 3)


def test_a_speckled_component_across_every_tile_keeps_each_of_its_holes():
    # an untrained model's map: one class percolates through every tile, with holes inside each tile, and a ring
    # of it closes a hole on the corner (80, 120) where four tiles of 40 meet
    labels = np.random.default_rng(3).choice(3, size=(157, 203), p=[0.2, 0.15, 0.65]).astype(np.uint8)
    labels[77:84, 117:124] = 2
    labels[78:83, 118:123] = 0
    found = list(polygons(labels, 3, tile=40, simplify=0))
    big = max((p.geometry for p in found), key=lambda g: g.area)
    assert len(big.interiors) > 100
    centres = shapely.points(*np.meshgrid(np.arange(203) + 0.5, np.arange(157) + 0.5))
    for label in (1, 2):
        mine = [p.geometry for p in found if p.label == label]
        assert len(mine) == ndi.label(labels == label)[1]
        assert all(p.is_valid and p.geom_type == "Polygon" for p in mine)
        assert sum(p.area for p in mine) == (labels == label).sum()
        np.testing.assert_array_equal(shapely.contains(shapely.union_all(mine), centres), labels == label)
    assert big.contains(shapely.Point(117.5, 77.5)) and not big.contains(shapely.Point(120.5, 80.5))


def test_a_ring_across_four_tiles_is_one_polygon_with_its_hole():
    labels = np.zeros((100, 100), np.uint8)
    labels[20:80, 20:80] = 2
    labels[40:60, 40:60] = 0  # the hole sits on the corner where four tiles meet
    labels[45:55, 45:55] = 1  # an island of another class inside the hole
    found = list(polygons(labels, 3, tile=50, simplify=0))
    ring = [p.geometry for p in found if p.label == 2]
    island = [p.geometry for p in found if p.label == 1]
    assert len(ring) == 1 and len(ring[0].interiors) == 1
    assert ring[0].area == 60 * 60 - 20 * 20 and island[0].area == 100


def test_simplified_polygons_stay_valid_and_within_one_percent_of_the_raster_area():
    labels = blobs(seed=3)
    found = list(polygons(labels, 4, tile=64, simplify=0.75))
    for label in (1, 2, 3):
        area = sum(p.geometry.area for p in found if p.label == label)
        assert area == pytest.approx((labels == label).sum(), rel=0.01)
    assert all(p.geometry.is_valid for p in found)
    exact = sum(len(p.geometry.exterior.coords) for p in polygons(labels, 4, tile=64, simplify=0))
    assert sum(len(p.geometry.exterior.coords) for p in found) < exact / 2  # the staircases are gone


def test_polygons_reach_level0_pixel_corners():
    labels = np.zeros((8, 8), np.uint8)
    labels[2:4, 1:3] = 1
    (item,) = polygons(labels, 2, simplify=0)
    assert to_level0(item.geometry, (4.0, 2.0)).bounds == (2.0, 8.0, 6.0, 16.0)  # x by 2, y by 4


def test_tiles_labelled_in_worker_threads_give_the_same_polygons_in_the_same_order():
    labels = blobs(seed=3)
    alone = list(polygon_batches(labels, 4, tile=48, workers=0))
    threaded = list(polygon_batches(labels, 4, tile=48, workers=3))
    assert len(alone) == len(threaded) > 10
    for (classes_a, geometries_a), (classes_b, geometries_b) in zip(alone, threaded):
        assert classes_a.tolist() == classes_b.tolist()
        assert shapely.equals_exact(geometries_a, geometries_b).all()


def test_vertices_packed_a_few_at_a_time_give_the_same_polygons(monkeypatch):
    from napari_xt.engine import polygons as module

    labels = blobs(seed=5)
    whole = list(polygons(labels, 4, tile=1000, simplify=0))
    monkeypatch.setattr(module, "_POINTS_AT_ONCE", 3)  # packed mid-polygon, mid-ring: nothing may shift
    packed = list(polygons(labels, 4, tile=1000, simplify=0))
    assert len(whole) == len(packed) > 50 and sum(len(p.geometry.interiors) for p in whole) > 0
    assert [p.label for p in whole] == [p.label for p in packed]
    assert all(a.geometry.wkb == b.geometry.wkb for a, b in zip(whole, packed))


def test_batches_hold_the_same_polygons_as_arrays_scaled_together():
    labels = blobs()
    batches = list(polygon_batches(labels, 4, tile=64))
    assert len(batches) > 1
    classes = np.concatenate([c for c, _ in batches])
    geometries = np.concatenate([g for _, g in batches])
    assert geometries.dtype == object and len(classes) == len(geometries)
    one_by_one = list(polygons(labels, 4, tile=64))
    assert classes.tolist() == [p.label for p in one_by_one]
    assert all(a.equals(b.geometry) for a, b in zip(geometries, one_by_one))
    scaled = to_level0(geometries, (4.0, 2.0))
    np.testing.assert_allclose(shapely.area(scaled), 8 * shapely.area(geometries))
    assert to_level0(geometries, (1.0, 1.0)) is geometries


def test_without_the_geo_extra_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "rasterio.features", None)
    with pytest.raises(MissingGeoExtra, match=r"napari-xt\[geo\]"):
        list(polygons(np.ones((4, 4), np.uint8), 2))


def test_simplifying_never_cuts_small_objects():
    """Speckle of a noisy model: single pixels, pairs and L-shapes keep their exact area (a simplified
    one-pixel square would be half a triangle), and every polygon stays within 2% of its component."""
    labels = np.random.default_rng(1).integers(0, 3, (96, 128)).astype(np.uint8)
    found = list(polygons(labels, 3, tile=40, simplify=0.75))
    for label in (1, 2):
        components, n = ndi.label(labels == label)
        sizes = np.bincount(components.ravel())[1:]
        mine = [p.geometry for p in found if p.label == label]
        assert len(mine) == n
        assert sorted(p.area for p in mine if p.area <= 3) == sorted(s for s in sizes if s <= 3)
        assert sum(p.area for p in mine) == pytest.approx(sizes.sum(), rel=0.02)
    singles = [p.geometry for p in found if p.geometry.area == 1]
    assert singles and all(len(p.exterior.coords) == 5 for p in singles)  # squares, not triangles


def test_finished_components_are_forgotten_row_by_row(monkeypatch):
    """Memory is one row of border pieces: the id tables do not keep every component of the image."""
    from napari_xt.engine import polygons as module

    made = []

    class Recorded(module._Pieces):
        def __init__(self):
            super().__init__()
            made.append(self)

    monkeypatch.setattr(module, "_Pieces", Recorded)
    rng = np.random.default_rng(0)
    labels = (rng.random((640, 640)) < 0.3).astype(np.uint8)  # thousands of speckle components
    labels[:, 300:310] = 1  # and one that crosses every row of tiles
    found = list(polygons(labels, 2, tile=64, simplify=0))
    assert len(found) == ndi.label(labels == 1)[1] > 5000
    assert sum(p.geometry.area for p in found) == labels.sum()
    assert made[0]._next > 5000 and len(made[0]._class) < 200


@pytest.mark.parametrize("at_once", [65_536, 2])
def test_validity_by_parts_agrees_with_geos_on_polygons_of_many_holes(monkeypatch, at_once):
    from napari_xt.engine import polygons as module
    from napari_xt.engine.polygons import _simplified_rings, is_valid

    monkeypatch.setattr(module, "_PAIRS_AT_ONCE", at_once)  # 2: pairs of holes and groups of them a few at a time
    monkeypatch.setattr(module, "_RINGS_AT_ONCE", at_once)
    monkeypatch.setattr(module, "_PREPARED_FROM", 256 if at_once > 2 else 4)
    monkeypatch.setattr(module, "_CANDIDATES_AT_ONCE", 1 << 22 if at_once > 2 else 3)
    monkeypatch.setattr(module, "_HOLES_AT_ONCE", at_once)  # 2: groups tested in frames a few at a time

    # speckle traced whole, then simplified without care for topology: valid and invalid polygons of many holes
    exact = np.array([p.geometry for p in polygons(speckle(), 3, tile=1000, simplify=0)], dtype=object)
    cases = [exact] + [_simplified_rings(exact, t) for t in (0.75, 1.5, 3.0)]
    # a chain of holes from the shell back to it cuts the interior apart; none of them alone touches it twice
    square = [(0, 0), (10, 0), (10, 10), (0, 10)]
    chain = [[(x - 1, 5), (x, 4), (x + 1, 5), (x, 6)] for x in (1, 3, 5, 7, 9)]  # diamonds touching at vertices
    cut = shapely.Polygon(square, [*chain, shapely.box(1, 8, 2, 9).exterior.coords])
    broken_chain = shapely.Polygon(square, chain[:2] + chain[3:])
    outside = shapely.Polygon(
        square, [shapely.box(2, 2, 3, 3).exterior.coords, shapely.box(12, 2, 13, 3).exterior.coords]
    )
    nested = shapely.Polygon(square, [shapely.box(2, 2, 8, 8).exterior.coords, shapely.box(3, 3, 4, 4).exterior.coords])
    # four diamonds touching in a loop far from the shell cut off the middle; no two of them alone do
    loop = [[(x - 1, y), (x, y - 1), (x + 1, y), (x, y + 1)] for x, y in ((4, 3), (5, 4), (4, 5), (3, 4))]
    looped = shapely.Polygon([(-10, -10), (20, -10), (20, 20), (-10, 20)], loop)
    crossing = shapely.Polygon(
        square, [shapely.box(2, 2, 4, 4).exterior.coords, shapely.box(3, 3, 5, 5).exterior.coords]
    )
    handmade = np.array([cut, outside, nested, broken_chain, looped, crossing])
    assert shapely.is_valid(handmade).tolist() == [False, False, False, True, False, False]
    cases.append(handmade)
    # the largest polygon with a few of its holes moved: onto the shell, across it, outside, onto each other
    rng = np.random.default_rng(6)
    big = max(exact, key=lambda g: len(g.interiors))
    moved = []
    for _ in range(40):
        holes = list(big.interiors)
        for i in rng.choice(len(holes), size=rng.integers(1, 4), replace=False):
            holes[i] = shapely.affinity.translate(holes[i], *rng.integers(-4, 5, size=2))
        moved.append(shapely.Polygon(big.exterior, holes))
    cases.append(np.array(moved, dtype=object))
    for geometries in cases:
        expected = shapely.is_valid(geometries)
        np.testing.assert_array_equal(is_valid(geometries, many_holes=1), expected)
    moved_valid = shapely.is_valid(cases[-1])
    assert 0 < moved_valid.sum() < len(moved_valid)  # both answers were tested on many holes
    assert max(len(g.interiors) for g in exact) > 50


def test_kept_pieces_hold_their_holes_as_arrays_and_give_back_the_same_polygon():
    from napari_xt.engine.polygons import _KeptPiece

    traced = max((p.geometry for p in polygons(speckle(), 3, tile=1000, simplify=0)), key=lambda g: len(g.interiors))
    off_grid = shapely.affinity.translate(traced, 0.5, 0.25)  # not whole pixel corners: kept as they are
    far = shapely.affinity.translate(traced, 70_000, 3)  # whole, far from 0: the holes from their corner
    wide = shapely.Polygon(  # holes 70,000 pixels apart: too wide for uint16, int32 as they are
        [(0, 0), (80_000, 0), (80_000, 9), (0, 9)],
        [[(1, 1), (1, 2), (2, 2), (2, 1)], [(70_001, 1), (70_001, 2), (70_002, 2), (70_002, 1)]],
    )
    cases = ((traced, np.int32, np.uint16), (off_grid, np.float64, np.float64), (far, np.int32, np.uint16))
    for polygon, shell_type, hole_type in (*cases, (wide, np.int32, np.int32)):
        (piece,) = _KeptPiece.many([polygon])
        np.testing.assert_array_equal(piece.shell, shapely.get_coordinates(polygon.exterior))
        assert piece.shell.dtype == shell_type and piece.vertices.dtype == hole_type
        assert piece.holes == len(polygon.interiors) and piece.holes in (2, len(traced.interiors))
        assert piece.polygon().wkb == polygon.wkb
    assert len(traced.interiors) > 50
    (plain,) = _KeptPiece.many([shapely.box(0, 0, 3, 2)])
    assert plain.holes == 0 and plain.polygon().wkb == shapely.box(0, 0, 3, 2).wkb
    many = _KeptPiece.many([traced, shapely.box(0, 0, 3, 2), far])  # a tile's pieces made at once: the same
    assert [piece.polygon().wkb for piece in many] == [traced.wkb, plain.polygon().wkb, far.wkb]


def test_a_packed_polygon_simplifies_to_what_its_geos_polygon_does():
    """A component merged from kept pieces is simplified from its arrays; the result, the fallbacks (GEOS's
    topology-preserving simplification where the plain one is invalid, the exact polygon where the area moves too
    much) and the area are those of its GEOS polygon."""
    from napari_xt.engine.polygons import PackedPolygon, _simplified_rings, simplified

    exact = [p.geometry for p in polygons(speckle(), 3, tile=1000, simplify=0)]
    holed = [g for g in exact if g.interiors]
    packed = []
    for i, polygon in enumerate(holed):  # float64 and int32 vertices in turn
        _, vertices, (ring_offsets, _) = shapely.to_ragged_array([polygon])
        packed.append(PackedPolygon(vertices.astype(np.int32) if i % 2 else vertices, ring_offsets))
    assert {p.vertices.dtype for p in packed} == {np.dtype(np.int32), np.dtype(np.float64)}
    assert [p.polygon().wkb for p in packed] == [g.wkb for g in holed]
    assert [p.area() for p in packed] == [g.area for g in holed]
    fallbacks = 0
    for tolerance in (0.75, 1.5, 3.0, 6.0):
        mixed = [packed[holed.index(g)] if g.interiors else g for g in exact]
        expected = simplified(exact, tolerance)
        assert [g.wkb for g in simplified(mixed, tolerance)] == [g.wkb for g in expected]
        plain = _simplified_rings(np.array(holed, dtype=object), tolerance)
        fallbacks += sum(not a.equals_exact(b, 0) for a, b in zip(plain, simplified(holed, tolerance)))
    assert fallbacks > 0
    assert [g.wkb for g in simplified(packed, 0)] == [g.wkb for g in holed]
    for polygon in packed:  # Douglas–Peucker keeps whole vertices whole
        floats = PackedPolygon(polygon.vertices.astype(np.float64), polygon.offsets)
        ints = PackedPolygon(polygon.vertices.astype(np.int32), polygon.offsets)
        as_floats, as_ints = floats.simplified(0.75), ints.simplified(0.75)
        assert as_ints.vertices.dtype == np.int32 and as_floats.vertices.dtype == np.float64
        np.testing.assert_array_equal(as_ints.vertices, as_floats.vertices)
        np.testing.assert_array_equal(as_ints.offsets, as_floats.offsets)


def test_rings_simplified_a_few_at_a_time_give_the_same_polygons(monkeypatch):
    from napari_xt.engine import polygons as module

    exact = np.array([p.geometry for p in polygons(speckle(), 3, tile=1000, simplify=0)], dtype=object)
    sliver = shapely.Polygon([(0, 0), (100, 0.1), (0, 0.2)], [shapely.box(10, 10, 20, 20).exterior.coords])
    exact = np.insert(exact, 7, sliver)  # its shell collapses and its (misplaced) hole does not: nothing is left
    whole = module._simplified_rings(exact, 1.5)
    for rings, vertices in ((3, 262_144), (65_536, 40), (3, 1)):  # a polygon's rings across chunks: nothing may shift
        monkeypatch.setattr(module, "_RINGS_AT_ONCE", rings)
        monkeypatch.setattr(module, "_VERTICES_AT_ONCE", vertices)  # 1: every ring a chunk of its own
        chunked = module._simplified_rings(exact, 1.5)
        assert shapely.to_wkb(whole).tolist() == shapely.to_wkb(chunked).tolist()
    ring = shapely.GeometryType.LINEARRING  # each ring simplified alone by GEOS: a collapsed one is not a ring

    def by_hand(polygon):
        shell = shapely.simplify(polygon.exterior, 1.5, preserve_topology=False)
        if shapely.get_type_id(shell) != ring:
            return shapely.Polygon()
        holes = [shapely.simplify(hole, 1.5, preserve_topology=False) for hole in polygon.interiors]
        return shapely.Polygon(shell, [hole for hole in holes if shapely.get_type_id(hole) == ring])

    assert shapely.to_wkb(whole).tolist() == [by_hand(polygon).wkb for polygon in exact]
    assert shapely.is_empty(whole).sum() > 10  # shells that collapse leave empty polygons
    assert shapely.get_num_interior_rings(whole).sum() < shapely.get_num_interior_rings(exact).sum()  # and holes go


@pytest.mark.parametrize("tile", [8, 16, 29])
@pytest.mark.parametrize("codes", ["int32", "int64"])
def test_components_stitched_from_their_edges_equal_geos_unions(monkeypatch, tile, codes):
    """Outlines joined by ``_stitched`` give GEOS's union: the same area, holes and validity, on speckle whose
    pixels touch diagonally everywhere (rings that touch at corners, across tile borders too), with the points
    coded as int32 (every map here) and as int64 (maps over 23,000²)."""
    from napari_xt.engine import polygons as module

    if codes == "int64":
        monkeypatch.setattr(module, "_INT32_CODES", 0)

    rng = np.random.default_rng(tile)
    maps = [speckle(), (rng.random((101, 87)) < 0.5).astype(np.uint8) + 1]
    maps.append(np.where(rng.random((90, 87)) < 0.1, 0, maps[1][:90]))
    stitched = []
    real = module._stitched

    def recorded(outlines, side):
        result = real(outlines, side)
        stitched.append(result is not None)
        return result

    monkeypatch.setattr(module, "_stitched", recorded)
    touching = 0
    for labels in maps:
        monkeypatch.setattr(module, "_STITCHED_FROM", 10**12)
        by_geos = list(polygons(labels, 3, tile=tile, simplify=0))
        monkeypatch.setattr(module, "_STITCHED_FROM", 0)
        by_edges = list(polygons(labels, 3, tile=tile, simplify=0))
        assert [p.label for p in by_edges] == [p.label for p in by_geos]
        for mine, theirs in zip(by_edges, by_geos):
            assert mine.geometry.is_valid and mine.geometry.area == theirs.geometry.area
            assert len(mine.geometry.interiors) == len(theirs.geometry.interiors)
            assert mine.geometry.equals(theirs.geometry)
            rings = [mine.geometry.exterior, *mine.geometry.interiors]
            corners = np.concatenate([np.unique(np.asarray(r.coords), axis=0) for r in rings])
            touching += len(corners) - len(np.unique(corners, axis=0))  # corners that two rings share
    assert len(stitched) > 100 and all(stitched) and touching > 20


@pytest.mark.parametrize("at_once", [1 << 22, 5])
@pytest.mark.parametrize("long_along", ["x", "y"])
def test_box_pairs_are_the_pairs_an_strtree_finds(monkeypatch, at_once, long_along):
    from napari_xt.engine import polygons as module

    monkeypatch.setattr(module, "_CANDIDATES_AT_ONCE", at_once)
    rng = np.random.default_rng(3)
    low = rng.integers(0, 60, size=(400, 2)).astype(float)
    high = low + rng.integers(0, 4, size=(400, 2))  # many touch at an edge or a corner, some are points
    long = 0 if long_along == "x" else 1
    high[:5, 1 - long] = 80  # a few long across the other axis, which meet many
    high[5:205, long] = 80  # stripes: swept along their length, every pair of them would be a candidate
    bounds = np.hstack([low, high])
    bounds = np.vstack([bounds, bounds[7], [[-5, -5, -5, -5]]])  # the same box twice, and one far from all
    first, second = module._box_pairs(bounds)
    tree = shapely.STRtree(shapely.box(*bounds.T))
    a, b = tree.query(shapely.box(*bounds.T))
    expected = {(i, j) for i, j in zip(a.tolist(), b.tolist()) if i < j}
    assert set(zip(first.tolist(), second.tolist())) == expected
    assert len(first) == len(expected) and (first < second).all()
    assert (7, len(bounds) - 2) in expected and len(expected) > 300
    assert module._sweep_axis(bounds) == 1 - long  # across the stripes


def test_boxes_are_swept_along_y_only_for_far_fewer_candidates():
    from napari_xt.engine.polygons import _sweep_axis

    rng = np.random.default_rng(5)
    low = rng.uniform(0, 1000, size=(2000, 2))
    for width, height, axis in [(4, 3, 0), (3, 4, 0), (9, 4, 1), (4, 9, 0)]:  # candidates scale with the extent
        assert _sweep_axis(np.hstack([low, low + np.array([width, height])])) == axis, (width, height)


def test_free_pages_are_released_before_each_large_step_of_a_large_component(monkeypatch):
    from napari_xt.engine import polygons as module

    calls = []
    monkeypatch.setattr(module, "release_free", lambda: calls.append(sys._getframe(1).f_code.co_name) or True)
    monkeypatch.setattr(module, "_STITCHED_FROM", 0)
    labels = speckle()
    plain = [(p.label, p.geometry.wkb) for p in polygons(labels, 3, tile=40)]
    assert not calls  # no component here has 2^20 vertices
    monkeypatch.setattr(module, "_RELEASE_FROM", 2_000)
    released = [(p.label, p.geometry.wkb) for p in polygons(labels, 3, tile=40)]
    # the percolating component, 3,000 or more vertices of holes across tiles: before stitching it, as its holes
    # are copied, before simplifying it, before and within testing it, and before building it
    assert {"_merged", "simplified", "_hole_groups", "_valid_by_parts", "_as_result"} <= set(calls)
    assert released == plain


def test_components_handed_on_as_arrays_are_measured_and_written_as_their_geos_polygons(monkeypatch):
    """With ``arrays``, a merged component comes as its vertex arrays; its area, length and GeoJSON text (at level
    0 too) are those of the GEOS polygon it stands for, to the last bit and byte."""
    from napari_xt.engine import polygons as module
    from napari_xt.engine.georef import geojson_pieces
    from napari_xt.engine.polygons import PackedPolygon, built, measured

    labels = speckle()
    as_geos = list(polygon_batches(labels, 3, tile=40))
    monkeypatch.setattr(module, "ARRAYS_FROM", 0)
    as_arrays = list(polygon_batches(labels, 3, tile=40, arrays=True))
    packed = [g for _, batch in as_arrays for g in batch if isinstance(g, PackedPolygon)]
    assert packed and max(len(p.offsets) for p in packed) > 100  # the percolating component, its holes
    assert {p.vertices.dtype for p in packed} == {np.dtype(np.int32)}
    for (classes, mine), (their_classes, theirs) in zip(as_arrays, as_geos, strict=True):
        np.testing.assert_array_equal(classes, their_classes)
        assert shapely.to_wkb(built(mine)).tolist() == shapely.to_wkb(theirs).tolist()
        area, length = measured(mine)
        assert area.tolist() == shapely.area(theirs).tolist()
        assert length.tolist() == shapely.length(theirs).tolist()
        for downsample in (None, (2.0, 2.0), (1.0, 1.0)):
            text = ["".join([t] if isinstance(t, str) else t) for t in geojson_pieces(mine, downsample)]
            assert text == geojson_pieces(theirs, downsample)  # small polygons: GEOS's own writer


def test_no_tile_is_held_while_the_last_row_of_components_is_merged(monkeypatch, tmp_path):
    """By the time the last row's components (a speckled map's open sea among them) are merged, the export holds
    no tile's ids and no earlier batch of polygons: a speckle tile is 16 MB of ids and 200,000 polygons."""
    import gc
    import weakref

    from napari_xt.engine import polygons as module
    from napari_xt.engine.exports import ExportUnits, _export_polygons

    made, checked = [], []
    real_objects, real_label, real_close = module._objects, module._label, module._Pieces.close_all_but

    def objects(items):
        array = real_objects(items)
        made.append(weakref.ref(array))
        return array

    def label(block, wanted):
        ids, classes = real_label(block, wanted)
        made.append(weakref.ref(ids))
        return ids, classes

    def close_all_but(self, still_open, tile):
        if not still_open:  # the last row
            gc.collect()
            checked.append(sum(ref() is not None for ref in made))
        yield from real_close(self, still_open, tile)

    monkeypatch.setattr(module, "_objects", objects)
    monkeypatch.setattr(module, "_label", label)
    monkeypatch.setattr(module._Pieces, "close_all_but", close_all_but)
    real_batches = module.polygon_batches
    monkeypatch.setattr(module, "polygon_batches", lambda *args, **kwargs: real_batches(*args, tile=40, **kwargs))
    spec = {"segmentation_classes": ["background", "a", "b"], "downsample": [1.0, 1.0]}
    _export_polygons(tmp_path, spec, speckle(), ExportUnits(), None)
    assert len(made) > 20 and checked == [0]


def test_outlines_off_the_pixel_grid_are_left_to_geos():
    """``_stitched`` joins pixel-edge outlines only; outlines all half a pixel off the grid are left to GEOS's
    union (their coordinates less the smallest are whole, which must not pass for pixel corners)."""
    from napari_xt.engine.polygons import _stitched

    def shells(*boxes):
        return [shapely.get_coordinates(box) for box in boxes]

    vertices, offsets = _stitched(shells(shapely.box(0, 0, 8, 4), shapely.box(8, 0, 12, 4)), 8)
    assert shapely.Polygon(vertices[offsets[0] : offsets[1]]).equals(shapely.box(0, 0, 12, 4))
    whole = [shell.astype(np.int32) for shell in shells(shapely.box(0, 0, 8, 4), shapely.box(8, 0, 12, 4))]
    np.testing.assert_array_equal(_stitched(whole, 8)[0], vertices)  # kept pieces' int32 outlines: the same
    assert _stitched(shells(shapely.box(0.5, 0.5, 8.5, 4.5), shapely.box(8.5, 0.5, 12.5, 4.5)), 8) is None


def test_tiles_are_labelled_as_components_of_one_class_each_joined_only_edge_to_edge():
    """One pass over all classes gives each wanted class's 4-connected components (SciPy's, class by class, as
    the reference): neighbours of another class, diagonal neighbours and unwanted classes are never joined."""
    from scipy import ndimage

    from napari_xt.engine.polygons import _label

    block = np.array([[1, 1, 2, 3], [2, 1, 2, 3], [1, 2, 3, 0], [1, 2, 0, 3]], dtype=np.uint8)
    ids, classes = _label(block, np.array([1, 3]))
    assert ids.dtype == np.int32 and (ids[(block == 2) | (block == 0)] == 0).all()
    assert sorted(classes[1:].tolist()) == [1, 1, 3, 3, 3]  # two components of class 1, three of class 3
    assert ids[0, 0] == ids[1, 1] != ids[2, 0] == ids[3, 0]  # (1, 1) meets (2, 0) only at a corner
    assert len({ids[0, 3], ids[2, 2], ids[3, 3]}) == 3 and ids[0, 3] == ids[1, 3]
    rng = np.random.default_rng(5)
    for wanted in (np.array([1, 2, 3]), np.array([2])):
        block = rng.integers(0, 4, (97, 131)).astype(np.uint8)
        ids, classes = _label(block, wanted)
        for label in wanted:
            reference, n = ndimage.label(block == label)
            mine = ids[block == label]
            assert len(np.unique(mine)) == n and (classes[mine] == label).all()
            pairs = np.unique(np.stack([reference[block == label], mine]), axis=1)
            assert pairs.shape[1] == n  # the same partition into components
        assert (ids[~np.isin(block, wanted)] == 0).all()
