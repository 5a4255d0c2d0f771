"""The napari-xt command: info, predict, train, eval, style and demo.

Exit codes: 0 done, 1 an image failed while running, 2 bad input (one line per problem), 130 cancelled,
143 terminated (SIGTERM); finished regions are kept in the last two cases.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

_LOADED = time.time()  # when the command line was loaded: the earliest moment it knows of itself

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_TERMINATED = 0, 1, 2, 130, 143


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
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"--roi takes four finite numbers y0,x0,y1,x1 in level-0 pixels, not {text!r}")
    return values


def _check_out(out: str) -> Path:
    """The output folder, created if needed; refuses a file or a folder that cannot be written."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out}: is a file; give a folder for the run directories")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(
            f"--out {out}: cannot be created ({error.strerror or error}); choose another folder"
        ) from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: cannot be written (permission denied); choose another folder")
    return path


def _predict_options(args: argparse.Namespace) -> dict:
    """Run options from the arguments, every number checked (``ValueError`` with a one-line reason)."""
    from napari_xt.engine.runner import RunOptions, pick_device

    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, not {args.batch_size}")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1, not {args.workers}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, not {args.threads}")
    if args.level is not None and args.level < 0:
        raise ValueError(f"--level must be 0 or more, not {args.level}")
    if args.pixel_size is not None and not (math.isfinite(args.pixel_size) and args.pixel_size > 0):
        raise ValueError(f"--pixel-size must be a positive number, not {args.pixel_size}")
    if not (math.isfinite(args.threshold) and 0 <= args.threshold <= 1):
        raise ValueError(f"--threshold must be a score from 0 to 1, not {args.threshold}")
    options = {
        "level": args.level,
        "pixel_size": args.pixel_size,
        "roi": _parse_roi(args.roi),
        "device": args.device,
        "batch_size": args.batch_size,
        "overwrite": args.overwrite,
        "save_probabilities": args.probabilities,
        "export_threshold": args.threshold,
        "export_circles": args.circles,
        "export_polygons": args.polygons,
        "store_threshold": min(0.1, args.threshold),
    }
    if args.no_cache:
        options["cache_dir"] = ""
    elif args.cache:
        options["cache_dir"] = args.cache
    RunOptions(**options).validate()
    pick_device(args.device)
    if not Path(args.checkpoint).is_file():
        raise ValueError(f"--checkpoint {args.checkpoint}: no such file")
    return options


class ProgressReport:
    """Progress of one image on stderr: a tqdm bar per phase on a terminal; plain lines (every 10% and at
    least every 30 s) when stderr is redirected to a log; nothing with ``quiet``."""

    def __init__(self, name: str, quiet: bool = False, stream=None):
        self.name = name
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar = None
        self._phase = None
        self._last_step, self._last_time = -1, 0.0

    def __call__(self, event) -> None:
        from napari_xt.engine.events import Progress, Started

        if self.quiet:
            return
        if isinstance(event, Started):
            print(f"{self.name}: {event.description}; {event.n_done} already done", file=self.stream, flush=True)
            return
        if not isinstance(event, Progress):
            return
        if self.terminal:
            self._bar_update(event)
            return
        now = time.monotonic()
        step = int(10 * event.done / max(event.total, 1))
        finished = event.done >= event.total
        if event.phase != self._phase:
            self._phase, self._last_step = event.phase, -1
        if finished or step > self._last_step or now - self._last_time >= 30:
            self._last_step, self._last_time = step, now
            eta = f", ETA {event.eta:.0f} s" if event.eta is not None and not finished else ""
            print(
                f"{self.name}: {event.phase} {event.done}/{event.total} regions, {event.rate:.1f}/s{eta}",
                file=self.stream,
                flush=True,
            )

    def _bar_update(self, event) -> None:
        from tqdm import tqdm

        if self._bar is None or event.phase != self._phase:
            self.close()
            self._phase = event.phase
            self._bar = tqdm(
                total=event.total, desc=f"{Path(self.name).name} {event.phase}", unit="region", file=self.stream
            )
        self._bar.update(event.done - self._bar.n)
        if event.done >= event.total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _run_summary(result) -> dict | None:
    """The run's ``summary.json``, when it has one."""
    summary = Path(result.run_dir) / "summary.json" if result.run_dir else None
    return json.loads(summary.read_text()) if summary is not None and summary.is_file() else None


