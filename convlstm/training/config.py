"""train.py's flags: the Config of the run's model (convlstm.config) parsed in two stages, the --config file that may
give them, and the checks that stop a bad value before anything is built (exit status 2, naming flag and value).
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
import textwrap

from ..budget import oversized_int
from ..checkpoint import CheckpointError
from ..data.sources import is_gridded
from ..config import (AMP_MODES, DEFAULTS, DEVICES, GROUPS, LR_SCHEDULES, MAX_LR, PARSE, Config,
                      ConfigError, base_type, checked_values, config_class, with_defaults)
from ..models import (DEFAULT_MODEL, REGISTRY, ModelSpec, PluginError, get_spec, is_plugin_name, model_spec,
                      preset_spec)
from ..ops.lstm_gates.backends import BACKENDS
from .schedule import highest_lr

class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in each flag's help, once: not where the help text says its default itself or the default is None
    (it said "(default: detected where unambiguous) (default: None)"); the epilog's list of models as written."""

    def _get_help_string(self, action):
        if "default" in (action.help or "") or action.default is None:
            return action.help
        return super()._get_help_string(action)


def _models_epilog() -> str:
    lines = ["models (--model NAME) and their own flags (train.py --model NAME --help shows them in full):"]
    for spec in REGISTRY.values():
        flags = ", ".join(f"--{name}" for name in spec.fields) or "none"
        lines += textwrap.wrap(f"{spec.name}: {spec.summary}; flags: {flags}", width=100, initial_indent="  ",
                               subsequent_indent="    ", break_long_words=False, break_on_hyphens=False)
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
        kind, _ = base_type(f)
        if kind == "bool":
            kwargs.update(nargs="?", const=True)
        if f.name in spec.fields:
            kwargs["help"] = f"{spec.name}: {kwargs['help']}"
        groups[f.metadata["group"]].add_argument(*names, type=PARSE[kind], default=f.default, **kwargs)
    groups["run"].add_argument("--config", metavar="FILE.json",
                               help="a JSON object of these flags' values without the dashes, e.g. {\"lr\": 3e-4, "
                                    "\"lr_schedule\": \"cosine\"}; flags typed on the command line override it")
    return parser


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
            kind = owner.fields[token[2:]].type_name()
            text = extra[k + 1] if k + 1 < len(extra) and not extra[k + 1].startswith("--") else None
            try:  # the value as that model's parser would read it, for the message
                value = PARSE[kind](text) if text is not None else (True if kind == "bool" else None)
            except (ValueError, argparse.ArgumentTypeError):
                value = text
            parser.error(f"--{token[2:]} {value!r}: applies to --model {owner.name} only")
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return {name: value for name, value in vars(namespace).items() if value is not _NOT_GIVEN}


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
         f"is the recipe of --model {preset_spec(cfg.preset).name}" if cfg.preset in all_presets() else
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


def _checked_saved(saved, run_dir, cls) -> dict:
    """checked_values of a checkpoint's saved config against the fields of `cls`; a bad value is not a flag's fault:
    a CheckpointError (exit 1), as for any unusable checkpoint."""
    try:
        return checked_values(saved, f"the config saved in {run_dir}'s checkpoint", cls)
    except ConfigError as error:
        raise CheckpointError(f"{error}: the checkpoint was edited or damaged; move it away, or choose another "
                              "--run_dir") from None


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
        if saved is not None:
            saved = _checked_saved(saved, run_dir, Config)  # the common fields: "model" is read next
            theirs = saved.get("model", DEFAULT_MODEL)
            if named is not None and named != theirs:
                parser.error(f"--model {named}: the checkpoint in {run_dir} holds a {theirs} model; resume with it "
                             "(leave --model out), or choose another --run_dir")
            if named is None and is_plugin_name(theirs):
                parser.error(f"the checkpoint in {run_dir} holds the plug-in model {theirs}, whose code is imported "
                             f"only when typed: resume with --model {theirs}")
            named = theirs
    recipe = preset_spec(early.get("preset", from_file.get("preset")))
    if named is None and recipe is not None:
        named = recipe.name
    try:
        spec = model_spec(named if named is not None else DEFAULT_MODEL)
    except ValueError as error:  # a saved model no longer registered
        raise CheckpointError(f"the checkpoint's {error}") from None
    if saved is not None:  # the model's own fields, checked once the model is known
        saved = _checked_saved(saved, run_dir, config_class(spec))
    return spec, from_file, saved


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


# Fields that apply only with Moving MNIST (no --data), only with --data, or only under one schedule: the log leaves
# out those that do not apply to the run.
MOVING_MNIST_ONLY = ("digits", "num_train", "image_size", "num_digits", "generator")
OWN_DATA_ONLY = ("val_data", "val_fraction", "layout", "stride", "channels", "resize", "skip_bad_data")
GRIDDED_ONLY = ("variable", "transform", "zr_a", "zr_b", "value_range", "time_variable", "time_step")  # archives' flags
SCHEDULE_ONLY = {"warmup_steps": ("constant", "cosine"), "min_lr": ("cosine",), "onecycle_final_div": ("onecycle",)}


def describe_config(cfg: Config, width: int = 118) -> list:
    """The run's values as train.log shows them: a line or a few per --help group, `name value` pairs, without the
    fields that do not apply (Moving MNIST's with --data, --data's without, another schedule's, unset Nones)."""
    skip = set(MOVING_MNIST_ONLY if cfg.data is not None else OWN_DATA_ONLY)
    skip |= set(() if cfg.data is not None and is_gridded(cfg.data) else GRIDDED_ONLY)
    skip |= {name for name, schedules in SCHEDULE_ONLY.items() if cfg.lr_schedule not in schedules}
    lines = []
    for group in GROUPS:
        pairs = [f"{f.name} {getattr(cfg, f.name)}" for f in dataclasses.fields(cfg)
                 if f.metadata.get("group") == group and f.name not in skip and getattr(cfg, f.name) is not None]
        line = f"config {group}:"
        for pair in pairs:
            if len(line) + len(pair) + 2 > width:
                lines.append(line.rstrip(","))
                line = "  "
            line += f" {pair},"
        lines.append(line.rstrip(","))
    return lines


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
