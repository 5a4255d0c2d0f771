"""Packaging: the manifest is found, every python_name imports, imports stay light (lint and the wheel build:
scripts/lint.sh)."""

import importlib
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _manifest():
    return yaml.safe_load((ROOT / "napari.yaml").read_text())


def test_every_python_name_in_the_manifest_imports():
    names = [command["python_name"] for command in _manifest()["contributions"]["commands"]]
    assert names
    for name in names:
        module, attribute = name.split(":")
        assert callable(getattr(importlib.import_module(module), attribute)), name


def test_npe2_finds_and_validates_the_installed_manifest():
    from npe2 import PluginManager

    manager = PluginManager()
    manager.discover()
    manifest = manager.get_manifest("napari-xt")
    assert manifest.contributions.readers and manifest.contributions.sample_data


def test_importing_the_package_imports_neither_torch_nor_qt():
    code = (
        "import sys, napari_xt, napari_xt.io, napari_xt._napari.reader, napari_xt.cli;"
        "heavy = [m for m in ('torch', 'qtpy', 'PyQt6', 'PyQt5', 'PySide6', 'napari') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_reader_declines_what_it_does_not_handle(tmp_path):
    from napari_xt._napari.reader import get_reader

    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "folder").mkdir()
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "folder")) is None
    assert get_reader([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]) is None
