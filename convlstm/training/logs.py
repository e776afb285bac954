"""What rank 0 shows and writes: train.log, the progress bar, TensorBoard scalars and the tutorial's image grid.

Other ranks get a logger that prints warnings and errors only, a disabled progress bar and no TensorBoard writer, so
they stay quiet unless something is wrong.
"""
from __future__ import annotations

import datetime
import logging
import os
import sys
import time

import torch
from tqdm import tqdm

from ..atomic import WriteError, write_file
from ..runtime import PROGRESS_SECONDS, terminal_bar

LOG_FILE = "train.log"
TENSORBOARD_DIR = "tensorboard"
PICTURE_FILE = "predictions.png"


class _FileHandler(logging.FileHandler):
    """train.log. On a full disk a lost line is not worth logging's traceback per line: the checkpoint write that
    follows stops the run with one line."""

    def handleError(self, record):
        pass


class _TqdmHandler(logging.StreamHandler):
    """Prints log lines above the progress bar instead of through it."""

    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def make_logger(run_dir: str, rank: int) -> logging.Logger:
    """Rank 0: INFO and up to stderr and <run_dir>/train.log (appended, so a resumed run keeps its history).
    Other ranks: WARNING and up to stderr, prefixed with the rank."""
    logger = logging.getLogger(f"convlstm.train.rank{rank}")
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False
    for handler in list(logger.handlers):  # a second run in the same process (tests) must not log twice
        handler.close()
        logger.removeHandler(handler)
    console = _TqdmHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s" if rank == 0 else f"[rank {rank}] %(message)s"))
    logger.addHandler(console)
    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        to_file = _FileHandler(os.path.join(run_dir, LOG_FILE))
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(to_file)
    return logger


def log_to_file(logger: logging.Logger, message: str, level: int = logging.ERROR) -> None:
    """A line in train.log only: the line that stops a run, which the caller also prints once to stderr."""
    record = logger.makeRecord(logger.name, level, __file__, 0, message, None, None)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def close_logger(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)


def progress_bar(total_steps: int, done_steps: int, enabled: bool):
    """tqdm over optimizer steps (runtime.terminal_bar: a terminal only): tqdm itself gives the rate and the ETA; the
    loop adds loss and sequences/s. In a file the train.log lines carry the same loss, rate and ETA."""
    return terminal_bar(total_steps, "step", enabled, initial=done_steps)


def tensorboard_writer(run_dir: str, enabled: bool):
    """A SummaryWriter on <run_dir>/tensorboard on rank 0, None elsewhere."""
    if not enabled:
        return None
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(log_dir=os.path.join(run_dir, TENSORBOARD_DIR))


def start_tensorboard_server(run_dir: str) -> str:
    """Serve <run_dir> with TensorBoard in this process (as the tutorial does); returns its address."""
    from tensorboard import program
    server = program.TensorBoard()
    server.configure(argv=[None, "--logdir", run_dir])
    return server.launch()


def _tile(frames: torch.Tensor, padding: int) -> torch.Tensor:
    """frames (N, C, H, W) -> one row (C, H + 2p, N * (W + p) + p), `padding` zero pixels around every frame."""
    n, c, h, w = frames.shape
    row = frames.new_zeros(c, h + 2 * padding, n * (w + padding) + padding)
    for k in range(n):
        left = padding + k * (w + padding)
        row[:, padding:padding + h, left:left + w] = frames[k]
    return row


def prediction_grid(x: torch.Tensor, y: torch.Tensor, y_hat: torch.Tensor, padding: int = 2) -> torch.Tensor:
    """The tutorial's picture of one sequence: float32 (C, 3 rows, all frames) in [0, 1], on the CPU.

    x (T_in, C, H, W) inputs, y and y_hat (T_out, C, H, W) truth and prediction. Rows: inputs then predictions;
    inputs then ground truth; zeros then the squared error (y_hat - y)^2.
    """
    x, y, y_hat = (t.detach().float().cpu() for t in (x, y, y_hat))
    rows = [torch.cat([x, y_hat]), torch.cat([x, y]), torch.cat([torch.zeros_like(x), (y_hat - y) ** 2])]
    tiles = [_tile(row, padding) for row in rows]
    return torch.cat([tiles[0]] + [tile[:, padding:] for tile in tiles[1:]], dim=1)  # share the padding rows


