"""What only a GPU shows, in one run (``benchmarks/gpu.sh`` calls it after the ``gpu`` tests):

1. Swin-V2-T xT regions per second in bf16 autocast and in fp32 (encoder + context + decoder, 256² regions,
   batches of 32), with the peak GPU memory of each;
2. the whole 29,000 × 25,000 SAR scene (lazily generated) end to end through the engine with the shipped
   ``sar_xl`` checkpoint at its pixel size: seconds, regions/s, peak GPU memory, per-stage timings.

Writes results/gpu.json. ``--device cpu --quick`` runs the same code small on a CPU (to check the script
itself where no GPU is lent); its numbers mean nothing.

    .venv/bin/python benchmarks/gpu.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results

ROOT = Path(__file__).resolve().parents[1]


def _peak_reset(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def regions_per_second(device, precision: str, batch: int, batches: int, preset: str) -> dict:
    """The whole model over ``batch × batches`` random 256² regions, context over each batch's regions."""
    import torch

    from napari_xt.engine.stages import Compute
    from napari_xt.model import create_model
    from napari_xt.model.tokenization import neighbour_table

    torch.manual_seed(0)
    model = create_model(preset).to(device).eval()
    compute = Compute(device, precision)
    size = model.config.region_size
    pixels = torch.rand(batch, model.config.in_channels, size, size, device=device) * 255
    side = max(1, int(batch**0.5))
    positions = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(-1, 2)
    positions = torch.cat([positions, positions[: batch - len(positions)] + side])[None].to(device)
    table = neighbour_table(1, batch, device=device)  # each region decoded with its neighbours' halo

    def step():
        with torch.inference_mode(), compute.autocast():
            features = model.encode(model.normalise(pixels))
            tokens = model.region_tokens(features)
            context = model.contextualise(tokens[None], positions)[0]
            return model.decode_all(features, context, table)

    step()  # warm-up (kernels chosen, memory pooled)
    _peak_reset(device)  # (synchronises)
    start = time.perf_counter()
    for _ in range(batches):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "preset": preset,
        "precision": precision,
        "batch": batch,
        "regions": batch * batches,
        "regions_per_s": batch * batches / seconds,
        "peak_gpu_gb": _peak_gb(device),
    }


def whole_scene(device, height: int, width: int) -> dict:
    """The shipped ``sar_xl`` over a lazily generated SAR scene through the engine (no token cache)."""
    import zarr

    from napari_xt.data.synthetic import SarScene
    from napari_xt.data.worlds import DEMO_WORLDS
    from napari_xt.engine.events import Finished
    from napari_xt.engine.runner import RunOptions, run_to_end

    scene = SarScene(height=height, width=width, seed=0, **DEMO_WORLDS["sar"])
    checkpoint = ROOT / "src" / "napari_xt" / "checkpoints" / "sar_xl.safetensors"
    _peak_reset(device)
    with tempfile.TemporaryDirectory(prefix="napari-xt-gpu-") as folder:
        start = time.perf_counter()
        last = run_to_end(
            scene.pyramid(), checkpoint, Path(folder) / "scene.xt.zarr", RunOptions(device=str(device), cache_dir="")
        )
        seconds = time.perf_counter() - start
        # the polygons traced while the labels were written (beside the GPU's work); the export stage is the rest
        spec = zarr.open_group(str(Path(folder) / "scene.xt.zarr"), mode="r").attrs["napari_xt"]
        traced = spec.get("polygons_traced_during_run")
    if not isinstance(last, Finished):
        raise RuntimeError(f"the scene run did not finish: {last}")
    return {
        "scene": f"{height} × {width}",
        "seconds": seconds,
        "detections": last.n_detections,
        "peak_gpu_gb": _peak_gb(device),
        "timings": last.timings,
        "polygons_traced_during_run_s": traced,
    }


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes (checks the script on a CPU)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py: no CUDA device here (use --device cpu --quick to check the script)")
    preset = "test_tiny_xl" if args.quick else "swinv2_tiny_xl"
    batch, batches = (4, 2) if args.quick else (32, 8)
    throughput = [regions_per_second(device, p, batch, batches, preset) for p in ("bf16", "fp32")]
    for row in throughput:
        peak = f", peak {row['peak_gpu_gb']:.2f} GiB" if row["peak_gpu_gb"] is not None else ""
        print(f"{row['preset']} {row['precision']}: {row['regions_per_s']:.1f} regions/s{peak}")
    height, width = (1024, 768) if args.quick else (29_000, 25_000)
    scene = whole_scene(device, height, width)
    peak = f", peak {scene['peak_gpu_gb']:.2f} GiB" if scene["peak_gpu_gb"] is not None else ""
    print(f"whole {scene['scene']} scene: {scene['seconds']:.1f} s, {scene['detections']} detections{peak}")
    print(f"stages: {scene['timings']}; polygons traced during the run: {scene['polygons_traced_during_run_s']} s")
    name = "gpu" if device.type == "cuda" and not args.quick else f"gpu-check-{device.type}"
    write_results(name, {"device": str(device), "throughput": throughput, "scene": scene})


if __name__ == "__main__":
    main()
