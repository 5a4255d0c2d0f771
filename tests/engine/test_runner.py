import errno
import json
import os

import numpy as np
import pytest
import torch
import zarr

from napari_xt.engine.events import Cancelled, Failed, Finished, PartialResult, Progress, Started
from napari_xt.engine.grid import GridError
from napari_xt.engine.runner import CancelToken, RunOptions, run, run_to_end
from napari_xt.engine.stages import STAGES
from napari_xt.engine.store import OutputExistsError, OutputStore, StoreError
from napari_xt.model import CheckpointError, create_model
from tests.conftest import tiny_sar_model

FAST = {"level": 1, "cache_dir": "", "batch_size": 8}


def _labels(run_dir):
    return np.asarray(zarr.open_group(str(run_dir), mode="r")["labels/segmentation/0"][:])


def _detections(run_dir):
    return (run_dir / "detections.csv").read_text()


def test_whole_run_writes_every_output_and_provenance(tmp_path, sar_scene, sar_checkpoint):
    events = list(run(sar_scene.pyramid(), sar_checkpoint, tmp_path / "a.xt.zarr", RunOptions(**FAST)))
    assert isinstance(events[0], Started) and isinstance(events[-1], Finished)
    assert any(isinstance(e, PartialResult) for e in events)
    phases = {e.phase for e in events if isinstance(e, Progress)}
    assert phases == {"encode", "context", "predict"}
    group = zarr.open_group(str(tmp_path / "a.xt.zarr"), mode="r")
    spec = group.attrs["napari_xt"]
    assert spec["status"] == "finished"
    for key in (
        "checkpoint_sha256",
        "config",
        "image_signature",
        "level",
        "region_size",
        "rois",
        "versions",
        "timings",
    ):
        assert key in spec
    assert group["labels/segmentation/0"].shape == (640, 576)  # level 1 of 1280 × 1152
    np.testing.assert_array_equal(group["regions/done"][:], group["regions/active"][:])
    assert _detections(tmp_path / "a.xt.zarr").startswith("y,x,class,score,size")
    geojson = json.loads((tmp_path / "a.xt.zarr" / "detections.geojson").read_text())
    assert geojson["type"] == "FeatureCollection"
    # every second of the run is in a named stage, or in "other", which is what no stage holds
    timings = spec["timings"]
    named = [*STAGES, "export", "other"]
    assert set(named) <= set(timings) and timings["open"] > 0 and timings["encode"] > 0
    assert sum(timings[name] for name in named) == pytest.approx(timings["total"], abs=0.01)
    assert events[-1].timings == timings


def test_nodata_regions_are_skipped_and_stay_empty(tmp_path):
    image = np.random.default_rng(0).gamma(1.0, 0.1, (256, 256)).astype(np.float32)
    image[:128, 128:] = np.nan  # a quadrant without data: 2 × 2 regions of 64²
    events = list(run(image, tiny_sar_model(), tmp_path / "n.xt.zarr", RunOptions(cache_dir="")))
    assert events[0].n_regions == 16 and events[0].n_active == 12
    group = zarr.open_group(str(tmp_path / "n.xt.zarr"), mode="r")
    assert not group["regions/active"][:2, 2:].any() and group["regions/done"][:].sum() == 12
    assert (_labels(tmp_path / "n.xt.zarr")[:128, 128:] == 0).all()


def test_streamed_two_pass_equals_the_model_on_the_whole_image(tmp_path):
    from napari_xt.model.tokenization import cut

    model = create_model("test_tiny_xl", context_encoder={"window": 4, "memory": 4}).eval()
    torch.manual_seed(3)
    image = (torch.rand(1, 3, 192, 256) * 255).round()  # 3 × 4 regions of 64²
    numpy_image = image[0].permute(1, 2, 0).numpy().astype(np.uint8)
    options = RunOptions(background="none", cache_dir="", batch_size=5, save_probabilities=True)
    last = run_to_end(numpy_image, model, tmp_path / "b.xt.zarr", options)
    assert isinstance(last, Finished)
    with torch.no_grad():
        expected = model(image.float())["segmentation"].softmax(1)[0].numpy()
    stored = np.asarray(zarr.open_group(str(tmp_path / "b.xt.zarr"))["probabilities/0"][:], np.float32)
    np.testing.assert_allclose(stored, expected, atol=2e-3)  # float16 tokens and outputs on the way
    top2 = np.sort(expected, axis=0)[-2:]
    clear = top2[1] - top2[0] > 1e-2  # where the model is not at a tie, the labels agree exactly
    assert clear.mean() > 0.8
    np.testing.assert_array_equal(_labels(tmp_path / "b.xt.zarr")[clear], expected.argmax(0)[clear])
    assert cut(image, 64)[1] == (3, 4)


