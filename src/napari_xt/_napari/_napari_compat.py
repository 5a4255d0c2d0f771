"""The few places where napari-xt reaches past napari's public API, kept in one module.

Written for napari 0.5 – 0.9 (tested with 0.9.2). Each function degrades to a harmless default when the
private attribute is gone; ``tests/_napari/test_napari_compat.py`` fails when one of them stops finding what it
looks for, so a napari upgrade that moves them is noticed at once.
"""

from __future__ import annotations

import contextlib


def main_window(viewer):
    """The viewer's Qt main window (``viewer.window._qt_window``), or None (a viewer without a window).

    Used to resize the demo window and to stop a run when the window is destroyed; napari has no public handle.
    """
    return getattr(getattr(viewer, "window", None), "_qt_window", None)


def canvas_widget(viewer):
    """The Qt widget napari draws the layers in (``viewer.window._qt_viewer.canvas.native``), or None.

    Used to hold the canvas's repaints while a live refresh updates several layers, so that they repaint once.
    """
    qt_viewer = getattr(getattr(viewer, "window", None), "_qt_viewer", None)
    return getattr(getattr(qt_viewer, "canvas", None), "native", None)


def refreshes_held(layer):
    """A context in which a layer's setters do not refresh it (``layer._block_refresh``); a no-op without it.

    Used to replace all properties of a Points layer and refresh it once instead of once per setter.
    """
    hold = getattr(layer, "_block_refresh", None)
    return hold() if callable(hold) else contextlib.nullcontext()
