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
