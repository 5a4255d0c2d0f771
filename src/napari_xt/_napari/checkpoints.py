"""Where the widget finds checkpoints: shipped demo checkpoints, a models folder, and recently used files."""

from __future__ import annotations

import json
import os
from pathlib import Path

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints"
RECENT_LIMIT = 10


def models_folder() -> Path:
    return Path(os.environ.get("NAPARI_XT_MODELS", "~/.napari-xt/models")).expanduser()


def config_dir() -> Path:
    """napari-xt's settings folder (``$XDG_CONFIG_HOME/napari-xt``, by default ``~/.config/napari-xt``)."""
    return Path(os.environ.get("XDG_CONFIG_HOME", "~/.config")).expanduser() / "napari-xt"


def _settings_file() -> Path:
    return config_dir() / "recent.json"


def load_settings(section: str) -> dict:
    """A widget's saved choices (empty when there are none or the file is unreadable)."""
    try:
        values = json.loads((config_dir() / "settings.json").read_text()).get(section, {})
    except (OSError, ValueError, AttributeError):
        return {}
    return values if isinstance(values, dict) else {}


def save_settings(section: str, values: dict) -> None:
    """Keep a widget's choices for the next napari session (best effort, written atomically)."""
    from napari_xt._atomic import atomic_path

    path = config_dir() / "settings.json"
    try:
        everything = json.loads(path.read_text()) if path.exists() else {}
        everything = everything if isinstance(everything, dict) else {}
    except (OSError, ValueError):
        everything = {}
    everything[section] = values
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(everything, indent=1))
    except OSError:
        pass


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


def conversion_target(source: str | Path) -> Path:
    """Where the widget writes the conversion of a foreign checkpoint: ``<models folder>/<stem>.safetensors``,
    with ``-2``, ``-3``, … when that name is taken by another file."""
    stem = Path(source).stem
    out = models_folder() / f"{stem}.safetensors"
    number = 2
    while out.exists():
        out = models_folder() / f"{stem}-{number}.safetensors"
        number += 1
    return out


def demo_checkpoint(kind: str, context: str = "xl") -> Path | None:
    path = SHIPPED / f"{kind}_{context}.safetensors"
    return path if path.exists() else None
