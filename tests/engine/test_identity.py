"""A result always belongs to the pixels, model and settings it claims: run identity, naming, signatures."""

import os
import shutil

import numpy as np
import pytest
import tifffile
import zarr

from napari_xt.cli import EXIT_BAD_INPUT, EXIT_OK, main
from napari_xt.engine.events import Finished
from napari_xt.engine.runner import CancelToken, RunOptions, run, run_to_end
from napari_xt.engine.store import OutputExistsError
from napari_xt.io import open_pyramid
from napari_xt.model import save_checkpoint
from tests.conftest import tiny_sar_model


def _predict(image, checkpoint, out, *extra):
    return main(["predict", str(image), "--checkpoint", str(checkpoint), "--out", str(out), *extra])


def _only_run(out):
    runs = sorted(out.glob("*.xt.zarr"))
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("other") / "tiny_sar_xl.safetensors"  # the same name, other weights
    save_checkpoint(tiny_sar_model("xl", seed=7), path)
    return path


def test_another_checkpoint_of_the_same_name_is_refused_naming_the_weights(
    tmp_path, sar_zarr, sar_checkpoint, other_checkpoint, capsys
):
    out = tmp_path / "runs"
    assert _predict(sar_zarr, sar_checkpoint, out, "--level", "1") == EXIT_OK
    capsys.readouterr()
    assert _predict(sar_zarr, other_checkpoint, out, "--level", "1") == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "checkpoint_sha256: it was made with other weights" in err and "skipped" not in err


def test_other_checkpoint_level_or_roi_scope_get_their_own_run_directory(tmp_path, sar_zarr, sar_checkpoint):
    out = tmp_path / "runs"
    renamed = tmp_path / "sar_none.safetensors"
    save_checkpoint(tiny_sar_model("none"), renamed)
    assert _predict(sar_zarr, sar_checkpoint, out, "--level", "1") == EXIT_OK
    assert _predict(sar_zarr, renamed, out, "--level", "1") == EXIT_OK
    assert _predict(sar_zarr, sar_checkpoint, out, "--level", "0", "--batch-size", "8") == EXIT_OK
    names = sorted(p.name for p in out.glob("*.xt.zarr"))
    assert names == ["scene__sar_none__L1.xt.zarr", "scene__tiny_sar_xl__L0.xt.zarr", "scene__tiny_sar_xl__L1.xt.zarr"]
    spec = zarr.open_group(str(out / "scene__sar_none__L1.xt.zarr"), mode="r").attrs["napari_xt"]
    assert spec["config"]["context_encoder"]["kind"] == "none" and spec["level"] == 1


def test_probabilities_asked_after_a_run_without_them_are_refused(tmp_path, sar_zarr, sar_checkpoint, capsys):
    out = tmp_path / "runs"
    assert _predict(sar_zarr, sar_checkpoint, out, "--level", "1") == EXIT_OK
    capsys.readouterr()
    assert _predict(sar_zarr, sar_checkpoint, out, "--level", "1", "--probabilities") == EXIT_BAD_INPUT
    assert "save_probabilities: it was started without class probabilities" in capsys.readouterr().err


def test_a_resume_keeps_the_probabilities_the_run_started_with(tmp_path, sar_scene):
    model = tiny_sar_model()
    out = tmp_path / "run.xt.zarr"
    cancel = CancelToken()
    options = RunOptions(level=1, batch_size=4, cache_dir="", save_probabilities=True)
    for event in run(sar_scene.pyramid(), model, out, options, cancel):
        if type(event).__name__ == "PartialResult":
            cancel.cancel()
    assert 0 < zarr.open_group(str(out))["regions/done"][:].sum() < zarr.open_group(str(out))["regions/active"][:].sum()
    resumed = run_to_end(sar_scene.pyramid(), model, out, RunOptions(level=1, batch_size=4, cache_dir=""))
    assert isinstance(resumed, Finished)
    group = zarr.open_group(str(out), mode="r")
    probabilities = group["probabilities/0"][:]
    active = np.kron(group["regions/active"][:], np.ones((128, 128), bool))[
        : probabilities.shape[1], : probabilities.shape[2]
    ]
    sums = probabilities.astype(np.float32).sum(axis=0)
    np.testing.assert_allclose(sums[active], 1.0, atol=0.01)  # every analysed pixel has its probabilities


