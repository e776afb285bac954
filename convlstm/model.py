"""What builds and runs any registered model (convlstm.models) from a train.py config: model_from_config,
forecast, model_config, check_frame_size. EncoderDecoderConvLSTM, the tutorial's model, lives in
convlstm/models/tutorial.py and is imported from here as before.
"""
from __future__ import annotations

import torch
from torch import nn

from .models import REGISTRY, get_spec, preset_spec, spec_of, unwrap
from .models.tutorial import EncoderDecoderConvLSTM, to_btchw

__all__ = ["EncoderDecoderConvLSTM", "model_from_config", "forecast", "model_config", "check_frame_size",
           "preset_config", "unwrap", "to_btchw", "MODELS"]

MODELS = tuple(REGISTRY)  # the package's own models (plug-ins register later: convlstm.models.REGISTRY)


def model_from_config(config: dict, backend: str | None = None, frame_shape=None) -> nn.Module:
    """The model a train.py config dict describes (config["model"], "tutorial" when absent), with fresh weights (load
    a state_dict next): its spec's build, with the spec's defaults for its own fields the config lacks. frame_shape
    (C, H, W) sizes models that need it (OpenSTL's patches), else (in_chan, image_size, image_size). `backend`
    overrides config["backend"], e.g. "torch" to evaluate on the CPU a model trained with "triton". ValueError for
    values the model cannot take."""
    spec = get_spec(config.get("model"))
    return spec.build({**spec.defaults(), **config}, frame_shape, backend or config.get("backend", "auto"))


def forecast(model: nn.Module, x: torch.Tensor, n_out: int) -> torch.Tensor:
    """One inference call for every model: x (B, T_in, C, H, W) -> the next n_out frames (B, n_out, C, H, W), the
    model's spec's forecast, through any wrapper (torch.compile, DDP). The tutorial's values are in (0, 1) (a
    sigmoid); OpenSTL's unclipped (its predict: its own outputs fed back). The dtype is the model's (autocast's under
    autocast). Gradients are tracked as usual: wrap in torch.no_grad() to infer."""
    return spec_of(model).forecast(model, x, n_out)


def model_config(model: nn.Module) -> dict:
    """The config keys model_from_config reads that rebuild `model` (the inverse, for checkpoints that hold weights
    alone). ValueError for a model no config describes (OpenSTL layers of different widths; a plug-in)."""
    spec = spec_of(model)
    if spec.config_of is None:
        raise ValueError(f"the {spec.name} model cannot be described by a config from its weights alone")
    return spec.config_of(unwrap(model))


def check_frame_size(model: nn.Module, height: int, width: int) -> None:
    """ValueError (one line) when `model` cannot predict frames of height x width (its spec's input_problem:
    OpenSTL's patches and layer norm). The tutorial's takes any size."""
    spec = spec_of(model)
    problem = spec.input_problem(unwrap(model), height, width) if spec.input_problem else None
    if problem:
        raise ValueError(problem)


def preset_config(name: str) -> dict:
    """The train.py flag values of the preset `name` of any registered model (OpenSTL's "convlstm_s", "convlstm_l")."""
    spec = preset_spec(name)
    if spec is None:
        raise KeyError(name)
    return dict(spec.presets[name])
