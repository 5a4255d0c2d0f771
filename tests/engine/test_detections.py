"""Objects on region borders and corners are reported once, where they are."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_xt.engine.detections import DetectionTable, merge_duplicates
from napari_xt.engine.events import Finished
from napari_xt.engine.runner import RunOptions, run_to_end
from tests.conftest import read_csv, tiny_sar_model


def _oracle(model):
    """Replace the learned parts with an oracle whose heatmap is the (pooled) image: the engine's geometry,
    decoding and merging are what is tested."""
    model.encode = lambda x: [x]
    model.region_tokens = lambda features: torch.zeros(features[0].shape[0], 4, 32)
    model.contextualise = lambda tokens, positions: tokens

    def decode(features, context, halo=0, crop=True):
        pooled = F.avg_pool2d(features[0][:, :1], 4)
        n, _, h, w = pooled.shape
        return {
            "segmentation": torch.zeros(n, 3, 64, 64),
            "detection": {
                "heatmap": 4 * (pooled - 2),
                "classes": torch.cat([pooled, torch.zeros_like(pooled)], dim=1),
                "size": torch.full((n, 1, h, w), 16.0),
            },
        }

    model.decode = decode
    model.halo = 0  # the oracle decodes each region alone
    return model


def _blobs(shape, centres, sigma=3.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    image = np.zeros(shape, np.float32)
    for y, x in centres:
        image += np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2))
    return image


@pytest.mark.parametrize(
    "centres",
    [
        [(30, 30), (64, 100), (128, 128), (200, 191.5)],  # inside, on a horizontal border, a corner, a vertical one
        [(63.5, 63.5), (192, 64), (100, 192)],
    ],
)
def test_objects_on_borders_and_corners_are_reported_once(tmp_path, centres):
    image = _blobs((256, 256), centres) + 1e-3  # not nodata
    model = _oracle(tiny_sar_model())
    result = run_to_end(image, model, tmp_path / "o.xt.zarr", RunOptions(cache_dir="", background="none"))
    assert isinstance(result, Finished)
    found = read_csv(tmp_path / "o.xt.zarr" / "detections.csv", ["a", "b"])
    assert len(found) == len(centres)
    for y, x in centres:  # the oracle has no sub-cell offset: within half a stride (2 px) on each axis
        near = (np.abs(found.y - y) <= 2.0) & (np.abs(found.x - x) <= 2.0)
        assert near.sum() == 1, f"({y}, {x}) found {near.sum()} times"


def test_merge_keeps_the_best_of_each_cluster():
    table = DetectionTable(
        y=np.array([10.0, 12.0, 50.0, 51.0, 90.0]),
        x=np.array([10.0, 11.0, 50.0, 50.0, 10.0]),
        label=np.array([0, 1, 0, 0, 1]),
        score=np.array([0.9, 0.95, 0.5, 0.4, 0.3]),
        size=np.array([8.0, 8.0, 4.0, 4.0, 8.0]),
    )
    merged = merge_duplicates(table)
    assert merged.y.tolist() == [12.0, 50.0, 90.0]
    assert merged.label.tolist() == [1, 0, 1]
    assert len(merge_duplicates(DetectionTable.empty())) == 0


def _greedy_reference(table, min_distance=4.0, size_fraction=0.5):
    """The definition, point by point: by score, keep a detection unless a kept one covers it."""
    radius = np.maximum(min_distance, size_fraction * table.size)
    kept = []
    for i in np.argsort(-table.score, kind="stable"):
        if all(np.hypot(table.y[i] - table.y[k], table.x[i] - table.x[k]) > radius[k] for k in kept):
            kept.append(i)
    return sorted(kept)


@pytest.mark.parametrize("seed", range(5))
def test_merging_equals_the_greedy_definition_on_crowded_points(seed):
    rng = np.random.default_rng(seed)
    n = 400
    table = DetectionTable(
        y=rng.uniform(0, 300, n),
        x=rng.uniform(0, 300, n),
        label=rng.integers(0, 2, n),
        score=rng.uniform(0, 1, n),
        size=rng.uniform(2, 40, n),  # radii from 4 to 20: chains of overlaps where greedy order matters
    )
    merged = merge_duplicates(table)
    expected = table.select(np.asarray(_greedy_reference(table), dtype=np.int64))
    assert 0 < len(merged) < n
    np.testing.assert_array_equal(merged.y, expected.y)
    np.testing.assert_array_equal(merged.score, expected.score)
