"""The training configuration: one dataclass whose fields (default, help text and --help group each) are train.py's
flags of the same names, the --config file that may give them, and the checks that stop a bad value before anything
is built (exit status 2, naming flag and value).
The tutorial's flags (--lr, --beta_1, --beta_2, --batch_size, --epochs, --n_hidden_dim, --use_amp) keep their meaning.

Where a value comes from, lowest first: the field's default; with --resume, the config saved in the checkpoint the run
continues from; the --config file; the flags typed on the command line. Only typed flags count as typed: argparse's
defaults never replace a saved or file value.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Optional

from ..budget import oversized_int
from ..checkpoint import CheckpointError
from ..data.moving_mnist import GENERATORS
from ..data.sources import LAYOUTS
from ..models import REGISTRY, ModelSpec, PluginError, get_spec, is_plugin_name, model_spec
from ..ops.lstm_gates.backends import BACKENDS
from .schedule import SCHEDULES as LR_SCHEDULES
from .schedule import highest_lr

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
                                             "or a folder of frame folders (PNG/JPEG); default: Moving MNIST "
                                             "generated on the fly")
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
    model: str = _arg("model", "tutorial", "the model: a registered name (listed below with its own flags), or "
                                           "your own @convlstm.models.register_model class as FILE.py:Class or "
                                           "package.module:Class")
    preset: Optional[str] = _arg("model", None, "a model's published recipe (OpenSTL's Moving MNIST ones: "
                                                "convlstm_s / convlstm_l, --model openstl_convlstm, 4 layers of 128 "
                                                "or 192, kernel 5, patch 4, 64x64, lr 5e-4 onecycle, batch 16, "
                                                "beta_2 0.999, 200 epochs); it picks the model; flags and --config "
                                                "override its values")
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
_PARSE = {"float": float, "int": int, "str": str, "bool": _to_bool}
_JSON = {"float": (int, float), "int": (int,), "str": (str,), "bool": (bool,)}


def _base_type(f: dataclasses.Field) -> tuple[str, bool]:
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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in each flag's help, and the epilog's list of models as written."""


def _models_epilog() -> str:
    lines = ["models (--model NAME) and their own flags (train.py --model NAME --help shows them in full):"]
    for spec in REGISTRY.values():
        flags = ", ".join(f"--{name}" for name in spec.fields) or "none"
        lines.append(f"  {spec.name}: {spec.summary}; flags: {flags}")
    return "\n".join(lines)


def build_parser(spec: ModelSpec | None = None) -> argparse.ArgumentParser:
    """One flag per field of the model's Config (config_class(spec); the tutorial's by default), in GROUPS'
    argument groups, and --config. Boolean flags accept `--flag` alone or `--flag True/False` (the tutorial's
    style)."""
    spec = spec or get_spec(None)
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train a ConvLSTM (the tutorial's, OpenSTL's or your own) on Moving MNIST or your own sequences "
                    "(torchrun for several processes).",
        epilog=_models_epilog(), formatter_class=_HelpFormatter, allow_abbrev=False)
    groups = {title: parser.add_argument_group(title, description) for title, description in GROUPS.items()}
    for f in dataclasses.fields(config_class(spec)):
        kwargs = {k: v for k, v in f.metadata.items() if k != "group"}
        names = (f"--{f.name}", *kwargs.pop("aliases", ()))
        kind, _ = _base_type(f)
        if kind == "bool":
            kwargs.update(nargs="?", const=True)
        if f.name in spec.fields:
            kwargs["help"] = f"{spec.name}: {kwargs['help']}"
        groups[f.metadata["group"]].add_argument(*names, type=_PARSE[kind], default=f.default, **kwargs)
    groups["run"].add_argument("--config", metavar="FILE.json",
                               help="a JSON object of these flags' values without the dashes, e.g. {\"lr\": 3e-4, "
                                    "\"lr_schedule\": \"cosine\"}; flags typed on the command line override it")
    return parser


