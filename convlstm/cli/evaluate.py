"""Evaluate a checkpoint on Moving MNIST or your own sequences in the published tables' conventions.

    python evaluate.py --checkpoint runs/x/checkpoints/best.pt --out_dir eval/x        # generated test split
    python evaluate.py --checkpoint runs/x/checkpoints/best.pt --out_dir eval/x --data mnist_test_seq.npy
    torchrun --nproc_per_node 8 evaluate.py --checkpoint ... --out_dir ...             # one shard per rank

    python evaluate.py --checkpoint mmnist_convlstm_one_ep200.pth --cell_output g --out_dir eval/openstl_s

The model, the tutorial's or OpenSTL's ConvLSTM, and its configuration come from the checkpoint (read with
weights_only=True: no code in it ever runs): a train.py checkpoint, or the weights alone (convlstm.load_model: a bare
state_dict, the tutorial's Lightning checkpoint, OpenSTL's own .pth), scored as their authors ran them on Moving MNIST
(10 in, 10 out, 64x64); --openstl_channels and --cell_output say what OpenSTL's weights cannot. Each rank
evaluates a contiguous shard of the sequences; per-frame metric sums and sequence counts are all-reduced, so each
sequence counts once whatever the number of ranks. Two baselines are scored on the same sequences: repeating the
last input frame, and predicting all zeros. Rank 0 writes into --out_dir:

    metrics.json     overall and per-frame metrics of the model and the baselines, what was evaluated, conventions
    per_frame.png    each metric against the frame index
    samples.png      inputs, ground truth, prediction and error of the first few sequences
    samples.gif      the same sequences animated, ground truth | prediction
    predictions.npz  with --save_predictions: pred and target, float32 (N, T, C, H, W) in [0, 1] (a radar archive:
                     in its units, NaN where it has no data)
    csi_by_lead.png  with --scores nowcast: CSI against lead time per threshold, the model and persistence

Metric conventions: see convlstm/evaluation/metrics.py. Bad input ends with one line "evaluate.py: error: ..." and
exit code 2 (an --out_dir that already holds results: 1, as train.py and predict.py): --out_dir is tried before any
compute, a float array's values are scanned first, and a sequence found bad only when read (a truncated PNG) stops
every rank together (--skip_bad_data leaves such sequences out instead).
The files are written into a staging folder in --out_dir and moved into place once all are written.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from convlstm.atomic import WriteError, check_writable_dir, staged
from convlstm.budget import BudgetError, check_fits, oversized_int
from convlstm.data import MovingMNIST
from convlstm.data.gridded import gridded_options
from convlstm.data.sequence import split_masked
from convlstm.data.sources import DataError, error_line, open_source, scan_source, usable
from convlstm.data.units import Units, UnitsError
from convlstm.evaluation.nowcast import DEFAULT_THRESHOLDS, NowcastScores
from convlstm.data.windows import Windows, parse_size
from convlstm.evaluation.metrics import CONVENTIONS, METRIC_NAMES, MetricTotals, frame_metrics
from convlstm.load import load_model
from convlstm.model import forecast, model_config
from convlstm.models import named_class
from convlstm.ops.lstm_gates.backends import BACKENDS, resolve
from convlstm.checkpoint import CheckpointError
from convlstm.config import DEVICES, Config
from convlstm.data.datasets import build_datasets
from convlstm.runtime import (EXIT_BAD_FLAG, EXIT_ERROR, Progress, SetupError, add_frame_flags, add_loading_flags,
                              distributed, first_failure, launch_rank)

OUTPUT_FILES = ("metrics.json", "per_frame.png", "samples.png", "samples.gif", "predictions.npz", "csi_by_lead.png")
SCORES = ("video", "nowcast")
REQUIRED_CONFIG = ("n_steps_past", "n_steps_ahead")  # beside the model's spec.config_keys
BASELINES = ("last_frame", "zeros")
DEFAULT_NUM_TEST = 10000  # the size of the standard test file, so generated results compare with it
# The generated test split is the same for every checkpoint. train.py validates on the test split's sequences of
# seed --seed (0 by default); a seed of its own keeps the reported sequences apart from those (checked below).
TEST_SEED = 1_000_000


class EvalError(Exception):
    """Bad input: reported as one line, without a traceback, exit status 2."""

    code = EXIT_BAD_FLAG


class ResultsExist(EvalError):
    """--out_dir already holds results: exit status 1, as train.py and predict.py refuse to write over theirs."""

    code = EXIT_ERROR


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True,
                   help="a train.py checkpoint, a state_dict, the tutorial's Lightning or OpenSTL's own checkpoint")
    p.add_argument("--out_dir", required=True, help="where the results go")
    p.add_argument("--data", default=None,
                   help="sequences to evaluate, as train.py's --data: an .npy/.npz array (mnist_test_seq.npy too), a "
                        "video file or folder of videos, a folder of frame folders, a NetCDF radar archive; default: "
                        "the generated Moving MNIST test split, or for a run on your own data the sequences it held "
                        "out")
    add_frame_flags(p, "--data")
    p.add_argument("--skip_bad_data", action="store_true",
                   help="leave out the sequences of --data that cannot be read as frames in [0, 1] (as train.py's "
                        "flag: a scan decodes every frame first); default: the first one stops with its name")
    p.add_argument("--stride", type=int, default=None,
                   help="frames between windows cut from longer sequences (default: n_in + n_out, no overlap)")
    p.add_argument("--num_test", type=int, default=None,
                   help=f"sequences to evaluate (default {DEFAULT_NUM_TEST} generated, or all of --data)")
    p.add_argument("--batch_size", type=int, default=32, help="sequences per forward pass on each rank")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="lstm_gates implementation")
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="auto: the GPU of LOCAL_RANK when CUDA is available, else the CPU")
    p.add_argument("--digits", default=None,
                   help="MNIST IDX directory for the generated split (default: the checkpoint's --data, or the "
                        "embedded digits if it had none)")
    add_loading_flags(p)
    p.add_argument("--variable", default=None, help="the variable of a NetCDF --data (default: the training one)")
    p.add_argument("--scores", default="video", choices=SCORES,
                   help="video: the Moving MNIST tables' metrics (MSE, MAE, SSIM, PSNR) against the baselines; "
                        "nowcast: those and the nowcasting scores (CSI, POD, FAR, HSS, ETS, bias, CSI-M, FSS) per "
                        "threshold and lead time against persistence, and csi_by_lead.png")
    p.add_argument("--thresholds", default=None,
                   help="rain thresholds for --scores nowcast, comma-separated, in mm/h for data in dBZ or mm/h "
                        f"(default {','.join(map(str, DEFAULT_THRESHOLDS))}, HKO-7's); in the data's own units with "
                        "--transform none (required then)")
    p.add_argument("--num_samples", type=int, default=4, help="sequences shown in samples.png and samples.gif")
    p.add_argument("--save_predictions", action="store_true", help="also write predictions.npz")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out_dir")
    return p


def check_out_dir(out_dir, overwrite):
    """Before any compute: --out_dir takes (new) results. Whether files can be made there is tried for real (under
    a file, in /proc, on a read-only disk), on rank 0 alone: ranks trying one new folder at once would remove it
    under each other (torchrun sets RANK; only rank 0 writes)."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise EvalError(f"--out_dir {out_dir} exists and is not a directory")
    existing = [name for name in OUTPUT_FILES if os.path.exists(os.path.join(out_dir, name))]
    if existing and not overwrite:
        raise ResultsExist(f"--out_dir {out_dir} already holds results ({', '.join(existing)}); pass --overwrite to "
                        f"replace them or choose another directory")
    if launch_rank() == 0:
        try:
            check_writable_dir(out_dir, "--out_dir")
        except WriteError as error:
            raise EvalError(str(error)) from None


