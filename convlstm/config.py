"""The configuration of a run: one dataclass whose fields (default, help text and --help group each) are train.py's
flags of the same names, a model's own fields added per model (config_class), and the type checks of saved values.
Shared by training (convlstm.training.config parses and checks flags) and by whatever reads a checkpoint's config
(evaluate.py rebuilds its data split): nothing here imports the training package."""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Optional

from .data.moving_mnist import GENERATORS
from .data.sources import LAYOUTS
from .data.units import TRANSFORMS
from .losses import LOSSES
from .models import DEFAULT_MODEL, ModelSpec, get_spec
from .ops.lstm_gates.backends import BACKENDS

LR_SCHEDULES = ("constant", "cosine", "onecycle")  # convlstm.training.schedule builds them
AMP_MODES = ("auto", "none", "bf16", "fp16")
# Adam's step moves each weight by about lr at most, so a larger lr only diverges (1e38 overflowed inside Adam).
MAX_LR = 1.0
DEVICES = ("auto", "cpu", "cuda")

# The --help groups, in the order --help lists them, each with the line it shows under its title.
GROUPS = {
    "data": "Moving MNIST generated on the fly, or your own sequences with --data",
    "model": "a registered model (--model; the tutorial's is the default) or your own (--model FILE.py:Class), and "
             "the gate kernels; a resumed run must keep the fields that shape the model. Each model's own flags "
             "follow the common ones",
    "optimisation": "Adam, the learning-rate schedule over the run's optimizer steps, batches, precision",
    "run": "the run directory, its length, checkpoints and the --config file",
    "distributed": "torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; every process takes --batch_size sequences per "
                   "micro-batch from one shared shuffled order (NCCL on GPUs, gloo on the CPU)",
    "logging": "what rank 0 writes to train.log and TensorBoard",
}


def _arg(group, default, help_text, **argparse_kwargs):
    assert group in GROUPS, group
    return field(default=default, metadata={"group": group, "help": help_text, **argparse_kwargs})


