"""Many images: one run directory each, skipping finished ones; locally or as dask.distributed tasks.

Each image fails alone: whatever goes wrong with one image becomes its ``ImageResult`` (``bad input`` when the
image, checkpoint or settings cannot be used, ``failed`` when the run broke), and the batch goes on. A task
analyses one whole image and writes its own run directory, so a worker that dies loses only the image it was
on (it resumes from its finished regions when the task is retried elsewhere); bad input is never retried.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BAD_INPUT, FAILED, FINISHED, SKIPPED, CANCELLED = "bad input", "failed", "finished", "skipped", "cancelled"


@dataclass
class ImageResult:
    image: str
    run_dir: str
    status: str  # finished, skipped (already finished), cancelled, failed, bad input
    message: str = ""
    n_detections: int = 0


def bad_input_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the input cannot be used (as opposed to a run that broke)."""
    from napari_xt.engine.store import OutputExistsError, StoreError

    return (ValueError, OutputExistsError, StoreError, FileNotFoundError, PermissionError, NotADirectoryError)


def run_dir_of(prepared, out_dir: str | Path, image_name: str) -> Path:
    """The run directory of a prepared run in ``out_dir`` (``identity.run_dir_for``)."""
    from napari_xt.engine.identity import run_dir_for

    spec = prepared.spec
    checkpoint = spec.get("checkpoint") or prepared.model.config.name or "model"
    return run_dir_for(
        out_dir, image_name, spec["image_key"], checkpoint, spec["level"], spec["resample"], spec["roi_scope"]
    )


def already_finished(run_dir: Path, prepared) -> bool:
    """True when ``run_dir`` holds this very run (same identity) with every region of its grid done."""
    from napari_xt.engine.grid import undone_positions
    from napari_xt.engine.identity import differences
    from napari_xt.engine.run_reader import run_attributes

    previous = run_attributes(run_dir)
    if previous.get("status") != "finished" or differences(previous, prepared.spec):
        return False
    if previous.get("exports") != prepared.options.exports.to_dict():
        return False  # the same results, exported otherwise (threshold, circles): the resumed run only exports
    import zarr

    try:
        done = np.asarray(zarr.open_group(str(run_dir), mode="r")["regions/done"][:])
    except Exception:  # unreadable flags: not finished, the run will look again
        return False
    return len(undone_positions(prepared.grid, done)) == 0


@functools.lru_cache(maxsize=2)
def _prepared_model(checkpoint: str, mtime_ns: int, size: int, device: str):
    """A checkpoint's model and sha256, loaded once per process for a whole batch."""
    from napari_xt.engine.runner import load_model, pick_device

    model, sha, _ = load_model(checkpoint, pick_device(device))
    return model, sha


def analyse_image(
    image: str, checkpoint: str, out_dir: str, options_dict: dict, on_event=None, start_up: float = 0.0
) -> ImageResult:
    """Run one image to the end (the unit of work of a batch, local or distributed); never raises for one
    image's problems, which become the result's status and message.

    ``start_up``: seconds this run waited on before the call (``napari-xt predict`` gives its first image the
    process's own start-up). With the imports and the loading of the model here (the first image of a process,
    or of a checkpoint, pays for them), it is the run's ``start_up`` stage."""
    entered = time.perf_counter()
    from napari_xt.engine.events import Cancelled, Failed, Finished
    from napari_xt.engine.runner import RunOptions, prepare, start
    from napari_xt.io import ImageReadError

    run_dir = ""
    try:
        options = RunOptions(**options_dict)
        options.validate()
        stat = os.stat(checkpoint)
        model, sha = _prepared_model(str(Path(checkpoint).resolve()), stat.st_mtime_ns, stat.st_size, options.device)
        prepared = prepare(image, model, options, weights_sha=sha, checkpoint_path=str(checkpoint))
        prepared.start_up = start_up + (time.perf_counter() - entered - prepared.seconds)
        run_dir = run_dir_of(prepared, out_dir, str(image))
        if not options.overwrite and already_finished(run_dir, prepared):
            return ImageResult(str(image), str(run_dir), SKIPPED, "already finished")
        last = None
        for event in start(prepared, run_dir):
            if on_event is not None:
                on_event(event)
            last = event
    except bad_input_errors() as error:
        return ImageResult(str(image), str(run_dir), BAD_INPUT, _one_line(error))
    except Exception as error:  # whatever broke belongs to this image alone
        return ImageResult(str(image), str(run_dir), FAILED, f"{type(error).__name__}: {_one_line(error)}")
    if isinstance(last, Finished):
        return ImageResult(str(image), str(run_dir), FINISHED, last.message, n_detections=last.n_detections)
    if isinstance(last, Cancelled):
        return ImageResult(str(image), str(run_dir), CANCELLED)
    if isinstance(last, Failed):
        status = BAD_INPUT if isinstance(last.error, ImageReadError) else FAILED
        return ImageResult(str(image), str(run_dir), status, _one_line(last.message))
    return ImageResult(str(image), str(run_dir), FAILED, "the run ended without a result")


def _one_line(error) -> str:
    return " ".join(str(error).split())


def analyse_distributed(
    images: list[str],
    checkpoint: str,
    out_dir: str,
    options_dict: dict,
    scheduler: str | None = None,
    workers: int | None = None,
    retries: int = 2,
):
    """Analyse ``images`` as dask.distributed tasks; yield ``ImageResult`` as they complete.

    Args:
        scheduler: address of a running scheduler; None starts a LocalCluster of ``workers`` processes.
        retries: how often a task whose worker died is started again elsewhere (bad input is a result, not an
            error, so it is never retried).
    """
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as error:  # pragma: no cover - the extra is part of the test set-up
        raise RuntimeError("distributed runs need dask.distributed: pip install 'napari-xt[distributed]'") from error

    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    else:
        client = Client(scheduler)
    try:
        futures = {
            client.submit(
                analyse_image,
                image,
                checkpoint,
                out_dir,
                options_dict,
                key=f"napari-xt-{i}-{Path(image).name}",
                retries=retries,
                pure=False,
            ): image
            for i, image in enumerate(images)
        }
        for future in as_completed(futures):
            try:
                yield future.result()
            except Exception as error:  # a task whose worker died on every retry
                yield ImageResult(str(futures[future]), "", FAILED, f"{type(error).__name__}: {_one_line(error)}")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