def test_roi_runs_only_its_regions_and_accumulates(tmp_path, sar_scene, sar_checkpoint):
    out = tmp_path / "c.xt.zarr"
    options = RunOptions(**FAST, roi=(0, 0, 300, 300))
    assert isinstance(run_to_end(sar_scene.pyramid(), sar_checkpoint, out, options), Finished)
    done = zarr.open_group(str(out), mode="r")["regions/done"][:]
    assert done[:3, :3].all() and done.sum() == 9  # 300 level-0 px = 150 analysis px: regions 0..2
    options = RunOptions(**FAST, roi=(0, 300, 300, 600))
    assert isinstance(run_to_end(sar_scene.pyramid(), sar_checkpoint, out, options), Finished)
    group = zarr.open_group(str(out), mode="r")
    assert group["regions/done"][:3, :5].all()
    assert len(group.attrs["napari_xt"]["rois"]) == 2


def test_cancel_stops_within_one_batch_and_keeps_what_finished(tmp_path, sar_scene, sar_checkpoint):
    cancel = CancelToken()
    out = tmp_path / "d.xt.zarr"
    events = []
    for event in run(sar_scene.pyramid(), sar_checkpoint, out, RunOptions(**FAST), cancel):
        events.append(event)
        if isinstance(event, PartialResult):
            cancel.cancel()
    assert isinstance(events[-1], Cancelled)
    partials = [e for e in events if isinstance(e, PartialResult)]
    assert len(partials) <= 2  # the batch being written when cancel came is finished, nothing after it
    group = zarr.open_group(str(out), mode="r")
    assert group["regions/done"][:].sum() == sum(len(p.boxes) for p in partials) <= 16
    assert group.attrs["napari_xt"]["status"] == "cancelled"


def test_full_disk_mid_run_fails_clearly_and_resumes_to_the_same_result(
    tmp_path, sar_scene, sar_checkpoint, monkeypatch
):
    reference = tmp_path / "ref.xt.zarr"
    run_to_end(sar_scene.pyramid(), sar_checkpoint, reference, RunOptions(**FAST))
    out = tmp_path / "e.xt.zarr"
    original, calls = OutputStore.write_batch, []

    def failing(self, results):
        calls.append(len(results))
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, results)

    monkeypatch.setattr(OutputStore, "write_batch", failing)
    last = run_to_end(sar_scene.pyramid(), sar_checkpoint, out, RunOptions(**FAST))
    assert isinstance(last, Failed) and "disk is full" in last.message and "resume" in last.message
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["napari_xt"]["status"] == "failed"
    assert calls[0] > 0 and group["regions/done"][:].sum() == sum(calls[:2])  # what the first two writes held
    monkeypatch.setattr(OutputStore, "write_batch", original)
    assert isinstance(run_to_end(sar_scene.pyramid(), sar_checkpoint, out, RunOptions(**FAST)), Finished)
    np.testing.assert_array_equal(_labels(out), _labels(reference))
    assert _detections(out) == _detections(reference)


def test_outputs_are_never_overwritten_unasked(tmp_path, sar_scene, sar_checkpoint):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(OutputExistsError, match="is not a napari-xt run directory"):
        run(sar_scene.pyramid(), sar_checkpoint, tmp_path / "mine", RunOptions(**FAST))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"
    out = tmp_path / "f.xt.zarr"
    run_to_end(sar_scene.pyramid(), sar_checkpoint, out, RunOptions(**FAST, roi=(0, 0, 200, 200)))
    other_model = tiny_sar_model(seed=9)
    with pytest.raises(OutputExistsError, match="checkpoint_sha256"):
        run(sar_scene.pyramid(), other_model, out, RunOptions(**FAST))
    assert isinstance(run_to_end(sar_scene.pyramid(), other_model, out, RunOptions(**FAST, overwrite=True)), Finished)


def test_bad_input_is_refused_before_any_work(tmp_path, sar_scene, sar_checkpoint):
    rgb_model = create_model("test_tiny_xl")
    with pytest.raises(CheckpointError, match="expects 3-channel images"):
        run(sar_scene.pyramid(), rgb_model, tmp_path / "g.xt.zarr")
    with pytest.raises(GridError, match="outside the image"):
        run(sar_scene.pyramid(), sar_checkpoint, tmp_path / "g.xt.zarr", RunOptions(roi=(5000, 0, 6000, 10)))
    with pytest.raises(GridError, match="smaller than a region"):
        run(np.zeros((10, 10), np.float32), sar_checkpoint, tmp_path / "g.xt.zarr")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(StoreError, match="cannot write the run directory"):
        run(sar_scene.pyramid(), sar_checkpoint, tmp_path / "a_file" / "h.xt.zarr", RunOptions(**FAST))
    assert not (tmp_path / "g.xt.zarr").exists()


