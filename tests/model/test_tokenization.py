import pytest
import torch

from napari_xt.model.config import RegionEncoderConfig
from napari_xt.model.region_encoder import RegionEncoder
from napari_xt.model.tokenization import cut, grid_positions, hilbert_index, serial_order, uncut


def test_cut_and_uncut_round_trip_exactly():
    images = torch.randn(2, 3, 96, 160)
    tiles, grid = cut(images, 32)
    assert grid == (3, 5) and tiles.shape == (30, 3, 32, 32)
    torch.testing.assert_close(tiles[1 * 5 + 2], images[0, :, 32:64, 64:96], rtol=0, atol=0)
    torch.testing.assert_close(tiles[15 + 14], images[1, :, 64:96, 128:160], rtol=0, atol=0)
    torch.testing.assert_close(uncut(tiles, grid), images, rtol=0, atol=0)


def test_cut_refuses_partial_tiles():
    with pytest.raises(ValueError, match="cannot be cut into whole tiles of 32"):
        cut(torch.zeros(1, 1, 100, 64), 32)


def test_grid_positions_are_global():
    positions = grid_positions(2, 3, offset=(10, 20))
    assert positions.tolist() == [[10, 20], [10, 21], [10, 22], [11, 20], [11, 21], [11, 22]]


def test_region_larger_than_encoder_input_is_encoded_as_sub_regions():
    torch.manual_seed(0)
    encoder = RegionEncoder(RegionEncoderConfig("test_convnext", input_size=64), in_channels=3, region_size=128).eval()
    regions = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        nested = encoder(regions)
        # reference: encode each 64² sub-region alone and stitch the maps by hand
        for level, feature in enumerate(nested):
            for i in range(2):
                for j in range(2):
                    alone = encoder.backbone(regions[:, :, 64 * i : 64 * (i + 1), 64 * j : 64 * (j + 1)])[level]
                    h, w = alone.shape[-2:]
                    torch.testing.assert_close(feature[:, :, h * i : h * (i + 1), w * j : w * (j + 1)], alone)
    assert nested[0].shape == (2, 24, 32, 32) and nested[-1].shape == (2, 64, 4, 4)


@pytest.mark.parametrize("bits", [1, 2, 4, 6])
def test_hilbert_index_walks_every_cell_through_neighbours(bits):
    side = 2**bits
    positions = grid_positions(side, side)
    index = hilbert_index(positions, bits)
    assert sorted(index.tolist()) == list(range(side * side))
    walk = positions[torch.argsort(index)]
    assert ((walk[1:] - walk[:-1]).abs().sum(-1) == 1).all()


def test_hilbert_order_is_global_and_windows_are_compact():
    wide = grid_positions(64, 512)  # a slide 512 regions wide
    order = serial_order(wide[None], "hilbert")[0]
    walk = wide[order]
    spans = [(w.max(0).values - w.min(0).values + 1).tolist() for w in walk.split(16)]
    assert max(max(span) for span in spans) <= 4  # every window of 16 regions is a 4 × 4 patch
    # a crop's regions come in the order they have in the whole image
    crop = grid_positions(6, 6, offset=(21, 300))
    crop_walk = crop[serial_order(crop[None], "hilbert")[0]]
    keys = [tuple(p) for p in crop.tolist()]
    global_walk = [tuple(p) for p in walk.tolist() if tuple(p) in keys]
    assert [tuple(p) for p in crop_walk.tolist()] == global_walk
    assert serial_order(crop[None], "raster") is None
    with pytest.raises(ValueError, match="must lie in"):
        hilbert_index(torch.tensor([[-1, 0]]))


