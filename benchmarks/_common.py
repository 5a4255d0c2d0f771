"""Shared helpers for benchmark scripts: machine description and JSON output."""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import psutil

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def write_results(name: str, results: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **results}, indent=2))
    print(f"wrote {path}")
    return path


def in_fresh_process(target, *args):
    """Run ``target(*args, queue)`` in a new (spawned) process and return what it put on the queue, so that
    peak memory and warm-up are the measurement's own."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main_thread_ticks(interval_ms: int = 10):
    """Start a QTimer on the main thread that records ``time.perf_counter()`` every ``interval_ms``; returns
    ``(ticks, timer)``: the gaps between ticks are how long the interface could not answer."""
    import time

    from qtpy.QtCore import QTimer

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(interval_ms)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    return ticks, timer
