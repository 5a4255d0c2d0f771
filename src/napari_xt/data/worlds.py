"""The two demo worlds: the synthetic scenes the shipped demo checkpoints were trained on, at any size.

Their scales are chosen so that the context-dependent class needs several 128² regions at level 1 to tell.
"""

from __future__ import annotations

from napari_xt.data.synthetic import SarScene, SlideScene

DEMO_WORLDS = {
    "sar": dict(
        land_scale=6000.0,
        land_level=0.56,
        vessel_spacing=256,
        vessel_probability=0.45,
        near_shore_distance=768.0,
        clutter_probability=0.25,
    ),
    "slide": dict(
        tissue_scale=12000.0,
        tissue_level=0.40,
        nest_scale=3000.0,
        nest_level=0.60,
        margin_distance=768.0,
        cluster_spacing=256,
        cluster_probability=0.45,
    ),
}


def synthetic_scene(kind: str, size: int, seed: int):
    """The demo world's scene of ``kind`` (``sar`` or ``slide``), ``size`` pixels square."""
    if kind == "sar":
        return SarScene(height=size, width=size, seed=seed, **DEMO_WORLDS["sar"])
    if kind == "slide":
        return SlideScene(height=size, width=size, seed=seed, **DEMO_WORLDS["slide"])
    raise ValueError(f"unknown synthetic scene {kind!r} (sar or slide)")
