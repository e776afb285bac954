"""load_model: a model ready to predict, any registered model (convlstm.models: the tutorial's EncoderDecoderConvLSTM,
OpenSTL's ConvLSTM, a plug-in whose class the caller passes), from any checkpoint of it that this project knows.

All read with torch.load(weights_only=True) (convlstm.checkpoint.read_checkpoint), so no code in a
checkpoint ever runs. `model.info.kind` says which container it was:

    train.py     {"model": state_dict, "config": {...}, "frame_shape": [C, H, W], ...}: the model its config describes
                 (config["model"]: a registered name, "tutorial" when absent, or a plug-in's "FILE.py:Class",
                 whose class the caller must pass: load_model(..., model_class=Class); no code is imported)
    state_dict   a bare state_dict of the package's models: its sizes inferred from the weights' shapes (each
                 model's spec.from_weights)
    lightning    {"state_dict": {"model.<key>": ...}, ...}: the tutorial's Lightning checkpoint, or OpenSTL-Lightning's
    openstl      OpenSTL v0.2.0's own .pth, {"state_dict": {"cell_list.0.conv_x.0.weight": ..., "conv_last.weight":
                 ...}, "optimizer": ..., "scheduler": ..., "epoch": ...} (the optimizer and scheduler are not read)

A whole-dict "module." (DataParallel) or "_orig_mod." (torch.compile) prefix is stripped as "model." is.

OpenSTL's weights alone (the last three kinds) say the layers' widths (conv_x.0.weight (4 hidden, p*p*C, k, k)),
filter_size, layer norm (whose weights also give the frame size) and the patch channels p*p*C (conv_last.weight
(p*p*C, hidden, 1, 1)), but not how p*p*C splits, nor the cell's output, nor the sequence lengths. Hence:
  - channels: C, default 1 (Moving MNIST); p follows (16 patch channels: p = 4 for 1 channel, 2 for 4). A count
    that is no square times C is a CheckpointError asking for channels.
  - cell_output: "tanh_c" (OpenSTL's cell today, the default) or "g", OpenSTL v0.2.0's h = o * g, the cell of its
    published Moving MNIST rows and of the released mmnist_convlstm_one_ep200.pth: evaluate that file with
    cell_output="g" (see convlstm/openstl.py; "g" runs on backend "torch" only, which "auto" then picks).
  - n_in / n_out: OpenSTL's Moving MNIST 10 and 10 (model.predict takes any lengths).
Both options may also be given for a train.py checkpoint of OpenSTL's model (cell_output then replaces its config's);
for a file that states them otherwise (a tutorial model: no cell_output; another channel count) they are an error.
An OpenSTL v0.2.0 .pth whose scheduler state holds a function (OneCycleLR before torch 2.2 kept its annealing
method) is refused by weights_only: save its state_dict alone (torch.save(ckpt["state_dict"], ...)) to load it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .budget import MAX_INT
from .checkpoint import CheckpointError, check_weights, read_checkpoint
from .models import DEFAULT_MODEL, REGISTRY, class_name, get_spec, is_plugin_name, not_named, spec_for_class
from .ops.lstm_gates.backends import resolve
from .openstl import CELL_OUTPUTS

# Weights alone were trained by their authors on Moving MNIST, 10 frames in and 10 out.
DEFAULT_N_IN = 10
DEFAULT_N_OUT = 10
_PREFIXES = ("model.", "module.", "_orig_mod.")


@dataclass(frozen=True)
class ModelInfo:
    """What a caller needs to run a loaded model: `model.info`."""
    kind: str                 # "train.py", "state_dict", "lightning" or "openstl" (the container, above)
    n_in: int                 # input frames it was trained on (train.py's n_steps_past, else 10)
    n_out: int                # frames it was trained to predict (train.py's n_steps_ahead, else 10)
    in_chan: int              # channels of the input frames
    out_chan: int             # channels of the predicted frames
    frame_size: tuple | None  # (H, W) it was trained on (train.py's frame_shape, else image_size; OpenSTL's layer
    #                           norm); None: unknown
    config: dict | None       # the train.py config; None for the other kinds
    model: str = DEFAULT_MODEL  # the registered name (convlstm.models), or the plug-in name the checkpoint stores
    step: int | None = None   # a train.py checkpoint's optimizer step and epoch
    epoch: int | None = None


def load_model(path, device="cpu", backend=None, channels=None, cell_output=None, model_class=None) -> nn.Module:
    """The model of checkpoint `path`, in eval mode on `device`, with `model.info` (a ModelInfo).

    backend: the lstm_gates backend; None is "auto", the fastest that runs on `device` (not the checkpoint's own,
    which may be for another device). channels, cell_output: for OpenSTL's model (the module docstring).
    model_class: the @register_model class of a plug-in's checkpoint (its code is never imported from the file). Run
    it as

        y = convlstm.model.forecast(model, x, model.info.n_out)

    with x float (B, n_in, in_chan, H, W) in [0, 1] on `device` (the tutorial's model: any H, W; OpenSTL's:
    multiples of its patch size, check_frame_size); y is (B, n_out, out_chan, H, W), the layout of x, in (0, 1)
    for the tutorial's model and unclipped for OpenSTL's. Raises CheckpointError (one line naming the file) for a
    missing, unreadable or unsafe file, one that is none of the kinds, whose weights do not fit, or whose options
    contradict it.
    """
    path = str(path)
    device = torch.device(device)
    backend = backend or "auto"
    try:
        resolve(backend, device)
    except (ValueError, RuntimeError) as error:
        raise CheckpointError(f"cannot load {path} with backend {backend!r} on {device}: {error}") from None
    if cell_output is not None and cell_output not in CELL_OUTPUTS:
        raise CheckpointError(f"cannot load {path}: cell_output must be one of {CELL_OUTPUTS}, got {cell_output!r}")
    state = read_checkpoint(path)
    step = epoch = None
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and isinstance(state.get("config"), dict):
        kind, weights, frame_shape = "train.py", state["model"], state.get("frame_shape")
        not_tensors = [key for key, value in weights.items() if not isinstance(value, torch.Tensor)]
        if not_tensors:
            raise CheckpointError(f"checkpoint {path}: 'model' is not a state_dict ({not_tensors[0]!r} is not a "
                                  "tensor)")
        spec, config = checked_config(state["config"], path, channels, cell_output, model_class)
        step, epoch, in_chan = state.get("step"), state.get("epoch"), config["in_chan"]
        # Checkpoints from before own data (no frame_shape) were all Moving MNIST frames of image_size.
        size = (frame_shape or [None] + [config.get("image_size")] * 2)[1:]
        frame_size = tuple(int(n) for n in size) if None not in size else None
        try:
            model = spec.build({**spec.defaults(), **config}, frame_shape, backend)
        except (TypeError, ValueError, KeyError) as error:
            raise CheckpointError(f"checkpoint {path}: cannot build the model its config describes ({error})") from None
    else:
        kind, weights = ("lightning", state["state_dict"]) if _is_lightning(state) else ("state_dict", state)
        stripped, config = _strip_prefix(weights), None
        spec, model, frame_size, in_chan = _from_weights(stripped, backend, path, channels, cell_output, model_class)
        if kind == "lightning" and stripped is weights and spec.container:
            kind = spec.container  # OpenSTL's own .pth: its state_dict without Lightning's "model." prefix
        weights = stripped
    check_weights(model, weights, path)
    model.load_state_dict(weights)
    known = config or {}
    model.info = ModelInfo(kind=kind, n_in=int(known.get("n_steps_past", DEFAULT_N_IN)),
                           n_out=int(known.get("n_steps_ahead", DEFAULT_N_OUT)), in_chan=in_chan,
                           out_chan=getattr(model, "out_chan", in_chan), frame_size=frame_size, config=config,
                           model=known.get("model", spec.name), step=step, epoch=epoch)
    return model.to(device).eval()


def checked_config(config: dict, path, channels=None, cell_output=None, model_class=None):
    """(spec, config) of a train.py checkpoint's config, with the caller's cell_output (a model whose spec lists it
    in load_options), after checking that it names a model (a plug-in: the one `model_class` is), has the keys that
    model needs, positive sizes, and (when given) `channels` frames: a CheckpointError otherwise."""
    name = config.get("model", DEFAULT_MODEL)
    try:
        if is_plugin_name(name) and model_class is not None:
            if class_name(name) != getattr(model_class, "__name__", None):
                given = getattr(model_class, "__name__", model_class)
                raise ValueError(f"its model is the plug-in {name}, not {given}")
            spec = spec_for_class(model_class, name)
        elif is_plugin_name(name):  # registered in this process or not: the caller names it
            raise not_named(name)
        else:
            spec = get_spec(name)
            if model_class is not None and model_class is not spec.model_class:
                raise ValueError(f"its model is {name} ({spec.model_class.__name__}), not {model_class.__name__}")
    except ValueError as error:
        raise CheckpointError(f"checkpoint {path}: {error}") from None
    missing = [key for key in spec.config_keys if key not in config]
    if missing:
        raise CheckpointError(f"checkpoint {path}: its config lacks {', '.join(missing)}")
    for key in ("n_steps_past", "n_steps_ahead", "n_hidden_dim", "in_chan", "kernel_size"):  # a hand-edited config
        value = config.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INT:
            raise CheckpointError(f"checkpoint {path}: its config's {key} {value!r} is not a positive integer")
    if channels is not None and channels != config["in_chan"]:
        raise CheckpointError(f"checkpoint {path}: its model takes {config['in_chan']}-channel frames, not {channels}")
    if cell_output is None:
        return spec, config
    if "cell_output" not in spec.load_options:
        having = [s.name for s in REGISTRY.values() if "cell_output" in s.load_options]
        raise CheckpointError(f"checkpoint {path}: cell_output is an option of the {', '.join(having)} model, and "
                              f"this is the {spec.name} model")
    return spec, {**config, "cell_output": cell_output}


def _from_weights(weights, backend, path, channels, cell_output, model_class):
    """(spec, model, frame size or None, input channels) of bare weights: the first registered spec whose
    from_weights recognises them."""
    if model_class is not None:
        raise CheckpointError(f"checkpoint {path} holds weights alone, and a plug-in's sizes are not read from "
                              "weights: load a train.py checkpoint of it")
    for spec in REGISTRY.values():
        if spec.from_weights is None or not isinstance(weights, dict):
            continue
        try:
            found = spec.from_weights(weights, backend, channels, cell_output)
        except ValueError as error:
            raise CheckpointError(f"checkpoint {path}: {error}") from None
        if found is not None:
            model, frame_size, in_chan = found
            if (cell_output is not None and "cell_output" not in spec.load_options) or \
                    (channels is not None and in_chan != channels):
                checked_config(spec.config_of(model), path, channels, cell_output)  # raises, naming the option
            return spec, model, frame_size, in_chan
    found = sorted(map(str, weights))[:6] if isinstance(weights, dict) else type(weights).__name__
    classes = " or ".join(spec.model_class.__name__ for spec in REGISTRY.values() if spec.from_weights)
    raise CheckpointError(f"{path} is not a checkpoint of {classes}: expected a train.py checkpoint ('model' and "
                          f"'config'), a Lightning or OpenSTL one ('state_dict') or a state_dict of one of them; "
                          f"found {found}")


def _is_lightning(state) -> bool:
    return isinstance(state, dict) and isinstance(state.get("state_dict"), dict)


def _strip_prefix(weights):
    if not isinstance(weights, dict):
        return weights
    for prefix in _PREFIXES:
        if weights and all(isinstance(key, str) and key.startswith(prefix) for key in weights):
            weights = {key[len(prefix):]: value for key, value in weights.items()}
    return weights