@dataclass
class Config:
    # Data.
    data: Optional[str] = _arg("data", None, "your sequences: an .npy/.npz array, a video file, a folder of videos, "
                                             "a folder of frame folders (PNG/JPEG), or a radar archive (NetCDF .nc, "
                                             "Zarr .zarr, HDF5 .h5); default: Moving MNIST generated on the fly")
    val_data: Optional[str] = _arg("data", None, "validation sequences from another path, as --data; default: "
                                                 "--val_fraction of --data's sequences")
    val_fraction: float = _arg("data", 0.1, "share of --data's sequences held out for validation (by --seed) "
                                            "without --val_data")
    layout: Optional[str] = _arg("data", None, "axis order of an array in --data (default: detected where "
                                               "unambiguous)", choices=LAYOUTS)
    stride: int = _arg("data", 0, "frames between the starts of windows cut from longer sequences (0: n_in + n_out)")
    channels: Optional[int] = _arg("data", None, "read images and videos as grey (1) or RGB (3); default: grey "
                                                 "images grey, videos RGB", choices=(1, 3))
    resize: Optional[str] = _arg("data", None, "resize the frames of --data to HxW, e.g. 64 or 48x64")
    # A radar archive (NetCDF, Zarr or HDF5 --data): convlstm.data.gridded, convlstm.data.hdf5, convlstm.data.units.
    variable: Optional[str] = _arg("data", None, "the variable of a NetCDF or Zarr --data, the dataset path of an "
                                                 "HDF5 one (/group/name) (default: its only gridded one)")
    transform: str = _arg("data", "auto", "a radar archive's values to the models' [0, 1]: dbz ((dBZ + 10) / 70, "
                                          "HKO-7's scale), rainrate (mm/h to dBZ by Z = a R^b, then as dbz), none "
                                          "(--value_range LO,HI linearly); auto: by the variable's units attribute. "
                                          "Kept in checkpoints: evaluate.py and predict.py answer in these units",
                          choices=TRANSFORMS)
    zr_a: float = _arg("data", 200.0, "Z-R relation Z = a R^b: a (Marshall-Palmer's 200; HKO-7's 58.53)")
    zr_b: float = _arg("data", 1.6, "Z-R relation Z = a R^b: b (Marshall-Palmer's 1.6; HKO-7's 1.56)")
    value_range: Optional[str] = _arg("data", None, "--transform none: LO,HI, the values that map to 0 and 1")
    time_variable: Optional[str] = _arg("data", None, "an HDF5 --data's dataset of the frames' times (/group/time: "
                                                      "numbers with a CF units attribute, or ISO strings)")
    time_step: Optional[float] = _arg("data", None, "an HDF5 --data without --time_variable: minutes between frames")
    skip_bad_data: bool = _arg("data", False, "leave out the sequences of --data and --val_data that cannot be read "
                                              "as frames in [0, 1] (NaN, inf or 0-255 values in a float array, an "
                                              "image that does not decode, a video shorter than its header says), "
                                              "found by a scan before training that decodes every frame; default: "
                                              "the first one stops the run (an array's before anything is written)")
    n_steps_past: int = _arg("data", 10, "input frames the model reads", aliases=("--n_in",))
    n_steps_ahead: int = _arg("data", 10, "frames the model predicts", aliases=("--n_out",))
    # Moving MNIST, when there is no --data.
    digits: Optional[str] = _arg("data", None, "directory of MNIST IDX files (train-images-idx3-ubyte[.gz], ...); "
                                               "default: the embedded digits")
    num_train: int = _arg("data", 10000, "training sequences per epoch (Moving MNIST train split)")
    num_val: Optional[int] = _arg("data", None, "held-out validation sequences (Moving MNIST test split), evaluated "
                                                "every epoch; default: a tenth of --num_train, at most 1000, so that "
                                                "validation costs a few percent of an epoch")
    image_size: int = _arg("data", 64, "frame height and width in pixels")
    num_digits: int = _arg("data", 2, "moving digits per sequence")
    generator: str = _arg("data", "standard", "how digits move: the benchmark's (standard) or the tutorial's",
                          choices=GENERATORS)
    num_workers: int = _arg("data", 2, "DataLoader worker processes per rank (0: load in the training process)")
    # Model.
    model: str = _arg("model", DEFAULT_MODEL, "the model: a registered name (listed below with its own flags), "
                                              "or your own @convlstm.models.register_model class as FILE.py:Class "
                                              "or package.module:Class")
    preset: Optional[str] = _arg("model", None, "a model's published recipe (OpenSTL's Moving MNIST ones: "
                                                "convlstm_s / convlstm_l, --model openstl_convlstm, 4 layers of 128 "
                                                "or 192, kernel 5, patch 4, 64x64, lr 5e-4 onecycle, batch 16, "
                                                "beta_2 0.999, 200 epochs; hko7: HKO-7's radar setting, 5 in, 20 "
                                                "out, Z-R 58.53 / 1.56, --loss bmse, on that model); it picks the "
                                                "model; flags and --config override its values")
    n_hidden_dim: int = _arg("model", 64, "hidden channels of every ConvLSTM cell")
    kernel_size: int = _arg("model", 3, "ConvLSTM kernel size (odd)")
    in_chan: Optional[int] = _arg("model", None, "channels of the frames, in and out (default: the data's; Moving "
                                                 "MNIST: 1)")
    backend: str = _arg("model", "auto", "gate kernel backend", choices=BACKENDS)
    compile: bool = _arg("model", False, "wrap the model in torch.compile")
    channels_last: bool = _arg("model", False, "keep the Conv2d weights, input frames and hidden states in "
                                               "torch.channels_last (NHWC), cuDNN's own layout for tensor-core "
                                               "convolutions (bf16, fp16); the same model, so a resumed run may "
                                               "change it")
    cudnn_benchmark: Optional[bool] = _arg("model", None, "cuDNN's autotuner (torch.backends.cudnn.benchmark): time "
                                                          "the convolution algorithms once per shape and keep the "
                                                          "fastest; default: on where the device is a GPU. A resume "
                                                          "may then pick other algorithms: not bit for bit (README)")
    # Optimisation.
    loss: str = _arg("optimisation", "mse", "the per-pixel loss: mse, or HKO-7's balanced bmse / bmae (errors weighted "
                                            "1, 1, 2, 5, 10, 30 by the true rain rate's band, edges 0.5, 2, 5, 10, "
                                            "30 mm/h: a radar archive in dBZ or mm/h)", choices=LOSSES)
    lr: float = _arg("optimisation", 1e-4, f"Adam learning rate, at most {MAX_LR}: the schedule's peak")
    beta_1: float = _arg("optimisation", 0.9, "Adam beta_1 (decay rate of the first moment); onecycle cycles it "
                                              "between 0.95 and 0.85 instead")
    beta_2: float = _arg("optimisation", 0.98, "Adam beta_2 (decay rate of the second moment)")
    lr_schedule: str = _arg("optimisation", "constant", "learning rate over the run's optimizer steps: constant "
                                                        "--lr; cosine: linear warmup over --warmup_steps, then a "
                                                        "cosine down to --min_lr at the last step (nanoGPT's); "
                                                        "onecycle: torch's OneCycleLR peaking at --lr (OpenSTL's)",
                            choices=LR_SCHEDULES)
    warmup_steps: int = _arg("optimisation", 0, "constant and cosine: optimizer steps of linear warmup, step s at "
                                                "lr * (s + 1) / (warmup_steps + 1)")
    min_lr: float = _arg("optimisation", 0.0, "cosine: the learning rate at the last step (nanoGPT uses lr / 10)")
    onecycle_final_div: float = _arg("optimisation", 1e4, "onecycle: OneCycleLR's final_div_factor, the last step's "
                                                          "lr is lr / 25 / this (OpenSTL's 1e4)")
    batch_size: int = _arg("optimisation", 12, "sequences per process and micro-batch; the global batch of an "
                                               "optimizer step is batch_size * world size * grad_accum")
    grad_accum: int = _arg("optimisation", 1, "micro-batches whose gradients add up to one optimizer step: N "
                                              "micro-batches of b train as one batch of N*b")
    epochs: int = _arg("optimisation", 300, "passes over the --num_train training sequences")
    max_steps: int = _arg("optimisation", 0, "stop after this many optimizer steps in all (0: run all --epochs); "
                                             "the schedule spans the run's optimizer steps")
    grad_clip: float = _arg("optimisation", 0.0, "clip the global gradient norm to this value (0: no clipping, as "
                                                 "the tutorial)")
    amp: str = _arg("optimisation", "auto", "mixed precision: auto is bf16 on GPUs that support it, none on the CPU",
                    choices=AMP_MODES)
    use_amp: Optional[bool] = _arg("optimisation", None, "the tutorial's flag: True means --amp fp16 on CUDA, bf16 "
                                                         "on the CPU; False means --amp none. Prefer --amp")
    max_skipped_steps: int = _arg("optimisation", 50, "fp16: stop when the GradScaler has skipped more than this "
                                                      "many steps in a row (inf or nan gradients each time; a "
                                                      "healthy run skips a few while its scale settles); 0: never "
                                                      "stop")
    # Run directory, checkpoints, seed.
    run_dir: str = _arg("run", "runs/convlstm", "directory for checkpoints/, TensorBoard events, train.log, "
                                                "config.json")
    resume: bool = _arg("run", False, "continue from <run_dir>/checkpoints/latest.pt when there is one, with the "
                                      "config saved in it; --config and typed flags override its values (the "
                                      "model's must stay)")
    checkpoint_every: int = _arg("run", 500, "optimizer steps between checkpoints (also written after every epoch "
                                             "and at the end)")
    keep_checkpoints: int = _arg("run", 3, "how many step_<N>.pt checkpoints to keep besides latest.pt and best.pt")
    seed: int = _arg("run", 0, "seed of the weights, the data and the shuffling")
    init_weights: Optional[str] = _arg("run", None, "fine-tune: start from these weights instead of random ones, "
                                                    "any checkpoint evaluate.py reads (train.py's, a bare "
                                                    "state_dict, the tutorial's Lightning or OpenSTL's own .pth); "
                                                    "they must fit the model the flags build. The optimizer and "
                                                    "schedule start fresh; a resumed run takes its checkpoint's "
                                                    "weights instead")
    # Processes and device.
    device: str = _arg("distributed", "auto", "auto: the GPU of LOCAL_RANK when CUDA is available, else the CPU",
                       choices=DEVICES)
    # Logging.
    log_every: int = _arg("logging", 50, "optimizer steps between logged training loss, learning rate, throughput "
                                         "and gradient norm")
    image_every: int = _arg("logging", 250, "optimizer steps between TensorBoard image grids (inputs+predictions, "
                                            "+truth, +error)")
    tensorboard: bool = _arg("logging", False, "also start a TensorBoard server on --run_dir and print its address")


