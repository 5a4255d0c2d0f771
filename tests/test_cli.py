import zarr

from napari_xt.cli import EXIT_BAD_INPUT, main


def test_info_prints_levels_and_pixel_size(ome_zarr_v05, capsys):
    assert main(["info", str(ome_zarr_v05)]) == 0
    out = capsys.readouterr().out
    assert "OME-Zarr 0.5" in out
    assert "level 2: 300 × 425 px, downsample 4 × 4" in out
    assert "0.25 × 0.25 µm" in out


def test_info_bad_input_exits_2_with_one_line(tmp_path, capsys):
    zarr.create_array(str(tmp_path / "c.zarr"), shape=(4, 4), dtype="complex64")
    assert main(["info", str(tmp_path / "c.zarr")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "c.zarr: pixel type complex64 is not supported" in err[0]
