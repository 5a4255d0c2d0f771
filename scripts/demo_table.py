"""Print the README's table of the shipped demo checkpoints' evaluations (from their .eval.json files)."""

import json
import sys
from pathlib import Path

FOLDER = Path(__file__).resolve().parents[1] / "src" / "napari_xt" / "checkpoints"


def train_minutes(checkpoint: Path) -> str:
    """Training time recorded in the checkpoint's provenance."""
    from napari_xt.model import read_checkpoint_info

    seconds = read_checkpoint_info(checkpoint, with_hash=False).provenance.get("train_seconds")
    return "?" if seconds is None else f"{seconds / 60:.1f} min"


def row(name: str) -> str | None:
    path = FOLDER / f"{name}.eval.json"
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    detection = report["detection"]
    checkpoint = FOLDER / f"{name}.safetensors"
    size = checkpoint.stat().st_size / 2**20
    return (
        f"| {name} | {report['checkpoint']['context']} | {report['miou']:.3f} | {detection['all']['f1']:.3f} | "
        f"**{report['context_metric']['name']} {report['context_metric']['f1']:.3f}** | {size:.1f} MB | "
        f"{train_minutes(checkpoint)} |"
    )


def main() -> None:
    names = sys.argv[1:] or ["sar_none", "sar_xl", "sar_mamba", "sar_hyper", "slide_none", "slide_xl"]
    print("| checkpoint | context | mIoU | detection F1 | context-dependent F1 | size | training |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        line = row(name)
        if line:
            print(line)


if __name__ == "__main__":
    main()
