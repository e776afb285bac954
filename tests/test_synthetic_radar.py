"""The synthetic radar archive (convlstm.data.synthetic_radar): deterministic, laid out as a radar file (units, the
radar's range as NaN, 6-minute steps with one gap), and weather-like (mostly dry, 3-8 cells, rain moving with the
wind). The statistics are checked on the default archive (1200 frames, under a second to make); the rest on short
ones."""
import os
import subprocess
import sys

import numpy as np
import pytest

xr = pytest.importorskip("xarray")
pytest.importorskip("netCDF4")

from convlstm.data.synthetic_radar import dry_share, main, make_archive, write_archive  # noqa: E402

SIZE = 64
CLI = [sys.executable, "-m", "convlstm.data.synthetic_radar"]


@pytest.fixture(scope="module")
def archive():
    return make_archive()


def test_same_seed_same_archive_another_seed_another():
    first, again, other = make_archive(frames=60, seed=3), make_archive(frames=60, seed=3), make_archive(frames=60)
    for name in ("rain", "cells_alive", "wind_u", "wind_v", "time"):
        np.testing.assert_array_equal(first[name].values, again[name].values)
    assert first.attrs["source"] == again.attrs["source"] and "seed=3" in first.attrs["source"]
    assert not np.array_equal(first.rain.values, other.rain.values, equal_nan=True)


def test_layout(archive):
    rain = archive.rain
    assert rain.dims == ("time", "y", "x") and rain.shape == (1200, SIZE, SIZE) and rain.dtype == np.float32
    assert rain.attrs["units"] == "mm/h" and rain.attrs["long_name"]
    centres = np.arange(SIZE) - (SIZE - 1) / 2  # km from the radar, 1 km pixels
    np.testing.assert_array_equal(archive.x.values, centres)
    np.testing.assert_array_equal(archive.y.values, centres)
    assert archive.x.attrs["units"] == archive.y.attrs["units"] == "km"
    assert archive.time.values[0] == np.datetime64("2026-06-01T00:00")
    assert "make_archive(frames=1200" in archive.attrs["source"] and "seed=0" in archive.attrs["source"]


def test_six_minute_steps_but_one_gap(archive):
    minutes = np.diff(archive.time.values) / np.timedelta64(1, "m")
    gaps = np.flatnonzero(minutes != 6)
    assert gaps.tolist() == [719]  # round(0.6 * 1200) frames before it
    assert minutes[719] == 36  # 5 frames missing
    assert archive.attrs["gap_after_frame"] == 719


def test_nan_exactly_beyond_the_radar_range(archive):
    rows, cols = np.indices((SIZE, SIZE)) - (SIZE - 1) / 2
    beyond = np.hypot(rows, cols) > 30
    assert 0 < beyond.sum() < SIZE * SIZE
    np.testing.assert_array_equal(np.isnan(archive.rain.values), np.broadcast_to(beyond, archive.rain.shape))


def test_mostly_dry(archive):
    rain = archive.rain.values
    valid = rain[~np.isnan(rain)]
    share = (valid == 0).mean()
    assert 0.70 <= share <= 0.85
    assert dry_share(archive) == pytest.approx(share)


def test_wet_intensities(archive):
    rain = archive.rain.values
    wet = rain[rain > 0]
    assert wet.min() >= 0.1 and wet.max() <= 60  # dry below 0.1 mm/h, peaks clipped at 60
    assert (wet > 5).mean() > 0.05  # cells with strong cores, not only drizzle
    assert not np.any(rain < 0)


def test_three_to_eight_cells(archive):
    alive = archive.cells_alive.values
    assert alive.min() >= 3 and alive.max() <= 8
    assert len(np.unique(alive)) > 2  # births and deaths, not a fixed set


def test_wind_in_range_and_turning_slowly(archive):
    speed = np.hypot(archive.wind_u.values, archive.wind_v.values)
    assert speed.min() >= 0.5 - 1e-6 and speed.max() <= 2 + 1e-6
    direction = np.degrees(np.arctan2(archive.wind_v.values, archive.wind_u.values))
    turn = np.abs((np.diff(direction) + 180) % 360 - 180)
    turn[719] /= 6  # the gap's six steps
    assert turn.max() <= 3 + 1e-3