def _batch_row(result, summary: dict | None) -> dict:
    """One row of the batch summary: the image's status, and its run's summary when it has one."""
    from napari_xt.engine.summary import summary_row

    row = {"image": result.image, "status": result.status, "message": result.message, "run_dir": result.run_dir}
    if summary is not None:
        row.update(summary_row(summary))
        row["image"] = result.image
    return row


def _json_record(result, data: dict | None) -> dict:
    """What ``--json`` prints for an image: its status, run directory, counts, areas and timings."""
    record = {"image": result.image, "status": result.status, "message": result.message, "run_dir": result.run_dir}
    run_dir = Path(result.run_dir) if result.run_dir else None
    if data is not None:
        record["detections"] = {name: entry["count"] for name, entry in data.get("detections", {}).items()}
        record["areas"] = {name: entry["area"] for name, entry in data.get("classes", {}).items()}
        record["area_unit"] = data.get("area_unit")
        record["regions_analysed"] = data.get("regions_analysed")
    if run_dir is not None and (run_dir / "zarr.json").is_file():
        from napari_xt.engine.run_reader import run_attributes

        attrs = run_attributes(run_dir)
        record["timings"] = attrs.get("timings")
        record["exports"] = attrs.get("export_files")
    return record


def _write_batch_summary(out: Path, rows: list[dict]) -> None:
    from napari_xt._atomic import write_text_atomic
    from napari_xt.engine.summary import csv_text

    write_text_atomic(out / "summary.csv", csv_text(rows), newline="")


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C: the run stops after unwinding, keeping what finished."""


def _raise_terminated(signum, frame):
    raise Terminated()


DEFAULT_FILE_TYPES = "svs,ndpi,ome.tif,ome.tiff,tif,tiff,ome.zarr,zarr"


def expand_inputs(items: list[str], file_types: str = DEFAULT_FILE_TYPES) -> list[str]:
    """Images from the command line: paths as given, glob patterns (``slides/**/*.svs``) expanded, and folders
    that are not zarr stores replaced by the images they hold (those whose name ends in one of
    ``file_types``; run directories ``*.xt.zarr`` never). ``ValueError`` names what matched nothing."""
    import glob

    suffixes = tuple("." + kind.strip().lower().lstrip(".") for kind in file_types.split(",") if kind.strip())
    images: list[str] = []
    for item in items:
        if any(char in item for char in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise ValueError(f"{item}: the pattern matches no file")
            images += [m for m in matches if not m.endswith(".xt.zarr")]
            continue
        path = Path(item)
        if path.is_dir() and not _is_zarr_store(path):
            found = sorted(
                str(child)
                for child in path.iterdir()
                if child.name.lower().endswith(suffixes) and not child.name.endswith(".xt.zarr")
            )
            if not found:
                raise ValueError(f"{item}: a folder with no image of the types {', '.join(suffixes)} (--file-types)")
            images += found
            continue
        images.append(item)
    return list(dict.fromkeys(images))


def _is_zarr_store(path: Path) -> bool:
    return any((path / name).exists() for name in ("zarr.json", ".zgroup", ".zarray"))


def _predict(args: argparse.Namespace) -> int:
    from napari_xt.engine.batch import BAD_INPUT, CANCELLED, FAILED, analyse_distributed

    try:
        if not args.checkpoint or not args.out:
            raise ValueError("--checkpoint and --out are required (on the command line or in --config)")
        args.images = expand_inputs(args.images, args.file_types)
        if not args.images:
            raise ValueError("no images given (on the command line or as 'images' in --config)")
        options = _predict_options(args)
        _check_out(args.out)
    except ValueError as error:
        print(f"napari-xt: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.scheduler or args.workers:
        results = analyse_distributed(args.images, args.checkpoint, args.out, options, args.scheduler, args.workers)
    else:
        results = _analysed_here(args, options)
    statuses = set()
    rows: list[dict] = []
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        for result in results:
            statuses.add(result.status)
            summary = _run_summary(result)
            rows.append(_batch_row(result, summary))
            _write_batch_summary(Path(args.out), rows)
            where = f" -> {result.run_dir}" if result.run_dir and result.status != BAD_INPUT else ""
            if not args.quiet or result.status in (BAD_INPUT, FAILED):
                print(f"{result.image}: {result.status} {result.message}".rstrip() + where, file=sys.stderr)
            if args.json:
                print(json.dumps(_json_record(result, summary)), flush=True)
            if result.status == CANCELLED:
                return EXIT_CANCELLED
    except Terminated:
        print("napari-xt: terminated; finished regions are kept, run the same command to resume", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("napari-xt: cancelled; finished regions are kept, run the same command to resume", file=sys.stderr)
        return EXIT_CANCELLED
    finally:
        signal.signal(signal.SIGTERM, previous)
    if BAD_INPUT in statuses:
        return EXIT_BAD_INPUT
    return EXIT_FAILED if FAILED in statuses else EXIT_OK


def _analysed_here(args: argparse.Namespace, options: dict):
    """The images' results, analysed in this process one after the other; the first image's run counts the
    process's start-up (``process_age``) in its ``start_up`` stage."""
    from napari_xt.engine.batch import analyse_image

    waited = process_age()
    for image in args.images:
        report = ProgressReport(str(image), args.quiet)
        yield analyse_image(image, args.checkpoint, args.out, options, on_event=report, start_up=waited)
        waited = 0.0