def open_model(args, device):
    """The checkpoint's model on `device` (convlstm.load_model, the one way from a file to a model), its config
    and the frame shape (C, H, W) it was trained on. Weights alone (a bare state_dict, the tutorial's Lightning
    checkpoint, OpenSTL's own) get their authors' Moving MNIST configuration: 10 in, 10 out, 64x64 (OpenSTL's layer
    norm: its frame size). The model gets the backend as asked: "auto" runs OpenSTL's v0.2.0 cell (cell_output "g")
    in plain PyTorch."""
    try:
        model_class = named_class(args.model)
    except ValueError as e:  # a --model that cannot be imported or is no registered model
        raise EvalError(str(e)) from None
    try:
        model = load_model(args.checkpoint, device=device, backend=args.backend, channels=args.openstl_channels,
                           cell_output=args.cell_output, model_class=model_class)
    except CheckpointError as e:
        raise EvalError(str(e)) from None
    info = model.info
    try:
        config = info.config or {"image_size": 64, **model_config(model), "n_steps_past": info.n_in,
                                 "n_steps_ahead": info.n_out, "backend": "auto"}
    except ValueError as e:  # model_config: OpenSTL layers of different widths
        raise EvalError(f"checkpoint {args.checkpoint}: {e}") from None
    missing = [key for key in REQUIRED_CONFIG if key not in config]
    if missing:
        raise EvalError(f"checkpoint {args.checkpoint}: its config lacks {', '.join(missing)}")
    size = info.frame_size or (config["image_size"], config["image_size"])
    return model, config, (info.in_chan, *size)