class ConfigError(ValueError):
    """A flag value that cannot work; the message names the flag and the value."""


def read_json(path: str) -> dict:
    """The JSON object of a --config file. ConfigError naming the file otherwise."""
    try:
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
    except OSError as error:
        raise ConfigError(f"--config {path}: cannot read it ({error.strerror})") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"--config {path}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                          f"{error.start}); a config is a JSON file") from error
    except json.JSONDecodeError as error:
        raise ConfigError(f"--config {path}: not JSON ({error})") from error
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected one JSON object of train.py's flags, e.g. {{\"lr\": 3e-4}}")
    return values


def read_config_file(path: str, spec: ModelSpec | None = None, values: dict | None = None) -> dict:
    """The {field: value} of a --config JSON file for the model of `spec`, each checked against its field's type
    and choices. Another registered model's key at that model's default is left out (train.py's config.json held
    every model's fields); raises ConfigError naming the file and the key for any other unknown key, a value of the
    wrong type, another model's key with another value."""
    spec = spec or get_spec(None)
    values = read_json(path) if values is None else values
    known = {f.name for f in dataclasses.fields(config_class(spec))}
    kept = {}
    for key, value in values.items():
        if key in known:
            kept[key] = value
            continue
        owner = _owner(key, spec)
        if owner is None:
            raise ConfigError(f"--config {path}: unknown key {key!r} (the keys are train.py's flag names without "
                              "the dashes)")
        if value != owner.fields[key].default:
            raise ConfigError(f"--{key} {value!r}: applies to --model {owner.name} only")
    return checked_values(kept, f"--config {path}", config_class(spec))


def _owner(key: str, spec: ModelSpec) -> ModelSpec | None:
    """The other registered model whose own field `key` is."""
    return next((other for other in REGISTRY.values() if other is not spec and key in other.fields), None)


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
        kind, optional = _base_type(fields[key])
        wrong_type = not isinstance(value, _JSON[kind]) or (isinstance(value, bool) and kind != "bool")
        if wrong_type and not (value is None and optional):
            raise ConfigError(f"{where}: {key} must be {kind}{' or null' if optional else ''}, got "
                              f"{json.dumps(value, default=repr)}")
        choices = fields[key].metadata.get("choices")
        if choices and value is not None and value not in choices:
            raise ConfigError(f"{where}: {key} {value!r} is not one of {', '.join(map(str, choices))}")
    return {key: float(value) if key in fields and _base_type(fields[key])[0] == "float" and value is not None
            else value for key, value in values.items()}


_NOT_GIVEN = object()


def typed_values(argv, parser: argparse.ArgumentParser, spec: ModelSpec) -> dict:
    """{field: value} of the flags typed in `argv` (argparse's defaults are not values given; --config's path under
    "config"). A flag of another registered model's is refused by name; bad flags exit with status 2."""
    fields = [action.dest for action in parser._actions if action.dest != "help"]
    # argparse sets a flag's default only on a namespace that lacks the attribute: a typed flag replaces the marker.
    namespace, extra = parser.parse_known_args(argv, argparse.Namespace(**dict.fromkeys(fields, _NOT_GIVEN)))
    for k, token in enumerate(extra):
        owner = _owner(token[2:], spec) if token.startswith("--") else None
        if owner is not None:
            field_ = owner.fields[token[2:]]
            text = extra[k + 1] if k + 1 < len(extra) and not extra[k + 1].startswith("--") else None
            value = True if text is None and field_.type_name() == "bool" else text
            try:
                value = _PARSE[field_.type_name()](value) if value is not None and text is not None else value
            except (ValueError, argparse.ArgumentTypeError):
                pass
            parser.error(f"--{token[2:]} {value!r}: applies to --model {owner.name} only")
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return {name: value for name, value in vars(namespace).items() if value is not _NOT_GIVEN}


