"""Many images: one run directory each, skipping finished ones; locally or as dask.distributed tasks.

A task analyses one whole image and writes its own run directory, so a worker that dies loses only the image
it was on (and that image resumes from its finished regions when the task is retried elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from napari_xt.engine.store import is_run_dir


@dataclass
class ImageResult:
    image: str
    run_dir: str
    status: str  # finished, skipped (already finished), cancelled, failed
    message: str = ""
    n_detections: int = 0


def run_dir_for(image: str | Path, out_dir: str | Path) -> Path:
    """``OUT/<image name>.xt.zarr`` (the image's name without its extensions)."""
    name = Path(str(image).rstrip("/")).name
    for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif", ".svs"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return Path(out_dir) / f"{name}.xt.zarr"


def already_finished(run_dir: Path) -> bool:
    if not is_run_dir(run_dir):
        return False
    import zarr

    return zarr.open_group(str(run_dir), mode="r").attrs["napari_xt"].get("status") == "finished"


def analyse_image(image: str, checkpoint: str, out_dir: str, options_dict: dict, on_event=None) -> ImageResult:
    """Run one image to the end (the unit of work of a batch, local or distributed)."""
    from napari_xt.engine.events import Cancelled, Failed, Finished
    from napari_xt.engine.runner import RunOptions, run_to_end

    run_dir = run_dir_for(image, out_dir)
    if not options_dict.get("overwrite") and already_finished(run_dir):
        return ImageResult(str(image), str(run_dir), "skipped", "already finished")
    last = run_to_end(image, checkpoint, run_dir, RunOptions(**options_dict), on_event=on_event)
    if isinstance(last, Finished):
        return ImageResult(str(image), str(run_dir), "finished", n_detections=last.n_detections)
    if isinstance(last, Cancelled):
        return ImageResult(str(image), str(run_dir), "cancelled")
    message = last.message if isinstance(last, Failed) else "no result"
    return ImageResult(str(image), str(run_dir), "failed", message)


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
        retries: how often a task whose worker died is started again elsewhere.
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
        futures = [
            client.submit(
                analyse_image,
                image,
                checkpoint,
                out_dir,
                options_dict,
                key=f"napari-xt-{i}-{Path(image).name}",
                retries=retries,
                pure=False,
            )
            for i, image in enumerate(images)
        ]
        for future in as_completed(futures):
            try:
                yield future.result()
            except Exception as error:  # a task that failed on every retry
                yield ImageResult(str(images[futures.index(future)]), "", "failed", f"{type(error).__name__}: {error}")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
