"""Run napari with or without a screen: start Xvfb when there is no display, and save screenshots."""

from __future__ import annotations

import contextlib
import os
import shutil


@contextlib.contextmanager
def display_available(size: tuple[int, int] = (1600, 1000)):
    """Yield with a usable X display: the user's own, or a virtual one (Xvfb) started for the duration."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        yield False
        return
    if shutil.which("Xvfb") is None:
        raise RuntimeError(
            "there is no display and Xvfb is not installed: run scripts/setup.sh (it installs xvfb), "
            "or `apt-get install xvfb`"
        )
    try:
        from pyvirtualdisplay import Display
    except ImportError as error:
        raise RuntimeError(
            "there is no display: the headless demo needs PyVirtualDisplay (pip install 'napari-xt[demo]')"
        ) from error

    with Display(visible=False, size=size, color_depth=24):
        yield True