def build_dataset(args, config, trained):
    """The sequences to evaluate and a description of them for metrics.json."""
    seq_len = config["n_steps_past"] + config["n_steps_ahead"]
    legacy = "digits" not in config  # a config from before the own-data flags, whose "data" named MNIST digits
    if args.data is None and config.get("data") and not legacy:  # own data: the sequences the run held out
        cfg = Config(**{k: v for k, v in config.items() if k in Config.__dataclass_fields__})
        try:
            _, dataset, _, described = build_datasets(cfg)
        except (ValueError, FileNotFoundError) as e:
            raise EvalError(f"cannot rebuild the validation split of the checkpoint's --data {config['data']} "
                            f"(pass --data with your test sequences): {e}") from None
        return _first(args, dataset), {"source": "validation split of the training run", "described": described}
    if args.data is None:
        if config.get("seed") == TEST_SEED and config.get("num_val", 0) > 0:
            raise EvalError(f"checkpoint {args.checkpoint} was trained with seed {TEST_SEED} and validated on the "
                            f"generated test split's sequences of that seed, which are the ones evaluate.py "
                            f"reports: evaluate it with --data, or train with another --seed")
        num = DEFAULT_NUM_TEST if args.num_test is None else args.num_test
        digits = args.digits if args.digits is not None else config.get("data" if legacy else "digits")
        try:  # the test split of the data the model was trained on (train.py's defaults for older configs)
            dataset = MovingMNIST(split="test", num_sequences=num, seq_len=seq_len, image_size=config["image_size"],
                                  num_digits=config.get("num_digits", 2), digits=digits, seed=TEST_SEED,
                                  generator=config.get("generator", "standard"))
        except (TypeError, ValueError, FileNotFoundError) as e:
            raise EvalError(f"cannot generate the test split for this checkpoint (digits {digits or 'embedded'}; "
                            f"--digits sets another MNIST directory): {e}") from None
        return dataset, {"source": "generated", "dataset": repr(dataset)}
    try:
        source = open_source(args.data, layout=args.layout, channels=args.channels, min_length=seq_len,
                             gridded=gridded_options(config, args.variable))
        bad, scanned = scan_source(source, args.skip_bad_data)
        dataset = Windows(source, seq_len, stride=args.stride, resize=parse_size(args.resize),
                          sequences=usable(source, bad, "--data"))
    except DataError as e:
        raise EvalError(f"--data: {e}") from None
    trained = tuple(trained)
    if dataset.frame_shape[0] != trained[0]:
        raise EvalError(f"--data {args.data} has {dataset.frame_shape[0]} channel(s) but the checkpoint's model "
                        f"takes {trained[0]} (--channels converts images and videos)")
    if dataset.frame_shape != trained:
        size = "x".join(map(str, trained[1:]))
        raise EvalError(f"--data {args.data} has frames of {dataset.frame_shape[1]}x{dataset.frame_shape[2]} but "
                        f"the checkpoint was trained on {size} (H x W): pass --resize {size}")
    skipped = {"skipped": list(bad.values())} if bad else {}  # by --skip_bad_data
    step = {"step_minutes": source.step_minutes} if getattr(source, "step_minutes", None) else {}  # an archive's
    return _first(args, dataset), {"source": "file", "path": os.path.abspath(args.data), "windows": len(dataset),
                                   **skipped, **step}