def with_defaults(saved: dict, spec: ModelSpec | None = None) -> dict:
    """A saved config (a checkpoint's) as a full set of its model's fields (spec: the saved model's by default): the
    defaults for fields it predates; keys no longer fields (another model's) dropped."""
    spec = spec or get_spec(saved.get("model"))
    defaults = dataclasses.asdict(config_class(spec)())
    return {**defaults, **{name: value for name, value in saved.items() if name in defaults}}


def check_config(cfg: Config) -> None:
    """Raise ConfigError for the first value that cannot work: the common rules, then the model's own
    (its spec's check)."""
    def need(ok, flag, rule):
        if not ok:
            raise ConfigError(f"--{flag} {getattr(cfg, flag)!r}: {rule}")

    for flag in ("lr", "beta_1", "beta_2", "grad_clip", "min_lr", "onecycle_final_div"):
        need(math.isfinite(getattr(cfg, flag)), flag, "must be a finite number")
    need(cfg.lr > 0, "lr", "must be positive")
    need(cfg.lr <= MAX_LR, "lr", f"must be at most {MAX_LR}: Adam moves every weight by up to lr per step")
    need(0 <= cfg.beta_1 < 1, "beta_1", "must be in [0, 1)")
    need(0 <= cfg.beta_2 < 1, "beta_2", "must be in [0, 1)")
    need(cfg.grad_clip >= 0, "grad_clip", "must be >= 0 (0 turns clipping off)")
    need(cfg.lr_schedule in LR_SCHEDULES, "lr_schedule", f"must be one of {', '.join(LR_SCHEDULES)}")
    need(0 <= cfg.min_lr <= cfg.lr or cfg.lr_schedule != "cosine", "min_lr", "must be in [0, --lr]")
    need(cfg.onecycle_final_div > 0, "onecycle_final_div", "must be positive")
    need(highest_lr(cfg) <= MAX_LR, "onecycle_final_div", f"ends onecycle at lr {highest_lr(cfg):g} (--lr / 25 / "
         f"this): every lr the schedule reaches must be at most {MAX_LR}")
    need(cfg.warmup_steps == 0 or cfg.lr_schedule != "onecycle", "warmup_steps",
         "onecycle warms up over its first 30% of steps (OneCycleLR's pct_start): use --warmup_steps with "
         "--lr_schedule constant or cosine")
    need(cfg.num_val is None or cfg.num_val >= 1, "num_val", "must be at least 1")
    for flag in ("batch_size", "grad_accum", "epochs", "n_hidden_dim", "num_train", "image_size", "n_steps_past",
                 "n_steps_ahead", "num_digits", "checkpoint_every", "log_every", "image_every"):
        need(getattr(cfg, flag) >= 1, flag, "must be at least 1")
    for flag in ("max_steps", "num_workers", "keep_checkpoints", "seed", "max_skipped_steps", "warmup_steps"):
        need(getattr(cfg, flag) >= 0, flag, "must be >= 0")
    too_large = oversized_int(dataclasses.asdict(cfg))
    if too_large:
        raise ConfigError(too_large)
    need(cfg.kernel_size >= 1 and cfg.kernel_size % 2 == 1, "kernel_size", "must be odd and positive")
    need(cfg.in_chan is None or cfg.in_chan >= 1, "in_chan", "must be at least 1")
    need(0 <= cfg.val_fraction < 1, "val_fraction", "must be in [0, 1)")
    need(cfg.stride >= 0, "stride", "must be >= 0 (0: windows of n_in + n_out without overlap)")
    need(cfg.amp in AMP_MODES, "amp", f"must be one of {', '.join(AMP_MODES)}")
    need(cfg.backend in BACKENDS, "backend", f"must be one of {', '.join(BACKENDS)}")
    need(cfg.device in DEVICES, "device", f"must be one of {', '.join(DEVICES)}")
    need(bool(cfg.run_dir), "run_dir", "must name a directory")
    spec = model_spec(cfg.model)
    need(cfg.preset is None or cfg.preset in spec.presets, "preset",
         f"is the recipe of --model {preset_owner(cfg.preset).name}" if cfg.preset in all_presets() else
         f"must be one of {', '.join(all_presets())}")
    problem = spec.check(cfg) if spec.check else None
    if problem:
        need(False, *problem)
    if cfg.use_amp is not None and cfg.amp != "auto":
        wanted = "none" if not cfg.use_amp else ("fp16", "bf16")
        if cfg.amp not in wanted:
            raise ConfigError(f"--use_amp {cfg.use_amp} contradicts --amp {cfg.amp}: give only --amp")


