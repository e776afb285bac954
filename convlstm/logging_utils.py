"""What rank 0 shows and writes: train.log, the progress bar, TensorBoard scalars and the tutorial's image grid.

Other ranks get a logger that prints warnings and errors only, a disabled progress bar and no TensorBoard writer, so
they stay quiet unless something is wrong.
"""
from __future__ import annotations

import logging
import os
import sys

import torch
from tqdm import tqdm

LOG_FILE = "train.log"
TENSORBOARD_DIR = "tensorboard"
PICTURE_FILE = "predictions.png"


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
        to_file = logging.FileHandler(os.path.join(run_dir, LOG_FILE))
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(to_file)
    return logger


def close_logger(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)


def progress_bar(total_steps: int, done_steps: int, enabled: bool):
    """tqdm over optimizer steps: tqdm itself gives the rate and the ETA; the loop adds loss and sequences/s."""
    return tqdm(total=total_steps, initial=done_steps, disable=not enabled, unit="step", dynamic_ncols=True,
                file=sys.stderr)


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


def save_picture(grid: torch.Tensor, path: str) -> None:
    """Write a (C, H, W) grid in [0, 1] as an 8-bit PNG (atomically, so a reader never sees half a file)."""
    from PIL import Image
    pixels = (grid.clamp(0, 1) * 255).round().to(torch.uint8)
    image = Image.fromarray(pixels[0].numpy() if pixels.shape[0] == 1 else pixels.permute(1, 2, 0).numpy())
    tmp = f"{path}.tmp.png"
    image.save(tmp)
    os.replace(tmp, path)
