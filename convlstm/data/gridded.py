"""A radar archive in NetCDF or Zarr as a source of sequences (convlstm.data.sources' interface), read lazily through
xarray.

One variable (--variable; the only gridded one by default) of dims (time, y, x) in any order and any (y, x) size.
Frames are ordered by time; times out of order or repeated are a DataError. A gap in time (a step more than 1.5 times
the archive's usual one, its median) splits the archive into sequences, so a window never spans one; a part shorter
than a window is left out. Values go to the
models' [0, 1] by the transform (convlstm.data.units); no-data pixels (NaN, or the variable's _FillValue /
missing_value, which xarray reads as NaN) stay NaN: the mask that travels with the batch to the loss and the scores
(convlstm.data.sequence.split_valid), while models see 0 there. The file is opened in each process that reads it (a
DataLoader worker opens its own), never pickled.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .errors import DataError
from .units import TRANSFORMS, Units, UnitsError, parse_range, resolve_transform

# train.py's flags (convlstm.config) of a source
OPTIONS = ("variable", "transform", "zr_a", "zr_b", "value_range", "time_variable", "time_step")
GAP_FACTOR = 1.5  # a step this many times the median step is a gap


def _xarray():
    try:
        import xarray
    except ImportError:
        raise DataError("reading NetCDF and Zarr archives needs xarray, netCDF4 and zarr: pip install -e "
                        "'.[nowcast]'") from None
    return xarray


def is_zarr(path) -> bool:
    return os.fspath(path).lower().rstrip("/").endswith(".zarr")


def _open(path):
    """The archive as an xarray Dataset, lazy (a slice reads only its frames; no dask)."""
    kind = "Zarr store" if is_zarr(path) else "NetCDF file"
    try:
        return _xarray().open_dataset(path, cache=False, **({"engine": "zarr"} if is_zarr(path) else {}))
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise DataError(f"{path}: not a readable {kind} ({error})") from None


class GriddedSource:
    """The frames of one variable of a NetCDF archive, split at gaps in time into sequences."""

    def __init__(self, path, variable=None, transform="auto", zr_a=200.0, zr_b=1.6, value_range=None,
                 min_length=None, time_variable=None, time_step=None):
        self.path = os.fspath(path)
        if not (os.path.isdir if is_zarr(self.path) else os.path.isfile)(self.path):
            raise DataError(f"{self.path} does not exist" if not os.path.exists(self.path) else
                            f"{self.path} is not a {'Zarr store (a folder)' if is_zarr(self.path) else 'file'}")
        if transform not in TRANSFORMS:
            raise DataError(f"--transform {transform!r}: expected one of {', '.join(TRANSFORMS)}")
        times, (height, width), units_attr = self._inspect(variable, time_variable, time_step)
        self.times, self.units_attr = times, units_attr
        parts, self.step = self._split(times)
        # minutes where the times are datetimes (the step is then in ns); other times are plain numbers
        self.step_minutes = self.step / 6e10 if self.step and np.issubdtype(times.dtype, np.datetime64) else None
        # a part shorter than a window gives none: left out (self.short), as a gap's frames are
        self.parts = [(a, b) for a, b in parts if b - a >= (min_length or 1)]
        self.short = len(parts) - len(self.parts)
        if not self.parts:
            raise DataError(f"{self.path}: no run of frames without a gap in time is as long as a window of "
                            f"{min_length} (the longest has {max(b - a for a, b in parts)})")
        where = f"{self.path} variable {self.variable!r}"
        try:
            kind = resolve_transform(transform, units_attr, where)
            self.units = Units(kind, zr_a, zr_b, parse_range(value_range))
        except UnitsError as error:
            raise DataError(str(error)) from None
        self.lengths = [stop - start for start, stop in self.parts]
        self.sizes = [(height, width)] * len(self.parts)
        self.frame_shape = (1, height, width)
        base = os.path.basename(self.path.rstrip(os.sep))  # a Zarr store may be named with a trailing slash
        self.names = [f"{base}[{_when(times[start])}..{_when(times[stop - 1])}]" for start, stop in self.parts]
        self._data, self._pid = None, None

    def _inspect(self, variable, time_variable, time_step):
        """Sets self.variable and self.dims (time first); returns (times, (H, W), the units attribute or None).
        NetCDF and Zarr carry their times as a coordinate (time_variable and time_step are HDF5's)."""
        with _open(self.path) as dataset:
            self.variable = self._choose(dataset, variable)
            data = dataset[self.variable]
            self.time_dim = self._time_dim(data)
            if data.ndim != 3:
                raise DataError(f"{self.path}: variable {self.variable!r} has dims {data.dims}; expected (time, y, x)")
            self.dims = (self.time_dim, *[d for d in data.dims if d != self.time_dim])
            return np.asarray(data[self.time_dim].values), tuple(data.sizes[d] for d in self.dims[1:]), \
                data.attrs.get("units")

    def _choose(self, dataset, variable):
        gridded = [name for name, value in dataset.data_vars.items() if value.ndim >= 3]
        if variable is None:
            if len(gridded) != 1:
                raise DataError(f"{self.path}: {len(gridded)} gridded variables ({', '.join(gridded) or 'none'}); "
                                "name one with --variable")
            return gridded[0]
        if variable not in dataset.data_vars:
            raise DataError(f"{self.path}: no variable {variable!r} (variables: "
                            f"{', '.join(dataset.data_vars) or 'none'})")
        return variable

    def _time_dim(self, data):
        named = [d for d in data.dims if d in data.coords and (d == "time" or
                                                               np.issubdtype(data[d].dtype, np.datetime64))]
        if not named and "time" in data.dims:
            raise DataError(f"{self.path}: variable {self.variable!r}'s dim 'time' has no coordinate: no times to "
                            "order its frames by and find gaps in")
        if not named:
            raise DataError(f"{self.path}: variable {self.variable!r} has dims {data.dims}: no time dimension "
                            "(a dim named time, or one with datetime coordinates)")
        return named[0]

    def _split(self, times):
        """([start, stop) of each run of frames without a gap], the median step); a DataError for times out of order
        or repeated."""
        if len(times) == 0:
            raise DataError(f"{self.path}: variable {self.variable!r} holds no frame")
        if np.issubdtype(times.dtype, np.datetime64):
            times = times.astype("datetime64[ns]")
            steps = np.diff(times).astype(np.int64)  # ns
        else:
            steps = np.diff(times.astype(np.float64))
        bad = np.flatnonzero(steps <= 0)
        if len(bad):
            i = int(bad[0]) + 1
            what = "repeated" if times[i] == times[i - 1] else "out of order"
            raise DataError(f"{self.path}: times {what} at frame {i} ({_when(times[i - 1])} then {_when(times[i])}); "
                            "frames must be in increasing time")
        if len(steps) == 0:
            return [(0, 1)], None
        step = float(np.median(steps))
        cuts = [0, *(int(i) + 1 for i in np.flatnonzero(steps > GAP_FACTOR * step)), len(times)]
        return list(zip(cuts[:-1], cuts[1:])), step

    def _array(self):
        # Opened in this process: a DataLoader worker forked after the main process read a frame would otherwise
        # share its HDF5 handle, which is not safe across processes.
        if self._data is None or self._pid != os.getpid():
            self._data, self._pid = _open(self.path)[self.variable].transpose(*self.dims), os.getpid()
        return self._data

    def _read(self, start, stop):
        """Frames [start, stop) of the archive in its units, float32 (t, H, W), NaN where there is no data."""
        return np.asarray(self._array()[start:stop].values, dtype=np.float32)

    def frames(self, index, start, stop):
        """Frames [start, stop) of part `index`: float32 (t, 1, H, W) in [0, 1], NaN where there is no data."""
        first = self.parts[index][0]
        values = self._read(first + start, first + stop)
        return self.units.to_unit(torch.from_numpy(values)).numpy()[:, None]

    def grid(self) -> dict:
        """The archive's coordinates on its (y, x) dims alone (y, x, and any 2-D lat / lon), loaded, with their
        attributes: what a gridded forecast of it carries."""
        with _open(self.path) as dataset:
            data = dataset[self.variable]
            return {name: coord.load() for name, coord in data.coords.items()
                    if coord.dims and set(coord.dims) <= set(self.dims[1:])}

    def scan(self, full=False):
        """Nothing to scan: values are transformed, not checked (NaN is no data)."""
        return {}

    def __getstate__(self):  # the file is reopened in each worker, not pickled
        return {**self.__dict__, "_data": None, "_pid": None}


def gridded_forecast(source: GriddedSource, values: np.ndarray, checkpoint: str):
    """xarray Dataset of forecasts (N, n_out, 1, H, W) in the archive's units, one per part of `source`: its variable
    over (issue_time, lead_time, y, x), issue_time the time of each part's last frame, lead_time the archive's step
    times 1 .. n_out, the archive's (y, x) coordinates and units."""
    xarray = _xarray()
    steps = np.arange(1, values.shape[1] + 1)
    leads = steps * np.timedelta64(int(source.step), "ns") if source.step_minutes else steps * (source.step or 1)
    issued = [source.times[stop - 1] for _, stop in source.parts]
    forecast = xarray.DataArray(
        values[:, :, 0], dims=("issue_time", "lead_time", *source.dims[1:]),
        coords={"issue_time": issued, "lead_time": leads, **source.grid()},
        attrs={"long_name": f"forecast of {source.variable}", **({"units": source.units_attr}
                                                                   if source.units_attr else {})})
    name = source.variable.strip("/").rsplit("/", 1)[-1]  # an HDF5 dataset's path: its last part
    return xarray.Dataset({name: forecast},
                          attrs={"source": f"convlstm predict.py, checkpoint {checkpoint}, from {source.path}"})


def gridded_options(config: dict, variable=None) -> dict:
    """GriddedSource's options from a train.py config (a checkpoint's: its transform as resolved in training);
    `variable` names another variable than the training one."""
    options = {name: config[name] for name in OPTIONS if config.get(name) is not None}
    return {**options, **({"variable": variable} if variable else {})}


def _when(value):
    """A time as text: ISO minutes for datetimes, else as stored."""
    return np.datetime_as_string(value, unit="m") if np.issubdtype(np.asarray(value).dtype, np.datetime64) \
        else str(value)
