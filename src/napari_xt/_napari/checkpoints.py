"""Where the widget finds checkpoints: shipped demo checkpoints, a models folder, and recently used files."""

from __future__ import annotations

import json
import os
from pathlib import Path

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints"
RECENT_LIMIT = 10


def models_folder() -> Path:
    return Path(os.environ.get("NAPARI_XT_MODELS", "~/.napari-xt/models")).expanduser()


def _settings_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME", "~/.config")
    return Path(base).expanduser() / "napari-xt" / "recent.json"


def recent_checkpoints() -> list[Path]:
    try:
        paths = json.loads(_settings_file().read_text())
    except (OSError, ValueError):
        return []
    return [Path(p) for p in paths if Path(p).exists()]


def remember(path: str | Path) -> None:
    """Put ``path`` first in the recently used list (best effort: an unwritable config is no error)."""
    paths = [str(Path(path).resolve())] + [str(p) for p in recent_checkpoints() if p.resolve() != Path(path).resolve()]
    try:
        _settings_file().parent.mkdir(parents=True, exist_ok=True)
        _settings_file().write_text(json.dumps(paths[:RECENT_LIMIT]))
    except OSError:
        pass


def available_checkpoints() -> list[tuple[str, Path]]:
    """``(label, path)`` of every checkpoint on offer: recent first, then the models folder, then shipped ones."""
    seen, found = set(), []
    for group, paths in (
        ("recent", recent_checkpoints()),
        ("models", sorted(models_folder().glob("*.safetensors")) if models_folder().exists() else []),
        ("demo", sorted(SHIPPED.glob("*.safetensors")) if SHIPPED.exists() else []),
    ):
        for path in paths:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                found.append((f"{path.stem} ({group})", path))
    return found


def demo_checkpoint(kind: str, context: str = "xl") -> Path | None:
    path = SHIPPED / f"{kind}_{context}.safetensors"
    return path if path.exists() else None