def all_presets() -> list:
    return [name for spec in REGISTRY.values() for name in spec.presets]


def preset_owner(name) -> ModelSpec | None:
    return next((spec for spec in REGISTRY.values() if name in spec.presets), None)


def _early_values(argv) -> dict:
    """The flags that decide the model, read before the model's own flags are known (typed, as text): --model,
    --preset, --config, --resume, --run_dir."""
    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for name in ("--model", "--preset", "--config", "--run_dir"):
        early.add_argument(name)
    early.add_argument("--resume", nargs="?", const="True")
    try:
        values, _ = early.parse_known_args(argv)
    except SystemExit:  # a flag without its value: the full parser says so
        return {}
    return {name: value for name, value in vars(values).items() if value is not None}


def choose_model(argv, saved_config, parser) -> tuple[ModelSpec, dict, dict | None]:
    """(the run's model spec, the --config file's raw values, the saved config of the checkpoint a --resume
    continues, checked, or None). The model is, first found: --model as typed (a plug-in is imported here, the only
    code that ever is), the --config file's, the checkpoint's on --resume, the --preset's, the tutorial's. A --config
    file or a checkpoint that names a plug-in the user did not type is refused: no code named in a file runs."""
    early = _early_values(argv)
    try:
        from_file = read_json(early["config"]) if "config" in early else {}
    except ConfigError as error:
        parser.error(str(error))
    typed = early.get("model")
    if typed is not None:
        if not is_plugin_name(typed) and typed not in REGISTRY:
            parser.error(f"argument --model: invalid choice: {typed!r} (choose from {', '.join(REGISTRY)}, or "
                         "FILE.py:Class)")
        try:
            model_spec(typed)
        except PluginError as error:
            parser.error(str(error))
    named = typed if typed is not None else from_file.get("model")
    if typed is None and named is not None and (not isinstance(named, str) or is_plugin_name(named)
                                                 or named not in REGISTRY):
        parser.error(f"--config {early['config']}: model {named!r} is not a registered model" +
                     (f"; a plug-in is imported only when typed: pass --model {named}" if is_plugin_name(named)
                      else f" ({', '.join(REGISTRY)})"))
    saved = None
    resume = early.get("resume", from_file.get("resume", False))
    if saved_config is not None and resume not in (False, None) and str(resume).lower() not in (
            "0", "false", "no", "n", "off"):
        run_dir = early.get("run_dir", from_file.get("run_dir", DEFAULTS["run_dir"]))
        saved = saved_config(run_dir)
        try:
            saved = None if saved is None else checked_values(saved, f"the config saved in {run_dir}'s checkpoint")
        except ConfigError as error:  # not a flag's fault: exit 1, as for any unusable checkpoint
            raise CheckpointError(f"{error}: the checkpoint was edited or damaged; move it away, or choose another "
                                  "--run_dir") from None
        if saved is not None:
            theirs = saved.get("model", "tutorial")
            if named is not None and named != theirs:
                parser.error(f"--model {named}: the checkpoint in {run_dir} holds a {theirs} model; resume with it "
                             "(leave --model out), or choose another --run_dir")
            if named is None and is_plugin_name(theirs):
                parser.error(f"the checkpoint in {run_dir} holds the plug-in model {theirs}, whose code is imported "
                             f"only when typed: resume with --model {theirs}")
            named = theirs
    preset = early.get("preset", from_file.get("preset"))
    if named is None and preset_owner(preset) is not None:
        named = preset_owner(preset).name
    try:
        return model_spec(named if named is not None else "tutorial"), from_file, saved
    except ValueError as error:  # a saved model no longer registered
        raise CheckpointError(f"the checkpoint's {error}") from None


