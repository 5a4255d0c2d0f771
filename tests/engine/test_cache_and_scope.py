import numpy as np
import zarr

from napari_xt.engine.cache import TokenCache
from napari_xt.engine.events import Finished
from napari_xt.engine.runner import RunOptions, run_to_end
from tests.conftest import tiny_sar_model


def _count_encoded(model):
    counts = []
    original = model.encode
    model.encode = lambda regions: counts.append(regions.shape[0]) or original(regions)
    return counts


def test_roi_with_whole_image_context_equals_the_whole_run(tmp_path, sar_scene):
    model = tiny_sar_model()
    whole = tmp_path / "whole.xt.zarr"
    run_to_end(sar_scene.pyramid(), model, whole, RunOptions(level=1, cache_dir=""))
    roi = (256, 256, 768, 640)  # level-0 box → analysis rows 2..5, cols 2..4
    part = tmp_path / "part.xt.zarr"
    assert isinstance(
        run_to_end(sar_scene.pyramid(), model, part, RunOptions(level=1, roi=roi, cache_dir="")), Finished
    )
    a = zarr.open_group(str(whole))["labels/segmentation/0"][128:384, 128:320]
    b = zarr.open_group(str(part))["labels/segmentation/0"][128:384, 128:320]
    np.testing.assert_array_equal(a, b)


def test_token_cache_reuses_encodings_for_another_roi(tmp_path, sar_scene):
    model = tiny_sar_model()
    cache = tmp_path / "cache"
    counts = _count_encoded(model)
    options = {"level": 1, "cache_dir": str(cache), "batch_size": 8}
    run_to_end(sar_scene.pyramid(), model, tmp_path / "a.xt.zarr", RunOptions(**options, roi=(0, 0, 256, 256)))
    first = sum(counts)
    counts.clear()
    result = run_to_end(
        sar_scene.pyramid(), model, tmp_path / "b.xt.zarr", RunOptions(**options, roi=(512, 512, 768, 768))
    )
    assert isinstance(result, Finished)
    grid_regions = zarr.open_group(str(tmp_path / "b.xt.zarr"))["regions/active"][:].sum()
    assert first >= grid_regions  # the first run encoded the whole image for context
    # the second only the features it decodes with: its own 2 × 2 regions, the ring of 12 whose windows its
    # blend takes, and the ring of 20 around that (their halo): 36 regions, in five model batches of 8 (the
    # last padded); the rest of the context is cached
    assert counts == [8, 8, 8, 8, 8]
    # the cache is safe to delete: a third run simply encodes again
    import shutil

    shutil.rmtree(cache)
    counts.clear()
    run_to_end(sar_scene.pyramid(), model, tmp_path / "c.xt.zarr", RunOptions(**options, roi=(0, 0, 256, 256)))
    assert sum(counts) == first


def test_a_warm_run_reuses_the_context_of_the_same_tokens_and_gets_the_same_result(tmp_path, sar_scene):
    model = tiny_sar_model()
    calls = []
    original = model.contextualise
    model.contextualise = lambda *a, **k: calls.append(a[0].shape[1]) or original(*a, **k)
    cache = tmp_path / "cache"
    roi = {"level": 1, "cache_dir": str(cache), "batch_size": 8, "roi": (256, 256, 768, 640)}
    runs = {}
    for name in ("cold", "warm", "damaged"):
        if name == "damaged":  # a context written in part (no completion mark) is computed again
            (entry,) = cache.glob("*.zarr")
            group = zarr.open_group(str(entry), mode="r+")
            (context,) = [k for k in group.array_keys() if k.startswith("context-")]
            del group[context].attrs["complete"]
        run_to_end(sar_scene.pyramid(), model, tmp_path / f"{name}.xt.zarr", RunOptions(**roi))
        runs[name] = zarr.open_group(str(tmp_path / f"{name}.xt.zarr"))["labels/segmentation/0"][:]
    assert len(calls) == 2  # cold computed it, warm read it, damaged computed it again
    np.testing.assert_array_equal(runs["warm"], runs["cold"])
    np.testing.assert_array_equal(runs["damaged"], runs["cold"])
    # another set of context regions, order or way of computing is another context, never this one's
    positions = np.array([[0, 0], [0, 1], [1, 0]])
    tag = TokenCache.context_tag(positions, "cpu", "auto")
    assert tag != TokenCache.context_tag(positions[:2], "cpu", "auto")
    assert tag != TokenCache.context_tag(positions[::-1], "cpu", "auto")
    assert tag != TokenCache.context_tag(positions, "cuda", "auto")
    assert tag != TokenCache.context_tag(positions, "cpu", "bf16")
    (entry,) = cache.glob("*.zarr")
    stored = TokenCache(cache, entry.name.removesuffix(".zarr"), *_entry_grid(entry))
    (name,) = [k for k in stored.group.array_keys() if k.startswith("context-")]
    shape = stored.group[name].shape
    assert stored.context(name.removeprefix("context-"), shape) is not None
    assert stored.context(name.removeprefix("context-"), (shape[0] + 1, *shape[1:])) is None


def _entry_grid(entry):
    tokens = zarr.open_group(str(entry), mode="r")["tokens"]
    return tokens.shape[:2], tokens.shape[2], tokens.shape[3]


def test_cache_size_cap_drops_the_oldest(tmp_path):
    import os

    for i, key in enumerate(("old", "mid", "new")):
        entry = TokenCache(tmp_path, key, (8, 8), 4, 32)
        entry.store(np.array([[0, 0]]), np.ones((1, 4, 32), np.float16))
        os.utime(entry.path, (1000 + i, 1000 + i))
    size = sum(f.stat().st_size for f in (tmp_path / "new.zarr").rglob("*") if f.is_file())
    TokenCache.enforce_cap(tmp_path, max_bytes=int(size * 2.5))
    assert sorted(p.name for p in tmp_path.glob("*.zarr")) == ["mid.zarr", "new.zarr"]


def test_roi_without_context_equals_the_whole_run_at_its_edges(tmp_path, sar_scene):
    """Without a context encoder an ROI's regions are decoded with the rings of neighbours around it (the
    first ring's windows for the blend, the second's features for their halo), so its edge regions are the
    whole run's, not a region decoded alone."""
    model = tiny_sar_model("none")
    whole = tmp_path / "whole.xt.zarr"
    run_to_end(sar_scene.pyramid(), model, whole, RunOptions(level=1, cache_dir=""))
    part = tmp_path / "part.xt.zarr"
    counts = _count_encoded(model)
    options = RunOptions(level=1, roi=(256, 256, 768, 640), cache_dir="", batch_size=4)
    assert isinstance(run_to_end(sar_scene.pyramid(), model, part, options), Finished)
    a = zarr.open_group(str(whole))["labels/segmentation/0"][128:384, 128:320]
    b = zarr.open_group(str(part))["labels/segmentation/0"][128:384, 128:320]
    np.testing.assert_array_equal(a, b)
    # 4 × 3 regions and the rings of 6 × 5 and 8 × 7 around them, each encoded once (when a batch first needs
    # them), always in model batches of exactly 4, so that no result depends on its batch; the inner ring is
    # decoded too (its windows), in batches of 4 with the ROI's regions
    active = zarr.open_group(str(whole))["regions/active"]
    rings, decoded = int(active[0:8, 0:7].sum()), int(active[1:7, 1:6].sum())
    assert set(counts) == {4}
    decode_batches = -(-decoded // 4)
    assert rings <= sum(counts) and len(counts) <= -(-rings // 4) + decode_batches