def process_age() -> float:
    """Seconds since this process was started (the interpreter, the imports so far). Where the system's start
    time of the process is not plausible (after this module was loaded, or over ten minutes before: the clocks
    of some containers disagree), the seconds since this module was loaded."""
    global _STARTED
    if _STARTED is None:  # found once: the kernel's clocks tick in 10 ms, and later ages must keep growing
        now = time.time()
        loaded_age = now - _LOADED
        age = _age_since_boot()
        if age is None:
            import psutil

            try:
                age = now - psutil.Process().create_time()
            except (psutil.Error, OSError):
                age = loaded_age
        if not loaded_age <= age <= loaded_age + 600.0:
            age = loaded_age
        _STARTED = now - age
    return max(0.0, time.time() - _STARTED)


_STARTED: float | None = None  # when this process started, on the wall clock (``process_age``)


def _age_since_boot() -> float | None:
    """On Linux, this process's age from the kernel's clocks since boot: its start in clock ticks
    (``/proc/self/stat``) against ``/proc/uptime``. psutil's start time adds the boot time, which the kernel
    gives in whole seconds: the age came out up to a second too long (0.97 s on one VM, where a run's stages
    then summed to more than its process's wall time). None elsewhere."""
    try:
        stat = Path("/proc/self/stat").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        ticks = int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22, starttime; the name may hold spaces
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _sources(args, level: int, seed_offset: int = 0, known=None):
    from napari_xt.train.data import file_source, synthetic_source

    if args.data.startswith("synthetic:"):
        kind = args.data.split(":", 1)[1]
        return [
            synthetic_source(kind, args.scene_size, args.scene_seed + seed_offset + i, level)
            for i in range(args.scenes)
        ]
    if not args.image:
        raise ValueError("--data files needs --image (and --labels and/or --points)")
    classes = args.classes.split(",") if args.classes else []
    labels = args.labels or [None] * len(args.image)
    points = args.points or [None] * len(args.image)
    annotations = args.annotations or [None] * len(args.image)
    if any(len(given) != len(args.image) for given in (labels, points, annotations)):
        raise ValueError("give one --labels, --annotations and/or --points per --image, in the same order")
    names = _label_names(args.label_names)
    return [
        file_source(image, level, lbl, pts, classes, names, ann, known)
        for image, lbl, pts, ann in zip(args.image, labels, points, annotations)
    ]


def _label_names(text: str | None) -> list[str] | None:
    """Segmentation class names: a file with one name per line (line i names label value i), or a comma list."""
    if not text:
        return None
    path = Path(text)
    lines = path.read_text().splitlines() if path.is_file() else text.split(",")
    return [line.strip() for line in lines if line.strip()]


