"""Fine-tune a shipped checkpoint on a held-out synthetic scene annotated sparsely, as a pathologist would in
QuPath, and report IoU / F1 before and after, with the time it took.

The scene (a seed no shipped model saw) is written as a pyramidal OME-TIFF; a QuPath GeoJSON annotates a few
square areas (unclassified regions with the true class polygons inside, and the objects there as detections),
under 5% of the pixels; ``napari-xt train --init … --annotations …`` fine-tunes; ``train.evaluate`` scores the
whole scene through the engine before and after.

    .venv/bin/python benchmarks/finetune.py [--size 4096] [--steps 60] [--areas 16] [--world slide]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_results


def write_scene(scene, path: Path) -> None:
    import tifffile

    levels = [np.asarray(level) for level in scene.pyramid().levels[:3]]
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        options = {"tile": (256, 256), "photometric": "rgb" if levels[0].shape[2] == 3 else "minisblack"}
        first = levels[0] if levels[0].shape[2] == 3 else levels[0][..., 0]
        tif.write(first, subifds=len(levels) - 1, metadata={"axes": "YXS" if first.ndim == 3 else "YX"}, **options)
        for level in levels[1:]:
            tif.write(level if level.shape[2] == 3 else level[..., 0], subfiletype=1, **options)


def sparse_annotations(scene, classes: list[str], detection_classes: list[str], areas: int, side: int, seed: int):
    """QuPath features: ``areas`` squares of ``side`` level-1 pixels with the true classes inside."""
    from rasterio.features import shapes
    from shapely.affinity import affine_transform
    from shapely.geometry import box, mapping, shape

    rng = np.random.default_rng(seed)
    truth = np.asarray(scene.labels(1))
    height, width = truth.shape
    features, annotated = [], 0
    for _ in range(areas):
        y0, x0 = int(rng.integers(0, height - side)), int(rng.integers(0, width - side))
        crop = truth[y0 : y0 + side, x0 : x0 + side]
        annotated += crop.size
        region = box(2 * x0, 2 * y0, 2 * (x0 + side), 2 * (y0 + side))  # level-0 pixel corners
        features.append({"type": "Feature", "geometry": mapping(region), "properties": {"objectType": "annotation"}})
        for geometry, value in shapes(crop, mask=crop > 0, connectivity=4):
            polygon = affine_transform(shape(geometry), [2, 0, 0, 2, 2 * x0, 2 * y0])
            properties = {"objectType": "annotation", "classification": {"name": classes[int(value)]}}
            features.append({"type": "Feature", "geometry": mapping(polygon), "properties": properties})
        objects = scene.objects((2 * y0, 2 * x0, 2 * (y0 + side), 2 * (x0 + side)))
        for y, x, label, size in zip(objects.y, objects.x, objects.label, objects.size):
            name = scene.object_classes[int(label)]
            if name not in detection_classes:
                continue
            properties = {
                "objectType": "detection",
                "classification": {"name": name},
                "measurements": {"Size px": float(size)},
            }
            point = {"type": "Point", "coordinates": [float(x) + 0.5, float(y) + 0.5]}
            features.append({"type": "Feature", "geometry": point, "properties": properties})
    return {"type": "FeatureCollection", "features": features}, annotated / truth.size


def scores(report: dict) -> dict:
    return {
        "miou": report.get("miou"),
        "iou": report.get("iou"),
        "detection_f1": report["detection"]["all"]["f1"],
        "context_f1": (report.get("context_metric") or {}).get("f1"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="slide", choices=("slide", "sar"))
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=4242, help="scene seed (no shipped model was trained on it)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--areas", type=int, default=16)
    parser.add_argument("--side", type=int, default=96, help="side of each annotated square, in level-1 pixels")
    args = parser.parse_args()

    from napari_xt.cli import main as cli
    from napari_xt.data.worlds import synthetic_scene
    from napari_xt.model import read_checkpoint_info
    from napari_xt.train.data import synthetic_source
    from napari_xt.train.evaluate import evaluate

    shipped = Path(__file__).resolve().parents[1] / "src" / "napari_xt" / "checkpoints" / f"{args.world}_xl.safetensors"
    heads = read_checkpoint_info(shipped).config.heads
    scene = synthetic_scene(args.world, args.size, args.seed)
    with tempfile.TemporaryDirectory(prefix="napari-xt-finetune-") as scratch:
        folder = Path(scratch)
        write_scene(scene, folder / "scene.ome.tif")
        collection, share = sparse_annotations(
            scene, list(heads.segmentation_classes), list(heads.detection_classes), args.areas, args.side, args.seed
        )
        (folder / "sparse.geojson").write_text(json.dumps(collection))
        truth = synthetic_source(args.world, args.size, args.seed, 1)
        before = scores(evaluate(shipped, truth))
        out = folder / "tuned.safetensors"
        started = time.perf_counter()
        command = ["train", "--data", "files", "--image", str(folder / "scene.ome.tif"), "--level", "1"]
        command += ["--annotations", str(folder / "sparse.geojson"), "--init", str(shipped)]
        command += ["--steps", str(args.steps), "--crop-regions", "4", "--batch", "1", "--out", str(out)]
        if cli(command) != 0:
            print("fine-tuning failed", file=sys.stderr)
            return 1
        seconds = time.perf_counter() - started
        after = scores(evaluate(out, truth))
    results = {
        "world": args.world,
        "scene": {"size": args.size, "seed": args.seed},
        "annotated_share": round(share, 4),
        "annotated_areas": args.areas,
        "steps": args.steps,
        "finetune_seconds": round(seconds, 1),
        "before": before,
        "after": after,
    }
    print(json.dumps(results, indent=2))
    write_results(f"finetune_{args.world}", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
