import numpy as np
import pytest
import torch

from napari_xt.engine.cache import FeatureKeeper
from napari_xt.engine.neighbours import (
    STRIP,
    Blender,
    FeaturePool,
    Present,
    decode_set,
    key,
    neighbourhood,
    strip_order,
)
from napari_xt.model.tokenization import CENTRE, NEIGHBOURS, blend_windows


def test_neighbourhood_lists_the_batch_then_its_present_neighbours():
    present = Present(np.array([(r, c) for r in range(3) for c in range(3) if (r, c) != (0, 2)]))
    local, table = neighbourhood(np.array([[1, 1], [1, 2]]), present)
    assert [tuple(p) for p in local[:2]] == [(1, 1), (1, 2)]
    assert len(local) == 2 + 6  # the 3 × 3 block around both, less the absent (0, 2), less the batch itself
    assert table[0, CENTRE] == 0 and table[1, CENTRE] == 1
    assert table[0, 5] == 1  # (1, 1)'s right neighbour is the batch's second region
    assert table[0, 2] == -1  # (0, 2) is absent
    assert table[1, 5] == -1 and table[1, 8] == -1  # beyond column 2: outside the grid
    for i, (r, c) in enumerate([(1, 1), (1, 2)]):
        for k, (dr, dc) in enumerate([(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]):
            if table[i, k] >= 0:
                assert tuple(local[table[i, k]]) == (r + dr, c + dc)


def test_feature_pool_lets_the_least_recently_used_go_first():
    pool = FeaturePool(FeatureKeeper(memory_budget=3 * 400, disk_budget=0))
    for k in range(3):
        pool.put(k, [torch.zeros(100)])  # 400 bytes each
    assert pool.get(0) is not None  # 0 is now the most recent
    pool.put(3, [torch.zeros(100)])
    assert pool.get(1) is None and pool.get(0) is not None and pool.get(3) is not None
    pool.drop(0)
    assert pool.used == 2 * 400


def test_feature_pool_and_keeper_share_one_memory_budget(tmp_path):
    keeper = FeatureKeeper(memory_budget=4 * 400, disk_budget=10_000, scratch=tmp_path)
    pool = FeaturePool(keeper)
    for k in range(4):
        pool.put(k, [torch.zeros(100)])
    assert pool.used == 4 * 400
    assert keeper.put(key(9, 9), [torch.zeros(200)])  # 800 bytes in the keeper's memory: the pool yields them
    assert keeper.in_memory(key(9, 9))
    pool.fit()
    assert pool.used == 2 * 400 and pool.used + keeper.memory_used == keeper.memory_budget
    assert pool.get(0) is None and pool.get(1) is None and pool.get(3) is not None
    keeper.drop(key(9, 9))
    assert pool.budget == 4 * 400
    big = [torch.zeros(1000)]  # over the whole budget: kept while it is the last one put
    pool.put(7, big)
    assert pool.get(7) is big and len(pool.items) == 1


def test_keeper_get_keeps_and_drop_frees_memory_and_disk(tmp_path):
    keeper = FeatureKeeper(memory_budget=400, disk_budget=10_000, scratch=tmp_path)
    a, b = [torch.arange(100, dtype=torch.float32)], [torch.arange(100, dtype=torch.float16)]
    assert keeper.put(key(0, 0), a) and keeper.put(key(5, 7), b)  # the second goes to disk
    assert keeper.disk_used == 200 and keeper.memory_used == 400
    for _ in range(2):  # get does not remove
        torch.testing.assert_close(keeper.get(key(5, 7))[0], b[0])
        assert keeper.get(key(5, 7))[0].dtype == torch.float16
    keeper.drop(key(5, 7))
    keeper.drop(key(0, 0))
    assert not keeper.has(key(5, 7)) and keeper.get(key(0, 0)) is None
    assert keeper.disk_used == 0 and keeper.memory_used == 0
    keeper.close()
    assert not tmp_path.exists() or not list(tmp_path.iterdir())  # the scratch folder is gone


def test_keeper_uses_a_dropped_regions_disk_slot_again(tmp_path):
    keeper = FeatureKeeper(memory_budget=0, disk_budget=10_000, scratch=tmp_path)
    a, b, c = ([torch.full((10, 10), float(v))] for v in (1, 2, 3))
    assert keeper.put(key(0, 0), a) and keeper.put(key(0, 1), b)
    assert len(list(keeper.scratch.iterdir())) == 1  # one scratch file for all regions
    size = keeper.file_end
    keeper.drop(key(0, 0))
    assert keeper.put(key(0, 2), c)  # same size: into the slot (0, 0) left
    assert keeper.file_end == size and keeper.disk_used == 800
    torch.testing.assert_close(keeper.get(key(0, 1))[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(keeper.get(key(0, 2))[0], c[0], rtol=0, atol=0)
    assert keeper.put(key(1, 0), [torch.zeros(7)])  # another size: a new slot at the end
    assert keeper.file_end > size
    keeper.close()


def test_keeper_with_a_full_disk_warns_and_keeps_no_more_there(tmp_path, monkeypatch, caplog):
    keeper = FeatureKeeper(memory_budget=0, disk_budget=10**6, scratch=tmp_path)
    kept = [torch.arange(50, dtype=torch.float32)]
    assert keeper.put(key(0, 0), kept)

    def full(_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keeper.file, "write", full)
    with caplog.at_level("WARNING"):
        assert not keeper.put(key(0, 1), [torch.zeros(50)])  # pass 2 encodes it again
    assert "No space left" in caplog.text and not keeper.has(key(0, 1))
    monkeypatch.undo()
    assert not keeper.put(key(0, 2), [torch.zeros(50)])  # no more tries on that disk
    torch.testing.assert_close(keeper.get(key(0, 0))[0], kept[0], rtol=0, atol=0)  # what it held stays
    keeper.close()


def test_keeper_disk_gives_back_every_tensor_of_a_region_exactly_in_its_dtype(tmp_path):
    keeper = FeatureKeeper(memory_budget=0, disk_budget=10**6, scratch=tmp_path)
    torch.manual_seed(0)
    region = [
        torch.randn(1, 3, 5, 5),
        torch.randn(1, 7, 3, 3).to(torch.float16),  # 126 bytes: the next one starts past padding
        torch.randn(1, 2, 4, 4).to(torch.bfloat16),
        torch.randn(6, 6)[:, ::2],  # not contiguous
        torch.tensor([[True, False, True]]),
    ]
    assert keeper.put(key(3, 4), region) and not keeper.in_memory(key(3, 4))
    assert len(list(keeper.scratch.iterdir())) == 1
    back = keeper.get(key(3, 4))
    assert len(back) == len(region)
    for got, kept in zip(back, region):
        assert got.dtype == kept.dtype and got.shape == kept.shape
        assert torch.equal(got, kept)
    keeper.close()


def test_decode_set_adds_the_present_neighbours_whose_windows_a_blend_takes():
    present = Present(np.array([(r, c) for r in range(4) for c in range(5) if (r, c) != (0, 0)]))
    targets = np.array([[1, 1], [1, 2]])
    decoded = decode_set(targets, present, blends=True)
    expected = sorted((r, c) for r in range(3) for c in range(4) if (r, c) != (0, 0))  # (0, 0) is absent
    assert [tuple(p) for p in decoded] == expected  # one strip, row-major, each once
    np.testing.assert_array_equal(decode_set(targets, present, blends=False), targets)


def test_strip_order_goes_strip_by_strip_each_row_major():
    rows, cols = 3, STRIP + 3
    shuffled = np.random.default_rng(0).permutation([(r, c) for r in range(rows) for c in range(cols)])
    order = [tuple(p) for p in strip_order(shuffled)]
    first = [(r, c) for r in range(rows) for c in range(STRIP)]
    assert order == first + [(r, c) for r in range(rows) for c in range(STRIP, cols)]
    # in batches of a strip's width, each batch shares rows of neighbours with the one before it, so what a
    # batch is decoded with stays a few rows of one strip however wide the image is
    wide = Present(np.array([(r, c) for r in range(6) for c in range(64)]))
    batches = [
        decode_set(np.array([(r, c) for r in range(6) for c in range(64)]), wide, True)[i : i + STRIP]
        for i in range(0, 6 * 64, STRIP)
    ]
    locals_ = [neighbourhood(batch, wide)[0] for batch in batches]
    assert max(len(local) for local in locals_) == 3 * (STRIP + 2)
    assert all(np.ptp(local[:, 1]) <= STRIP + 1 for local in locals_)


def test_keeper_puts_on_disk_what_is_not_for_memory(tmp_path):
    keeper = FeatureKeeper(memory_budget=10_000, disk_budget=10_000, scratch=tmp_path)
    assert keeper.put(key(0, 0), [torch.zeros(100)], in_memory=False)
    assert keeper.has(key(0, 0)) and not keeper.in_memory(key(0, 0)) and keeper.memory_used == 0
    assert keeper.put(key(0, 1), [torch.zeros(100)]) and keeper.in_memory(key(0, 1))
    keeper.close()


@pytest.mark.parametrize("scheduled", [False, True], ids=["unscheduled", "scheduled"])
@pytest.mark.parametrize("memory", [2**30, 0, -1], ids=["in-memory", "on-disk", "no-room"])
def test_blender_gives_the_whole_image_blend_as_regions_complete(tmp_path, memory, scheduled):
    """Windows added batch by batch, row-major, give each target region the blend of ``blend_windows`` over the
    whole grid, once its last present neighbour's window has come, and nothing earlier; wherever its sums
    waited (the keeper's memory, its disk, or held when the keeper has no room)."""
    keeper = FeatureKeeper(max(memory, 0), 2**30 if memory == 0 else 0, scratch=tmp_path)
    torch.manual_seed(0)
    rows, cols, size, halo, stride = 4, 5, 16, 4, 4
    absent = {(0, 3), (2, 2)}
    positions = np.array([(r, c) for r in range(rows) for c in range(cols) if (r, c) not in absent])
    present = Present(positions)
    windows = {
        "segmentation": torch.randn(len(positions), 3, size + 2 * halo, size + 2 * halo),
        "detection": {  # blended as one group, their channels side by side
            "heatmap": torch.randn(len(positions), 1, (size + 2 * halo) // stride, (size + 2 * halo) // stride),
            "classes": torch.randn(len(positions), 2, (size + 2 * halo) // stride, (size + 2 * halo) // stride),
        },
    }
    index = {tuple(p): i for i, p in enumerate(positions)}
    table = torch.tensor(
        [[index.get((r + dr, c + dc), -1) for dr, dc in NEIGHBOURS] for r, c in positions], dtype=torch.long
    )
    expected = blend_windows(windows["segmentation"], table, halo)
    expected_heat = blend_windows(windows["detection"]["heatmap"], table, halo // stride)
    expected_classes = blend_windows(windows["detection"]["classes"], table, halo // stride)
    targets = positions[positions[:, 0] >= 1]  # rows 1-3 written; row 0 decoded for its windows only
    batches = [positions[start : start + 3] for start in range(0, len(positions), 3)] if scheduled else None
    blender = Blender(targets, present, {"segmentation": halo, "detection": halo // stride}, keeper, batches)
    seen = {}
    for start in range(0, len(positions), 3):
        batch = slice(start, start + 3)
        part = {
            "segmentation": windows["segmentation"][batch],
            "detection": {name: values[batch] for name, values in windows["detection"].items()},
        }
        done, outputs = blender.add(positions[batch], part)
        decoded_so_far = {tuple(p) for p in positions[: start + 3]}
        for k, (r, c) in enumerate(done):
            assert (r, c) not in seen and r >= 1
            needed = {(r + dr, c + dc) for dr, dc in NEIGHBOURS} & set(index)
            assert needed <= decoded_so_far  # complete only once every present neighbour has been decoded
            detection = outputs["detection"]
            seen[(r, c)] = (outputs["segmentation"][k], detection["heatmap"][k], detection["classes"][k])
    assert sorted(seen) == sorted(map(tuple, targets)) and blender.pending == 0
    for (r, c), (segmentation, heat, classes) in seen.items():
        torch.testing.assert_close(segmentation, expected[index[(r, c)]])
        torch.testing.assert_close(heat, expected_heat[index[(r, c)]])
        torch.testing.assert_close(classes, expected_classes[index[(r, c)]])
    assert keeper.memory_used == 0 and keeper.disk_used == 0  # every sum let go
    keeper.close()


def test_blender_sends_sums_that_wait_long_to_disk_and_keeps_the_others_in_memory(tmp_path):
    """With the batches known, a target completed within ``Blender.NEAR`` batches waits in memory; one that
    waits longer (a strip's last column, for the next strip) leaves the memory to the pool."""
    keeper = FeatureKeeper(2**30, 2**30, scratch=tmp_path)
    positions = np.array([(r, c) for r in range(6) for c in range(2)])
    column = [positions[positions[:, 1] == c] for c in range(2)]
    batches = [column[c][i : i + 2] for c in range(2) for i in range(0, 6, 2)]  # down column 0, then column 1
    blender = Blender(positions, Present(positions), {"segmentation": 0}, keeper, batches)
    for step, batch in enumerate(batches):
        blender.add(batch, {"segmentation": torch.ones(len(batch), 1, 4, 4)})
        waiting = {(k >> 32 & 0xFFFF, k & 0xFFFFFFFF) for k in keeper.on_disk}
        if step == 2:  # column 0 waits for column 1, three batches and more away: on disk, none in memory
            assert {(r, 0) for r in range(6)} <= waiting and keeper.memory_used == 0
        if step == 3:  # (2, 1), added to now, completes at the next batch: in memory; (3, 1), not added to, stays
            assert keeper.in_memory(Blender.SUMS | key(2, 1)) and (2, 1) not in waiting and (3, 1) in waiting
    assert blender.pending == 0 and keeper.memory_used == 0 and keeper.disk_used == 0
    keeper.close()
