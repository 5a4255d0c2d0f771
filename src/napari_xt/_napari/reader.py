"""npe2 reader: open any pyramid napari-xt reads as one multiscale Image layer."""

from __future__ import annotations

from napari_xt.io import ImageReadError, can_open, open_pyramid


def get_reader(path):
    """Return a reader function for ``path``, or None when napari-xt does not handle it."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, str):
        return None
    from napari_xt.engine.store import is_run_dir

    if is_run_dir(path):
        return read_run
    if not can_open(path):
        return None
    return read_image


def read_run(path):
    """A napari-xt run directory: its segmentation, detections, probabilities and ROI layers."""
    from napari_xt._napari.run_layers import run_layers

    path = path[0] if isinstance(path, list) else path
    return run_layers(path)


def read_image(path):
    """Read ``path`` into layer data; a file that cannot be read gives a notification and no layer."""
    from napari.utils.notifications import show_error

    from napari_xt._napari.layers import image_layer_data

    path = path[0] if isinstance(path, list) else path
    try:
        pyramid = open_pyramid(path)
    except ImageReadError as error:
        show_error(f"napari-xt could not open {error}")
        return [(None,)]
    return [image_layer_data(pyramid)]
