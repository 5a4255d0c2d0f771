"""napari-xt's place among napari's readers: for the files it serves better than napari's own reader and
napari-ome-zarr, it records itself as the preferred reader in napari's settings (``plugins.extension2reader``),
so that dropping a slide, a scene or a run directory never asks which reader to use.

Only patterns the user has not chosen a reader for are set; the choice is theirs to change in napari's
Preferences ▸ Plugins ▸ File extension readers. It is recorded when the plugin is first activated (any
napari-xt command: the widget, a sample, a reader) and when the widget opens.
"""

from __future__ import annotations

PLUGIN = "napari-xt"
PREFERRED_PATTERNS = ("*.xt.zarr/", "*.svs", "*.ndpi", "*.ome.tif", "*.ome.tiff", "*.tif", "*.tiff")
"""Directories end with ``/`` in napari's preference patterns (it appends one to a directory's path)."""


def claim_readers() -> list[str]:
    """Record napari-xt as the reader of ``PREFERRED_PATTERNS`` where no reader is chosen; return the patterns
    it set. Never raises (napari's settings may be read-only or absent in a headless process)."""
    try:
        from napari.settings import get_settings

        settings = get_settings()
        current = dict(settings.plugins.extension2reader)
        added = [pattern for pattern in PREFERRED_PATTERNS if pattern not in current]
        if added:
            settings.plugins.extension2reader = {**current, **dict.fromkeys(added, PLUGIN)}
        return added
    except Exception:  # settings unavailable: napari asks once, as without this
        return []


def activate(context=None) -> None:
    """npe2 ``on_activate`` hook."""
    claim_readers()
