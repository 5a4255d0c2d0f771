import numpy as np
import pytest
import torch

from napari_xt.model import XTModel, preset_config
from napari_xt.train.data import read_points, sample_crop, synthetic_source
from napari_xt.train.trainer import TrainSettings, train


def _tiny_sar_model(seed=0):
    config = preset_config("test_tiny_xl", in_channels=1, mean=[0.1], std=[0.15])
    config.heads.segmentation_classes = ["background", "land", "open_sea", "near_shore"]
    config.heads.detection_classes = ["open_sea", "near_shore"]
    torch.manual_seed(seed)
    return XTModel(config)


def _source():
    return synthetic_source("sar", 2048, 0, 1).materialise()


def test_crops_carry_targets_in_the_right_place():
    source = _source()
    crop = sample_crop(source, 256, np.random.default_rng(0), object_bias=1.0)
    y0, x0 = crop["origin"]
    assert crop["image"].shape == (1, 256, 256) and crop["segmentation"].shape == (256, 256)
    assert crop["centres"].sum() >= 1
    objects = source.objects((2 * y0, 2 * x0, 2 * (y0 + 256), 2 * (x0 + 256)))
    cy, cx = np.argwhere(crop["centres"])[0]
    # the centre cell lies on one of the objects (level-0 → level 1 → stride-4 cells)
    assert (
        np.min(
            np.hypot(
                (objects.y + 0.5) / 2 - 0.5 - y0 - (4 * cy + 1.5), (objects.x + 0.5) / 2 - 0.5 - x0 - (4 * cx + 1.5)
            )
        )
        <= 2.9
    )


def test_tiny_training_lowers_the_loss_and_repeats_with_a_seed(tmp_path):
    histories = []
    for attempt in range(2):
        model = _tiny_sar_model()
        settings = TrainSettings(steps=40, crop_regions=4, log_every=10, save_every=1000, seed=3, lr=3e-3)
        train(model, [_source()], tmp_path / f"m{attempt}.safetensors", settings)
        histories.append([entry["total"] for entry in settings.history])
    assert histories[0] == histories[1]
    assert histories[0][-1] < 0.8 * histories[0][0]


def test_resume_from_the_saved_state_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    import napari_xt.train.trainer as trainer

    source = _source()

    def settings():
        return TrainSettings(steps=20, crop_regions=4, log_every=5, save_every=10, seed=5)

    straight, straight_settings = _tiny_sar_model(), settings()
    train(straight, [source], tmp_path / "a.safetensors", straight_settings)

    class Killed(Exception):
        pass

    save_state = trainer._save_state

    def save_then_die(*args, **kwargs):
        save_state(*args, **kwargs)
        raise Killed  # as if the process died right after step 10's state reached the disk

    monkeypatch.setattr(trainer, "_save_state", save_then_die)
    with pytest.raises(Killed):
        train(_tiny_sar_model(), [source], tmp_path / "b.safetensors", settings())
    monkeypatch.setattr(trainer, "_save_state", save_state)
    assert (tmp_path / "b.safetensors.state.pt").exists()
    resumed, resumed_settings = _tiny_sar_model(seed=99), settings()  # weights come from the state file
    train(resumed, [source], tmp_path / "b.safetensors", resumed_settings)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)

    def losses(history):
        return [{k: v for k, v in entry.items() if k != "seconds"} for entry in history]

    assert losses(resumed_settings.history) == losses(straight_settings.history)


def test_points_from_csv_and_qupath_geojson(tmp_path):
    (tmp_path / "p.csv").write_text("y,x,class,size\n10,20,near_shore,12\n30.5,40,open_sea,\n")
    table = read_points(str(tmp_path / "p.csv"), ["open_sea", "near_shore"])
    assert table.y.tolist() == [10.0, 30.5] and table.label.tolist() == [1, 0] and table.size[1] == 16.0
    from napari_xt.engine.detections import DetectionTable
    from napari_xt.engine.exports import write_geojson

    write_geojson(
        DetectionTable(table.y, table.x, table.label, np.ones(2), table.size),
        tmp_path / "p.geojson",
        ["open_sea", "near_shore"],
        {},
    )
    back = read_points(str(tmp_path / "p.geojson"), ["open_sea", "near_shore"])
    np.testing.assert_allclose(back.x, table.x)  # QuPath's half-pixel convention, both ways
    np.testing.assert_allclose(back.y, table.y)
    np.testing.assert_allclose(back.size, table.size)
    assert back.label.tolist() == [1, 0]


def test_batchnorm_keeps_its_statistics_in_training(tmp_path):
    """A ResNet region encoder's BatchNorm uses running statistics in training too, so no region's output
    depends on the other regions of its batch; its scale and shift still learn."""
    config = preset_config("test_tiny_xl", in_channels=1, mean=[0.1], std=[0.15])
    config.region_encoder.name = "test_resnet"
    config.heads.segmentation_classes = ["background", "land", "open_sea", "near_shore"]
    config.heads.detection_classes = ["open_sea", "near_shore"]
    torch.manual_seed(0)
    model = XTModel(config)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    before = [(m.running_mean.clone(), m.weight.detach().clone()) for m in norms]
    train(model, [_source()], tmp_path / "r.safetensors", TrainSettings(steps=3, crop_regions=2, save_every=1000))
    for m, (mean, _) in zip(norms, before, strict=True):
        torch.testing.assert_close(m.running_mean, mean)
    assert any(not torch.equal(m.weight, weight) for m, (_, weight) in zip(norms, before, strict=True))


def test_a_time_budget_fits_the_schedule_and_a_stop_keeps_the_last_whole_step(tmp_path):
    from napari_xt.train.trainer import training

    source = _source()
    settings = TrainSettings(steps=100_000, crop_regions=2, log_every=1000, save_every=10**9, max_seconds=1.0)
    provenance = train(_tiny_sar_model(), [source], tmp_path / "t.safetensors", settings)
    assert 3 <= settings.steps < 100_000  # fitted to the pace of the first three steps
    assert provenance["steps_done"] <= settings.steps
    assert provenance["train_seconds"] < 30  # the budget bounds the run (it overruns by at most a step or so)
    stop_after = 4
    records = []
    steps = training(
        _tiny_sar_model(),
        [source],
        tmp_path / "s.safetensors",
        TrainSettings(steps=50, crop_regions=2, log_every=2, save_every=10**9),
        should_stop=lambda: len(records) >= stop_after,
    )
    try:
        while True:
            records.append(next(steps))
    except StopIteration as done:
        provenance = done.value
    assert [r["step"] for r in records] == [1, 2, 3, 4] and [r["logged"] for r in records] == [False, True] * 2
    assert provenance["steps_done"] == 4 and provenance["stopped"] == "cancelled after step 4 of 50"
