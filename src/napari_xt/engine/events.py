"""Events the engine yields while it runs: plain dataclasses, no Qt."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Started:
    run_dir: str | None
    n_regions: int
    n_active: int
    n_done: int
    description: str


@dataclass
class Progress:
    """``phase`` is ``encode`` (pass 1, context tokens), ``context`` or ``predict`` (pass 2, outputs).

    ``done`` counts regions finished in this phase so far, ``done_before`` of them were finished before it
    started (cached tokens, or an earlier run being resumed); ``seconds`` since the phase started.
    """

    phase: str
    done: int
    total: int
    seconds: float
    done_before: int = 0

    @property
    def rate(self) -> float:
        return (self.done - self.done_before) / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate > 0 else None


@dataclass
class PartialResult:
    """Regions just written: their level-0 boxes ``(N, 4)`` as ``(y0, x0, y1, x1)`` and their detections
    (a ``DetectionTable`` in level-0 pixels, before the cross-border merge done at the end)."""

    boxes: np.ndarray
    detections: object = None


@dataclass
class Finished:
    """The run is complete; ``message`` says when there was nothing to analyse."""

    run_dir: str | None
    n_detections: int
    seconds: float
    timings: dict = field(default_factory=dict)
    message: str = ""


@dataclass
class Cancelled:
    run_dir: str | None
    n_done: int


@dataclass
class Failed:
    run_dir: str | None
    message: str
    error: BaseException | None = None