def test_halo_windows_are_the_stitched_map_padded_with_zeros():
    from napari_xt.model.tokenization import halo_windows, neighbour_table

    torch.manual_seed(0)
    features = torch.randn(2 * 3 * 4, 5, 8, 8)  # two images of 3 × 4 regions, maps of 8 cells
    table = neighbour_table(3, 4, images=2)
    windows = halo_windows(features, table, 3)
    assert windows.shape == (24, 5, 14, 14)
    stitched = torch.nn.functional.pad(uncut(features, (3, 4)), (3, 3, 3, 3))  # (2, 5, 24 + 6, 32 + 6)
    for index in range(24):
        image, rest = divmod(index, 12)
        r, c = divmod(rest, 4)
        expected = stitched[image, :, r * 8 : r * 8 + 14, c * 8 : c * 8 + 14]
        torch.testing.assert_close(windows[index], expected)
    torch.testing.assert_close(halo_windows(features, table, 0), features)
    # a batch's rows of the whole table (as a benchmark decodes a whole image batch by batch): the same windows
    for rows in ([5, 6, 7], [13], [0, 23, 11]):
        torch.testing.assert_close(halo_windows(features, table[rows], 3), windows[rows])
    # the engine's maps, region by region (a list, in the order the table's indices count them): the same windows
    maps = list(features)
    torch.testing.assert_close(halo_windows(maps, table, 3), windows, rtol=0, atol=0)
    torch.testing.assert_close(halo_windows(maps, table, 0), features, rtol=0, atol=0)
    holes = table.clone()
    holes[holes % 5 == 2] = -1  # some neighbours absent: zeros where they would be, in both forms
    torch.testing.assert_close(halo_windows(maps, holes[[3, 9]], 3), halo_windows(features, holes[[3, 9]], 3))
    assert not halo_windows(maps, holes, 3).eq(windows).all()
    with pytest.raises(ValueError, match="does not fit"):
        halo_windows(maps, table, 9)
    with pytest.raises(ValueError, match="at least one region"):
        halo_windows([], table[:0], 3)