def test_a_whole_image_run_after_an_roi_run_analyses_every_region(tmp_path, sar_zarr, sar_checkpoint):
    out = tmp_path / "runs"
    assert _predict(sar_zarr, sar_checkpoint, out, "--level", "1", "--roi", "0,0,256,256") == EXIT_OK
    assert _predict(sar_zarr, sar_checkpoint, out, "--level", "1") == EXIT_OK
    group = zarr.open_group(str(_only_run(out)), mode="r")
    assert group["regions/done"][:].sum() == group["regions/active"][:].sum() > 4
    reference = tmp_path / "reference.xt.zarr"
    run_to_end(str(sar_zarr), str(sar_checkpoint), reference, RunOptions(level=1, cache_dir=""))
    np.testing.assert_array_equal(
        group["labels/segmentation/0"][:], zarr.open_group(str(reference))["labels/segmentation/0"][:]
    )


def test_images_of_the_same_name_in_two_folders_never_share_a_run(tmp_path, sar_zarr, sar_checkpoint):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first, second = tmp_path / "one" / "scene.zarr", tmp_path / "two" / "scene.zarr"
    shutil.copytree(sar_zarr, first)
    data = zarr.open_array(str(sar_zarr), mode="r")[:]
    zarr.create_array(str(second), data=np.flipud(data).copy(), chunks=(256, 256))
    out = tmp_path / "runs"
    assert (
        main(
            ["predict", str(first), str(second), "--checkpoint", str(sar_checkpoint), "--out", str(out), "--level", "1"]
        )
        == 0
    )
    runs = sorted(out.glob("*.xt.zarr"))
    assert len(runs) == 2
    sources = {zarr.open_group(str(r), mode="r").attrs["napari_xt"]["image_source"] for r in runs}
    assert sources == {str(first), str(second)}


def test_array_signatures_follow_the_bytes_never_the_object():
    a = np.zeros((600, 500), np.float32)
    before = open_pyramid(a).signature
    a[300, 200] = 1.0  # changed in place
    assert open_pyramid(a).signature != before
    assert open_pyramid(np.zeros((600, 500), np.float32)).signature == before  # a new array, same pixels
    assert open_pyramid(np.ones((600, 500), np.float32)).signature != before


