"""load_model: a model ready to predict, EncoderDecoderConvLSTM or OpenSTL's ConvLSTM (convlstm.openstl), from any
checkpoint of either that this project knows.

All read with torch.load(weights_only=True) (convlstm.checkpoint.read_checkpoint), so no code in a
checkpoint ever runs. `model.info.kind` says which container it was:

    train.py     {"model": state_dict, "config": {...}, "frame_shape": [C, H, W], ...}: the model its config describes
                 (config["model"]: "tutorial", the default, or "openstl_convlstm")
    state_dict   a bare state_dict of either model: its sizes inferred from the weights' shapes
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

import math
from dataclasses import dataclass

import torch
from torch import nn

from .budget import MAX_INT
from .model import CONFIG_KEYS, EncoderDecoderConvLSTM, model_config, model_from_config, model_name
from .openstl import CELL_OUTPUTS, OpenSTLConvLSTM
from .ops.lstm_gates.backends import resolve
from .checkpoint import CheckpointError, check_weights, read_checkpoint

# The tutorial reads 10 frames and predicts 10, as OpenSTL's Moving MNIST models; checkpoints without a train.py
# config get these.
TUTORIAL_N_IN = 10
TUTORIAL_N_OUT = 10
OPENSTL_CHANNELS = 1  # Moving MNIST's, for OpenSTL's own files
OPENSTL_FRAME = 64  # the frame size an OpenSTL model without layer norm is built for (any multiple of p runs)
_PREFIXES = ("model.", "module.", "_orig_mod.")
_FIRST_CONV = "encoder_1_convlstm.conv.weight"
_OPENSTL_FIRST_CONV = "cell_list.0.conv_x.0.weight"


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
    model: str = "tutorial"   # "tutorial" (EncoderDecoderConvLSTM) or "openstl_convlstm" (OpenSTLConvLSTM)


def load_model(path, device="cpu", backend=None, channels=None, cell_output=None) -> nn.Module:
    """The model of checkpoint `path` (EncoderDecoderConvLSTM or OpenSTLConvLSTM), in eval mode on `device`, with
    `model.info` (a ModelInfo).

    backend: the lstm_gates backend; None is "auto", the fastest that runs on `device` (not the checkpoint's own,
    which may be for another device). channels, cell_output: for OpenSTL's model (the module docstring). Run it as

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
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and isinstance(state.get("config"), dict):
        kind, weights, frame_shape = "train.py", state["model"], state.get("frame_shape")
        config = override_config(state["config"], path, channels, cell_output)
        # Checkpoints from before own data (no frame_shape) were all Moving MNIST frames of image_size.
        size = (frame_shape or [None] + [config.get("image_size")] * 2)[1:]
        frame_size = tuple(int(n) for n in size) if None not in size else None
        try:
            model = model_from_config(config, backend=backend, frame_shape=frame_shape)
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"checkpoint {path}: cannot build the model its config describes ({error})") from None
    else:
        kind, weights = ("lightning", state["state_dict"]) if _is_lightning(state) else ("state_dict", state)
        stripped, config = _strip_prefix(weights), None
        if isinstance(stripped, dict) and _OPENSTL_FIRST_CONV in stripped:
            kind = "openstl" if kind == "lightning" and stripped is weights else kind
            model = _openstl_from_weights(stripped, backend, path, channels or OPENSTL_CHANNELS,
                                          cell_output or "tanh_c")
            grid = stripped.get("cell_list.0.conv_x.1.weight")  # layer norm's (4 hidden, H/p, W/p)
            frame_size = None if grid is None else tuple(n * model.patch_size for n in grid.shape[1:])
        else:
            model, frame_size = _model_from_weights(stripped, backend, path), None
            override_config(model_config(model), path, channels, cell_output)
        weights = stripped
    check_weights(model, weights, path)
    model.load_state_dict(weights)
    known = config or {}
    openstl = isinstance(model, OpenSTLConvLSTM)
    in_chan = model.in_shape[1] if openstl else model.encoder_1_convlstm.input_dim
    model.info = ModelInfo(kind=kind, n_in=int(known.get("n_steps_past", TUTORIAL_N_IN)),
                           n_out=int(known.get("n_steps_ahead", TUTORIAL_N_OUT)), in_chan=in_chan,
                           out_chan=in_chan if openstl else model.decoder_CNN.out_channels, frame_size=frame_size,
                           config=config, model="openstl_convlstm" if openstl else "tutorial")
    return model.to(device).eval()


