"""The streaming inference engine: region grids, the two-pass runner, run directories, detections, exports.

No Qt and no napari here; importing ``napari_xt.engine`` does not import torch until a run starts.
"""

from napari_xt.engine.events import Cancelled, Failed, Finished, PartialResult, Progress, Started
from napari_xt.engine.grid import GridError, RegionGrid, make_grid
from napari_xt.engine.run_reader import RunReader
from napari_xt.engine.runner import CancelToken, DeviceError, RunOptions, prepare, run, run_to_end, start
from napari_xt.engine.store import OutputExistsError, OutputStore, RunInUseError, StoreError

__all__ = [
    "CancelToken",
    "Cancelled",
    "DeviceError",
    "Failed",
    "Finished",
    "GridError",
    "OutputExistsError",
    "OutputStore",
    "PartialResult",
    "Progress",
    "RegionGrid",
    "RunInUseError",
    "RunOptions",
    "RunReader",
    "Started",
    "StoreError",
    "make_grid",
    "prepare",
    "run",
    "run_to_end",
    "start",
]