def _first(args, dataset):
    """The first --num_test sequences of `dataset` (all without it)."""
    if args.num_test is None:
        return dataset
    if args.num_test > len(dataset):
        raise EvalError(f"--num_test {args.num_test} but {args.data} holds only {len(dataset)} sequences")
    return Subset(dataset, range(args.num_test))


def nowcast_scoring(args, config):
    """(Units of the data or None (frames in [0, 1]), thresholds for --scores nowcast or None without it), checked."""
    try:
        units = Units.from_config(config)
    except UnitsError as e:
        raise EvalError(f"checkpoint {args.checkpoint}: {e}") from None
    if args.scores != "nowcast":
        return units, None
    if args.thresholds is None:
        if units is None or units.kind == "none":
            raise EvalError("--scores nowcast: the data have no rain rate (" + (
                "--transform none" if units else "trained on frames in [0, 1]") + "): give --thresholds in their "
                "units")
        return units, DEFAULT_THRESHOLDS
    try:
        thresholds = tuple(float(part) for part in args.thresholds.split(","))
    except ValueError:
        raise EvalError(f"--thresholds {args.thresholds!r}: expected numbers such as 0.5,2,5") from None
    if not thresholds or any(not math.isfinite(t) for t in thresholds):
        raise EvalError(f"--thresholds {args.thresholds!r}: each must be a finite number")
    return units, thresholds


def in_rain_units(units, frames):
    """Frames on the models' [0, 1] scale in the units thresholds are in (Units.scored), the [0, 1] scale itself
    without a transform."""
    return frames if units is None else units.scored(frames)


def in_data_units(units, frames, valid):
    """float32 numpy frames as --save_predictions writes them: [0, 1], or a radar archive's units (the checkpoint's
    transform) with NaN where there is no data."""
    frames = frames.float() if valid is None else frames.float().masked_fill(~valid, float("nan"))
    return (frames if units is None else units.from_unit(frames)).cpu().numpy()


def evaluate_shard(model, dataset, indices, config, batch_size, device, keep_predictions, num_samples,
                   nowcast=(None, None)):
    """((metric totals of the model and baselines over dataset[indices], samples, predictions and targets (with
    keep_predictions), nowcast scores of the model and persistence (with nowcast's thresholds)), None), or (None,
    the line of a read that failed). No-data pixels (NaN) are 0 in x, y and every prediction (out of the metrics'
    sums) and out of the nowcast scores."""
    n_past, n_ahead = config["n_steps_past"], config["n_steps_ahead"]
    totals = {name: MetricTotals(n_ahead, device) for name in ("model", *BASELINES)}
    units, thresholds = nowcast
    scores = {name: NowcastScores(thresholds) for name in ("model", "persistence")} if thresholds else None
    samples, preds, targets = [], [], []
    batches = iter(DataLoader(Subset(dataset, indices), batch_size=min(batch_size, max(1, len(indices))),
                              shuffle=False))
    progress = Progress(len(indices), "sequence", "evaluate.py")  # rank 0's shard: the others go as fast
    with torch.inference_mode():
        while True:
            try:  # bad data found only when read (a truncated PNG): its line, for every rank to agree on
                batch = next(batches)
            except StopIteration:
                break
            except DataError as e:
                progress.close()
                return None, error_line(e)
            progress.update(len(batch))
            x, y, valid = split_masked(batch.to(device), n_past, n_ahead)  # (B, T_in|T_out, C, H, W)
            pred = forecast(model, x, n_ahead)  # (B, T_out, C, H, W)
            pred = pred if valid is None else pred * valid
            last = x[:, -1:].expand_as(y) if valid is None else x[:, -1:] * valid
            totals["model"].add(frame_metrics(pred, y))
            totals["last_frame"].add(frame_metrics(last, y))
            if scores is not None:  # in rain units; persistence is the last input frame
                observed = in_rain_units(units, y)
                scores["model"].update(in_rain_units(units, pred), observed, valid)
                scores["persistence"].update(in_rain_units(units, last), observed, valid)
            totals["zeros"].add(frame_metrics(torch.zeros_like(y), y))
            if sum(len(s[0]) for s in samples) < num_samples:
                samples.append((x.cpu(), y.cpu(), pred.cpu()))
            if keep_predictions:  # a radar archive's in its units, NaN where it has no data
                preds.append(in_data_units(units, pred, valid))
                targets.append(in_data_units(units, y, valid))
    progress.close()
    samples = [torch.cat(part)[:num_samples].numpy() for part in zip(*samples)] if samples else None
    return (totals, samples, preds, targets, scores), None


