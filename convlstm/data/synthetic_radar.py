"""A synthetic radar archive that behaves like radar: rain cells born, growing, decaying and drifting with one wind,
seen by a radar of limited range, with a gap in the clock. For tests, examples and benchmarks; a pure function of its
parameters (seed included).

    python -m convlstm.data.synthetic_radar --out radar.nc [--frames 1200 --seed 0 ...]

The file: `rain` (time, y, x) float32 in mm/h on 1 km pixels every 6 minutes, NaN (its _FillValue) beyond the radar's
range in every frame and nowhere else; `cells_alive` (time,) the number of cells in the simulation at each frame, and
`wind_u`, `wind_v` (time,) the wind that moves them, in pixels per frame step (the truth a test or a baseline can
check against). The global attribute `source` names the generator and every parameter.

The weather, step by step:
- Cells: a rotated elliptic Gaussian each, its width at half its peak drawn in [width_min, width_max] pixels per axis,
  its peak log-normal clipped to [peak_min, peak_max] mm/h. Over a lifetime drawn in [life_min, life_max] frames the
  peak follows the envelope e = sin(pi * (age + 1) / (life + 1)) and the widths (1 + e) / 2 of theirs: born weak and
  small, strongest and widest mid-life, gone at the end. A pixel takes its strongest cell's rain (overlaps never
  exceed peak_max); below dry_below mm/h it is dry, exactly 0, as a radar's detection threshold makes it.
- Births: Poisson(birth_rate) a frame, raised to cells_min and cut to cells_max, so the count stays in range; a cell
  is born anywhere in the frame or on its upwind side up to width_max outside, so rain also drifts in. A cell whose
  centre is farther than that outside the frame has left the radar's view for good and dies early.
- Wind: one for all cells, speed a reflected random walk in [wind_min, wind_max] px a frame (speed_step its step's
  standard deviation), direction turning by a normal step of turn_max / 2 degrees clipped to turn_max a frame.
- The gap: after round(gap_at * frames) frames the clock jumps by gap_frames + 1 steps. The weather runs on through
  the missing steps, as if a real radar's frames were lost, not as if time had stopped.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys

import numpy as np

from ..atomic import describe, temp_path

# One cell's fields; a structured array of them is the simulation's state (masking and concatenating stay one-liners).
CELL = np.dtype([("x", "f8"), ("y", "f8"), ("age", "i8"), ("life", "i8"), ("peak", "f8"),
                 ("sigma_a", "f8"), ("sigma_b", "f8"), ("angle", "f8")])
FWHM_PER_SIGMA = 2 * np.sqrt(2 * np.log(2))  # a Gaussian's width at half its peak, in standard deviations


def _param(default, description):
    """A RadarParams field: its default, and its flag's help."""
    return dataclasses.field(default=default, metadata={"help": description})


