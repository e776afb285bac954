"""A radar archive in plain HDF5 (.h5, .hdf5) as a source of sequences: GriddedSource read through h5py.

HDF5 files name no dimensions: the dataset (--variable /group/name; by default the file's only 3-D dataset) is read as
(time, y, x). Its times come from a 1-D dataset of as many values (--time_variable /group/time: numbers with a CF
`units` attribute such as "seconds since 2026-06-01 00:00", or ISO date strings), or, without one, are --time_step
minutes apart from frame 0 (no gaps then). No data: NaN, or the dataset's `_FillValue`, `missing_value` or `nodata`
attribute. Units: its `units` attribute, as NetCDF's. Gaps, the transform and the no-data mask work as for NetCDF
(convlstm.data.gridded); the file is opened in each process that reads it.
"""
from __future__ import annotations

import os

import numpy as np

from .errors import DataError
from .gridded import GriddedSource

EXTENSIONS = (".h5", ".hdf5", ".hdf")
NO_DATA_ATTRIBUTES = ("_FillValue", "missing_value", "nodata")


def _h5py():
    try:
        import h5py
    except ImportError:
        raise DataError("reading HDF5 archives needs h5py: pip install -e '.[nowcast]'") from None
    return h5py


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


class HDF5Source(GriddedSource):
    """The frames of one 3-D dataset of an HDF5 file, split at gaps in time into sequences."""

    def _open_file(self):
        try:
            return _h5py().File(self.path, "r")
        except OSError as error:
            raise DataError(f"{self.path}: not a readable HDF5 file ({error})") from None

    def _inspect(self, variable, time_variable, time_step):
        with self._open_file() as handle:
            self.variable = self._choose_dataset(handle, variable)
            data = handle[self.variable]
            frames, height, width = data.shape
            self.dims = ("time", "y", "x")
            self.no_data = [float(np.asarray(data.attrs[name]).ravel()[0]) for name in NO_DATA_ATTRIBUTES
                            if name in data.attrs]
            units = _text(data.attrs["units"]) if "units" in data.attrs else None
            times = self._times(handle, time_variable, time_step, frames)
        return times, (height, width), units

    def _choose_dataset(self, handle, variable):
        found = []
        handle.visititems(lambda name, item: found.append("/" + name) if getattr(item, "ndim", 0) == 3 else None)
        if variable is None:
            if len(found) != 1:
                raise DataError(f"{self.path}: {len(found)} 3-D datasets ({', '.join(found) or 'none'}); name one "
                                "with --variable /group/name")
            return found[0]
        name = "/" + variable.lstrip("/")
        if name not in handle or getattr(handle[name], "ndim", 0) != 3:
            raise DataError(f"{self.path}: no 3-D dataset {name!r} (3-D datasets: {', '.join(found) or 'none'})")
        return name

    def _times(self, handle, time_variable, time_step, frames):
        if time_variable is None:
            if not time_step:
                raise DataError(f"{self.path}: HDF5 names no time: give --time_variable /group/time (a dataset of "
                                "the frames' times) or --time_step MINUTES")
            return np.datetime64("1970-01-01T00:00", "ns") + np.arange(frames) * np.timedelta64(
                int(round(time_step * 60e9)), "ns")
        name = "/" + time_variable.lstrip("/")
        if name not in handle or handle[name].shape != (frames,):
            shape = handle[name].shape if name in handle else None
            raise DataError(f"{self.path}: --time_variable {name!r} " + (f"has shape {shape}, not ({frames},), one "
                            f"time per frame of {self.variable}" if shape else "is not in the file"))
        values, units = handle[name][()], handle[name].attrs.get("units")
        try:
            if values.dtype.kind in "SUO":  # ISO strings
                return np.array([np.datetime64(_text(v)) for v in values]).astype("datetime64[ns]")
            if units is None:
                raise ValueError("numbers without a units attribute such as 'seconds since 2026-06-01'")
            from xarray.coding.times import decode_cf_datetime  # CF's "<unit> since <date>", as NetCDF's times
            return np.asarray(decode_cf_datetime(values, _text(units))).astype("datetime64[ns]")
        except (ValueError, TypeError, ImportError) as error:
            raise DataError(f"{self.path}: --time_variable {name!r} cannot be read as times ({error})") from None

    def _read(self, start, stop):
        if self._data is None or self._pid != os.getpid():  # this process's own handle (see GriddedSource)
            self._data, self._pid = self._open_file(), os.getpid()
        values = np.asarray(self._data[self.variable][start:stop], dtype=np.float32)
        for value in self.no_data:
            values[values == value] = np.nan
        return values

    def grid(self) -> dict:
        """Pixel indices as y and x: plain HDF5 carries no coordinates this reader knows."""
        height, width = self.frame_shape[1:]
        return {"y": np.arange(height), "x": np.arange(width)}

    def __getstate__(self):
        return {**self.__dict__, "_data": None, "_pid": None}