def gather_predictions(preds, targets, shape, rank, world_size):
    """Every rank's (pred, target) arrays, concatenated in rank order (= sequence order) on rank 0; else None."""
    empty = np.zeros((0, *shape), dtype=np.float32)
    local = (np.concatenate(preds) if preds else empty, np.concatenate(targets) if targets else empty)
    if world_size == 1:
        return local
    gathered = [None] * world_size if rank == 0 else None
    dist.gather_object(local, gathered, dst=0)
    if rank != 0:
        return None
    return np.concatenate([g[0] for g in gathered]), np.concatenate([g[1] for g in gathered])


def write_outputs(args, results, samples, predictions, first_frame):
    """Every file into a staging folder in --out_dir, moved into place once all are written (convlstm.atomic.staged):
    a failed write (a full disk) leaves the results of an earlier run as they were, never half of the new ones."""
    from convlstm.evaluation.plots import plot_per_frame, plot_samples, save_gif  # matplotlib and Pillow: rank 0 only

    def write_metrics(path):
        with open(path, "w") as handle:
            json.dump(results, handle, indent=2)

    curves = {"model": results, **{f"baseline: {name}": results["baselines"][name] for name in BASELINES}}
    writers = {"metrics.json": write_metrics,
               "per_frame.png": lambda path: plot_per_frame(curves, first_frame, path),
               "samples.png": lambda path: plot_samples(*samples, path),
               "samples.gif": lambda path: save_gif(*samples, path)}
    if predictions is not None:
        writers["predictions.npz"] = lambda path: np.savez(path, pred=predictions[0], target=predictions[1])
    if "nowcast" in results:
        from convlstm.evaluation.nowcast import plot_csi_by_lead
        nowcast = {name: results["nowcast"][name] for name in ("model", "persistence")}
        writers["csi_by_lead.png"] = lambda path: plot_csi_by_lead(nowcast, path, results["data"].get("step_minutes"))
    try:
        with staged(args.out_dir) as stage:
            for name, write in writers.items():
                stage.write(name, write)
    except WriteError as error:
        raise EvalError(str(error)) from None
    for name in ("predictions.npz", "csi_by_lead.png"):  # --overwrite without what wrote them: an old file would not
        path = os.path.join(args.out_dir, name)  # match these results, which are in place now
        if name not in writers and os.path.exists(path):
            os.remove(path)


def run(args):
    too_large = oversized_int(vars(args))
    if too_large:
        raise EvalError(too_large)
    if not args.out_dir:
        raise EvalError("--out_dir '': must name a directory")
    if args.num_test is not None and args.num_test < 1:
        raise EvalError(f"--num_test must be at least 1, got {args.num_test}")
    if args.batch_size < 1:
        raise EvalError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.num_samples < 1:
        raise EvalError(f"--num_samples must be at least 1, got {args.num_samples}")
    check_out_dir(args.out_dir, args.overwrite)
    try:
        with distributed(args.device) as info:  # the process group under torchrun, destroyed on every way out
            evaluate_and_write(args, info)
    except SetupError as e:
        raise EvalError(str(e)) from None