def test_a_zarr_rewritten_in_place_gets_a_new_signature(tmp_path):
    path = tmp_path / "image.zarr"
    array = zarr.create_array(str(path), shape=(600, 600), chunks=(256, 256), dtype="uint16", fill_value=0)
    array[:] = 5
    before = open_pyramid(path).signature
    stat = os.stat(next(p for p in path.rglob("c/*/*") if p.is_file()))
    array[10:20, 10:20] = 9
    chunk = next(p for p in path.rglob("c/0/0") if p.is_file())
    os.utime(chunk, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime
    assert open_pyramid(path).signature != before


def test_a_tiff_replaced_by_one_of_the_same_size_and_mtime_gets_a_new_signature(tmp_path):
    path = tmp_path / "slide.tif"
    image = np.random.default_rng(0).integers(0, 255, (512, 512), dtype=np.uint8)
    tifffile.imwrite(path, image, tile=(256, 256))
    before, stat = open_pyramid(path).signature, os.stat(path)
    changed = image.copy()
    changed[300:310, 300:310] ^= 0xFF
    tifffile.imwrite(path, changed, tile=(256, 256))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # what cp -p, rsync -a and tar do
    assert os.stat(path).st_size == stat.st_size
    assert open_pyramid(path).signature != before


def test_the_token_cache_follows_the_pixels_and_overwrite_forgets_them(tmp_path, sar_scene):
    model = tiny_sar_model()
    cache = tmp_path / "cache"
    image = np.asarray(sar_scene.pyramid().levels[0])[..., 0].copy()
    options = {"level": 1, "batch_size": 8, "cache_dir": str(cache), "roi": (0, 0, 256, 256)}
    run_to_end(image, model, tmp_path / "a.xt.zarr", RunOptions(**options))
    entries = sorted(cache.glob("*.zarr"))
    assert len(entries) == 1
    image[600:900, 600:900] = 0  # far from the ROI: its context must come from the new pixels
    run_to_end(image, model, tmp_path / "b.xt.zarr", RunOptions(**options))
    after = sorted(cache.glob("*.zarr"))
    assert len(after) == 2
    (changed_entry,) = set(after) - set(entries)
    (entries[0] / "marker").write_text("the first image's entry")
    (changed_entry / "marker").write_text("the changed image's entry")
    run_to_end(image, model, tmp_path / "b.xt.zarr", RunOptions(**options, overwrite=True))
    assert changed_entry.exists() and not (changed_entry / "marker").exists()  # forgotten, then rebuilt
    assert (entries[0] / "marker").exists()  # another image's entry is left alone


def test_a_corrupt_token_cache_entry_is_recomputed_not_fatal(tmp_path, sar_scene, caplog):
    model = tiny_sar_model()
    cache = tmp_path / "cache"
    options = {"level": 1, "batch_size": 8, "cache_dir": str(cache)}
    reference = tmp_path / "reference.xt.zarr"
    run_to_end(sar_scene.pyramid(), model, reference, RunOptions(**options, roi=(0, 0, 256, 256)))
    for chunk in (p for p in next(cache.glob("*.zarr")).rglob("*") if p.is_file() and "c" in p.parts):
        chunk.write_bytes(b"\x00garbage")
    result = run_to_end(
        sar_scene.pyramid(), model, tmp_path / "again.xt.zarr", RunOptions(**options, roi=(0, 0, 256, 256))
    )
    assert isinstance(result, Finished)
    assert "corrupt token cache entry" in caplog.text
    np.testing.assert_array_equal(
        zarr.open_group(str(reference))["labels/segmentation/0"][:256, :256],
        zarr.open_group(str(tmp_path / "again.xt.zarr"))["labels/segmentation/0"][:256, :256],
    )


def test_the_api_refuses_an_output_holding_another_image(tmp_path, sar_scene):
    model = tiny_sar_model()
    out = tmp_path / "run.xt.zarr"
    image = np.asarray(sar_scene.pyramid().levels[0])[..., 0].copy()
    run_to_end(image, model, out, RunOptions(level=1, cache_dir=""))
    image[:100] = 0
    with pytest.raises(OutputExistsError, match="image_signature: the image's pixels changed"):
        run(image, model, out, RunOptions(level=1, cache_dir=""))


def test_a_run_decoded_another_way_is_not_resumed(tmp_path, sar_scene):
    """A run directory whose regions were decoded alone (napari-xt before the neighbourhood), with another
    halo or without blending is refused, naming the decoding, instead of being finished with regions decoded
    differently."""
    model = tiny_sar_model()
    halo = model.halo
    options = {"level": 1, "cache_dir": "", "batch_size": 8}
    out = tmp_path / "a.xt.zarr"
    events = run(sar_scene.pyramid(), model, out, RunOptions(**options), cancel=(token := CancelToken()))
    for event in events:
        if type(event).__name__ == "PartialResult":
            token.cancel()
    group = zarr.open_group(str(out), mode="r+")
    spec = dict(group.attrs["napari_xt"])
    del spec["decoding"]  # as a run directory written by an older napari-xt
    group.attrs["napari_xt"] = spec
    with pytest.raises(OutputExistsError, match="decoded another way"):
        run_to_end(sar_scene.pyramid(), model, out, RunOptions(**options))
    model.halo = 0  # the same weights decoded without a halo are another run, too
    assert isinstance(run_to_end(sar_scene.pyramid(), model, out, RunOptions(**options, overwrite=True)), Finished)
    assert zarr.open_group(str(out), mode="r").attrs["napari_xt"]["decoding"]["halo"] == 0
    model.halo = halo
    assert isinstance(run_to_end(sar_scene.pyramid(), model, out, RunOptions(**options, overwrite=True)), Finished)
    model.config.heads.decoder_blend = False  # the same halo, each region cropped from its own window: another run
    with pytest.raises(OutputExistsError, match="decoded another way"):
        run_to_end(sar_scene.pyramid(), model, out, RunOptions(**options))
