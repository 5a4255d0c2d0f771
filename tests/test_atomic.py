"""Atomic writes: the old file survives a failed write; nothing is left beside it."""

import pytest

from napari_xt._atomic import atomic_path, write_text_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "detections.csv"
    write_text_atomic(target, "old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["detections.csv"]
    write_text_atomic(target, "new\n")
    assert target.read_text() == "new\n"
