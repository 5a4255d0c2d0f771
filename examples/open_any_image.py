"""Open any supported image lazily and print what napari-xt sees; read one region at a chosen level.

    .venv/bin/python examples/open_any_image.py PATH [LEVEL]

Without PATH it uses the synthetic SAR scene.
"""

import sys

import numpy as np

from napari_xt.data.synthetic import SarScene
from napari_xt.io import ImageReadError, open_pyramid

if __name__ == "__main__":
    try:
        pyramid = open_pyramid(sys.argv[1]) if len(sys.argv) > 1 else SarScene().pyramid()
    except ImageReadError as error:
        sys.exit(f"cannot open: {error}")
    print(pyramid.describe())
    level = int(sys.argv[2]) if len(sys.argv) > 2 else len(pyramid.levels) - 1
    region = np.asarray(pyramid.levels[level][:512, :512])
    print(f"level {level} region {region.shape} {region.dtype}: min {np.nanmin(region):g}, max {np.nanmax(region):g}")