def override_config(config: dict, path, channels=None, cell_output=None) -> dict:
    """A train.py config with the caller's cell_output (OpenSTL's model only), after checking that it names a
    model, has the keys that model needs, and (when given) `channels` frames: a CheckpointError otherwise."""
    try:
        name = model_name(config)
    except ValueError as error:
        raise CheckpointError(f"checkpoint {path}: {error}") from None
    missing = [key for key in CONFIG_KEYS[name] if key not in config]
    if missing:
        raise CheckpointError(f"checkpoint {path}: its config lacks {', '.join(missing)}")
    for key in ("n_steps_past", "n_steps_ahead", "n_hidden_dim", "in_chan", "kernel_size"):  # a hand-edited config
        value = config.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INT:
            raise CheckpointError(f"checkpoint {path}: its config's {key} {value!r} is not a positive integer")
    if channels is not None and channels != config["in_chan"]:
        raise CheckpointError(f"checkpoint {path}: its model takes {config['in_chan']}-channel frames, not {channels}")
    if cell_output is None:
        return config
    if name != "openstl_convlstm":
        raise CheckpointError(f"checkpoint {path}: cell_output is an option of OpenSTL's ConvLSTM, and this is the "
                              f"tutorial's model")
    return {**config, "cell_output": cell_output}


def _is_lightning(state) -> bool:
    return isinstance(state, dict) and isinstance(state.get("state_dict"), dict)


def _strip_prefix(weights):
    if not isinstance(weights, dict):
        return weights
    for prefix in _PREFIXES:
        if weights and all(isinstance(key, str) and key.startswith(prefix) for key in weights):
            weights = {key[len(prefix):]: value for key, value in weights.items()}
    return weights


def _model_from_weights(weights, backend, path) -> EncoderDecoderConvLSTM:
    """The model a bare state_dict's shapes describe: the first cell's conv (4 nf, in_chan + nf, kH, kW) and the
    head (out_chan, nf, 1, 3, 3)."""
    first = weights.get(_FIRST_CONV) if isinstance(weights, dict) else None
    head = weights.get("decoder_CNN.weight") if isinstance(weights, dict) else None
    if not (isinstance(first, torch.Tensor) and first.dim() == 4 and isinstance(head, torch.Tensor)
            and head.dim() == 5):
        found = sorted(map(str, weights))[:6] if isinstance(weights, dict) else type(weights).__name__
        raise CheckpointError(f"{path} is not a checkpoint of EncoderDecoderConvLSTM or OpenSTL's ConvLSTM: expected a "
                              f"train.py checkpoint ('model' and 'config'), a Lightning or OpenSTL one ('state_dict') "
                              f"or a state_dict with {_FIRST_CONV} or {_OPENSTL_FIRST_CONV}; found {found}")
    nf = first.shape[0] // 4
    try:
        return EncoderDecoderConvLSTM(nf=nf, in_chan=first.shape[1] - nf, kernel_size=tuple(first.shape[2:]),
                                      backend=backend, peephole="encoder_1_convlstm.w_ci" in weights,
                                      out_chan=head.shape[0])
    except ValueError as error:
        raise CheckpointError(f"checkpoint {path}: its weights describe no EncoderDecoderConvLSTM ({error})") from None


def _openstl_from_weights(weights, backend, path, channels, cell_output) -> OpenSTLConvLSTM:
    """The OpenSTLConvLSTM an OpenSTL state_dict's shapes describe (the module docstring): layer k's
    cell_list.<k>.conv_x.0.weight (4 hidden_k, in_k, k, k), in_0 = p*p*channels."""
    convs = []
    while isinstance(weights.get(f"cell_list.{len(convs)}.conv_x.0.weight"), torch.Tensor):
        convs.append(weights[f"cell_list.{len(convs)}.conv_x.0.weight"])
    if not convs or any(w.dim() != 4 or w.shape[0] % 4 for w in convs):
        raise CheckpointError(f"checkpoint {path}: {_OPENSTL_FIRST_CONV} is not OpenSTL's ConvLSTM's "
                              f"(4 hidden, p*p*C, k, k), found {_shape(weights.get(_OPENSTL_FIRST_CONV))}")
    patch_channels = convs[0].shape[1]
    patch_size = math.isqrt(patch_channels // channels) if patch_channels % channels == 0 else 0
    if patch_size < 1 or patch_size * patch_size * channels != patch_channels:
        raise CheckpointError(f"checkpoint {path}: OpenSTL's ConvLSTM with {patch_channels} patch channels "
                              f"(patch_size^2 x frame channels), which no patch_size makes of {channels}-channel "
                              f"frames: give the frames' channels (load_model(channels=...), --openstl_channels)")
    grid = weights.get("cell_list.0.conv_x.1.weight")
    if isinstance(grid, torch.Tensor) and grid.dim() == 3:
        height, width = (n * patch_size for n in grid.shape[1:])
    else:
        height = width = OPENSTL_FRAME if OPENSTL_FRAME % patch_size == 0 else patch_size
    try:
        return OpenSTLConvLSTM([w.shape[0] // 4 for w in convs], in_shape=(TUTORIAL_N_IN, channels, height, width),
                               pre_seq_length=TUTORIAL_N_IN, aft_seq_length=TUTORIAL_N_OUT,
                               filter_size=convs[0].shape[-1], patch_size=patch_size, layer_norm=grid is not None,
                               cell_output=cell_output, backend=backend)
    except ValueError as error:
        raise CheckpointError(f"checkpoint {path}: its weights describe no OpenSTL ConvLSTM ({error})") from None
