"""napari-xt: xT (nested tokenization for large images) in napari and on the command line.

Importing this package is cheap: it imports neither torch nor Qt. The compute core lives in
``napari_xt.io``, ``napari_xt.model`` and ``napari_xt.engine``; the napari layer in ``napari_xt._napari``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
