"""Engine fixtures: a tiny SAR model and checkpoint, small synthetic scenes saved as real files."""

import numpy as np
import pytest
import torch
import zarr

from napari_xt.data.synthetic import SarScene
from napari_xt.model import create_model, save_checkpoint


def tiny_sar_model(kind: str = "xl", seed: int = 0):
    torch.manual_seed(seed)
    model = create_model(
        f"test_tiny_{kind}", in_channels=1, mean=[0.1], std=[0.15], context_encoder={"window": 8, "memory": 8}
    )
    return model.eval()


@pytest.fixture(scope="session")
def sar_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny_sar_xl.safetensors"
    save_checkpoint(tiny_sar_model("xl"), path, provenance={"purpose": "tests"})
    return path


@pytest.fixture(scope="session")
def sar_scene():
    return SarScene(height=1280, width=1152, seed=1, land_scale=1500.0, vessel_spacing=160, near_shore_distance=200.0)


@pytest.fixture(scope="session")
def sar_zarr(tmp_path_factory, sar_scene):
    """The scene's level 0 as a single zarr array (the lazy pyramid is built on open)."""
    path = tmp_path_factory.mktemp("images") / "scene.zarr"
    data = np.asarray(sar_scene.pyramid().levels[0])[..., 0]
    zarr.create_array(str(path), data=data, chunks=(256, 256))
    return path