def test_context_none_runs_in_one_pass(tmp_path, sar_scene):
    model = tiny_sar_model("none")
    events = list(run(sar_scene.pyramid(), model, tmp_path / "i.xt.zarr", RunOptions(**FAST)))
    assert isinstance(events[-1], Finished)
    assert {e.phase for e in events if isinstance(e, Progress)} == {"predict"}


def test_every_label_level_is_written_as_regions_finish(tmp_path):
    image = np.random.default_rng(1).gamma(1.0, 0.1, (2100, 1100)).astype(np.float32)
    out = tmp_path / "levels.xt.zarr"
    options = RunOptions(cache_dir="", background="none", export_polygons=False)  # noise: polygons of every pixel
    assert isinstance(run_to_end(image, tiny_sar_model(), out, options), Finished)
    group = zarr.open_group(str(out), mode="r")["labels/segmentation"]
    level0, level1, level2 = group["0"][:], group["1"][:], group["2"][:]
    assert level1.shape == (1050, 550) and level2.shape == (525, 275)
    np.testing.assert_array_equal(level1, level0[::2, ::2])  # nearest: labels are never averaged
    np.testing.assert_array_equal(level2, level0[::4, ::4])
    datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
    assert [d["coordinateTransformations"][0]["scale"] for d in datasets] == [[1.0, 1.0], [2.0, 2.0], [4.0, 4.0]]


def test_choosing_the_batch_size_starting_the_blend_and_removing_the_scratch_file_are_in_named_stages(
    tmp_path, sar_scene, monkeypatch
):
    """The batch-size probe counts as planning, building the blender as blending and closing the feature keeper
    (its scratch file goes) as keeping: none of them is left to ``other``."""
    import time

    from napari_xt.engine import runner
    from napari_xt.engine.cache import FeatureKeeper
    from napari_xt.engine.neighbours import Blender

    def slow(function, result=None):
        def wrapped(*args, **kwargs):
            time.sleep(0.5)
            value = function(*args, **kwargs)
            return value if result is None else result

        return wrapped

    monkeypatch.setattr(runner, "_auto_batch_size", slow(lambda ctx: None, result=8))
    monkeypatch.setattr(FeatureKeeper, "close", slow(FeatureKeeper.close))
    monkeypatch.setattr(Blender, "__init__", slow(Blender.__init__))
    options = RunOptions(**{**FAST, "batch_size": None})
    last = run_to_end(sar_scene.pyramid(), tiny_sar_model(), tmp_path / "s.xt.zarr", options)
    timings = last.timings
    assert timings["batch_size"] == 8
    assert timings["plan"] >= 0.5 and timings["blend"] >= 0.5 and timings["keep"] >= 0.5


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_runs_finish_and_agree_with_float32(tmp_path, precision):
    """``precision`` bf16 (the default on CUDA) and fp16 run to the end on any device: the decoded outputs are
    float32 before they are blended and turned into numpy (which has no bfloat16), and the labels are those of
    a float32 run but for pixels where the classes' scores are within the half precision's rounding."""
    image = np.random.default_rng(0).gamma(1.0, 0.1, (256, 256)).astype(np.float32)
    labels = {}
    for name in (precision, "fp32"):
        options = RunOptions(cache_dir="", precision=name, save_probabilities=True)
        last = run_to_end(image, tiny_sar_model(), tmp_path / f"{name}.xt.zarr", options)
        assert isinstance(last, Finished), getattr(last, "message", last)
        labels[name] = _labels(tmp_path / f"{name}.xt.zarr")
        probabilities = zarr.open_group(str(tmp_path / f"{name}.xt.zarr"), mode="r")["probabilities/0"][:]
        np.testing.assert_allclose(probabilities.astype(np.float32).sum(axis=0), 1.0, atol=0.01)
    assert (labels[precision] == labels["fp32"]).mean() > 0.97


