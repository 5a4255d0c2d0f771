"""The private napari attributes napari-xt relies on still exist: this fails when a napari upgrade moves them."""

import pytest

pytestmark = pytest.mark.gui


def test_private_handles_are_found_on_a_real_viewer(make_napari_viewer):
    from qtpy.QtWidgets import QMainWindow, QWidget

    from napari_xt._napari._napari_compat import canvas_widget, main_window, refreshes_held

    viewer = make_napari_viewer()
    assert isinstance(main_window(viewer), QMainWindow)
    assert isinstance(canvas_widget(viewer), QWidget)
    points = viewer.add_points([[1, 2], [3, 4]])
    assert callable(getattr(points, "_block_refresh", None)), "napari no longer has Points._block_refresh"
    with refreshes_held(points):
        points.size = 7
    assert list(points.size) == [7, 7]


def test_handles_degrade_without_a_window():
    from napari_xt._napari._napari_compat import canvas_widget, main_window, refreshes_held

    class Bare:
        pass

    assert main_window(Bare()) is None and canvas_widget(Bare()) is None
    with refreshes_held(Bare()):
        pass
