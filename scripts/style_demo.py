"""Give the shipped demo checkpoints the colours and display names of their presets (``napari-xt style``: the
weights stay byte for byte), and record the new file hashes in their evaluation reports. Run after changing
``SLIDE_HEADS`` / ``SAR_HEADS`` colours without retraining: ``.venv/bin/python scripts/style_demo.py``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from napari_xt.model.presets import SAR_HEADS, SLIDE_HEADS

FOLDER = Path(__file__).resolve().parents[1] / "src" / "napari_xt" / "checkpoints"
CLI = Path(sys.executable).with_name("napari-xt")


def main() -> int:
    for path in sorted(FOLDER.glob("*.safetensors")):
        heads = SLIDE_HEADS if path.stem.startswith("slide") else SAR_HEADS
        command = [str(CLI), "style", str(path.relative_to(FOLDER.parents[2]))]
        command += [f"--colour={name}={colour}" for name, colour in heads.colours.items()]
        command += [f"--name={name}={words}" for name, words in heads.display_names.items()]
        output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=FOLDER.parents[2]).stdout
        digest = output.split("sha256 ")[1].split()[0]
        for report in FOLDER.glob(f"{path.stem}.eval*.json"):
            data = json.loads(report.read_text())
            data["checkpoint"]["sha256"] = digest
            report.write_text(json.dumps(data, indent=2))
        print(f"{path.name}: {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