DEFAULTS = dataclasses.asdict(Config())


def _to_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False, 1/0, yes/no), got {text!r}")


# A field's type (the annotation's text) -> argparse's type and the JSON values a --config file may give it.
PARSE = {"float": float, "int": int, "str": str, "bool": _to_bool}
_JSON = {"float": (int, float), "int": (int,), "str": (str,), "bool": (bool,)}


def base_type(f: dataclasses.Field) -> tuple[str, bool]:
    """("int", True) for Optional[int]: the type and whether None is allowed."""
    optional = f.type.startswith("Optional[")
    return (f.type[len("Optional["):-1] if optional else f.type), optional


_CLASSES: dict = {}  # id(spec) -> (spec, its Config class): one class per spec, kept alive with it


def config_class(spec: ModelSpec) -> type:
    """Config with the model's own fields (spec.fields) after the common ones: parse_config's result for that model,
    so cfg.patch_size exists for OpenSTL's model and not for the tutorial's."""
    if not spec.fields:
        return Config
    if id(spec) in _CLASSES:
        return _CLASSES[id(spec)][1]
    own = [(name, f"Optional[{f.type_name()}]" if f.default is None else f.type_name(),
            _arg(f.group, f.default, f.help, **({"choices": f.choices} if f.choices else {})))
           for name, f in spec.fields.items()]
    cls = dataclasses.make_dataclass(f"Config_{spec.model_class.__name__}", own, bases=(Config,))
    _CLASSES[id(spec)] = (spec, cls)
    return cls


