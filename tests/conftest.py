"""Shared fixtures: images written by the libraries real users write them with, tiny models and checkpoints."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_xt.engine.detections import DetectionTable

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def smooth_image(height: int, width: int, channels: int, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    """A smooth deterministic image ``(Y, X, C)`` (smooth so lossy codecs keep values close)."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height)[:, None, None]
    x = np.linspace(0, 1, width)[None, :, None]
    phase = rng.uniform(0, 2 * np.pi, size=(1, 1, channels))
    wave = 0.5 + 0.25 * np.sin(6 * x + phase) + 0.25 * np.cos(4 * y + 2 * phase)
    if np.dtype(dtype).kind == "f":
        return wave.astype(dtype)
    return np.rint(wave * np.iinfo(dtype).max * 0.9).astype(dtype)


def area_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Reference area average of ``(Y, X, C)`` by ``factor`` (trailing rows/columns dropped)."""
    h, w, c = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor, image.shape[2]
    grid = image[:h, :w].reshape(h // factor, factor, w // factor, factor, c).astype(np.float64)
    return grid.mean(axis=(1, 3))


@pytest.fixture
def rgb_image() -> np.ndarray:
    return smooth_image(1200, 1700, 3)


@pytest.fixture
def ome_zarr_v05(tmp_path, rgb_image):
    """NGFF 0.5 on zarr v3, written by ome-zarr-py: 3 levels, 0.25 µm pixels, axes c, y, x."""
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image

    path = tmp_path / "slide_v05.ome.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    write_image(
        rgb_image.transpose(2, 0, 1),
        group,
        axes="cyx",
        fmt=FormatV05(),
        scale_factors=[2, 4],
        scale={"y": 0.25, "x": 0.25},
        axes_units={"y": "micrometer", "x": "micrometer"},
    )
    return path


@pytest.fixture
def ome_zarr_v04(tmp_path):
    """NGFF 0.4 on zarr v2, written by ome-zarr-py: one uint16 channel, axes t, c, z, y, x."""
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    image = smooth_image(900, 1300, 1, np.uint16)
    path = tmp_path / "stack_v04.ome.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    write_image(
        image.transpose(2, 0, 1)[None, :, None],
        group,
        axes="tczyx",
        fmt=FormatV04(),
        scale_factors=[2],
        scale={"y": 0.5, "x": 0.5},
        axes_units={"y": "micrometer", "x": "micrometer"},
    )
    return path, image


@pytest.fixture
def geotiff_sar(tmp_path):
    """A float32 two-band GeoTIFF (UTM 33N, 10 m pixels) with a nodata value, written by tifffile."""
    import tifffile

    image = smooth_image(1500, 1100, 2, np.float32)
    image[:200, :, :] = -9999.0
    path = tmp_path / "scene.tif"
    geokeys = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633)
    tifffile.imwrite(
        path,
        image.transpose(2, 0, 1),
        planarconfig="separate",
        tile=(256, 256),
        extratags=[
            (33550, 12, 3, (10.0, 10.0, 0.0)),
            (33922, 12, 6, (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0)),
            (34735, 3, len(geokeys), geokeys),
            (42113, 2, 0, "-9999"),
        ],
    )
    return path, image


def tiny_sar_model(kind: str = "xl", seed: int = 0):
    """A tiny one-band model (SAR normalisation) with short XL windows, built deterministically."""
    import torch

    from napari_xt.model import create_model

    torch.manual_seed(seed)
    model = create_model(
        f"test_tiny_{kind}", in_channels=1, mean=[0.1], std=[0.15], context_encoder={"window": 8, "memory": 8}
    )
    return model.eval()


@pytest.fixture(scope="session")
def sar_checkpoint(tmp_path_factory):
    from napari_xt.model import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny_sar_xl.safetensors"
    save_checkpoint(tiny_sar_model("xl"), path, provenance={"purpose": "tests"})
    return path


@pytest.fixture(scope="session")
def sar_scene():
    from napari_xt.data.synthetic import SarScene

    return SarScene(height=1280, width=1152, seed=1, land_scale=1500.0, vessel_spacing=160, near_shore_distance=200.0)


@pytest.fixture(scope="session")
def sar_zarr(tmp_path_factory, sar_scene):
    """The scene's level 0 as a single zarr array (the lazy pyramid is built on open)."""
    path = tmp_path_factory.mktemp("images") / "scene.zarr"
    data = np.asarray(sar_scene.pyramid().levels[0])[..., 0]
    zarr.create_array(str(path), data=data, chunks=(256, 256))
    return path


def read_csv(path: str | Path, class_names: list[str]) -> DetectionTable:
    """Read a detections CSV written by ``engine.exports.write_csv`` back into a table (a test helper)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return DetectionTable.empty()
    index = {name: i for i, name in enumerate(class_names)}
    return DetectionTable(
        np.array([float(r["y"]) for r in rows]),
        np.array([float(r["x"]) for r in rows]),
        np.array([index[r["class"]] for r in rows], dtype=np.int64),
        np.array([float(r["score"]) for r in rows]),
        np.array([float(r["size"]) for r in rows]),
    )


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests run only where CUDA is present; elsewhere they skip with the reason."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on a GPU machine: scripts/test.sh -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def assert_valid_ngff(run_dir) -> None:
    """The run directory's multiscale groups validate with ome-zarr-models (the root preview as an Image with
    its labels, the labels as ImageLabel, probabilities as Image): the library that defines OME-Zarr, not our own
    reader."""
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel

    group = zarr.open_group(str(run_dir), mode="r")
    root = Image.from_zarr(group)
    assert root.labels is not None and "segmentation" in root.labels.members
    ImageLabel.from_zarr(group["labels/segmentation"])
    if "probabilities" in group:
        Image.from_zarr(group["probabilities"])


@pytest.fixture(autouse=True)
def _every_run_directory_is_valid_ngff(request):
    """After each test that used ``tmp_path``, every run directory it left there validates as OME-Zarr."""
    root = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if root is None:
        return
    from napari_xt.engine.store import is_run_dir

    for candidate in sorted(root.rglob("*.xt.zarr")):
        if is_run_dir(candidate) and (candidate / "labels" / "segmentation" / "zarr.json").exists():
            assert_valid_ngff(candidate)