def evaluate_and_write(args, info):
    try:
        backend, _ = resolve(args.backend, info.device)
    except (ValueError, RuntimeError) as e:
        raise EvalError(f"--backend: {e}") from None
    model, config, trained = open_model(args, info.device)
    dataset, data_info = build_dataset(args, config, trained)
    if args.save_predictions:  # pred and target of every sequence, gathered and concatenated on rank 0
        needed = 4 * 4 * len(dataset) * config["n_steps_ahead"] * math.prod(trained)
        try:
            check_fits({"predictions": (f"--save_predictions of {len(dataset)} sequences", needed)},
                       torch.device("cpu"), "evaluating")
        except BudgetError as e:
            raise EvalError(str(e)) from None
    backend = backend if any(getattr(module, "fused", False) for module in model.modules()) else "torch"
    n, world_size = len(dataset), info.world_size
    start, stop = -(-info.rank * n // world_size), -(-(info.rank + 1) * n // world_size)  # rank 0's never empty
    started = time.time()
    nowcast = nowcast_scoring(args, config)
    results, failure = evaluate_shard(model, dataset, range(start, stop), config, args.batch_size, info.device,
                                      args.save_predictions, args.num_samples, nowcast)
    failure = first_failure(failure, info)  # every rank stops, before the collectives below, if any rank's read failed
    if failure is not None:
        raise EvalError(f"--data: {failure}")
    totals, samples, preds, targets, scores = results
    for name in totals:  # the same collectives in the same order on every rank
        totals[name].all_reduce()
    for name in scores or ():
        scores[name].all_reduce(config["n_steps_ahead"], info.device)
    predictions = None
    if args.save_predictions:
        shape = (config["n_steps_ahead"], *dataset[0].shape[1:])
        predictions = gather_predictions(preds, targets, shape, info.rank, world_size)
    if info.is_main:
        results = totals["model"].summary()
        results["baselines"] = {name: totals[name].summary() for name in BASELINES}
        results.update({
            "checkpoint": os.path.abspath(args.checkpoint),
            "checkpoint_step": model.info.step, "checkpoint_epoch": model.info.epoch,
            "data": data_info, "n_steps_past": config["n_steps_past"], "n_steps_ahead": config["n_steps_ahead"],
            "model_config": config, "device": str(info.device), "backend": backend, "world_size": world_size,
            "seconds": round(time.time() - started, 3), "conventions": CONVENTIONS,
        })
        if scores:
            units = nowcast[0]
            results["nowcast"] = {"units": "mm/h" if units and units.kind != "none" else
                                  "the data's own" if units else "the [0, 1] scale",
                                  "transform": units and {"kind": units.kind, "zr_a": units.zr_a, "zr_b": units.zr_b},
                                  **{name: scores[name].result() for name in scores}}
        write_outputs(args, results, samples, predictions, first_frame=config["n_steps_past"] + 1)
        print_table(results, args.out_dir)


def print_table(results, out_dir):
    rows = [("model", results), *((f"baseline: {b}", results["baselines"][b]) for b in BASELINES)]
    # One vocabulary in the three scripts: a sequence is what the data holds (a video, an array's row, a frame
    # folder), a window the n_in + n_out frames cut from one and scored; metrics.json keeps the tables' key.
    print(f"{results['num_sequences']} windows of {results['n_steps_past']} + {results['n_steps_ahead']} frames "
          f"scored ({results['n_steps_ahead']} predicted frames each)")
    print(f"{'':20s}" + "".join(f"{name:>12s}" for name in METRIC_NAMES))
    for label, r in rows:
        print(f"{label:20s}" + "".join(f"{r[name]:12.4f}" for name in METRIC_NAMES))
    if "nowcast" in results:
        nowcast = results["nowcast"]
        print(f"CSI over all lead times, thresholds in {nowcast['units']} (csi_by_lead.png: per lead time)")
        print(f"{'':20s}" + "".join(f"{'>= ' + format(t, 'g'):>9s}" for t in nowcast["model"]["thresholds"])
              + f"{'CSI-M':>9s}")
        for label in ("model", "persistence"):
            r = nowcast[label]
            cells = [*r["all_leads"]["csi"], r["csi_m"]["all_leads"]]
            print(f"{label:20s}" + "".join(f"{'-' if v is None else format(v, '.4f'):>9s}" for v in cells))
    print(f"results in {out_dir}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except EvalError as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        sys.exit(e.code)


if __name__ == "__main__":
    main()