class ConfigError(ValueError):
    """A flag value that cannot work; the message names the flag and the value."""


def checked_values(values: dict, where: str, cls: type = None) -> dict:
    """`values` ({field: value}, JSON's types: a --config file's, or a checkpoint's saved config) with each field of
    `cls` (a Config class; Config's common fields by default) checked against its type and choices (floats given as
    ints made floats); keys that are no field are left as they are. ConfigError names `where` and the key."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a dict of train.py's flags, got a {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls or Config)}
    for key, value in values.items():
        if key not in fields:
            continue
        kind, optional = base_type(fields[key])
        wrong_type = not isinstance(value, _JSON[kind]) or (isinstance(value, bool) and kind != "bool")
        if wrong_type and not (value is None and optional):
            raise ConfigError(f"{where}: {key} must be {kind}{' or null' if optional else ''}, got "
                              f"{json.dumps(value, default=repr)}")
        choices = fields[key].metadata.get("choices")
        if choices and value is not None and value not in choices:
            raise ConfigError(f"{where}: {key} {value!r} is not one of {', '.join(map(str, choices))}")
    return {key: float(value) if key in fields and base_type(fields[key])[0] == "float" and value is not None
            else value for key, value in values.items()}


def with_defaults(saved: dict, spec: ModelSpec | None = None) -> dict:
    """A saved config (a checkpoint's) as a full set of its model's fields (spec: the saved model's by default): the
    defaults for fields it predates; keys no longer fields (another model's) dropped."""
    spec = spec or get_spec(saved.get("model"))
    defaults = dataclasses.asdict(config_class(spec)())
    return {**defaults, **{name: value for name, value in saved.items() if name in defaults}}
