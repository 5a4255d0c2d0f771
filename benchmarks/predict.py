"""``napari-xt predict`` as a whole process against its own bare model, and against TIAToolbox, side by side.

For each slide size (pyramidal JPEG OME-TIFFs at 0.5 µm written by the shared TIAToolbox harness's
``make_slide.py``, so that both tools read the same files), in this order, each in a fresh process:

1. **bare model**: the same checkpoint (``demo_slide_xl`` with random weights at 0.5 µm: convnext_atto regions of
   256², XL context, light UNet) over the same regions, pixels already in memory, the same torch threads:
   encode every region (batches of 8), the context over all of them, decode every region. Only that is timed.
2. **predict**, as a user runs it: ``napari-xt predict SLIDE --checkpoint … --out …`` from process start to exit,
   in variants: token cache off; cache on (cold); and each of those without segmentation polygons. Its per-stage
   timings (``summary.json``, from its ``start_up``: the process's start, imports and loading the model) are
   recorded, and what they do not hold (process wall time minus the run's total: the process's exit).
3. with ``--peer DIR`` (the harness installed in a scratch folder as its README says): TIAToolbox's
   SemanticSegmentor over the same slide (``peer_tiatoolbox.py``) and its own bare model (``bare_model.py``).

Ratios are taken between runs next to each other in time (this VM's speed drifts by 2×). Prints a table and
writes results/predict.json.

    .venv/bin/python benchmarks/predict.py [--sizes 8192 16384] [--peer /tmp/peer]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import in_fresh_process, write_results

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT.parent / "shared" / "peers" / "tiatoolbox"
BATCH = 8
VARIANTS = ("predict_no_cache", "predict_cold_cache", "predict_cold_cache_no_polygons", "predict_no_polygons")


def _checkpoint(folder: Path) -> Path:
    import torch

    from napari_xt.model import create_model, save_checkpoint

    path = folder / "bench_slide.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        save_checkpoint(create_model("demo_slide_xl", pixel_size=0.5).eval(), path, {"purpose": "benchmark"})
    return path


def _slide(folder: Path, size: int) -> Path:
    path = folder / f"synth_{size}.ome.tif"
    if not path.exists():
        subprocess.run([sys.executable, str(HARNESS / "make_slide.py"), str(size), str(path)], check=True)
    return path


def _bare_job(slide: str, checkpoint: str, threads: int | None, queue) -> None:
    """The model's own computation over the slide's regions, pixels in memory (nothing else is timed)."""
    import numpy as np
    import tifffile
    import torch

    from napari_xt.model import load_checkpoint
    from napari_xt.model.tokenization import cut, neighbour_table

    if threads:
        torch.set_num_threads(threads)
    model, _ = load_checkpoint(checkpoint)
    model.eval()
    pixels = tifffile.imread(slide, level=0)  # (Y, X, 3) uint8
    size = model.config.region_size
    image = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]
    regions, grid = cut(image, size)
    rows, cols = grid
    positions = torch.stack(torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij"), -1).reshape(-1, 2)
    table = neighbour_table(rows, cols)
    with torch.inference_mode():
        warm = model.encode(model.normalise(regions[:BATCH]))
        model.decode_all(warm, model.region_tokens(warm), neighbour_table(1, BATCH))
        start = time.perf_counter()
        features, tokens = [], []
        for i in range(0, len(regions), BATCH):
            f = model.encode(model.normalise(regions[i : i + BATCH]))
            features.append(f)
            tokens.append(model.region_tokens(f))
        encoded = time.perf_counter()
        context = model.contextualise(torch.cat(tokens)[None], positions[None])[0]
        contextualised = time.perf_counter()
        features = [torch.cat(level) for level in zip(*features)]
        for i in range(0, len(regions), BATCH):  # each region decoded with its neighbours, as predict does
            batch = table[i : i + BATCH]
            out = model.decode_neighbourhoods(features, context, batch, crop=not model.blends)
            if model.blends:  # and blended; with the batch's own row (a little less work than the whole grid's)
                out = model.blend(out, neighbour_table(1, len(batch)))
            out["segmentation"].max(dim=1)
        done = time.perf_counter()
    queue.put(
        {
            "regions": len(regions),
            "seconds": done - start,
            "encode": encoded - start,
            "context": contextualised - encoded,
            "decode": done - contextualised,
            "threads": torch.get_num_threads(),
        }
    )


def _predict(slide: Path, checkpoint: Path, out: Path, *extra: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    command = [str(Path(sys.executable).with_name("napari-xt")), "predict", str(slide), "--checkpoint", str(checkpoint)]
    command += ["--out", str(out), "--json", "--quiet", *extra]
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    record = json.loads(done.stdout.strip().splitlines()[-1])
    timings = record["timings"]
    return {
        "wall": wall,
        "start_up": timings["start_up"],  # the run's own first stage: the process's start, imports, the model
        "outside_run": wall - timings["total"],  # what the run's clock cannot see: the process's exit
        "peak_rss_gb": _peak_rss_gb(done.stderr),
        "timings": timings,
        "status": record["status"],
    }


def _peak_rss_gb(time_output: str) -> float | None:
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_output)
    return int(found.group(1)) / 1e6 if found else None


def _peer(peer: Path, slide: Path, regions: int) -> dict:
    python = peer / "venv" / "bin" / "python"
    env = {**os.environ, "PEER": str(peer)}
    bare = subprocess.run(
        [str(python), "bare_model.py", str(regions)], cwd=peer, capture_output=True, text=True, env=env
    )
    start = time.perf_counter()
    tia = subprocess.run(
        ["/usr/bin/time", "-v", str(python), "peer_tiatoolbox.py", str(slide), str(peer / "out" / slide.stem)],
        cwd=peer,
        capture_output=True,
        text=True,
        env=env,
    )
    wall = time.perf_counter() - start
    bare_rate = re.search(r'"patches_per_s": ([\d.]+)', bare.stdout + bare.stderr)
    return {
        "wall": wall,
        "rc": tia.returncode,
        "peak_rss_gb": _peak_rss_gb(tia.stderr),
        "bare_patches_per_s": float(bare_rate.group(1)) if bare_rate else None,
        "result": [line for line in (tia.stdout + tia.stderr).splitlines() if "RESULT" in line][-1:],
        "bare_result": [line for line in (bare.stdout + bare.stderr).splitlines() if "RESULT" in line][-1:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8192])
    parser.add_argument("--peer", type=Path, help="folder of the installed TIAToolbox harness")
    parser.add_argument("--threads", type=int, help="torch threads of the bare model (default: torch's)")
    parser.add_argument("--folder", type=Path, help="where slides and runs go (default: a scratch folder)")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="napari-xt-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = _checkpoint(folder)
    rows = []
    for size in args.sizes:
        slide = _slide(folder, size)
        row = {"size": size}
        row["bare"] = in_fresh_process(_bare_job, str(slide), str(checkpoint), args.threads)
        row["predict_no_cache"] = _predict(slide, checkpoint, folder / "runs-a", "--no-cache")
        cache = folder / f"cache-{size}"
        shutil.rmtree(cache, ignore_errors=True)
        os.environ["NAPARI_XT_CACHE"] = str(cache)
        row["predict_cold_cache"] = _predict(slide, checkpoint, folder / "runs-b")
        shutil.rmtree(cache, ignore_errors=True)
        row["predict_cold_cache_no_polygons"] = _predict(slide, checkpoint, folder / "runs-d", "--no-polygons")
        os.environ.pop("NAPARI_XT_CACHE")
        row["predict_no_polygons"] = _predict(slide, checkpoint, folder / "runs-c", "--no-cache", "--no-polygons")
        row["bare_after"] = in_fresh_process(_bare_job, str(slide), str(checkpoint), args.threads)
        if args.peer:
            row["tiatoolbox"] = _peer(args.peer, slide, row["bare"]["regions"])
        bare = (row["bare"]["seconds"] + row["bare_after"]["seconds"]) / 2
        for key in VARIANTS:
            row[key]["ratio_to_bare"] = bare / row[key]["wall"]
        rows.append(row)
        n = row["bare"]["regions"]
        print(f"\n{size}² slide, {n} regions of 256²: bare model {bare:.1f} s ({n / bare:.1f} regions/s)")
        for key in VARIANTS:
            r = row[key]
            stages = {k: v for k, v in r["timings"].items() if isinstance(v, float) and v >= 0.5 and k != "total"}
            print(
                f"  {key:20s} {r['wall']:6.1f} s process, ratio {r['ratio_to_bare']:.2f}, peak RSS "
                f"{r['peak_rss_gb']:.2f} GB; outside the run's stages {r['outside_run']:.2f} s; "
                + ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
            )
        if args.peer:
            t = row["tiatoolbox"]
            print(
                f"  TIAToolbox           {t['wall']:6.1f} s process ({n / t['wall']:.1f} patches/s), "
                f"peak RSS {t['peak_rss_gb']} GB; its bare model {t['bare_patches_per_s']} patches/s"
            )
            for key in VARIANTS:
                print(f"  napari-xt ({key}) vs TIAToolbox whole run: {t['wall'] / row[key]['wall']:.2f}×")
    write_results("predict", {"folder": str(folder), "rows": rows})


if __name__ == "__main__":
    main()
