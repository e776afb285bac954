"""Radar archives in NetCDF (convlstm.data.gridded, convlstm.data.units): read lazily by time, split at gaps, no-data
pixels as a mask that reaches the loss and the scores, units in and out; a bad archive is one line and writes
nothing; train.py, evaluate.py --scores nowcast and predict.py on one."""
import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
import torch

from convlstm.checkpoint import read_checkpoint
from convlstm.data.gridded import GriddedSource
from convlstm.data.sequence import split_valid
from convlstm.data.units import HKO7_ZR, Units
from convlstm.data.windows import Windows
from convlstm.losses import FrameLoss
from helpers import load_script

xr = pytest.importorskip("xarray")
train_script, evaluate_script, predict_script = (load_script(name) for name in ("train", "evaluate", "predict"))

SIZE = 16
TINY = ["--model", "openstl_convlstm", "--n_hidden_dim", "4", "--num_layers", "1", "--kernel_size", "3",
        "--patch_size", "2", "--batch_size", "4", "--max_steps", "3", "--log_every", "3", "--image_every", "3",
        "--device", "cpu", "--n_in", "3", "--n_out", "4", "--stride", "2"]


def archive(path, frames=40, gap_at=25, missing=3, units="mm/h", fill=None, dims=("time", "y", "x"), times=None):
    """A rain cell moving right across SIZE x SIZE frames every 6 minutes, one gap in time (`missing` frames left
    out after frame gap_at), no data beyond 7 px from the centre (NaN, or `fill` as the _FillValue)."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    rain = np.stack([20 * np.exp(-((xx - (2 + 0.5 * t) % SIZE) ** 2 + (yy - 8) ** 2) / 6) for t in range(frames)])
    rain = np.where(rain < 0.1, 0, rain).astype(np.float32)
    outside = (yy - 7.5) ** 2 + (xx - 7.5) ** 2 > 7 ** 2
    rain[:, outside] = np.nan
    if times is None:
        times = pd.date_range("2026-06-01", periods=frames + missing, freq="6min").delete(
            range(gap_at, gap_at + missing))
    # a grid as radar archives carry it: y and x in km, and 2-D latitude and longitude
    grid = {"y": ("y", np.arange(SIZE) - 7.5, {"units": "km"}), "x": ("x", np.arange(SIZE) - 7.5, {"units": "km"}),
            "lat": (("y", "x"), 52 + yy / 100, {"units": "degrees_north"}),
            "lon": (("y", "x"), 5 + xx / 100, {"units": "degrees_east"})}
    data = xr.DataArray(rain, dims=("time", "y", "x"), coords={"time": times, **grid},
                        attrs={"units": units} if units else {})
    encoding = {"rain": {"_FillValue": fill}} if fill is not None else {}
    xr.Dataset({"rain": data.transpose(*dims)}).to_netcdf(path, encoding=encoding)
    return rain


def convert(path, suffix):
    """The NetCDF archive at `path` as a Zarr store (through xarray) or a plain HDF5 file (h5py: /radar/rain with
    _FillValue -999 and units, /radar/time in seconds since 2026-06-01); returns the new path."""
    target = path.with_suffix(suffix)
    with xr.open_dataset(path) as dataset:
        if suffix == ".zarr":
            dataset.to_zarr(target)
            return target
        h5py = pytest.importorskip("h5py")
        seconds = (dataset["time"].values - np.datetime64("2026-06-01")) / np.timedelta64(1, "s")
        with h5py.File(target, "w") as handle:
            rain = handle.create_dataset("radar/rain", data=np.nan_to_num(dataset["rain"].values, nan=-999.0))
            rain.attrs.update({"units": "mm/h", "_FillValue": -999.0})
            handle.create_dataset("radar/time", data=seconds).attrs["units"] = "seconds since 2026-06-01 00:00"
    return target


def test_archive_reads_by_time_split_at_the_gap_with_no_data_as_nan(tmp_path):
    rain = archive(tmp_path / "radar.nc", dims=("y", "x", "time"), fill=-999.0)  # stored (y, x, time), fill -999
    source = GriddedSource(tmp_path / "radar.nc", min_length=7)
    assert source.variable == "rain" and source.units.kind == "rainrate" and source.frame_shape == (1, SIZE, SIZE)
    assert source.lengths == [25, 15] and source.step == 6 * 60 * 1e9  # the median step, in ns
    assert source.names[1] == "radar.nc[2026-06-01T02:48..2026-06-01T04:12]"
    frames = source.frames(1, 2, 5)  # frames 27-29 of the archive
    assert frames.shape == (3, 1, SIZE, SIZE) and frames.dtype == np.float32
    assert np.array_equal(np.isnan(frames[:, 0]), np.isnan(rain[27:30]))  # -999 read as no data
    expected = Units("rainrate").to_unit(torch.from_numpy(rain[27:30])).numpy()
    np.testing.assert_allclose(frames[:, 0], expected, rtol=1e-6)
    windows = Windows(source, length=7, stride=2)  # never across the gap: each window inside one part
    assert all(start + 7 <= source.lengths[part] for part, start in windows.index)
    assert len(windows) == 10 + 5
    assert GriddedSource(tmp_path / "radar.nc", min_length=16).lengths == [25]  # the short part is left out
    assert GriddedSource(tmp_path / "radar.nc", min_length=16).short == 1


def test_workers_read_what_the_main_process_reads(tmp_path):
    """The main process reads a frame first (train.py checks the first window), then two forked DataLoader workers
    read every window: each opens the file itself, and every window equals the main process's read."""
    archive(tmp_path / "radar.nc")
    windows = Windows(GriddedSource(tmp_path / "radar.nc", min_length=7), length=7, stride=2)
    expected = torch.stack([windows[i] for i in range(len(windows))])
    loader = torch.utils.data.DataLoader(windows, batch_size=3, num_workers=2)
    torch.testing.assert_close(torch.cat(list(loader)), expected, equal_nan=True, rtol=0, atol=0)