def _train(args: argparse.Namespace) -> int:
    import shlex

    from napari_xt.model import preset_config
    from napari_xt.train.trainer import TrainSettings, finish_checkpoint, model_for_data, train

    init_config, known = None, None
    if args.init and _is_official_xt(args.init):
        out = Path(args.init).with_suffix(".safetensors").name
        print(
            f"napari-xt: {args.init} is an official xT checkpoint; convert it once, then fine-tune from the "
            f"result:\n  napari-xt convert {shlex.quote(args.init)} --out {out}\n  napari-xt train --init {out} …",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    if args.init and _is_backbone_file(args.init):  # a timm weight file: the region encoder of a new model
        if args.backbone_weights:
            print("napari-xt: give the backbone weights once (--init or --backbone-weights)", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"napari-xt: {args.init} is backbone weights: they initialise the region encoder", file=sys.stderr)
        args.backbone_weights, args.init = args.init, None
    if args.init:  # checked before any image is read; annotations keep the classes of the model, in its order
        from napari_xt.model import CheckpointError, read_checkpoint_info

        try:
            if args.backbone or args.backbone_weights:
                raise ValueError("--init brings its own region encoder; leave out --backbone/--backbone-weights")
            if args.region_size:
                raise ValueError("--region-size cannot change with --init: the checkpoint's regions are its own")
            init_config = read_checkpoint_info(args.init).config
        except (ValueError, CheckpointError, OSError) as error:
            print(f"napari-xt: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        known = (list(init_config.heads.segmentation_classes), list(init_config.heads.detection_classes))
    try:
        sources = [source.materialise() for source in _sources(args, args.level, known=known)]
        held_out_files = []
        if args.held_out:
            if args.data.startswith("synthetic:") or args.held_out >= len(sources):
                raise ValueError("--held-out N keeps the last N of several --image for evaluation (files only)")
            sources, held_out_files = sources[: -args.held_out], sources[-args.held_out :]
    except (ValueError, OSError, ImportError) as error:  # ImportError: the geo extra, for vector files
        print(f"napari-xt: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    overrides = {"context_encoder": {"kind": args.context, "grad_ratio": args.grad_ratio}}
    if args.region_size:
        overrides["region_size"] = args.region_size
        overrides["region_encoder"] = {"input_size": args.region_size}
    if args.backbone:
        overrides.setdefault("region_encoder", {})["name"] = args.backbone
        overrides["region_encoder"]["kwargs"] = {}
    if args.backbone_weights:
        overrides.setdefault("region_encoder", {})["weights"] = args.backbone_weights
    if init_config is not None:  # the checkpoint's architecture; its classes are replaced by the data's
        config = init_config
        config.region_encoder.weights = None
        config.context_encoder.grad_ratio = args.grad_ratio
    else:
        config = preset_config(args.preset, **overrides)
        config.name = args.preset
    import torch

    from napari_xt.model.region_encoder import WeightsError

    torch.manual_seed(args.seed)
    try:
        model, told = model_for_data(config, sources, Path(args.out).stem, args.init, args.freeze)
    except (ValueError, WeightsError) as error:
        print(f"napari-xt: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for line in told:
        print(f"napari-xt: {line}", file=sys.stderr)
    settings = TrainSettings(
        steps=args.steps,
        crop_regions=args.crop_regions,
        batch=args.batch,
        seed=args.seed,
        lr=args.lr or (2e-4 if args.init else 2e-3),
        max_seconds=args.max_minutes * 60 if args.max_minutes else None,
        command="napari-xt " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )

    def log(entry):
        parts = " ".join(f"{k} {v}" for k, v in entry.items() if k not in ("step", "seconds", "lr"))
        print(f"step {entry['step']:>5}  {entry['seconds']:>7.1f} s  {parts}", file=sys.stderr)

    provenance = train(model, sources, args.out, settings, resume=not args.restart, on_log=log)
    if held_out_files:
        from napari_xt.train.evaluate import evaluate

        provenance["eval"] = [evaluate(model, source) for source in held_out_files]
        for result in provenance["eval"]:
            print(
                f"napari-xt: held out {result['data']}: mIoU {result.get('miou')}, detection F1 "
                f"{result['detection']['all']['f1']}",
                file=sys.stderr,
            )
    if args.eval_size:
        from napari_xt.train.evaluate import evaluate

        held_out = _sources(args, args.level, seed_offset=1000)[:1] if args.data.startswith("synthetic:") else []
        if held_out:
            provenance["eval"] = evaluate(model, _resize(held_out[0], args))
    digest = finish_checkpoint(model, args.out, provenance)
    print(f"wrote {args.out} (sha256 {digest[:16]}…)", file=sys.stderr)
    return EXIT_OK


def _is_official_xt(path: str) -> bool:
    """True for an official xT checkpoint (a pickle of ``encoder.model.*`` and ``decoder.*`` tensors)."""
    from napari_xt.model import CheckpointError
    from napari_xt.model.checkpoint import PICKLE_SUFFIXES, read_state_dict
    from napari_xt.model.official import is_official_xt

    candidate = Path(path)
    if candidate.suffix not in PICKLE_SUFFIXES or not candidate.is_file():
        return False
    try:
        return is_official_xt(read_state_dict(candidate))
    except CheckpointError:
        return False


def _is_backbone_file(path: str) -> bool:
    """True for weights that are no napari-xt checkpoint: a timm/PyTorch file (``.pth``, ``.bin``, ``.pt``), a
    bare ``.safetensors`` without napari-xt's config, or a Hugging Face folder."""
    from napari_xt.model import CheckpointError, read_checkpoint_info

    candidate = Path(path)
    if candidate.is_dir() or candidate.suffix in (".pth", ".pt", ".bin"):
        return True
    if candidate.suffix != ".safetensors" or not candidate.is_file():
        return False
    try:
        read_checkpoint_info(candidate, with_hash=False)
    except CheckpointError as error:
        return "no napari-xt config" in str(error)
    return False


def _resize(source, args):
    from napari_xt.train.data import synthetic_source

    kind = args.data.split(":", 1)[1]
    seed = int(source.description.split("seed=")[1])
    return synthetic_source(kind, args.eval_size, seed, source.level)


def _eval(args: argparse.Namespace) -> int:
    import json

    from napari_xt.model import CheckpointError
    from napari_xt.train.evaluate import evaluate, write_report

    try:
        sources = _sources(args, args.level, seed_offset=0)
        reports = [evaluate(args.checkpoint, source, args.tolerance, args.threshold) for source in sources]
    except (ValueError, OSError, CheckpointError) as error:
        print(f"napari-xt: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    report = reports[0] if len(reports) == 1 else {"scenes": reports}
    if args.out:
        write_report(report, args.out)
    print(json.dumps(report, indent=2))
    return EXIT_OK


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    pairs = {}
    for value in values or []:
        name, sep, given = value.partition("=")
        if not sep or not name.strip() or not given.strip():
            raise ValueError(f"{option} {value!r}: expected CLASS=VALUE, e.g. {option} tumour=#1f4fff")
        pairs[name.strip()] = given.strip()
    return pairs


def _style(args: argparse.Namespace) -> int:
    from napari_xt.model import CheckpointError
    from napari_xt.model.checkpoint import restyle_checkpoint

    try:
        colours, names = _pairs(args.colour, "--colour"), _pairs(args.name, "--name")
        if not colours and not names:
            raise ValueError("nothing to change: give --colour CLASS=#rrggbb and/or --name CLASS=words")
        command = "napari-xt style " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["style"] else "napari-xt style"
        digest = restyle_checkpoint(args.checkpoint, args.out or args.checkpoint, colours, names, command)
    except (ValueError, OSError, CheckpointError) as error:
        print(f"napari-xt: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{args.out or args.checkpoint}: sha256 {digest} (weights unchanged)")
    return EXIT_OK


def _convert(args: argparse.Namespace) -> int:
    from napari_xt.model import CheckpointError, convert_official

    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".safetensors")
    try:
        if out.resolve() == Path(args.checkpoint).resolve():
            raise ValueError(f"--out {out} is the source file; give another name")
        names = _class_names(args.classes)
        command = "napari-xt convert " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["convert"] else ""
        digest, report = convert_official(args.checkpoint, out, names, command, args.tokens_per_region)
    except (ValueError, OSError, CheckpointError) as error:
        print(f"napari-xt: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps({"out": str(out), "sha256": digest, **report.provenance()}, indent=1))
    else:
        print(f"{args.checkpoint}: {report.summary()}")
        print(f"{out}: sha256 {digest}")
    return EXIT_OK


def _class_names(text: str | None) -> list[str] | None:
    """Class names from a JSON list or ``{index: name}`` file, or as ``_label_names`` reads them (a text file
    with one per line, or a comma list)."""
    path = Path(text) if text else None
    if path is None or not (path.is_file() and path.suffix == ".json"):
        return _label_names(text)
    data = json.loads(path.read_text())
    if isinstance(data, dict):  # {"0": "name", ...} or {"name": 0, ...}
        pairs = [(int(k), v) if str(k).isdigit() else (int(v), k) for k, v in data.items()]
        return [str(name) for _, name in sorted(pairs)]
    return [str(name) for name in data]


CONVERT_EXAMPLES = """examples:
  napari-xt convert swin-t-mamba-512-256-top1.ckpt --out swin-t-mamba.safetensors
  napari-xt convert hiera-b-hyper-448-224.ckpt --classes reptilia.txt
  napari-xt train --init swin-t-mamba.safetensors --image slide.svs --annotations slide.geojson --out model.safetensors
"""


STYLE_EXAMPLES = """examples:
  napari-xt style model.safetensors --colour tumour=#1f4fff --colour stroma=#1b9e5a
  napari-xt style sar.safetensors --name background=sea --name open_sea="open-sea vessel" --out sar-styled.safetensors
"""


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        default="synthetic:sar",
        help="synthetic:sar, synthetic:slide, or files (with --image/--labels/--points)",
    )
    parser.add_argument("--image", action="append", help="an image (repeat for several)")
    parser.add_argument("--labels", action="append", help="its label image (same level-0 size)")
    parser.add_argument(
        "--annotations",
        action="append",
        help="its annotations: QuPath GeoJSON, or GIS vectors (GeoJSON, GeoPackage) over a GeoTIFF, in any CRS",
    )
    parser.add_argument("--points", action="append", help="its points: CSV (y, x, class[, size]) or GeoJSON")
    parser.add_argument("--classes", help="detection class names, comma-separated (for --points)")
    parser.add_argument(
        "--label-names",
        help="segmentation class names for --labels: a text file (line i names label value i) or a comma list",
    )
    parser.add_argument("--level", type=int, default=1, help="analysis level (default 1)")
    parser.add_argument("--scene-size", type=int, default=8192, help="synthetic scene side in pixels")
    parser.add_argument("--scene-seed", type=int, default=0, help="seed of the first synthetic scene")
    parser.add_argument("--scenes", type=int, default=1, help="how many synthetic scenes")


def _demo(args: argparse.Namespace) -> int:
    from napari_xt._napari.demo import run_demo

    screenshot = Path(args.screenshot) if args.screenshot else None
    return run_demo(scene=args.scene, screenshot=screenshot, run=not args.no_run)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line that says where to look, exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default shown after its help (unless it has none or the help already says it);
    examples kept as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if default in (None, False, True, argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: {default})"


PREDICT_EXAMPLES = """examples:
  napari-xt predict slide.svs --checkpoint slide_xl.safetensors --out runs/
  napari-xt predict slides/ --file-types svs,ndpi --checkpoint m.safetensors --out runs/ --json > runs.jsonl
  napari-xt predict 'scenes/**/*.tif' --checkpoint sar_xl.safetensors --out runs/ --threshold 0.6 --quiet
  napari-xt predict --config run.yaml          # images, checkpoint, out, … as YAML keys
"""


def _version() -> str:
    import importlib.metadata

    import napari_xt

    parts = [f"napari-xt {napari_xt.__version__}"]
    for package in ("torch", "timm", "napari"):
        try:
            parts.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{package} missing")
    return parts[0] + " (" + ", ".join(parts[1:]) + ")"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="napari-xt", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    info = commands.add_parser("info", help="print levels, shapes, chunks, dtype and pixel size of images")
    info.add_argument("images", nargs="+", help="OME-Zarr / zarr directories or TIFF-family files")
    info.set_defaults(run=_info)

    predict = commands.add_parser(
        "predict",
        help="run xT over whole images (or an ROI) into run directories",
        formatter_class=_HelpFormatter,
        epilog=PREDICT_EXAMPLES,
    )
    predict.add_argument(
        "images", nargs="*", help="images, folders of images or glob patterns (each image gets OUT/<name>.xt.zarr)"
    )
    predict.add_argument("--checkpoint", help="a napari-xt .safetensors checkpoint (required)")
    predict.add_argument("--out", help="folder for the run directories (required)")
    predict.add_argument(
        "--config", help="a YAML file of these options (names as here, without --); the command line wins"
    )
    predict.add_argument("--file-types", default=DEFAULT_FILE_TYPES, help="which files of an input folder are images")
    predict.add_argument("--json", action="store_true", help="print one JSON summary per image on stdout")
    predict.add_argument("--quiet", action="store_true", help="no progress; only bad input and failures")
    where = predict.add_mutually_exclusive_group()
    where.add_argument("--level", type=int, help="pyramid level to analyse")
    where.add_argument("--pixel-size", type=float, help="target pixel size, in the image's unit (µm, m)")
    predict.add_argument("--roi", help="y0,x0,y1,x1 in level-0 pixels (default: the whole image)")
    predict.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, …")
    predict.add_argument("--batch-size", type=int, help="regions per batch (default: from free memory)")
    predict.add_argument("--overwrite", action="store_true", help="replace existing run directories")
    cache = predict.add_mutually_exclusive_group()
    cache.add_argument(
        "--cache",
        help="token cache folder: whole-image context for an ROI reuses the encodings of earlier runs "
        "(default: $NAPARI_XT_CACHE or ~/.cache/napari-xt)",
    )
    cache.add_argument("--no-cache", action="store_true", help="neither read nor write the token cache")
    predict.add_argument(
        "--probabilities", action="store_true", help="also store class probabilities (float16, multiscale)"
    )
    predict.add_argument("--scheduler", help="address of a dask.distributed scheduler: one task per image")
    predict.add_argument("--workers", type=int, help="start a local dask.distributed cluster of N processes")
    predict.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    predict.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="detection score threshold of the exports and summaries (default 0.5, as in the widget)",
    )
    predict.add_argument(
        "--circles", action="store_true", help="detections in detections.geojson as circles of their size"
    )
    predict.add_argument(
        "--no-polygons",
        dest="polygons",
        action="store_false",
        help="do not write the segmentation as polygons (segmentation.geojson, map layers)",
    )
    predict.set_defaults(run=_predict)
    parser.predict_parser = predict  # for --config

    train = commands.add_parser("train", help="train an xT model on crops of N × N regions")
    _add_data_arguments(train)
    train.add_argument("--preset", default="demo_sar_xl", help="model preset to start from")
    train.add_argument(
        "--init",
        help="fine-tune from this napari-xt checkpoint (its architecture; new heads where the classes differ), "
        "or start a --preset model whose region encoder is initialised from timm backbone weights (a .pth, "
        "bare .safetensors or Hugging Face folder; like --backbone-weights)",
    )
    train.add_argument(
        "--freeze", choices=("none", "encoder"), default="none", help="keep the region encoder's weights fixed"
    )
    train.add_argument(
        "--held-out", type=int, default=0, help="evaluate on the last N --image instead of training on them"
    )
    train.add_argument("--context", default="xl", choices=("none", "xl", "hyper", "mamba"))
    train.add_argument("--region-size", type=int, help="region side (default: the preset's)")
    train.add_argument("--backbone", help="timm model name of the region encoder (default: the preset's)")
    train.add_argument(
        "--backbone-weights",
        help="local timm weight file or Hugging Face hub folder to initialise the region encoder from",
    )
    train.add_argument("--steps", type=int, default=600)
    train.add_argument(
        "--max-minutes", type=float, help="a time budget: as many of --steps as fit, the schedule fitted to them"
    )
    train.add_argument("--crop-regions", type=int, default=6, help="crops of N × N regions")
    train.add_argument("--batch", type=int, default=2, help="crops per step")
    train.add_argument("--grad-ratio", type=float, default=0.5, help="share of regions with encoder gradients")
    train.add_argument("--lr", type=float, help="peak learning rate (default 2e-3; 2e-4 with --init)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--eval-size", type=int, default=0, help="evaluate on a held-out scene of this side")
    train.add_argument("--restart", action="store_true", help="ignore a saved training state")
    train.add_argument("--out", required=True, help="the checkpoint to write (.safetensors)")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint on whole held-out images (JSON report)")
    _add_data_arguments(evaluate)
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--threshold", type=float, default=0.3, help="detection score threshold")
    evaluate.add_argument("--tolerance", type=float, help="match distance in level-0 pixels")
    evaluate.add_argument("--out", help="write the JSON report here")
    evaluate.set_defaults(run=_eval)

    style = commands.add_parser(
        "style",
        help="give a checkpoint's classes other colours or display names (its weights stay as they are)",
        formatter_class=_HelpFormatter,
        epilog=STYLE_EXAMPLES,
    )
    style.add_argument("checkpoint", help="a napari-xt .safetensors checkpoint")
    style.add_argument("--colour", action="append", metavar="CLASS=#RRGGBB", help="a class's colour (repeat)")
    style.add_argument("--name", action="append", metavar="CLASS=WORDS", help="a class's display name (repeat)")
    style.add_argument("--out", help="write the restyled checkpoint here (default: replace CHECKPOINT)")
    style.set_defaults(run=_style)

    convert = commands.add_parser(
        "convert",
        help="turn an official xT checkpoint (.ckpt/.pth) into a napari-xt checkpoint with config and provenance",
        formatter_class=_HelpFormatter,
        epilog=CONVERT_EXAMPLES,
    )
    convert.add_argument("checkpoint", help="an official xT checkpoint (bair-climate-initiative/xT)")
    convert.add_argument("--out", help="the .safetensors to write (default: CHECKPOINT with .safetensors)")
    convert.add_argument(
        "--classes", help="the classifier's class names: a text file (one per line), a JSON file or a comma list"
    )
    convert.add_argument(
        "--tokens-per-region",
        type=int,
        help="pool each region to N × N context tokens (official: every stride-32 pixel, 8 × 8 at 256²); 2 keeps a "
        "whole slide's token memory small for fine-tuning",
    )
    convert.add_argument("--json", action="store_true", help="print the detected architecture as JSON")
    convert.set_defaults(run=_convert)

    demo = commands.add_parser(
        "demo", help="open a synthetic gigapixel scene in napari (headless under Xvfb when there is no display)"
    )
    demo.add_argument("--scene", choices=("sar", "slide"), default="sar")
    demo.add_argument("--no-run", action="store_true", help="only open the scene, do not run xT")
    demo.add_argument("--screenshot", help="save a screenshot PNG here and exit (the default when there is no display)")
    demo.set_defaults(run=_demo)
    return parser


def _apply_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; for ``predict --config FILE``, the file's keys become defaults the command line
    overrides. Unknown keys and unreadable files are usage errors (exit 2) naming them."""
    args = parser.parse_args(argv)
    if getattr(args, "command", None) != "predict" or not args.config:
        return args
    import yaml

    try:
        values = yaml.safe_load(Path(args.config).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        parser.exit(EXIT_BAD_INPUT, f"napari-xt: --config {args.config}: cannot be read ({error})\n")
    if not isinstance(values, dict):
        parser.exit(EXIT_BAD_INPUT, f"napari-xt: --config {args.config}: must be a mapping of option: value\n")
    predict = parser.predict_parser
    known = {action.dest: action for action in predict._actions}
    defaults = {}
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        if dest == "no_polygons":
            dest, value = "polygons", not value
        if dest not in known or dest in ("help", "config"):
            parser.exit(EXIT_BAD_INPUT, f"napari-xt: --config {args.config}: unknown option {key!r}\n")
        if dest == "images" and isinstance(value, str):
            value = [value]
        defaults[dest] = value
    given = vars(parser.parse_args(argv))
    predict.set_defaults(**defaults)
    merged = parser.parse_args(argv)
    if given.get("images"):  # images on the command line replace the file's
        merged.images = given["images"]
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = _apply_config(parser, sys.argv[1:] if argv is None else argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("napari-xt: cancelled", file=sys.stderr)
        return EXIT_CANCELLED


def entry() -> None:
    """The ``napari-xt`` command: ``main``, then the process leaves without the interpreter's teardown."""
    leave(main())


def leave(code: int) -> None:
    """Exit with ``code`` as Python would, less the teardown of every module: freeing torch, timm and their
    kin one object at a time took 0.9–1.2 s of each run (measured against ``os._exit`` on the dev VM), after
    every result was written. The exit handlers still run (temporary folders, logging, child processes) and
    the standard streams are flushed; while a thread that is not a daemon still runs, or a child process
    outlives the handlers, the exit is Python's own."""
    import atexit
    import contextlib
    import multiprocessing
    import threading

    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()  # what the interpreter runs at exit, without the teardown after it
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken pipe: nothing more can reach it
            stream.flush()
    if multiprocessing.active_children():
        sys.exit(code)
    os._exit(code)


if __name__ == "__main__":
    entry()