# predictions.png's rows (prediction_grid's), named in a margin left of them: the picture alone did not say which is which.
ROW_LABELS = ("inputs, prediction", "inputs, truth", "squared error")
LABEL_WIDTH = 120  # pixels of the margin


def save_picture(grid: torch.Tensor, path: str, row_labels=(), padding: int = 2) -> None:
    """Write a (C, H, W) grid in [0, 1] as an 8-bit PNG (atomically, so a reader never sees half a file), with
    `row_labels` (one per row of equal height, `padding` pixels apart) in a white margin on its left; a failure is a
    convlstm.atomic.WriteError."""
    from PIL import Image, ImageDraw
    pixels = (grid.clamp(0, 1) * 255).round().to(torch.uint8)
    image = Image.fromarray(pixels[0].numpy() if pixels.shape[0] == 1 else pixels.permute(1, 2, 0).numpy())
    if row_labels:
        labelled = Image.new("RGB", (LABEL_WIDTH + image.width, image.height), "white")
        labelled.paste(image.convert("RGB"), (LABEL_WIDTH, 0))
        draw, row_height = ImageDraw.Draw(labelled), (image.height - padding) / len(row_labels)
        for k, label in enumerate(row_labels):
            draw.text((4, padding + k * row_height + row_height / 2), label, fill="black", anchor="lm")
        image = labelled
    write_file(path, lambda handle: image.save(handle, format="PNG"))


# Reports after these steps as well as every --log_every: a user sees at once that the run goes, and its first ETA.
EARLY_STEPS = (1, 10)
# Between reports rank 0 writes a progress line once PROGRESS_SECONDS (convlstm.runtime) pass without one: a log in a
# file was silent 4 min 47 s before the first line at --log_every 100 on a loaded 2-core machine.


