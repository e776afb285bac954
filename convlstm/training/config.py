"""The training configuration: one dataclass whose fields (default and help text each) are train.py's flags of the
same names, and the checks that stop a bad value before anything is built (exit status 2, naming flag and value).
The tutorial's flags (--lr, --beta_1, --beta_2, --batch_size, --epochs, --n_hidden_dim, --use_amp) keep their meaning.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

from ..ops.lstm_gates.backends import BACKENDS
from ..data.moving_mnist import GENERATORS
from ..data.sources import LAYOUTS

AMP_MODES = ("auto", "none", "bf16", "fp16")
# Adam's step moves each weight by about lr at most, so a larger lr only diverges (1e38 overflowed inside Adam).
MAX_LR = 1.0
DEVICES = ("auto", "cpu", "cuda")


def _arg(default, help_text, **argparse_kwargs):
    return field(default=default, metadata={"help": help_text, **argparse_kwargs})


@dataclass
class Config:
    # The tutorial's flags, same defaults and meaning.
    lr: float = _arg(1e-4, f"Adam learning rate, at most {MAX_LR}")
    beta_1: float = _arg(0.9, "Adam beta_1 (decay rate of the first moment)")
    beta_2: float = _arg(0.98, "Adam beta_2 (decay rate of the second moment)")
    batch_size: int = _arg(12, "sequences per process and step; the global batch is batch_size * world size")
    epochs: int = _arg(300, "passes over the --num_train training sequences")
    n_hidden_dim: int = _arg(64, "hidden channels of every ConvLSTM cell")
    use_amp: Optional[bool] = _arg(None, "the tutorial's flag: True means --amp fp16 on CUDA, bf16 on the CPU; "
                                         "False means --amp none. Prefer --amp")
    # Run directory, length and checkpoints.
    run_dir: str = _arg("runs/convlstm", "directory for checkpoints/, TensorBoard events, train.log, config.json")
    max_steps: int = _arg(0, "stop after this many optimizer steps in all (0: run all --epochs)")
    resume: bool = _arg(False, "continue from <run_dir>/checkpoints/latest.pt when there is one")
    checkpoint_every: int = _arg(500, "steps between checkpoints (also written after every epoch and at the end)")
    keep_checkpoints: int = _arg(3, "how many step_<N>.pt checkpoints to keep besides latest.pt and best.pt")
    # Data.
    data: Optional[str] = _arg(None, "your sequences: an .npy/.npz array, a video file, a folder of videos, or a "
                                     "folder of frame folders (PNG/JPEG); default: Moving MNIST generated on the fly")
    val_data: Optional[str] = _arg(None, "validation sequences from another path, as --data; default: "
                                         "--val_fraction of --data's sequences")
    val_fraction: float = _arg(0.1, "share of --data's sequences held out for validation (by --seed) without "
                                    "--val_data")
    layout: Optional[str] = _arg(None, "axis order of an array in --data (default: detected where unambiguous)",
                                 choices=LAYOUTS)
    stride: int = _arg(0, "frames between the starts of windows cut from longer sequences (0: n_in + n_out)")
    channels: Optional[int] = _arg(None, "read images and videos as grey (1) or RGB (3); default: grey images "
                                         "grey, videos RGB", choices=(1, 3))
    resize: Optional[str] = _arg(None, "resize the frames of --data to HxW, e.g. 64 or 48x64")
    n_steps_past: int = _arg(10, "input frames the model reads", aliases=("--n_in",))
    n_steps_ahead: int = _arg(10, "frames the model predicts", aliases=("--n_out",))
    # Moving MNIST, when there is no --data.
    digits: Optional[str] = _arg(None, "directory of MNIST IDX files (train-images-idx3-ubyte[.gz], ...); "
                                       "default: the embedded digits")
    num_train: int = _arg(10000, "training sequences per epoch (Moving MNIST train split)")
    num_val: Optional[int] = _arg(None, "held-out validation sequences (Moving MNIST test split), evaluated every "
                                        "epoch; default: a tenth of --num_train, at most 1000, so that validation "
                                        "costs a few percent of an epoch")
    image_size: int = _arg(64, "frame height and width in pixels")
    num_digits: int = _arg(2, "moving digits per sequence")
    generator: str = _arg("standard", "how digits move: the benchmark's (standard) or the tutorial's",
                          choices=GENERATORS)
    num_workers: int = _arg(2, "DataLoader worker processes per rank (0: load in the training process)")
    seed: int = _arg(0, "seed of the weights, the data and the shuffling")
    # Model.
    kernel_size: int = _arg(3, "ConvLSTM kernel size (odd)")
    peephole: bool = _arg(False, "add the peephole terms of Shi et al. (2015) to every cell")
    in_chan: Optional[int] = _arg(None, "channels of the frames, in and out (default: the data's; Moving MNIST: 1)")
    backend: str = _arg("auto", "gate kernel backend", choices=BACKENDS)
    compile: bool = _arg(False, "wrap the model in torch.compile")
    # Numerics and device.
    amp: str = _arg("auto", "mixed precision: auto is bf16 on GPUs that support it, none on the CPU",
                    choices=AMP_MODES)
    grad_clip: float = _arg(0.0, "clip the global gradient norm to this value (0: no clipping, as the tutorial)")
    max_skipped_steps: int = _arg(50, "fp16: stop when the GradScaler has skipped more than this many steps in a "
                                      "row (inf or nan gradients each time; a healthy run skips a few while its "
                                      "scale settles); 0: never stop")
    device: str = _arg("auto", "auto: the GPU of LOCAL_RANK when CUDA is available, else the CPU", choices=DEVICES)
    # Logging.
    log_every: int = _arg(50, "steps between logged training loss, throughput and gradient norm")
    image_every: int = _arg(250, "steps between TensorBoard image grids (inputs+predictions, +truth, +error)")
    tensorboard: bool = _arg(False, "also start a TensorBoard server on --run_dir and print its address")


def _to_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False, 1/0, yes/no), got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """One flag per Config field. Boolean flags accept `--flag` alone or `--flag True/False` (the tutorial's style)."""
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train EncoderDecoderConvLSTM on Moving MNIST or your own sequences (torchrun for several "
                    "processes).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    for f in dataclasses.fields(Config):
        kwargs = {k: v for k, v in f.metadata.items()}
        kwargs.setdefault("help", "")
        names = (f"--{f.name}", *kwargs.pop("aliases", ()))
        if f.type in ("bool", "Optional[bool]"):
            parser.add_argument(*names, type=_to_bool, nargs="?", const=True, default=f.default, **kwargs)
        else:
            kind = {"float": float, "int": int, "Optional[int]": int, "str": str, "Optional[str]": str}[f.type]
            parser.add_argument(*names, type=kind, default=f.default, **kwargs)
    return parser


class ConfigError(ValueError):
    """A flag value that cannot work; the message names the flag and the value."""


def check_config(cfg: Config) -> None:
    """Raise ConfigError for the first value that cannot work."""
    def need(ok, flag, rule):
        if not ok:
            raise ConfigError(f"--{flag} {getattr(cfg, flag)!r}: {rule}")

    for flag in ("lr", "beta_1", "beta_2", "grad_clip"):
        need(math.isfinite(getattr(cfg, flag)), flag, "must be a finite number")
    need(cfg.lr > 0, "lr", "must be positive")
    need(cfg.lr <= MAX_LR, "lr", f"must be at most {MAX_LR}: Adam moves every weight by up to lr per step")
    need(0 <= cfg.beta_1 < 1, "beta_1", "must be in [0, 1)")
    need(0 <= cfg.beta_2 < 1, "beta_2", "must be in [0, 1)")
    need(cfg.grad_clip >= 0, "grad_clip", "must be >= 0 (0 turns clipping off)")
    need(cfg.num_val is None or cfg.num_val >= 1, "num_val", "must be at least 1")
    for flag in ("batch_size", "epochs", "n_hidden_dim", "num_train", "image_size", "n_steps_past",
                 "n_steps_ahead", "num_digits", "checkpoint_every", "log_every", "image_every"):
        need(getattr(cfg, flag) >= 1, flag, "must be at least 1")
    for flag in ("max_steps", "num_workers", "keep_checkpoints", "seed", "max_skipped_steps"):
        need(getattr(cfg, flag) >= 0, flag, "must be >= 0")
    need(cfg.kernel_size >= 1 and cfg.kernel_size % 2 == 1, "kernel_size", "must be odd and positive")
    need(cfg.in_chan is None or cfg.in_chan >= 1, "in_chan", "must be at least 1")
    need(0 <= cfg.val_fraction < 1, "val_fraction", "must be in [0, 1)")
    need(cfg.stride >= 0, "stride", "must be >= 0 (0: windows of n_in + n_out frames without overlap)")
    need(cfg.amp in AMP_MODES, "amp", f"must be one of {', '.join(AMP_MODES)}")
    need(cfg.backend in BACKENDS, "backend", f"must be one of {', '.join(BACKENDS)}")
    need(cfg.device in DEVICES, "device", f"must be one of {', '.join(DEVICES)}")
    need(bool(cfg.run_dir), "run_dir", "must name a directory")
    if cfg.use_amp is not None and cfg.amp != "auto":
        wanted = "none" if not cfg.use_amp else ("fp16", "bf16")
        if cfg.amp not in wanted:
            raise ConfigError(f"--use_amp {cfg.use_amp} contradicts --amp {cfg.amp}: give only --amp")


def parse_config(argv=None) -> Config:
    """Parse `argv` (default sys.argv[1:]) into a checked Config; unknown flags and bad values exit with status 2."""
    parser = build_parser()
    namespace = parser.parse_args(argv)
    cfg = Config(**vars(namespace))
    try:
        check_config(cfg)
    except ConfigError as error:
        parser.error(str(error))
    return cfg


def default_num_val(num_train: int) -> int:
    """A tenth of the training sequences, 1 to 1000: a forward pass over them costs about 3% of an epoch's training
    steps (forward and backward), where 1000 sequences after a 6-step run cost minutes on a CPU."""
    return min(1000, max(1, num_train // 10))


def resolve_config(cfg: Config, device_type: str, bf16_supported: bool) -> Config:
    """Turn the automatic choices into concrete ones for this device: `amp` becomes none, bf16 or fp16, and an unset
    `num_val` default_num_val(num_train).

    --use_amp True maps to fp16 on CUDA (the tutorial's native AMP) and to bf16 on the CPU, where fp16 autocast is
    slow; --use_amp False maps to none.
    """
    amp = cfg.amp
    if cfg.use_amp is not None and amp == "auto":
        amp = ("fp16" if device_type == "cuda" else "bf16") if cfg.use_amp else "none"
    if amp == "auto":
        amp = "bf16" if device_type == "cuda" and bf16_supported else "none"
    num_val = cfg.num_val if cfg.num_val is not None else default_num_val(cfg.num_train)
    return dataclasses.replace(cfg, amp=amp, use_amp=None, num_val=num_val)


# Fields that define the model's parameters: a resumed run must keep them.
MODEL_FIELDS = ("n_hidden_dim", "kernel_size", "peephole", "in_chan")
