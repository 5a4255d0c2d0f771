import numpy as np
import torch

from napari_xt.engine.cache import FeatureKeeper
from napari_xt.engine.neighbours import FeaturePool, Present, key, neighbourhood
from napari_xt.model.tokenization import CENTRE


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
    pool = FeaturePool(budget=3 * 400)
    for k in range(3):
        pool.put(k, [torch.zeros(100)])  # 400 bytes each
    assert pool.get(0) is not None  # 0 is now the most recent
    pool.put(3, [torch.zeros(100)])
    assert pool.get(1) is None and pool.get(0) is not None and pool.get(3) is not None
    pool.drop(0)
    assert pool.used == 2 * 400


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
    assert not list(keeper.scratch.iterdir())
    keeper.close()