class Reporter:
    """Rank 0's view of training: progress bar, train.log lines, TensorBoard scalars and pictures.

    `record` adds a step's loss and gradient norm to sums kept on the device (no host sync on the hot path); `report`
    averages them over the steps since the last report and over all ranks (a collective: call it on every rank at
    the same steps), then writes them on rank 0.
    """

    def __init__(self, run_dir: str, is_main: bool, world_size: int, global_batch: int, total_steps: int,
                 done_steps: int, device: torch.device, log: logging.Logger):
        self.run_dir, self.is_main, self.world_size, self.global_batch = run_dir, is_main, world_size, global_batch
        self.total_steps, self.device, self.log = total_steps, device, log
        self.writer = tensorboard_writer(run_dir, is_main)
        self.bar = progress_bar(total_steps, done_steps, is_main)
        self.sums = torch.zeros(2, device=device)  # (loss, gradient norm) summed since the last report
        self.steps, self.start = 0, time.perf_counter()
        self.start_time = self.since_validation = self.last_line = self.start
        self.picture_failed = False

    def due(self, step: int, log_every: int, last_step: bool) -> bool:
        """Whether optimizer step `step` is reported (the same answer on every rank: report is a collective)."""
        return step % log_every == 0 or last_step or step in EARLY_STEPS

    def progress(self, step: int, epoch: int) -> None:
        """Rank 0, between reports: a line with the rate and the ETA once PROGRESS_SECONDS have passed without one.
        No collective: the loss is rank 0's own, the steps since the last report its own."""
        now = time.perf_counter()
        if not self.is_main or now - self.last_line < PROGRESS_SECONDS or not self.steps:
            return
        self.last_line = now
        throughput, eta = self._pace(step, now - self.start)
        loss = (self.sums[0] / self.steps).item()
        self.log.info(f"step {step}/{self.total_steps} epoch {epoch} running: rank 0's loss {loss:.6f} over its last "
                      f"{self.steps} steps, {throughput:.1f} sequences/s ETA {eta}")

    def _pace(self, step: int, seconds: float):
        """(sequences/s over the steps since the last report, the time the run's other steps take at that rate)."""
        eta = datetime.timedelta(seconds=round((self.total_steps - step) * seconds / self.steps))
        return self.global_batch * self.steps / seconds, eta

    def record(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self.sums += torch.stack([loss.detach().float(), grad_norm.detach().float()])
        self.steps += 1
        self.bar.update(1)

    def report(self, step: int, epoch: int, lr: float, all_reduce, sampling_eta: float | None = None) -> None:
        """`lr`: the learning rate of the step just taken (optimizer step `step`, counted from 1); `sampling_eta`:
        OpenSTL's share of true frames fed in training at that step (None: not scheduled sampling)."""
        train_loss, grad_norm = (all_reduce(self.sums.clone()) / (self.world_size * self.steps)).tolist()
        throughput, eta = self._pace(step, time.perf_counter() - self.start)
        self.sums.zero_()
        self.steps, self.start = 0, time.perf_counter()
        self.last_line = self.start
        if not self.is_main:
            return
        self.bar.set_postfix(loss=f"{train_loss:.5f}", seq_per_s=f"{throughput:.1f}")
        sampling = "" if sampling_eta is None else f" sampling eta {sampling_eta:.3f}"
        self.log.info(f"step {step}/{self.total_steps} epoch {epoch} loss {train_loss:.6f} grad_norm {grad_norm:.4f} "
                      f"lr {lr:.3g}{sampling} {throughput:.1f} sequences/s ETA {eta}")
        self.writer.add_scalar("train/loss", train_loss, step)
        self.writer.add_scalar("train/lr", lr, step)
        self.writer.add_scalar("train/grad_norm", grad_norm, step)
        if sampling_eta is not None:
            self.writer.add_scalar("train/sampling_eta", sampling_eta, step)
        self.writer.add_scalar("train/sequences_per_s", throughput, step)
        if self.device.type == "cuda":
            self.writer.add_scalar("gpu/max_memory_allocated_gib",
                                   torch.cuda.max_memory_allocated(self.device) / 2 ** 30, step)

    def picture(self, step: int, x: torch.Tensor, y: torch.Tensor, y_hat: torch.Tensor) -> None:
        """The tutorial's grid of one sequence (see prediction_grid) to TensorBoard and <run_dir>/predictions.png."""
        if self.is_main:
            grid = prediction_grid(x, y, y_hat)
            self.writer.add_image("predictions", grid, step)
            try:
                save_picture(grid, os.path.join(self.run_dir, PICTURE_FILE), ROW_LABELS)
            except WriteError as error:  # a picture is not worth a run (the start checked it can be written)
                if not self.picture_failed:
                    self.log.warning(f"{error}; training goes on, the picture only in TensorBoard")
                self.picture_failed = True

    def validation(self, step: int, epoch: int, val_loss: float, metrics: dict, num_val: int, seconds: float) -> None:
        """val_loss: MSE per pixel; metrics: overall means of convlstm.evaluation.metrics (mse, mae: per-frame sums
        over pixels); `seconds` it took, also as a share of the wall time since the previous validation."""
        now = time.perf_counter()
        share = seconds / max(now - self.since_validation, 1e-9)
        since = "the start" if self.since_validation == self.start_time else "the previous one"
        self.since_validation = now
        if self.is_main:
            table = " ".join(f"{name} {value:.4f}" for name, value in metrics.items())
            self.log.info(f"step {step} epoch {epoch} validation loss {val_loss:.6f} ({num_val} windows in "
                          f"{seconds:.1f} s, {share:.0%} of the wall time since {since}; {table})")
            self.writer.add_scalar("val/loss", val_loss, step)
            self.writer.add_scalar("val/seconds", seconds, step)
            for name, value in metrics.items():
                self.writer.add_scalar(f"val/{name}", value, step)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
