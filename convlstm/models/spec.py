"""What the toolkit needs of a model (ModelSpec, its own config Fields), the default forecast and objective, and
the @register_model decorator of a user's own model (convlstm.models registers the specs)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn

from ..data.sequence import split_masked
from ..losses import FrameLoss

# The config keys every model may read (train.py's common fields); a plug-in's __init__ takes those it names.
COMMON_KEYS = ("in_chan", "n_hidden_dim", "kernel_size", "n_steps_past", "n_steps_ahead", "backend")


@dataclass(frozen=True)
class Field:
    """One config field of a model's own: a train.py flag (`--name`) and a config key. group: train.py's --help
    group ("model" or "optimisation"); kind: "int", "float", "bool" or "str" (default: the default's type)."""
    default: Any
    help: str
    group: str = "model"
    choices: Optional[tuple] = None
    kind: Optional[str] = None

    def type_name(self) -> str:
        return self.kind or type(self.default).__name__


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DistributedDataParallel / DataParallel (.module) and torch.compile (._orig_mod) wrappers."""
    while True:
        inner = next((getattr(model, name) for name in ("module", "_orig_mod")
                      if isinstance(getattr(model, name, None), nn.Module)), None)
        if inner is None:
            return model
        model = inner


def call_forecast(model: nn.Module, x: torch.Tensor, n_out: int) -> torch.Tensor:
    """A plug-in's forecast: forward(x, n_out), called through any wrapper, returning (B, n_out, C, H, W)."""
    return model(x, n_out)


class ForecastMSE:
    """The seq-to-seq objective (the tutorial's): the MSE (or --loss's) of the next n_out frames forecast from the
    first n_in, over the valid pixels (no-data pixels, NaN in the batch, are 0 in the input and out of the loss). No
    sampling masks, no state."""

    def __init__(self, forecast, cfg):
        self.forecast, self.n_in, self.n_out = forecast, cfg.n_steps_past, cfg.n_steps_ahead
        self.loss = FrameLoss.of(cfg)

    def masks(self, step: int, count: int, device) -> list:
        return [None] * count

    def __call__(self, model, batch, mask):
        """batch (B, T, C, H, W) -> the MSE of frames [n_in, n_in + n_out) forecast from frames [0, n_in)."""
        x, y, valid = split_masked(batch, self.n_in, self.n_out)
        return self.loss(self.forecast(model, x, self.n_out).float(), y, valid)

    def logged_eta(self):
        """The share of true frames fed in training (OpenSTL's eta) for the log; None: no scheduled sampling."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass(frozen=True)
class ModelSpec:
    """What the toolkit needs of a model. Only `name`, `model_class` and `build` are required.

    build(config, frame_shape, backend): the model, fresh weights; config holds the common keys and the model's own
    fields, frame_shape (C, H, W) or None (then config["image_size"] square frames). ValueError (one line naming the
    flag and the value) for values it cannot take.
    check(cfg): the first of the model's own values that cannot work as (flag, rule), or None (parse time, before
    any data is read).
    weight_fields: the config fields beyond "model" and "in_chan" that shape its weights or how they are used: a
    resumed run must keep them.
    from_weights(weights, backend, channels, cell_output): (the model a bare state_dict of it describes, the frame
    size (H, W) its weights fix or None, its input channels), or None when the weights are not this model's
    (load_model tries each spec); ValueError when they are but describe no model. config_of(model): the inverse of
    build. input_problem(model, height, width): why the built model cannot take such frames, or None.
    objective(cfg, frame_shape, rank): the training loss (train.py's objective protocol: masks, __call__,
    logged_eta, state_dict, load_state_dict); None: ForecastMSE, the MSE of its forecast.
    forecast(model, x, n_out): x (B, n_in, C, H, W) -> (B, n_out, C, H, W). presets: --preset name -> train.py flag
    values. unused_parameters: DDP must look for parameters forward never uses. load_options: load_model's options
    (cell_output) that replace config keys of this model.
    """
    name: str
    model_class: type
    build: Callable
    summary: str = ""
    fields: Mapping[str, Field] = field(default_factory=dict)
    weight_fields: tuple = ()
    config_keys: tuple = ("n_hidden_dim", "in_chan", "kernel_size")
    check: Optional[Callable] = None
    from_weights: Optional[Callable] = None
    config_of: Optional[Callable] = None
    input_problem: Optional[Callable] = None
    objective: Optional[Callable] = None
    forecast: Callable = call_forecast
    presets: Mapping[str, dict] = field(default_factory=dict)
    unused_parameters: bool = False
    load_options: tuple = ()
    container: Optional[str] = None  # load_model's kind for its authors' own {"state_dict": ...} file (no "model.")
    plugin: bool = False

    def defaults(self) -> dict:
        return {name: f.default for name, f in self.fields.items()}


class PluginError(ValueError):
    """A --model plug-in that cannot be used: one line naming it."""


def register_model(cls=None, *, forecast=None, objective=None, unused_parameters=False, fields=None, help=""):
    """Class decorator: make an nn.Module trainable and loadable by the toolkit, unchanged.

    The class's __init__ takes any of the common config keys (in_chan, n_hidden_dim, kernel_size, n_steps_past,
    n_steps_ahead, backend); its other keyword arguments with defaults become its own train.py flags
    (`--depth 3` for `depth=2`), of the default's type. Its forward(x, n_out) maps x (B, n_in, C, H, W) in [0, 1]
    to the next n_out frames (B, n_out, C, H, W) (or pass `forecast(model, x, n_out)`); it trains on their MSE
    (or pass `objective`, the protocol of convlstm.models.ForecastMSE). fields: {name: Field} to give help texts.
    """
    def decorate(cls):
        cls.__convlstm_spec__ = dict(forecast=forecast, objective=objective, unused_parameters=unused_parameters,
                                     fields=fields or {}, help=help)
        return cls
    return decorate if cls is None else decorate(cls)