def test_rain_moves_with_the_wind(archive):
    """The shift that best lines frame t up with frame t + 4 (a cross-correlation peak) is the wind's 4 steps,
    within a pixel or so: cells growing and dying blur it, the drift decides it."""
    rain, k = np.nan_to_num(archive.rain.values[:400]), 4
    n = 2 * SIZE  # zero padding: no wrap-around
    spectra = np.fft.rfft2(rain, s=(n, n))
    corr = np.fft.irfft2(np.conj(spectra[:-k]) * spectra[k:], s=(n, n)).reshape(len(rain) - k, -1)
    dy, dx = np.unravel_index(corr.argmax(1), (n, n))
    shift = np.stack([(dx + SIZE) % n - SIZE, (dy + SIZE) % n - SIZE], 1)  # (frames - k, 2) px along x, y
    wind = np.stack([archive.wind_u.values[:400], archive.wind_v.values[:400]], 1)
    drift = sum(wind[i:len(wind) - k + i] for i in range(k))
    both_wet = (rain[:-k].sum((1, 2)) > 0) & (rain[k:].sum((1, 2)) > 0)
    error = np.hypot(*(shift - drift)[both_wet].T)
    assert both_wet.mean() > 0.9
    assert np.median(np.hypot(*drift[both_wet].T)) > 2  # the rain has somewhere to go
    assert np.median(error) < 1.5


def test_written_file_reads_back(tmp_path):
    path = tmp_path / "radar.nc"
    made = write_archive(path, frames=40, seed=5)
    assert sorted(os.listdir(tmp_path)) == ["radar.nc"]  # the temp file renamed, none left
    with xr.open_dataset(path) as read:
        np.testing.assert_array_equal(read.rain.values, made.rain.values)  # NaN where NaN
        np.testing.assert_array_equal(read.time.values, made.time.values)
        assert np.isnan(read.rain.encoding["_FillValue"]) and read.rain.attrs["units"] == "mm/h"
        assert read.attrs["source"] == made.attrs["source"]


@pytest.mark.parametrize("flags, named", [
    (["--size", "0"], "size"), (["--frames", "-3"], "frames"), (["--cells_min", "9"], "cells_min"),
    (["--life_min", "70"], "life_min"), (["--wind_min", "3"], "wind_min"), (["--gap_at", "1.5"], "gap_at"),
    (["--frames", "x"], "frames")], ids=["size0", "frames-neg", "cells-min-gt-max", "life", "wind", "gap", "not-int"])
def test_bad_flag_one_line_exit_2(tmp_path, capsys, flags, named):
    with pytest.raises(SystemExit) as stopped:
        main(["--out", str(tmp_path / "r.nc"), *flags])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error:" in error and named in error
    assert not os.listdir(tmp_path)


def test_cli_writes_refuses_to_overwrite_and_rejects_bad_flags(tmp_path):
    """The module as a program: one line on success; an existing --out stays as it was (exit 1) unless --overwrite;
    a bad flag ends with argparse's error line (exit 2), no traceback."""
    path = tmp_path / "radar.nc"
    bad = subprocess.Popen([*CLI, "--out", str(tmp_path / "bad.nc"), "--cells_min", "5", "--cells_max", "4"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    made = subprocess.run([*CLI, "--out", str(path), "--frames", "30", "--seed", "1"], capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert made.stdout.count("\n") == 1 and str(path) in made.stdout and "30 frames" in made.stdout
    written = path.read_bytes()
    again = subprocess.run([*CLI, "--out", str(path), "--frames", "20"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "--overwrite" in again.stderr
    assert path.read_bytes() == written
    _, stderr = bad.communicate(timeout=120)
    assert bad.returncode == 2 and "Traceback" not in stderr
    assert "error:" in stderr.splitlines()[-1] and "cells_min" in stderr.splitlines()[-1]
    assert not (tmp_path / "bad.nc").exists()
    main(["--out", str(path), "--frames", "20", "--overwrite"])
    with xr.open_dataset(path) as read:
        assert read.sizes["time"] == 20