def test_a_zarr_store_reads_as_the_netcdf_file_does(tmp_path):
    pytest.importorskip("zarr")
    archive(tmp_path / "radar.nc", fill=-999.0)
    xr.open_dataset(tmp_path / "radar.nc").to_zarr(tmp_path / "radar.zarr")
    netcdf = GriddedSource(tmp_path / "radar.nc", min_length=7)
    zarr = GriddedSource(str(tmp_path / "radar.zarr") + "/", min_length=7)
    assert (zarr.lengths, zarr.units, zarr.names) == (netcdf.lengths, netcdf.units,
                                                      [name.replace(".nc", ".zarr") for name in netcdf.names])
    np.testing.assert_array_equal(zarr.frames(1, 0, 7), netcdf.frames(1, 0, 7))


def test_units_map_to_the_unit_scale_and_back():
    rain = torch.tensor([0.0, 0.5, 2.0, 10.0, 30.0, float("nan")])
    for zr in ((200.0, 1.6), HKO7_ZR):
        units = Units("rainrate", *zr)
        scaled = units.to_unit(rain)
        assert scaled[0] == 0 and (scaled[1:5] > 0).all() and (scaled[1:5] < 1).all() and torch.isnan(scaled[5])
        torch.testing.assert_close(units.from_unit(scaled), rain, equal_nan=True, rtol=1e-5, atol=1e-6)
    dbz = Units("dbz")  # (dBZ + 10) / 70; 23.0 dBZ is 1.0 mm/h by Marshall-Palmer (10 log10 200 = 23.01)
    torch.testing.assert_close(dbz.to_unit(torch.tensor([-10.0, 25.0, 60.0, 80.0])), torch.tensor([0, 0.5, 1, 1.]))
    assert dbz.rain_rate(torch.tensor([23.0103])).item() == pytest.approx(1.0, rel=1e-4)
    assert dbz.rain_rate(torch.tensor([-10.0])).item() == 0  # the bottom of the scale is dry
    linear = Units("none", value_range=(0.0, 50.0))
    torch.testing.assert_close(linear.from_unit(linear.to_unit(torch.tensor([0.0, 12.5, 50.0]))),
                               torch.tensor([0.0, 12.5, 50.0]))