@dataclasses.dataclass(frozen=True)
class RadarParams:
    """Every parameter of an archive; each is a flag of the same name. Lengths in pixels (1 km), times in frames."""
    frames: int = _param(1200, "frames in the archive (the gap's missing ones not counted)")
    size: int = _param(64, "frame side in pixels")
    step_minutes: int = _param(6, "minutes between consecutive frames")
    start: str = _param("2026-06-01T00:00", "time of the first frame (ISO 8601)")
    cells_min: int = _param(3, "fewest cells alive at any frame")
    cells_max: int = _param(8, "most cells alive at any frame")
    birth_rate: float = _param(0.3, "mean births a frame (Poisson), before cells_min/cells_max are enforced")
    life_min: int = _param(20, "shortest lifetime of a cell, frames")
    life_max: int = _param(60, "longest lifetime of a cell, frames")
    width_min: float = _param(3.0, "narrowest cell axis, px across where its rain is half its peak (mid-life)")
    width_max: float = _param(12.0, "widest cell axis, px across where its rain is half its peak (mid-life)")
    peak_median: float = _param(20.0, "median peak rain rate of a cell, mm/h (log-normal)")
    peak_sigma: float = _param(0.6, "standard deviation of log(peak)")
    peak_min: float = _param(5.0, "lowest peak rain rate of a cell, mm/h (the log-normal draw is clipped)")
    peak_max: float = _param(60.0, "highest peak rain rate of a cell, mm/h (the log-normal draw is clipped)")
    wind_min: float = _param(0.5, "slowest wind, px a frame")
    wind_max: float = _param(2.0, "fastest wind, px a frame")
    speed_step: float = _param(0.03, "standard deviation of the wind speed's change a frame, px a frame")
    turn_max: float = _param(3.0, "largest turn of the wind's direction a frame, degrees")
    radar_range: float = _param(30.0, "pixels farther than this from the frame's centre are no-data (NaN)")
    gap_at: float = _param(0.6, "the clock's gap follows this fraction of the frames")
    gap_frames: int = _param(5, "frames missing in the gap (0: no gap)")
    dry_below: float = _param(0.1, "rain rates below this, mm/h, are dry (exactly 0)")
    seed: int = _param(0, "the random numbers' seed (numpy.random.default_rng)")

    def __post_init__(self):
        for name in ("frames", "size", "step_minutes", "cells_min", "cells_max", "life_min", "life_max", "gap_frames",
                     "seed"):
            value = getattr(self, name)
            minimum = 0 if name in ("cells_min", "gap_frames", "seed") else 1
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ValueError(f"{name}={value!r}: expected an integer >= {minimum}")
        for name in ("width_min", "peak_median", "peak_min", "wind_min", "radar_range", "dry_below"):
            if not getattr(self, name) > 0:  # also refuses NaN
                raise ValueError(f"{name}={getattr(self, name)!r}: expected a number > 0")
        for name in ("birth_rate", "speed_step", "turn_max", "peak_sigma"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ValueError(f"{name}={getattr(self, name)!r}: expected a finite number >= 0")
        for low, high in (("cells_min", "cells_max"), ("life_min", "life_max"), ("width_min", "width_max"),
                          ("peak_min", "peak_max"), ("wind_min", "wind_max")):
            if not getattr(self, low) <= getattr(self, high) < float("inf"):
                raise ValueError(f"{low}={getattr(self, low)!r}, {high}={getattr(self, high)!r}: "
                                 f"expected {low} <= {high} < inf")
        if not 0 < self.gap_at < 1:
            raise ValueError(f"gap_at={self.gap_at!r}: expected a fraction in (0, 1)")
        if self.gap_frames and not 0 < self.gap_index < self.frames:
            raise ValueError(f"frames={self.frames}, gap_at={self.gap_at}: the gap needs a frame on each side "
                             "(frames >= 2, or gap_frames=0 for none)")
        try:
            np.datetime64(self.start, "ns")
        except ValueError:
            raise ValueError(f"start={self.start!r}: expected an ISO 8601 time such as 2026-06-01T00:00") from None

    @property
    def gap_index(self) -> int:
        """Index of the first frame after the gap (the clock jumps between this frame and the one before)."""
        return round(self.gap_at * self.frames)


def make_archive(**params):
    """The archive as an xarray.Dataset: `rain` (time, y, x) float32 mm/h, NaN beyond radar_range; `cells_alive`
    (time,) int16; `wind_u`, `wind_v` (time,) float32 px a frame step. Keyword arguments: RadarParams' fields
    (ValueError naming the first bad one)."""
    import xarray as xr  # an optional dependency (convlstm[nowcast]): only the archive's makers need it

    p = RadarParams(**params)
    rng = np.random.default_rng(p.seed)
    steps = p.frames + p.gap_frames
    kept = np.arange(p.frames) + np.where(np.arange(p.frames) >= p.gap_index, p.gap_frames, 0)  # frame -> step
    wind = _wind(rng, steps, p)  # (steps, 2) float64 (u, v): px a frame along x, y
    rain = np.empty((p.frames, p.size, p.size), np.float32)
    alive = np.empty(p.frames, np.int16)
    cells = _born(rng, int(rng.integers(p.cells_min, p.cells_max + 1)), p, wind[0], aged=True)
    frame = 0
    margin = p.width_max  # how far upwind outside the frame a cell may be born
    for step in range(steps):
        if frame < p.frames and kept[frame] == step:
            rain[frame] = _render(cells, p)
            alive[frame] = len(cells)
            frame += 1
        cells["x"] += wind[step, 0]
        cells["y"] += wind[step, 1]
        cells["age"] += 1
        inside = ((cells["x"] >= -margin) & (cells["x"] <= p.size - 1 + margin)
                  & (cells["y"] >= -margin) & (cells["y"] <= p.size - 1 + margin))
        cells = cells[(cells["age"] < cells["life"]) & inside]
        births = min(max(int(rng.poisson(p.birth_rate)), p.cells_min - len(cells)), p.cells_max - len(cells))
        cells = np.concatenate([cells, _born(rng, births, p, wind[min(step + 1, steps - 1)])])

    rain[:, ~_in_range(p)] = np.nan
    km = (np.arange(p.size) - (p.size - 1) / 2).astype(np.float32)  # pixel centres, the radar at (0, 0)
    start = np.datetime64(p.start, "ns")
    time = start + (kept * p.step_minutes).astype("timedelta64[m]")
    source = "convlstm.data.synthetic_radar.make_archive(" + ", ".join(
        f"{name}={value!r}" for name, value in dataclasses.asdict(p).items()) + ")"
    per_step = f"pixel per {p.step_minutes} min (1 pixel = 1 km)"
    return xr.Dataset(
        {"rain": (("time", "y", "x"), rain, {"units": "mm/h", "long_name": "rain rate"}),
         "cells_alive": ("time", alive, {"long_name": "rain cells alive in the simulation (in or near the frame)"}),
         "wind_u": ("time", wind[kept, 0].astype(np.float32), {"units": per_step, "long_name": "wind along x"}),
         "wind_v": ("time", wind[kept, 1].astype(np.float32), {"units": per_step, "long_name": "wind along y"})},
        coords={"time": ("time", time, {"long_name": "time of the frame"}),
                "y": ("y", km, {"units": "km", "long_name": "y of the pixel centre from the radar"}),
                "x": ("x", km, {"units": "km", "long_name": "x of the pixel centre from the radar"})},
        attrs={"title": "synthetic radar rain archive", "source": source,
               "radar_range_km": float(p.radar_range), "gap_after_frame": p.gap_index - 1 if p.gap_frames else -1})


def write_archive(path, **params):
    """make_archive(**params) written to the NetCDF file `path` (a temp file beside it renamed over it, so a failure
    leaves no half file); returns the dataset. OSError on a failed write, ValueError on a bad parameter."""
    archive = make_archive(**params)
    # One frame a chunk: a reader's window of frames decompresses those frames only. zlib level 1: 5x smaller here.
    encoding = {"time": {"units": f"minutes since {np.datetime_as_string(archive.time.values[0], 's')}",
                         "calendar": "proleptic_gregorian", "dtype": "int64"},
                "rain": {"_FillValue": np.float32(np.nan), "zlib": True, "complevel": 1,
                         "chunksizes": (1, archive.sizes["y"], archive.sizes["x"])}}
    tmp = temp_path(os.fspath(path))
    try:
        archive.to_netcdf(tmp, format="NETCDF4", encoding=encoding)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return archive


def dry_share(archive) -> float:
    """Share of the valid (non-NaN) rain pixels over the archive that are dry (exactly 0)."""
    rain = np.asarray(archive["rain"])
    valid = ~np.isnan(rain)
    return float((rain[valid] == 0).mean())


def _wind(rng, steps, p):
    """(steps, 2) float64: the wind (u along x, v along y) in px a frame, for each simulation step."""
    # The speed's walk, folded into [wind_min, wind_max]: the same as reflecting it at each bound, without a loop.
    span = p.wind_max - p.wind_min
    walk = rng.uniform(0, span) + np.cumsum(np.r_[0, rng.normal(0, p.speed_step, steps - 1)])
    folded = np.mod(walk, 2 * span) if span else np.zeros(steps)
    speed = p.wind_min + span - np.abs(folded - span)
    turns = np.clip(rng.normal(0, p.turn_max / 2, steps - 1), -p.turn_max, p.turn_max)
    direction = rng.uniform(0, 2 * np.pi) + np.radians(np.cumsum(np.r_[0, turns]))
    return np.stack([speed * np.cos(direction), speed * np.sin(direction)], axis=1)


def _born(rng, n, p, wind, aged=False):
    """n new cells (CELL array) under `wind` (u, v): in the frame or just outside it upwind. aged: at random ages
    (the archive's first frame shows weather already under way)."""
    cells = np.zeros(max(n, 0), CELL)
    n = len(cells)
    margin = p.width_max
    for axis, component in (("x", wind[0]), ("y", wind[1])):
        low = -margin if component > 0 else 0.0  # upwind is where the wind comes from
        high = p.size - 1 + (margin if component < 0 else 0.0)
        cells[axis] = rng.uniform(low, high, n)
    cells["life"] = rng.integers(p.life_min, p.life_max + 1, n)
    cells["age"] = rng.integers(0, cells["life"]) if aged else 0
    cells["peak"] = np.clip(p.peak_median * np.exp(rng.normal(0, p.peak_sigma, n)), p.peak_min, p.peak_max)
    cells["sigma_a"] = rng.uniform(p.width_min, p.width_max, n) / FWHM_PER_SIGMA
    cells["sigma_b"] = rng.uniform(p.width_min, p.width_max, n) / FWHM_PER_SIGMA
    cells["angle"] = rng.uniform(0, np.pi, n)
    return cells


def _render(cells, p):
    """(size, size) float32 mm/h: each pixel its strongest cell's rain, 0 below dry_below."""
    if not len(cells):
        return np.zeros((p.size, p.size), np.float32)
    pixels = np.arange(p.size, dtype=np.float64)
    dx = pixels[None, None, :] - cells["x"][:, None, None]  # (n, 1, W)
    dy = pixels[None, :, None] - cells["y"][:, None, None]  # (n, H, 1)
    cos, sin = np.cos(cells["angle"])[:, None, None], np.sin(cells["angle"])[:, None, None]
    envelope = np.sin(np.pi * (cells["age"] + 1) / (cells["life"] + 1))
    # The cell grows in width as well as in strength, from half its width: at its full width from birth it would pop
    # up already large (with dry_below 0.1, a cell of 1 mm/h peak is wet over 1.8 times its half-peak width).
    scale = (0.5 + 0.5 * envelope)[:, None, None]
    along = (dx * cos + dy * sin) / (cells["sigma_a"][:, None, None] * scale)  # (n, H, W)
    across = (dy * cos - dx * sin) / (cells["sigma_b"][:, None, None] * scale)
    rain = ((cells["peak"] * envelope)[:, None, None] * np.exp(-0.5 * (along ** 2 + across ** 2))).max(axis=0)
    rain[rain < p.dry_below] = 0
    return rain.astype(np.float32)


def _in_range(p):
    """(size, size) bool: the pixels whose centres lie within radar_range of the frame's centre."""
    offsets = np.arange(p.size) - (p.size - 1) / 2
    return np.hypot(offsets[:, None], offsets[None, :]) <= p.radar_range


def build_parser() -> argparse.ArgumentParser:
    """--out, --overwrite and one flag per RadarParams field, with its default."""
    parser = argparse.ArgumentParser(
        prog="python -m convlstm.data.synthetic_radar", usage="%(prog)s --out FILE.nc [--overwrite] [parameters]",
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False)
    parser.add_argument("--out", required=True, help="the NetCDF file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    for field in dataclasses.fields(RadarParams):
        kind = {"int": int, "float": float, "str": str}[field.type]
        parser.add_argument(f"--{field.name}", type=kind, default=field.default, metavar=kind.__name__.upper(),
                            help=field.metadata["help"])
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    params = {field.name: getattr(args, field.name) for field in dataclasses.fields(RadarParams)}
    try:
        checked = RadarParams(**params)
    except ValueError as error:
        parser.error(f"--{error}")  # "--frames=0: expected ..." names the flag as typed
    if os.path.isdir(args.out):
        print(f"{parser.prog}: error: --out {args.out} is a directory; name the file to write", file=sys.stderr)
        return 1
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):  # netCDF would say "Permission denied"
        print(f"{parser.prog}: error: --out {args.out}: its folder does not exist", file=sys.stderr)
        return 1
    if os.path.lexists(args.out) and not args.overwrite:
        print(f"{parser.prog}: error: --out {args.out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    try:
        archive = write_archive(args.out, **params)
    except OSError as error:
        print(f"{parser.prog}: error: {describe(error, args.out)}", file=sys.stderr)
        return 1
    gap = (f"gap after frame {checked.gap_index - 1} ({checked.gap_frames} frames missing)" if checked.gap_frames
           else "no gap")
    print(f"{args.out}: {checked.frames} frames of {checked.size}x{checked.size} px, "
          f"{dry_share(archive):.1%} of valid pixels dry, {gap}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