def test_absent_neighbours_are_zeros_in_windows_and_their_edge_in_context():
    from napari_xt.model.tokenization import CENTRE, context_neighbourhoods, halo_windows

    features = torch.ones(2, 1, 4, 4)
    table = torch.full((1, 9), -1)
    table[0, CENTRE], table[0, 5] = 0, 1  # the right neighbour only
    window = halo_windows(features, table, 2)[0, 0]
    assert window[2:6, 2:8].eq(1).all() and window[:2].eq(0).all() and window[:, :2].eq(0).all()
    tokens = torch.arange(8.0).view(2, 4, 1)  # 2 regions of 2 × 2 tokens, width 1
    grid = context_neighbourhoods(tokens, table)[0, 0]
    assert grid.shape == (6, 6)
    torch.testing.assert_close(grid[2:4, 2:4], torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    torch.testing.assert_close(grid[2:4, 4:6], torch.tensor([[4.0, 5.0], [6.0, 7.0]]))  # the neighbour
    torch.testing.assert_close(grid[0, 2:4], torch.tensor([0.0, 1.0]))  # above: the top row repeated
    torch.testing.assert_close(grid[2:4, 0], torch.tensor([0.0, 2.0]))  # left: the left column repeated


def test_context_neighbourhoods_are_windows_of_the_image_token_grid():
    from napari_xt.model.tokenization import context_neighbourhoods, neighbour_table

    torch.manual_seed(1)
    tokens = torch.randn(3 * 4, 4, 6)  # 3 × 4 regions of 2 × 2 tokens, width 6
    grids = context_neighbourhoods(tokens, neighbour_table(3, 4))
    whole = uncut(tokens.transpose(1, 2).reshape(12, 6, 2, 2), (3, 4))[0]  # (6, 6 rows, 8 cols of tokens)
    torch.testing.assert_close(grids[5], whole[:, 0:6, 0:6])  # region (1, 1): every neighbour present
    torch.testing.assert_close(grids[6], whole[:, 0:6, 2:8])  # region (1, 2)
    # at the image's edge, the neighbourhood is the window of the image grid padded by replication
    padded = torch.nn.functional.pad(whole[None], (2, 2, 2, 2), mode="replicate")[0]
    for index in range(12):
        r, c = divmod(index, 4)
        torch.testing.assert_close(grids[index], padded[:, 2 * r : 2 * r + 6, 2 * c : 2 * c + 6])


def test_context_neighbourhoods_of_bfloat16_tokens_under_cpu_autocast():
    """Under CPU autocast the replicate pad runs in float32 whatever its input: the neighbours' bfloat16 tokens
    go into that field as they are (``benchmarks/gpu.py --device cpu --quick`` failed there)."""
    from napari_xt.model.tokenization import context_neighbourhoods, neighbour_table

    torch.manual_seed(2)
    tokens = torch.randn(2 * 3, 4, 5).bfloat16()
    table = neighbour_table(2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grids = context_neighbourhoods(tokens, table)
    torch.testing.assert_close(grids.float(), context_neighbourhoods(tokens.float(), table), rtol=0, atol=0)


def test_blend_weights_of_two_neighbours_sum_to_one_across_their_border():
    from napari_xt.model.tokenization import blend_weights

    size, halo = 16, 4
    w = blend_weights(size, halo)
    assert w.shape == (size + 2 * halo,) and float(w.min()) > 0
    # a neighbour's window starts ``size`` cells after the region's: over the 2 × halo cells both cover
    torch.testing.assert_close(w[size : size + 2 * halo] + w[: 2 * halo], torch.ones(2 * halo))
    assert torch.all(w[2 * halo : size] == 1)  # the region's middle is its own window's alone


def test_blending_windows_cut_from_one_map_gives_back_the_map():
    from napari_xt.model.tokenization import blend_windows, halo_windows, neighbour_table

    torch.manual_seed(0)
    grid, size, halo = (3, 4), 8, 3
    regions = torch.randn(2 * 12, 5, size, size)  # two images of 3 × 4 regions
    table = neighbour_table(*grid, images=2)
    windows = halo_windows(regions, table, halo)  # each window: the map around the region
    torch.testing.assert_close(blend_windows(windows, table, halo), regions)
    torch.testing.assert_close(blend_windows(windows, table, 0), windows)  # no halo: the windows as they are


def test_blended_outputs_are_continuous_where_the_windows_disagree():
    """Windows of a constant value each (the most a region's own prediction can differ from its neighbour's):
    cropped, the map steps by the whole difference at every border; blended, by at most one cell's share of
    it, and a region beside absent neighbours keeps its own value there."""
    from napari_xt.model.tokenization import blend_windows, neighbour_table

    torch.manual_seed(0)
    rows, cols, size, halo = 3, 4, 8, 2
    values = torch.randn(rows * cols)
    windows = values.view(-1, 1, 1, 1).expand(-1, 1, size + 2 * halo, size + 2 * halo).contiguous()
    table = neighbour_table(rows, cols)
    blended = uncut(blend_windows(windows, table, halo), (rows, cols))[0, 0]
    cropped = uncut(windows[..., halo:-halo, halo:-halo], (rows, cols))[0, 0]
    steps = (values.view(rows, cols)[:, 1:] - values.view(rows, cols)[:, :-1]).abs()
    border = torch.arange(1, cols) * size
    middle = slice(size // 2, None, size)  # a row of each region that only its side neighbours' windows reach
    torch.testing.assert_close((cropped[:, border] - cropped[:, border - 1]).abs()[middle], steps)
    blended_steps = (blended[:, border] - blended[:, border - 1]).abs()[middle]
    torch.testing.assert_close(blended_steps, steps / (2 * halo))  # the weights move by 1 / (2 halo) a cell
    # the image's outer edge has no neighbour: there the region's own value stands
    torch.testing.assert_close(blended[0, 0], values[0])
    alone = blend_windows(windows, torch.tensor([[-1, -1, -1, -1, 5, -1, -1, -1, -1]]), halo)
    torch.testing.assert_close(alone, torch.full((1, 1, size, size), float(values[5])))