def test_no_data_is_out_of_the_loss_and_zero_for_the_model():
    batch = torch.rand(2, 5, 1, 4, 4)
    batch[:, :, :, 0, 0] = float("nan")
    filled, valid = split_valid(batch)
    assert (filled[:, :, :, 0, 0] == 0).all() and not valid[:, :, :, 0, 0].any() and valid[:, :, :, 1:].all()
    pred, target, mse = torch.rand(2, 5, 1, 4, 4), filled.clone(), FrameLoss("mse")
    loss = mse(pred, target, valid)
    target[:, :, :, 0, 0] = 123.0  # what is under the mask changes nothing
    assert mse(pred, target, valid) == loss
    assert loss == pytest.approx(((pred - filled)[valid] ** 2).mean().item())
    clean = torch.rand(2, 5, 1, 4, 4)
    assert split_valid(clean)[1] is None and mse(pred, clean) == torch.nn.functional.mse_loss(pred, clean)


@pytest.mark.parametrize("case", ["missing_variable", "no_time_dimension", "out_of_order", "repeated",
                                  "unknown_units", "units_contradict", "zarr_without_time_coordinate",
                                  "hdf5_missing_dataset", "hdf5_without_times"])
def test_bad_archive_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    path, flags = tmp_path / "radar.nc", []
    times = pd.date_range("2026-06-01", periods=30, freq="6min")
    if case == "missing_variable":
        archive(path, frames=30, missing=0)
        flags, expected = ["--variable", "dbz"], "radar.nc: no variable 'dbz' (variables: rain)"
    elif case == "no_time_dimension":
        xr.Dataset({"rain": (("band", "y", "x"), np.zeros((30, 4, 4), np.float32))}).to_netcdf(path)
        expected = "variable 'rain' has dims ('band', 'y', 'x'): no time dimension"
    elif case == "out_of_order":
        archive(path, frames=30, missing=0, times=times[[0, 1, 3, 2, *range(4, 30)]])
        expected = "times out of order at frame 3 (2026-06-01T00:18 then 2026-06-01T00:12)"
    elif case == "repeated":
        archive(path, frames=30, missing=0, times=times[[0, 1, 1, *range(3, 30)]])
        expected = "times repeated at frame 2"
    elif case == "unknown_units":
        archive(path, frames=30, missing=0, units="K")
        expected = "variable 'rain' has units 'K', which --transform auto cannot convert"
    elif case == "units_contradict":
        archive(path, frames=30, missing=0, units="dBZ")
        flags, expected = ["--transform", "rainrate"], "--transform rainrate but"
    elif case.startswith("hdf5"):
        archive(path, frames=30, missing=0)
        path = convert(path, ".h5")
        flags, expected = (["--variable", "/radar/dbz", "--time_variable", "/radar/time"],
                           "radar.h5: no 3-D dataset '/radar/dbz' (3-D datasets: /radar/rain)") \
            if case == "hdf5_missing_dataset" else ([], "HDF5 names no time: give --time_variable")
    else:
        pytest.importorskip("zarr")
        path = tmp_path / "radar.zarr"
        xr.Dataset({"rain": (("time", "y", "x"), np.zeros((30, 4, 4), np.float32), {"units": "mm/h"})}).to_zarr(path)
        expected = "radar.zarr: variable 'rain''s dim 'time' has no coordinate"
    status = train_script.main(["--run_dir", str(tmp_path / "run"), "--data", str(path), *flags, *TINY,
                                "--num_workers", "0"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(lines) == 1 and lines[0].startswith("train.py: error: "), lines
    assert expected in lines[0], lines
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("suffix", [".nc", ".zarr", ".h5"])
def test_train_evaluate_predict_on_an_archive(tmp_path, capsys, suffix):
    """NetCDF, Zarr and HDF5 alike: two workers read the archive (each opens the file); the checkpoint keeps the
    transform; evaluate.py scores the model and persistence per threshold and lead time; predict.py answers in mm/h,
    no data where it had none, and writes the forecast as gridded data."""
    if suffix == ".zarr":
        pytest.importorskip("zarr")
    rain = archive(tmp_path / "radar.nc")
    archive(tmp_path / "test.nc", frames=20, missing=0)
    data, test = (convert(tmp_path / name, suffix) if suffix != ".nc" else tmp_path / name
                  for name in ("radar.nc", "test.nc"))
    run = tmp_path / "run"
    time_flags = ["--variable", "/radar/rain", "--time_variable", "/radar/time"] if suffix == ".h5" else []
    assert train_script.main(["--run_dir", str(run), "--data", str(data), "--num_workers", "2",
                              "--val_data", str(test), *TINY, *time_flags]) == 0
    log = (run / "train.log").read_text()
    assert f"split at gaps in time: radar{suffix}[2026-06-01T00:00..2026-06-01T02:24] 10, " \
           f"radar{suffix}[2026-06-01T02:48..2026-06-01T04:12] 5" in log
    state = read_checkpoint(str(run / "checkpoints" / "latest.pt"))
    assert state["config"]["transform"] == "rainrate" and state["config"]["zr_a"] == 200.0
    capsys.readouterr()
    out = tmp_path / "eval"
    evaluate_script.main(["--checkpoint", str(run / "checkpoints" / "latest.pt"), "--data", str(test),
                          "--out_dir", str(out), "--scores", "nowcast", "--stride", "2", "--save_predictions"])
    printed = capsys.readouterr().out
    assert "CSI over all lead times, thresholds in mm/h" in printed and "persistence" in printed
    results = json.loads((out / "metrics.json").read_text())
    nowcast = results["nowcast"]
    assert nowcast["units"] == "mm/h" and nowcast["model"]["thresholds"] == [0.5, 2.0, 5.0, 10.0, 30.0]
    assert len(nowcast["persistence"]["by_lead"]["csi"]) == 4 and results["data"]["step_minutes"] == 6
    counts = np.array(nowcast["persistence"]["counts"])  # (lead, threshold, 4): only the valid pixels counted
    valid_pixels = int((~np.isnan(rain[0])).sum())
    assert (counts.sum(axis=2) == results["num_sequences"] * valid_pixels).all()
    assert (out / "csi_by_lead.png").stat().st_size > 0
    saved = np.load(out / "predictions.npz")  # in mm/h, NaN where there is no data
    np.testing.assert_allclose(saved["target"][0, :, 0], rain[3:7], rtol=1e-4, atol=1e-4)
    predict_script.main(["--checkpoint", str(run / "checkpoints" / "latest.pt"), "--input", str(test),
                         "--out", str(tmp_path / "pred")])
    predictions = np.load(tmp_path / "pred" / "predictions.npy")
    assert predictions.shape == (1, 4, 1, SIZE, SIZE)
    assert np.array_equal(np.isnan(predictions[0, :, 0]), np.broadcast_to(np.isnan(rain[0]), (4, SIZE, SIZE)))
    assert np.nanmin(predictions) >= 0
    assert json.loads((tmp_path / "pred" / "predict.json").read_text())["layout"].startswith(
        "(N, T, C, H, W) in mm/h")
    # pictures in rain colours with a colour bar in mm/h under them (grey frames would have R == G == B everywhere)
    from PIL import Image
    strip = np.asarray(Image.open(next((tmp_path / "pred" / "strips").glob("*.png"))).convert("RGB")).astype(int)
    assert strip.shape[0] > SIZE + 20 and (strip[..., 0] != strip[..., 2]).any()
    # the forecast as gridded data, as a user opens it: the archive's variable, units and grid, issue and lead times
    with xr.open_dataset(tmp_path / "pred" / "forecast.nc") as forecast:
        rain_forecast = forecast["rain"]  # (HDF5's /radar/rain: its last part)
        assert rain_forecast.dims == ("issue_time", "lead_time", "y", "x") and rain_forecast.attrs["units"] == "mm/h"
        assert [pd.Timestamp(t) for t in forecast["issue_time"].values] == [pd.Timestamp("2026-06-01T01:54")]
        assert (forecast["lead_time"].values / np.timedelta64(1, "m")).tolist() == [6, 12, 18, 24]
        np.testing.assert_array_equal(rain_forecast.values, predictions[:, :, 0])
        if suffix != ".h5":  # the archive's grid (plain HDF5 names none: pixel indices)
            assert forecast["lat"].dims == ("y", "x") and forecast["lat"].attrs["units"] == "degrees_north"
            np.testing.assert_allclose(forecast["lon"].values, 5 + np.mgrid[:SIZE, :SIZE][1] / 100)
            assert forecast["x"].attrs["units"] == "km" and forecast["x"].values[0] == -7.5
    if suffix == ".nc" and importlib.util.find_spec("zarr"):
        predict_script.main(["--checkpoint", str(run / "checkpoints" / "latest.pt"), "--input",
                             str(tmp_path / "test.nc"), "--out", str(tmp_path / "pred_zarr"), "--format", "zarr"])
        with xr.open_zarr(tmp_path / "pred_zarr" / "forecast.zarr") as forecast:
            np.testing.assert_array_equal(forecast["rain"].values, predictions[:, :, 0])


def test_nowcast_scores_need_thresholds_where_the_data_have_no_rain_rate():
    """--scores nowcast: thresholds default to HKO-7's mm/h for dBZ and mm/h data; --transform none or data without
    a transform need --thresholds (one line otherwise); bad --thresholds are one line."""
    parser = evaluate_script.build_parser()

    def scoring(config, *flags):
        args = parser.parse_args(["--checkpoint", "c.pt", "--out_dir", "o", "--scores", "nowcast", *flags])
        return evaluate_script.nowcast_scoring(args, config)
    units, thresholds = scoring({"transform": "dbz"})
    assert units.kind == "dbz" and thresholds == (0.5, 2.0, 5.0, 10.0, 30.0)
    for config in ({"transform": "none", "value_range": "0,50"}, {"transform": "auto"}):
        with pytest.raises(evaluate_script.EvalError, match="the data have no rain rate .* give --thresholds"):
            scoring(config)
    assert scoring({"transform": "none", "value_range": "0,50"}, "--thresholds", "1,10")[1] == (1.0, 10.0)
    with pytest.raises(evaluate_script.EvalError, match="--thresholds '1,x': expected numbers"):
        scoring({"transform": "dbz"}, "--thresholds", "1,x")


def test_evaluating_an_archive_in_other_units_is_one_line(tmp_path, capsys):
    """A model trained on mm/h, evaluated on an archive in dBZ: the checkpoint's transform meets the other units
    attribute, one line, exit 2, nothing written."""
    archive(tmp_path / "radar.nc")
    archive(tmp_path / "dbz.nc", frames=20, missing=0, units="dBZ")
    run = tmp_path / "run"
    assert train_script.main(["--run_dir", str(run), "--data", str(tmp_path / "radar.nc"), "--val_fraction", "0.5",
                              "--num_workers", "0", *TINY]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        evaluate_script.main(["--checkpoint", str(run / "checkpoints" / "latest.pt"), "--data",
                              str(tmp_path / "dbz.nc"), "--out_dir", str(tmp_path / "eval")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(lines) == 1 and "--transform rainrate but" in lines[0] and \
        "is in 'dBZ'" in lines[0], lines
    assert not (tmp_path / "eval" / "metrics.json").exists()
