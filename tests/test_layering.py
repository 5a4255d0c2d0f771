"""Layering one way (docs/ARCHITECTURE.md): each package imports only the packages below it."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_xt"

ALLOWED = {
    "io": {"io", "_atomic"},
    "model": {"model", "io", "_atomic"},
    "engine": {"engine", "io", "model", "_atomic"},
    "data": {"data", "io"},
    "train": {"train", "io", "model", "engine", "data", "_atomic"},
    "_napari": {"_napari", "train", "engine", "model", "io", "data", "_atomic"},  # the Train xT widget
}


def _imported_packages(path: Path) -> set[str]:
    packages = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "napari_xt" and len(parts) > 1:
                packages.add(parts[1])
    return packages


def test_each_package_imports_only_what_is_below_it():
    offences = []
    for package, allowed in ALLOWED.items():
        for path in sorted((SRC / package).rglob("*.py")):
            for imported in _imported_packages(path) - allowed:
                offences.append(f"{path.relative_to(SRC)} imports napari_xt.{imported}")
    assert offences == []


def test_the_check_sees_imports():
    assert _imported_packages(SRC / "engine" / "runner.py") >= {"engine", "io"}