def test_the_batch_size_on_a_gpu_comes_from_the_free_memory_of_the_run_s_own_gpu(monkeypatch):
    """With ``--device cuda:1`` the free memory asked for is cuda:1's, not that of the current device (cuda:0)."""
    from types import SimpleNamespace

    from napari_xt.engine import runner
    from napari_xt.engine.stages import Compute, Encoded

    asked = []

    def mem_get_info(device=None):
        asked.append(device)
        return 100 * 2**20, 80 * 2**30

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    monkeypatch.setattr(runner, "encode", lambda *args, **kwargs: Encoded(None, [torch.zeros(1, 64, 32, 32)]))
    config = SimpleNamespace(in_channels=3, region_size=256)
    ctx = SimpleNamespace(model=SimpleNamespace(config=config), compute=Compute(torch.device("cuda", 1)))
    per_region = 8 * 64 * 32 * 32 * 4 + 3 * 256 * 256 * 4 * 4
    assert runner._auto_batch_size(ctx) == 50 * 2**20 // per_region == 10  # half the free memory
    assert asked == [torch.device("cuda", 1)]


def test_polygons_traced_while_the_labels_are_written_are_those_traced_after(
    tmp_path, sar_scene, sar_checkpoint, monkeypatch
):
    """The segmentation polygons are traced during pass 2, reading each row of tiles once its regions are
    written (some reads come before the last region is), and the file is the one a trace after the run writes."""
    import napari_xt.engine.exports as exports
    import napari_xt.engine.polygons as module
    import napari_xt.engine.runner as runner

    monkeypatch.setattr(runner, "_traces_during_run", lambda ctx: True)  # as where the model leaves a core free
    real = module.polygon_batches
    monkeypatch.setattr(module, "polygon_batches", lambda *args, **kwargs: real(*args, tile=64, **kwargs))
    real_read, early = exports._FinalRows.__getitem__, []

    def read(self, key):
        early.append(self._final < self.shape[0])  # the read was asked for before the whole map was final
        return real_read(self, key)

    monkeypatch.setattr(exports._FinalRows, "__getitem__", read)
    out = tmp_path / "p.xt.zarr"
    assert isinstance(run_to_end(sar_scene.pyramid(), sar_checkpoint, out, RunOptions(**FAST)), Finished)
    group = zarr.open_group(str(out), mode="r")
    spec = group.attrs["napari_xt"]
    assert spec["polygons_traced_during_run"] > 0 and "segmentation.geojson" in spec["export_files"]
    assert len(early) == 10 * 9 and sum(early) >= 5  # 640 × 576 labels in tiles of 64²
    after = tmp_path / "after"
    after.mkdir()
    assert exports._traced_polygons(after, spec, group["labels/segmentation/0"]) == ["segmentation.geojson"]
    traced = (out / "segmentation.geojson").read_bytes()
    assert traced == (after / "segmentation.geojson").read_bytes() and traced.count(b'"Feature"') > 10


def test_a_cancelled_run_leaves_no_polygons_and_no_tracing_thread(tmp_path, sar_scene, sar_checkpoint, monkeypatch):
    import threading

    import napari_xt.engine.runner as runner

    started = []
    monkeypatch.setattr(runner, "_traces_during_run", lambda ctx: started.append(True) or True)
    cancel = CancelToken()
    out = tmp_path / "q.xt.zarr"
    for event in run(sar_scene.pyramid(), sar_checkpoint, out, RunOptions(**FAST), cancel):
        if isinstance(event, PartialResult):
            cancel.cancel()
    assert isinstance(event, Cancelled)
    assert started and not any(thread.name == "napari-xt polygons" for thread in threading.enumerate())
    assert not [path.name for path in out.iterdir() if "segmentation" in path.name]  # nor its temporary file


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs two cores it can see"
)
def test_polygons_are_traced_during_the_run_only_where_the_model_leaves_a_core_free(
    tmp_path, sar_scene, sar_checkpoint
):
    import os

    import napari_xt.engine.runner as runner

    seen = []
    real = runner._traces_during_run

    def spy(ctx):
        seen.append(real(ctx))
        return seen[-1]

    threads = torch.get_num_threads()
    try:
        for n, polygons in ((len(os.sched_getaffinity(0)), True), (1, True), (1, False)):
            torch.set_num_threads(n)
            options = RunOptions(**FAST, export_polygons=polygons)
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(runner, "_traces_during_run", spy)
                out = tmp_path / f"t{n}{polygons}.xt.zarr"
                assert isinstance(run_to_end(sar_scene.pyramid(), sar_checkpoint, out, options), Finished)
            traced = zarr.open_group(str(out), mode="r").attrs["napari_xt"]["polygons_traced_during_run"]
            assert (traced is not None) == seen[-1]
    finally:
        torch.set_num_threads(threads)
    assert seen == [False, True, False]
