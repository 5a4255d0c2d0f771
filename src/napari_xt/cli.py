"""The ``napari-xt`` command: ``info``, ``demo`` (more subcommands join as the engine lands).

Exit codes: 0 done, 2 bad input (with a one-line reason), 130 cancelled.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 2, 130


def _info(args: argparse.Namespace) -> int:
    from napari_xt.io import ImageReadError, open_pyramid

    status = EXIT_OK
    for image in args.images:
        try:
            print(open_pyramid(image).describe())
        except ImageReadError as error:
            print(f"napari-xt: {error}", file=sys.stderr)
            status = EXIT_BAD_INPUT
        print()
    return status


def _parse_roi(text: str | None):
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"--roi takes y0,x0,y1,x1 in level-0 pixels, not {text!r}")
    return values


class ProgressLine:
    """A one-line progress display on stderr: phase, regions done/total, rate and ETA."""

    def __init__(self, name: str):
        self.name = name
        self.last = 0.0

    def __call__(self, event) -> None:
        import time

        from napari_xt.engine.events import Progress, Started

        if isinstance(event, Started):
            print(f"{self.name}: {event.description}; {event.n_done} already done", file=sys.stderr)
        elif isinstance(event, Progress):
            now = time.monotonic()
            if now - self.last < 0.5 and event.done < event.total:
                return
            self.last = now
            eta = f"{event.eta:6.0f} s" if event.eta is not None else "     ?"
            line = f"  {event.phase:<8} {event.done:>7}/{event.total:<7} {event.rate:7.1f} regions/s  ETA {eta}"
            print("\r" + line, end="\n" if event.done >= event.total else "", file=sys.stderr, flush=True)


def _predict(args: argparse.Namespace) -> int:
    from napari_xt.engine.batch import analyse_distributed, analyse_image
    from napari_xt.engine.grid import GridError
    from napari_xt.engine.store import OutputExistsError, StoreError
    from napari_xt.io import ImageReadError
    from napari_xt.model import CheckpointError

    try:
        roi = _parse_roi(args.roi)
    except argparse.ArgumentTypeError as error:
        print(f"napari-xt: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    options = {
        "level": args.level,
        "pixel_size": args.pixel_size,
        "roi": roi,
        "device": args.device,
        "batch_size": args.batch_size,
        "overwrite": args.overwrite,
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.scheduler or args.workers:
        results = analyse_distributed(args.images, args.checkpoint, args.out, options, args.scheduler, args.workers)
    else:
        results = (_predict_one(image, args, options, analyse_image) for image in args.images)
    status = EXIT_OK
    bad_input = (ImageReadError, CheckpointError, GridError, OutputExistsError, StoreError, FileNotFoundError)
    try:
        for result in results:
            if isinstance(result, BaseException):
                if not isinstance(result, bad_input):
                    raise result
                print(f"napari-xt: {result}", file=sys.stderr)
                status = EXIT_BAD_INPUT
                continue
            print(f"{result.image}: {result.status} {result.message} -> {result.run_dir}".rstrip(), file=sys.stderr)
            if result.status == "failed":
                status = 1
            elif result.status == "cancelled":
                return EXIT_CANCELLED
    except KeyboardInterrupt:
        print("napari-xt: cancelled; finished regions are kept, run the same command to resume", file=sys.stderr)
        return EXIT_CANCELLED
    return status


def _predict_one(image, args, options, analyse_image):
    try:
        return analyse_image(image, args.checkpoint, args.out, options, on_event=ProgressLine(str(image)))
    except (ValueError, OSError) as error:  # bad input: reported per image, the batch goes on
        return error


def _demo(args: argparse.Namespace) -> int:
    from napari_xt._napari.demo import run_demo

    screenshot = Path(args.screenshot) if args.screenshot else None
    return run_demo(scene=args.scene, screenshot=screenshot)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-xt", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="print levels, shapes, chunks, dtype and pixel size of images")
    info.add_argument("images", nargs="+", help="OME-Zarr / zarr directories or TIFF-family files")
    info.set_defaults(run=_info)

    predict = commands.add_parser("predict", help="run xT over whole images (or an ROI) into run directories")
    predict.add_argument("images", nargs="+", help="images to analyse (each gets OUT/<name>.xt.zarr)")
    predict.add_argument("--checkpoint", required=True, help="a napari-xt .safetensors checkpoint")
    predict.add_argument("--out", required=True, help="folder for the run directories")
    where = predict.add_mutually_exclusive_group()
    where.add_argument("--level", type=int, help="pyramid level to analyse")
    where.add_argument("--pixel-size", type=float, help="target pixel size, in the image's unit (µm, m)")
    predict.add_argument("--roi", help="y0,x0,y1,x1 in level-0 pixels (default: the whole image)")
    predict.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, …")
    predict.add_argument("--batch-size", type=int, help="regions per batch (default: from free memory)")
    predict.add_argument("--overwrite", action="store_true", help="replace existing run directories")
    predict.add_argument("--scheduler", help="address of a dask.distributed scheduler: one task per image")
    predict.add_argument("--workers", type=int, help="start a local dask.distributed cluster of N processes")
    predict.set_defaults(run=_predict)

    demo = commands.add_parser(
        "demo", help="open a synthetic gigapixel scene in napari (headless under Xvfb when there is no display)"
    )
    demo.add_argument("--scene", choices=("slide", "sar"), default="slide")
    demo.add_argument("--screenshot", help="save a screenshot PNG here and exit (the default when there is no display)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("napari-xt: cancelled", file=sys.stderr)
        return EXIT_CANCELLED


if __name__ == "__main__":
    sys.exit(main())
