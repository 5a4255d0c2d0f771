"""The overlays of the shipped checkpoints are plain to see: every class changes the canvas by ΔE ≥ 20 over the
H&E and SAR pixels it may lie on, classes differ from each other as much, detection rings stand out from
everything under them, and napari's canvas shows exactly that (screenshots under Xvfb)."""

import functools

import numpy as np
import pytest

from napari_xt._napari.checkpoints import SHIPPED
from napari_xt._napari.run_layers import SEGMENTATION_OPACITY, label_colormap
from napari_xt.data.worlds import synthetic_scene
from napari_xt.engine.exports import hex_to_rgba
from napari_xt.io.display import contrast_limits, delta_e, overlay_contrast
from napari_xt.model import read_checkpoint_info

MIN_AREA_CONTRAST = 20.0
"""ΔE*ab a segmentation class makes at the layer's opacity, and between two classes: plain at a glance."""
MIN_RING_CONTRAST = 30.0
"""ΔE*ab between a detection ring and whatever lies under it (image or another class's overlay)."""
HE_STAINS = {"glass": (242, 240, 244), "eosin": (235, 150, 190), "haematoxylin": (100, 70, 150), "blood": (200, 40, 60)}
"""Colours of real H&E slides besides the demo's own: glass, eosin-rich stroma, nuclei, red cells."""
SAR_GREYS = {"black": (0, 0, 0), "mid grey": (128, 128, 128), "white": (255, 255, 255)}
"""A SAR scene's display runs through the whole grey ramp (dark sea, land, bright targets)."""
SHIPPED_NAMES = sorted(p.stem for p in SHIPPED.glob("*.safetensors"))


@functools.lru_cache(maxsize=2)
def demo_backgrounds(kind: str) -> dict[str, tuple]:
    """The median display colour of each ground-truth class of the demo world, as napari shows the image."""
    world = synthetic_scene(kind, 8192, 7)
    pyramid = world.pyramid()
    image = np.asarray(pyramid.levels[1][:2048, :2048], dtype=np.float64)
    truth = np.asarray(world.labels(1)[:2048, :2048])
    if kind == "sar":
        low, high = contrast_limits(pyramid)
        image = np.repeat(np.clip((image[..., :1] - low) / (high - low), 0, 1) * 255, 3, axis=-1)
    found = {}
    for value in np.unique(truth):
        pixels = image[truth == value].reshape(-1, 3)
        pixels = pixels[np.isfinite(pixels).all(axis=1)]
        if len(pixels):
            found[f"demo {world.label_classes[value]}"] = tuple(np.median(pixels, axis=0))
    return found


def _rgb(colour: str) -> np.ndarray:
    return np.asarray(hex_to_rgba(colour)[:3], float)


def _drawn(heads, names) -> dict[str, np.ndarray]:
    """Classes with a visible colour (background is left transparent on purpose)."""
    return {n: _rgb(heads.colours[n]) for n in names if hex_to_rgba(heads.colours.get(n, "#808080"))[3] > 0}


@pytest.mark.parametrize("name", SHIPPED_NAMES)
def test_every_class_of_a_shipped_checkpoint_is_visible_and_tells_apart(name):
    heads = read_checkpoint_info(SHIPPED / f"{name}.safetensors", with_hash=False).config.heads
    kind = "slide" if name.startswith("slide") else "sar"
    backgrounds = {**demo_backgrounds(kind), **(HE_STAINS if kind == "slide" else SAR_GREYS)}
    areas = _drawn(heads, heads.segmentation_classes)
    assert set(areas) == set(heads.segmentation_classes) - {"background"}
    problems = []
    for where, background in backgrounds.items():
        background = np.asarray(background, float)
        blended = {n: SEGMENTATION_OPACITY * c + (1 - SEGMENTATION_OPACITY) * background for n, c in areas.items()}
        for n, colour in areas.items():
            if overlay_contrast(colour, SEGMENTATION_OPACITY, background) < MIN_AREA_CONTRAST:
                problems.append(f"{n} over {where}: ΔE {float(overlay_contrast(colour, 0.5, background)):.1f}")
        for i, a in enumerate(blended):
            for b in list(blended)[i + 1 :]:
                if delta_e(blended[a], blended[b]) < MIN_AREA_CONTRAST:
                    problems.append(f"{a} vs {b} over {where}: ΔE {float(delta_e(blended[a], blended[b])):.1f}")
        for n, ring in _drawn(heads, heads.detection_classes).items():
            under = {where: background, **{f"{o} over {where}": c for o, c in blended.items() if o != n}}
            for what, colour in under.items():
                if delta_e(ring, colour) < MIN_RING_CONTRAST:
                    problems.append(f"{n} ring on {what}: ΔE {float(delta_e(ring, colour)):.1f}")
    assert not problems, problems


def test_the_canvas_shows_each_class_as_the_blend_predicts(make_napari_viewer):
    """Stripes of every H&E background under stripes of every slide class: the ΔE between screenshots with and
    without the segmentation layer, over each class × background cell, is the predicted one and ≥ 20."""
    heads = read_checkpoint_info(SHIPPED / "slide_xl.safetensors", with_hash=False).config.heads
    classes = heads.segmentation_classes
    backgrounds = {}
    for where, colour in {**demo_backgrounds("slide"), **HE_STAINS}.items():  # one stripe per distinct colour
        if all(delta_e(colour, other) > 6 for other in backgrounds.values()):
            backgrounds[where] = tuple(np.round(colour))
    cell = 48
    image = np.zeros((cell * len(classes), cell * len(backgrounds), 3), np.uint8)
    for j, colour in enumerate(backgrounds.values()):
        image[:, j * cell : (j + 1) * cell] = np.round(colour)
    labels = np.repeat(np.arange(len(classes), dtype=np.uint8), cell)[:, None].repeat(image.shape[1], axis=1)
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1100, 900)
    shown = viewer.add_image(image, rgb=True, interpolation2d="nearest")
    layer = viewer.add_labels(labels, colormap=label_colormap(classes, heads.colours), opacity=SEGMENTATION_OPACITY)
    viewer.reset_view()
    layer.visible = False
    plain = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
    layer.visible = True
    overlaid = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
    shown.visible, layer.opacity = False, 1.0
    classes_only = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
    # which class and which background each canvas pixel shows, by the nearest colour
    drawn = _drawn(heads, classes)
    class_of = np.argmin([delta_e(classes_only, c) for c in drawn.values()], axis=0)
    class_ok = np.min([delta_e(classes_only, c) for c in drawn.values()], axis=0) < 3
    background_colours = [np.asarray(c, float) for c in backgrounds.values()]
    distances = np.array([delta_e(plain, c) for c in background_colours])
    background_of, background_ok = np.argmin(distances, axis=0), np.min(distances, axis=0) < 3
    change = delta_e(plain, overlaid)
    measured = 0
    for i, (name, colour) in enumerate(drawn.items()):
        for j, (where, background) in enumerate(backgrounds.items()):
            cell_pixels = class_ok & background_ok & (class_of == i) & (background_of == j)
            if cell_pixels.sum() < 50:
                continue
            got = float(np.median(change[cell_pixels]))
            expected = float(overlay_contrast(colour, SEGMENTATION_OPACITY, background))
            assert got >= MIN_AREA_CONTRAST, f"{name} over {where}: ΔE {got:.1f} on the canvas"
            assert got == pytest.approx(expected, abs=3.0), f"{name} over {where}"
            measured += 1
    assert measured == len(drawn) * len(backgrounds)  # every cell was found on the canvas
