"""The streaming inference engine: region grids, the two-pass runner, run directories, detections, exports.

No Qt and no napari here; importing ``napari_xt.engine`` does not import torch until a run starts.
"""

from napari_xt.engine.events import Cancelled, Failed, Finished, PartialResult, Progress, Started
from napari_xt.engine.grid import GridError, RegionGrid, make_grid
from napari_xt.engine.runner import CancelToken, RunOptions, run, run_to_end
from napari_xt.engine.store import OutputExistsError, OutputStore, StoreError

__all__ = [
    "CancelToken",
    "Cancelled",
    "Failed",
    "Finished",
    "GridError",
    "OutputExistsError",
    "OutputStore",
    "PartialResult",
    "Progress",
    "RegionGrid",
    "RunOptions",
    "Started",
    "StoreError",
    "make_grid",
    "run",
    "run_to_end",
]
