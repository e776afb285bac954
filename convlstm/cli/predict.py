"""Predict the next frames of your own sequences with a trained model (the tutorial's or OpenSTL's ConvLSTM); no ground
truth needed.

    python predict.py --checkpoint runs/x/checkpoints/best.pt --input clips/ --out predictions/x
    python predict.py --checkpoint tutorial.ckpt --input walk.mp4 --channels 1 --resize 64 --out predictions/walk

--checkpoint: a train.py checkpoint, a bare state_dict, the tutorial's Lightning checkpoint or OpenSTL's own .pth
(convlstm.load_model; --openstl_channels and --cell_output say what OpenSTL's weights cannot).
--input: an .npy / .npz array, a video, a folder of videos or a folder of frame folders (convlstm.data.sources).
The model reads the LAST n_in frames of each sequence and predicts n_out more (both from the checkpoint's training
config; without one the tutorial's 10 and 10), at the frame size a train.py model was trained on unless --resize.
Into --out:

    predictions.npy        float32 (N, n_out, C, H, W) in [0, 1] (OpenSTL's model is unbounded: clipped)
                           (a radar archive: in its units, mm/h or dBZ, NaN where the input has no data)
    inputs.npy             float32 (N, n_in, C, H, W) in [0, 1]: the frames the model read (after --resize)
    strips/<i>_<name>.png  one row per sequence: its inputs, a wider gap, the predictions
    gifs/<i>_<name>.gif    the inputs then the predictions; the bar below grows grey over inputs, red over predictions
    predict.json           what was predicted: checkpoint, input, n_in, n_out, shapes, each sequence's files
    forecast.nc            a radar archive's forecast as gridded data (--format zarr: forecast.zarr): its variable
                           over (issue_time, lead_time, y, x) in its units, with its grid's coordinates

Everything is checked before --out is made, whether files can be made there too (tried with one, removed again): a
bad input ends with one line "predict.py: error: ..." and exit code 1, having written nothing. The files are written
into a staging folder in --out and moved into place at the end: a failed write (a full disk) ends the same way and
leaves --out as it was, the files of an earlier run with --overwrite included.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys

import numpy as np
import torch

from convlstm.atomic import WriteError, check_writable_dir, staged
from convlstm.budget import BudgetError, check_fits, oversized_int
from convlstm.data.gridded import gridded_forecast, gridded_options
from convlstm.data.sequence import split_valid
from convlstm.data.sources import DataError, open_source
from convlstm.data.units import Units
from convlstm.data.windows import parse_size, to_frames
from convlstm.evaluation.plots import rain_colour_bar, rain_colours, save_prediction_gif, save_prediction_strip
from convlstm.load import load_model
from convlstm.model import check_frame_size, forecast
from convlstm.models import named_class
from convlstm.checkpoint import CheckpointError
from convlstm.runtime import EXIT_ERROR, Progress, SetupError, add_frame_flags, add_loading_flags, pick_device

NAME_CHARS = 100  # of a sequence's name in its file names: with the index and ".png" well under 255 bytes
# A file's extension at the end of a sequence's name, or before an array's index ("walk.mp4", "seqs.npy[3]").
MEDIA_EXTENSION = re.compile(r"\.(?:mp4|avi|mov|mkv|webm|gif|npy|npz|png|jpe?g)(?=_\d+$|$)", re.IGNORECASE)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--checkpoint", required=True, help="a train.py checkpoint, a state_dict or a Lightning one")
    p.add_argument("--input", required=True, help="array, video, folder of videos, folder of frame folders or a "
                                                         "NetCDF radar archive (each part between gaps in time a "
                                                         "sequence)")
    p.add_argument("--out", required=True, help="directory for the results (must be empty or new)")
    p.add_argument("--n_out", type=int, default=None, help="frames to predict (default: the checkpoint's)")
    add_frame_flags(p, "--input")
    p.add_argument("--variable", default=None, help="the variable of a NetCDF --input (default: the training one)")
    p.add_argument("--format", default="netcdf", choices=GRIDDED_FORMATS,
                   help="a radar archive's forecast file: forecast.nc (netcdf) or the forecast.zarr store (zarr)")
    add_loading_flags(p)
    p.add_argument("--batch_size", type=int, default=16, help="sequences per forward pass")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out (same names replaced)")
    return p


GRIDDED_FORMATS = {"netcdf": "forecast.nc", "zarr": "forecast.zarr"}


class PredictError(ValueError):
    """Bad input, reported as one line."""


def read_inputs(source, n_in, resize):
    """The last n_in frames of every sequence, float32 (N, n_in, C, H, W) in [0, 1]."""
    short = [(name, length) for name, length in zip(source.names, source.lengths) if length < n_in]
    if short:
        raise PredictError(f"{short[0][0]} has {short[0][1]} frames, fewer than the {n_in} the model reads (n_in); "
                           f"{len(short)} sequence(s) this short")
    clips = []
    for i, (name, length) in enumerate(zip(source.names, source.lengths)):
        clip = source.frames(i, length - n_in, length)
        if len(clip) != n_in:
            raise DataError(f"{name}: read {len(clip)} of its last {n_in} frames (shorter than its header said)")
        clips.append(to_frames(clip, resize))
    return torch.stack(clips)


def file_stem(index, name, count):
    """"3_walk_01" for sequence 3 of a folder, walk_01.mp4: its index (unique, in order), then the name without a
    media file's extension (no "3_walk_01.mp4.png"), made file-safe and cut to NAME_CHARS (a folder's name may have
    255 bytes, too many with the index and ".png" before it)."""
    safe = MEDIA_EXTENSION.sub("", re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._"))[:NAME_CHARS]
    return f"{index:0{len(str(count - 1))}d}_" + (safe or "sequence")


def prepare(args):
    """Everything checked and read before anything is written: (model, device, source, inputs, n_out)."""
    too_large = oversized_int(vars(args))
    if too_large:
        raise PredictError(too_large)
    if not args.out:
        raise PredictError("--out '': must name a directory")
    try:
        device = pick_device(args.device)
    except SetupError as error:
        raise PredictError(str(error)) from None
    if args.batch_size < 1:
        raise PredictError(f"--batch_size {args.batch_size}: must be at least 1")
    if args.n_out is not None and args.n_out < 1:
        raise PredictError(f"--n_out {args.n_out}: must be at least 1")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise PredictError(f"--out {args.out} exists and is not a directory")
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        raise PredictError(f"--out {args.out} is not empty; pass --overwrite to write into it or choose another")
    check_writable_dir(args.out, "--out")  # under a file, in /proc, on a read-only disk: told before the compute
    try:
        model_class = named_class(args.model)
    except ValueError as error:
        raise PredictError(str(error)) from None
    model = load_model(args.checkpoint, device=device, channels=args.openstl_channels, cell_output=args.cell_output,
                       model_class=model_class)
    info, config = model.info, model.info.config or {}
    source = open_source(args.input, layout=args.layout, channels=args.channels or config.get("channels"),
                         min_length=info.n_in, gridded=gridded_options(config, args.variable))
    if source.frame_shape[0] != info.in_chan:
        hint = (" (an array is read as stored)" if args.input.lower().endswith((".npy", ".npz"))
                else f"; pass --channels {info.in_chan}" if info.in_chan in (1, 3) else "")
        raise PredictError(f"{args.input} has frames of {source.frame_shape[0]} channel(s), the checkpoint's model "
                           f"reads {info.in_chan}{hint}")
    inputs = read_inputs(source, info.n_in, parse_size(args.resize) or info.frame_size)
    try:
        check_frame_size(model, *inputs.shape[-2:])
    except ValueError as error:
        raise PredictError(f"{args.input}: {error} (--resize sets the frame size)") from None
    n_out = args.n_out or info.n_out
    frame = math.prod(inputs.shape[2:])
    try:  # the predictions, in batches and then concatenated, on the CPU: --n_out 100000000 ran for minutes first
        check_fits({"predictions": (f"--n_out {n_out} for {len(inputs)} sequence(s) of "
                                    f"{'x'.join(map(str, inputs.shape[2:]))}", 2 * 4 * len(inputs) * n_out * frame)},
                   torch.device("cpu"), "predicting")
    except BudgetError as error:
        raise PredictError(str(error)) from None
    return model, device, source, inputs, n_out


def predict_all(model, device, inputs, n_out, batch_size):
    """float32 (N, n_out, C, H, W) in [0, 1]: the model's next n_out frames after each sequence of `inputs`. Where the
    last input frame has no data (NaN: outside a radar's range), so have the predictions; the model reads 0 there."""
    batches, progress = [], Progress(len(inputs), "sequence", "predict.py")
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            x, valid = split_valid(inputs[start:start + batch_size].to(device))  # (B, n_in, C, H, W)
            y = forecast(model, x, n_out).clamp(0, 1).float()  # (B, n_out, C, H, W)
            if valid is not None:
                y = y.masked_fill(~valid[:, -1:].expand_as(y), float("nan"))
            batches.append(y.cpu())
            progress.update(len(x))
    progress.close()
    return torch.cat(batches).numpy()


def write_json(path, value):
    with open(path, "w") as handle:
        json.dump(value, handle, indent=2)


def write_outputs(args, model, device, source, inputs, predictions, n_out):
    """Every file into a staging folder in --out, moved into place once all are written (convlstm.atomic.staged).
    Returns the number of sequences."""
    units = Units.from_config(model.info.config or {})  # a radar archive's: predictions in its units
    values = predictions if units is None else units.from_unit(torch.from_numpy(predictions)).numpy()
    if units is not None and units.kind != "none":  # pictures of rain rates: bands of colour, a colour bar in mm/h
        def drawn(frames):
            return units.scored(torch.from_numpy(frames)).numpy()
        style = dict(colours=rain_colours, legend=rain_colour_bar)
    else:
        drawn, style = np.nan_to_num, {}  # grey, no data black
    with staged(args.out) as stage:
        stage.write("predictions.npy", lambda path: np.save(path, values))
        stage.write("inputs.npy", lambda path: np.save(path, inputs))
        sequences = []
        for i, (name, length) in enumerate(zip(source.names, source.lengths)):
            stem = file_stem(i, name, len(source.names))
            files = {"strip": os.path.join("strips", stem + ".png"), "gif": os.path.join("gifs", stem + ".gif")}
            pictured = drawn(inputs[i]), drawn(predictions[i])
            stage.write(files["strip"], lambda path: save_prediction_strip(*pictured, path, **style))
            stage.write(files["gif"], lambda path: save_prediction_gif(*pictured, path, **style))
            sequences.append({"name": name, "frames": length, "inputs_from_frame": length - model.info.n_in, **files})
        summary = {"checkpoint": args.checkpoint, "checkpoint_kind": model.info.kind, "model": model.info.model,
                   "input": args.input, "n_in": model.info.n_in, "n_out": n_out, "device": str(device),
                   "layout": "(N, T, C, H, W) in [0, 1]" if units is None else
                             f"(N, T, C, H, W) in {units.name} (NaN: no data), inputs.npy in [0, 1] (NaN: no data)",
                   "predictions": list(predictions.shape), "inputs": list(inputs.shape), "sequences": sequences}
        if hasattr(source, "grid"):  # a radar archive: the forecast as gridded data, as a user opens it in xarray
            name = GRIDDED_FORMATS[args.format]
            gridded = gridded_forecast(source, values, args.checkpoint)
            stage.write(name, lambda path: gridded.to_netcdf(path) if name.endswith(".nc") else gridded.to_zarr(path))
            summary["forecast"] = name
        stage.write("predict.json", lambda path: write_json(path, summary))
    return len(sequences)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        model, device, source, inputs, n_out = prepare(args)
        predictions = predict_all(model, device, inputs, n_out, args.batch_size)
        count = write_outputs(args, model, device, source, inputs.numpy(), predictions, n_out)
    except (PredictError, DataError, CheckpointError, WriteError) as error:
        print(f"predict.py: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    print(f"{args.out}: {n_out} frames predicted for each of {count} sequence(s), each from its last "
          f"{model.info.n_in}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
