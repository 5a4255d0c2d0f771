"""Numbers a user can report, per image: area per class, detections per class and their density.

Areas come from per-region class pixel counts written with each batch (``regions/class_pixels``), so they are
exact, cost nothing at the end and survive a resume. Slides (µm) report areas in mm² and densities per mm²,
SAR scenes (m) in km² and per km²; an image without a pixel size reports pixels and densities per megapixel.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from napari_xt._atomic import write_text_atomic
from napari_xt.engine.detections import DetectionTable

# unit of the pixel size → (area unit reported, that unit's area in squared pixel-size units)
AREA_UNITS = {"nm": ("mm²", 1e12), "µm": ("mm²", 1e6), "mm": ("mm²", 1.0), "m": ("km²", 1e6), "km": ("km²", 1.0)}


def area_unit(spec: dict) -> tuple[str, float]:
    """The area unit a run reports in, and the area of one analysis pixel in it."""
    size, unit = spec.get("pixel_size"), spec.get("unit")
    scale = spec.get("layer_scale") or [1.0, 1.0]
    if not size or unit not in AREA_UNITS:
        return "megapixels (level 0)", float(np.prod(spec.get("downsample") or [1.0, 1.0])) / 1e6
    name, per_unit = AREA_UNITS[unit]
    return name, float(scale[0] * scale[1]) / per_unit


def summarise(spec: dict, class_pixels: np.ndarray, done: np.ndarray, detections: DetectionTable) -> dict:
    """The summary of a run: its analysed area, area and share per segmentation class, detections per class."""
    unit, pixel_area = area_unit(spec)
    counts = class_pixels[done].sum(axis=0).astype(np.int64) if done.any() else np.zeros(class_pixels.shape[2], int)
    classes = list(spec.get("segmentation_classes") or ["background"])
    analysed = int(counts.sum())
    foreground = int(counts[1:].sum())
    per_area = foreground * pixel_area
    areas = {
        name: {
            "area": float(counts[k] * pixel_area),
            "share_of_foreground": float(counts[k] / foreground) if foreground else 0.0,
        }
        for k, name in enumerate(classes[: len(counts)])
        if k > 0
    }
    names = list(spec.get("detection_classes") or [])
    found = np.bincount(np.asarray(detections.label, dtype=np.int64), minlength=len(names)) if len(detections) else []
    objects = {
        name: {
            "count": int(found[k]) if len(found) else 0,
            "density": float(found[k] / per_area) if len(found) and per_area > 0 else 0.0,
        }
        for k, name in enumerate(names)
    }
    return {
        "image": spec.get("image_source"),
        "checkpoint": spec.get("checkpoint"),
        "checkpoint_sha256": spec.get("checkpoint_sha256"),
        "level": spec.get("level"),
        "analysis_pixel_size": spec.get("layer_scale") if spec.get("pixel_size") else None,
        "unit": spec.get("unit"),
        "area_unit": unit,
        "density_per": unit,
        "regions_analysed": int(done.sum()),
        "analysed_area": float(analysed * pixel_area),
        "foreground_area": float(per_area),
        "classes": areas,
        "detections": objects,
        "score_threshold": spec.get("export_threshold"),
        "no_foreground": bool(spec.get("no_foreground")),
        "seconds": (spec.get("timings") or {}).get("total"),
    }


def summary_row(summary: dict) -> dict:
    """One flat row of a summary (for CSV): one column per class area, share, count and density."""
    unit = summary["area_unit"]
    row = {
        key: summary[key]
        for key in ("image", "checkpoint", "level", "regions_analysed", "analysed_area", "foreground_area")
    }
    row["area_unit"] = unit
    for name, values in summary["classes"].items():
        row[f"{name} area"] = round(values["area"], 6)
        row[f"{name} share"] = round(values["share_of_foreground"], 6)
    for name, values in summary["detections"].items():
        row[f"{name} count"] = values["count"]
        row[f"{name} per {unit}"] = round(values["density"], 6)
    row["score_threshold"] = summary["score_threshold"]
    row["seconds"] = summary["seconds"]
    return row


def csv_text(rows: list[dict]) -> str:
    """Rows (dicts, possibly with different keys) as CSV text, columns in order of first appearance."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_summary(run_dir: Path, spec: dict, class_pixels: np.ndarray, done: np.ndarray, detections) -> dict:
    """Write ``summary.json`` and ``summary.csv`` into the run directory; return the summary."""
    summary = summarise(spec, class_pixels, done, detections)
    write_text_atomic(Path(run_dir) / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False))
    write_text_atomic(Path(run_dir) / "summary.csv", csv_text([summary_row(summary)]), newline="")
    return summary
