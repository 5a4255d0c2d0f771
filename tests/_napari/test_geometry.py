"""The widget's geometry in numbers, without Qt: the view, a drawn rectangle and clipping as level-0 boxes."""

import pytest

from napari_xt._napari.geometry import clip_box, rectangle_box, view_box


def test_the_view_in_level0_pixels_of_a_scaled_shifted_layer():
    # 800 × 600 screen pixels at 2 screen px per µm around (100 µm, 200 µm), over a layer at 0.5 µm shifted by
    # (10, 20) µm: 300 × 400 µm in view = 600 × 800 level-0 px
    box = view_box((100.0, 200.0), (600, 800), 2.0, (0.5, 0.5), (10.0, 20.0))
    assert box == pytest.approx(((100 - 150 - 10) / 0.5, (200 - 200 - 20) / 0.5, (100 + 150 - 10) / 0.5, 760.0))
    assert box[2] - box[0] == pytest.approx(600) and box[3] - box[1] == pytest.approx(800)


def test_a_rectangle_and_clipping():
    assert rectangle_box([[5.0, 10.0], [5.0, 60.0], [25.0, 60.0], [25.0, 10.0]], (0.5, 0.5), (0.0, 10.0)) == (
        10.0,
        0.0,
        50.0,
        100.0,
    )
    assert clip_box((-30.0, 5.0, 120.0, 900.0), (100, 800)) == (0.0, 5.0, 100.0, 800.0)