def parse_config(argv=None, saved_config=None) -> Config:
    """Parse `argv` (default sys.argv[1:]) into a checked Config of the run's model (config_class); unknown flags,
    unknown --config keys and bad values exit with status 2.

    Two stages: choose_model reads what decides the model (--model, --config's "model", the checkpoint on --resume,
    --preset), then the model's parser reads every flag. saved_config(run_dir), when given, is called for a
    --resume: it returns the config dict saved in the checkpoint the run will continue from (None if there is none),
    whose values then replace the defaults, so that `train.py --run_dir R --resume` alone continues with the saved
    values; a saved value of the wrong type is a CheckpointError, a --model other than the saved one a flag error
    naming both. The --config file and typed flags override them; train.py warns about the values that changed and
    refuses a changed model.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    spec, from_file, saved = choose_model(argv, saved_config, build_parser())
    parser = build_parser(spec)
    typed = typed_values(argv, parser, spec)
    path = typed.pop("config", None)
    try:
        given = {**(read_config_file(path, spec, from_file) if path is not None else {}), **typed}
    except ConfigError as error:
        parser.error(str(error))
    if saved is not None:
        try:
            saved = checked_values(saved, "the config saved in the checkpoint", config_class(spec))
        except ConfigError as error:  # the model's own fields, checked once the model is known
            raise CheckpointError(f"{error}: the checkpoint was edited or damaged; move it away, or choose another "
                                  "--run_dir") from None
    base = with_defaults(saved, spec) if saved is not None else dataclasses.asdict(config_class(spec)())
    base["model"] = spec.name
    preset = given.get("preset", base["preset"])
    if preset is not None and saved is None and preset in spec.presets:
        base = {**base, **spec.presets[preset]}  # a resumed run's saved values already hold its preset's
    if saved is not None and "use_amp" in given and "amp" not in given:
        base = {**base, "amp": "auto"}  # the saved amp is the one --use_amp resolved to: the typed --use_amp decides
    try:
        cfg = config_class(spec)(**{**base, **given})
        check_config(cfg)
    except ConfigError as error:
        parser.error(str(error))
    return cfg


def default_num_val(num_train: int) -> int:
    """A tenth of the training sequences, 1 to 1000: a forward pass over them costs about 3% of an epoch's training
    steps (forward and backward), where 1000 sequences after a 6-step run cost minutes on a CPU."""
    return min(1000, max(1, num_train // 10))


def resolve_config(cfg: Config, device_type: str, bf16_supported: bool) -> Config:
    """Turn the automatic choices into concrete ones for this device: `amp` becomes none, bf16 or fp16, an unset
    `num_val` default_num_val(num_train), and an unset `cudnn_benchmark` True on CUDA, False elsewhere (train.py
    sets torch's flag on CUDA only: the CPU has no cuDNN).

    --use_amp True maps to fp16 on CUDA (the tutorial's native AMP) and to bf16 on the CPU, where fp16 autocast is
    slow; --use_amp False maps to none.
    """
    amp = cfg.amp
    if cfg.use_amp is not None and amp == "auto":
        amp = ("fp16" if device_type == "cuda" else "bf16") if cfg.use_amp else "none"
    if amp == "auto":
        amp = "bf16" if device_type == "cuda" and bf16_supported else "none"
    num_val = cfg.num_val if cfg.num_val is not None else default_num_val(cfg.num_train)
    cudnn_benchmark = cfg.cudnn_benchmark if cfg.cudnn_benchmark is not None else device_type == "cuda"
    return dataclasses.replace(cfg, amp=amp, use_amp=None, num_val=num_val, cudnn_benchmark=cudnn_benchmark)
