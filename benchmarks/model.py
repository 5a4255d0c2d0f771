"""Model benchmark: per-region forward time and peak memory of every preset, and how the memory of the context
encoders grows with the number of regions, against global attention over the same tokens.

Each measurement runs in a fresh process so that peak memory is its own. On CUDA, peak memory is
``torch.cuda.max_memory_allocated``; on CPU it is the growth of the process's peak RSS during the call.
Prints tables and writes results/model.json.

    .venv/bin/python benchmarks/model.py [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import in_fresh_process, write_results

REGION_COUNTS = (256, 1024, 4096, 16384)
GLOBAL_ATTENTION_LIMIT = 6 * 2**30  # materialised scores past this are predicted, not allocated


def _peak_bytes_cpu() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _measure(fn, device: str) -> tuple[float, int]:
    import psutil
    import torch

    fn()  # warm up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = psutil.Process().memory_info().rss
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = max(0, _peak_bytes_cpu() - base)
    return time.perf_counter() - start, peak


def _preset_job(name: str, device: str, batch: int, queue) -> None:
    import torch

    from napari_xt.model import create_model
    from napari_xt.model.tokenization import neighbour_table

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = create_model(name).to(device).eval()
    size = model.config.region_size
    regions = torch.rand(batch, model.config.in_channels, size, size, device=device) * 255

    table = neighbour_table(1, batch)  # the batch as a row of neighbours, decoded with their halo

    def run():
        with torch.no_grad():
            features = model.encode(model.normalise(regions))
            context = model.region_tokens(features)
            model.decode_all(features, context, table)

    seconds, peak = _measure(run, device)
    params = sum(p.numel() for p in model.parameters())
    queue.put(
        {
            "preset": name,
            "region_size": size,
            "params_m": params / 1e6,
            "ms_per_region": 1e3 * seconds / batch,
            "peak_mb": peak / 1e6,
        }
    )


def _context_job(kind: str, regions: int, device: str, queue) -> None:
    import torch

    from napari_xt.model.config import ContextEncoderConfig
    from napari_xt.model.context import build_context_encoder

    config = ContextEncoderConfig(
        kind=kind if kind != "global" else "none",
        width=128,
        depth=2,
        heads=4,
        window=16,
        memory=32,
        hyper_exact_below=4096,
    )
    tokens = regions * config.tokens_per_region**2
    x = torch.randn(1, tokens, config.width, device=device)
    positions = torch.rand(1, tokens, 2, device=device) * regions**0.5
    if kind == "global":
        predicted = config.heads * tokens * tokens * 4 * 2  # scores and softmax, fp32
        if predicted > GLOBAL_ATTENTION_LIMIT:
            queue.put(
                {
                    "kind": kind,
                    "regions": regions,
                    "tokens": tokens,
                    "seconds": None,
                    "peak_mb": predicted / 1e6,
                    "predicted": True,
                }
            )
            return
        q = x.view(1, tokens, config.heads, -1).transpose(1, 2)

        def run():
            scores = torch.softmax(q @ q.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
            return scores @ q
    else:
        encoder = build_context_encoder(config).to(device).eval()

        def run():
            with torch.no_grad():
                return encoder(x, positions)

    seconds, peak = _measure(run, device)
    queue.put(
        {
            "kind": kind,
            "regions": regions,
            "tokens": tokens,
            "seconds": seconds,
            "peak_mb": peak / 1e6,
            "predicted": False,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--quick", action="store_true", help="demo preset only, up to 4,096 regions")
    args = parser.parse_args()
    import torch

    from napari_xt.model import list_presets

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    presets = ["demo_slide_xl"] if args.quick else [p for p in list_presets() if not p.startswith("test_")]
    counts = REGION_COUNTS[:3] if args.quick else REGION_COUNTS
    print(f"device: {device}")
    print(f"{'preset':<24}{'region':>8}{'params':>10}{'ms/region':>12}{'peak MB':>10}")
    preset_rows = []
    for name in presets:
        row = in_fresh_process(_preset_job, name, device, 4)
        preset_rows.append(row)
        print(
            f"{name:<24}{row['region_size']:>8}{row['params_m']:>9.1f}M{row['ms_per_region']:>12.1f}{row['peak_mb']:>10.0f}"
        )
    print("\ncontext over N regions (4 tokens each, width 128, depth 2); global = materialised attention scores")
    print(f"{'kind':<8}" + "".join(f"{n:>14}" for n in counts))
    context_rows = []
    for kind in ("xl", "hyper", "mamba", "global"):
        cells = []
        for regions in counts:
            row = in_fresh_process(_context_job, kind, regions, device)
            context_rows.append(row)
            mark = "*" if row["predicted"] else " "
            cells.append(f"{row['peak_mb']:>12.0f}{mark} ")
        print(f"{kind:<8}" + "".join(cells) + "  MB")
    print("* predicted, too large to allocate here")
    write_results(f"model_{device}", {"presets": preset_rows, "context": context_rows})


if __name__ == "__main__":
    main()
