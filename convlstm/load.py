"""load_model: an EncoderDecoderConvLSTM ready to predict, from any checkpoint of it this project knows.

Three kinds of file, all read with torch.load(weights_only=True) (convlstm.training.checkpoint.read_checkpoint), so
no code in a checkpoint ever runs:

    train.py     {"model": state_dict, "config": {...}, ...}: the model its config describes
    state_dict   the bare state_dict of an EncoderDecoderConvLSTM: sizes inferred from the weights' shapes
    lightning    the tutorial's Lightning checkpoint, {"state_dict": {"model.<key>": ...}, ...}: as a bare state_dict

A whole-dict "module." (DataParallel) or "_orig_mod." (torch.compile) prefix is stripped as "model." is.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .model import EncoderDecoderConvLSTM, model_from_config
from .ops.lstm_gates.backends import resolve
from .training.checkpoint import CheckpointError, read_checkpoint

# The tutorial reads 10 frames and predicts 10; checkpoints without a train.py config get these.
TUTORIAL_N_IN = 10
TUTORIAL_N_OUT = 10
_PREFIXES = ("model.", "module.", "_orig_mod.")
_FIRST_CONV = "encoder_1_convlstm.conv.weight"
_CONFIG_KEYS = ("n_hidden_dim", "in_chan", "kernel_size", "peephole")


@dataclass(frozen=True)
class ModelInfo:
    """What a caller needs to run a loaded model: `model.info`."""
    kind: str                 # "train.py", "state_dict" or "lightning"
    n_in: int                 # input frames it was trained on (train.py's n_steps_past, else the tutorial's 10)
    n_out: int                # frames it was trained to predict (train.py's n_steps_ahead, else 10)
    in_chan: int              # channels of the input frames
    out_chan: int             # channels of the predicted frames
    frame_size: tuple | None  # (H, W) it was trained on (train.py's frame_shape, else image_size); None: unknown
    config: dict | None       # the train.py config; None for the other kinds


def load_model(path, device="cpu", backend=None) -> EncoderDecoderConvLSTM:
    """The EncoderDecoderConvLSTM of checkpoint `path`, in eval mode on `device`, with `model.info` (a ModelInfo).

    backend: the lstm_gates backend; None is "auto", the fastest that runs on `device` (not the checkpoint's own,
    which may be for another device). Run it as

        y = to_btchw(model(x, future_seq=model.info.n_out))

    with x float (B, n_in, in_chan, H, W) in [0, 1] on `device` and any H, W (the model is convolutional); y is
    (B, n_out, out_chan, H, W) in (0, 1), the layout of x. Raises CheckpointError (one line naming the file) for a
    missing, unreadable or unsafe file and for one that is none of the three kinds or whose weights do not fit.
    """
    path = str(path)
    device = torch.device(device)
    backend = backend or "auto"
    try:
        resolve(backend, device)
    except (ValueError, RuntimeError) as error:
        raise CheckpointError(f"cannot load {path} with backend {backend!r} on {device}: {error}") from None
    state = read_checkpoint(path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and isinstance(state.get("config"), dict):
        kind, weights, config = "train.py", state["model"], state["config"]
        # Checkpoints from before own data (no frame_shape) were all Moving MNIST frames of image_size.
        size = (state.get("frame_shape") or [None] + [config.get("image_size")] * 2)[1:]
        frame_size = tuple(int(n) for n in size) if None not in size else None
        missing = [key for key in _CONFIG_KEYS if key not in config]
        if missing:
            raise CheckpointError(f"checkpoint {path}: its config lacks {', '.join(missing)}")
        try:
            model = model_from_config(config, backend=backend)
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"checkpoint {path}: cannot build the model its config describes ({error})") from None
    else:
        kind, weights = ("lightning", state["state_dict"]) if _is_lightning(state) else ("state_dict", state)
        weights, config, frame_size = _strip_prefix(weights), None, None
        model = _model_from_weights(weights, backend, path)
    _check_weights(model, weights, path)
    model.load_state_dict(weights)
    known = config or {}
    model.info = ModelInfo(kind=kind, n_in=int(known.get("n_steps_past", TUTORIAL_N_IN)),
                           n_out=int(known.get("n_steps_ahead", TUTORIAL_N_OUT)),
                           in_chan=model.encoder_1_convlstm.input_dim, out_chan=model.decoder_CNN.out_channels,
                           frame_size=frame_size, config=config)
    return model.to(device).eval()


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
        raise CheckpointError(f"{path} is not a checkpoint of EncoderDecoderConvLSTM: expected a train.py checkpoint "
                              f"('model' and 'config'), a Lightning one ('state_dict') or a state_dict with "
                              f"{_FIRST_CONV}; found {found}")
    nf = first.shape[0] // 4
    try:
        return EncoderDecoderConvLSTM(nf=nf, in_chan=first.shape[1] - nf, kernel_size=tuple(first.shape[2:]),
                                      backend=backend, peephole="encoder_1_convlstm.w_ci" in weights,
                                      out_chan=head.shape[0])
    except ValueError as error:
        raise CheckpointError(f"checkpoint {path}: its weights describe no EncoderDecoderConvLSTM ({error})") from None


def _check_weights(model, weights, path) -> None:
    """Key by key, so that a mismatch is one line naming the first few keys."""
    expected = model.state_dict()
    problems = [f"missing {key}" for key in expected if key not in weights]
    problems += [f"unexpected {key}" for key in weights if key not in expected]
    problems += [f"{key} is {_shape(weights[key])}, the model's is {tuple(value.shape)}"
                 for key, value in expected.items() if key in weights and _shape(weights[key]) != tuple(value.shape)]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(f"checkpoint {path}: weights do not fit the model: {'; '.join(problems[:3])}{more}")


def _shape(value):
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
