"""EncoderDecoderConvLSTM: the tutorial's sequence-to-sequence model, drop-in compatible; and what builds and runs
either model of the toolkit (it or convlstm.openstl's OpenSTLConvLSTM) from a train.py config: model_from_config,
forecast.

Same state_dict keys (encoder_1_convlstm, encoder_2_convlstm, decoder_1_convlstm, decoder_2_convlstm,
decoder_CNN), same forward(x, future_seq) and the same outputs for the same weights, so a checkpoint of the
tutorial's model loads unchanged. The options after `in_chan` default to the tutorial's behaviour.
"""
from __future__ import annotations

import torch
from torch import nn

from .cell import ConvLSTMCell
from .openstl import PRESETS, OpenSTLConvLSTM
from .ops.conv_frame import conv_frame, conv_frame_applies


class EncoderDecoderConvLSTM(nn.Module):
    """x (B, T_in, in_chan, H, W) -> predictions (B, out_chan, future_seq, H, W) in (0, 1).

    Two encoder cells read the inputs; two decoder cells then run `future_seq` steps, the first fed the encoder's
    last hidden state and later ones their own output; a Conv3d (1, 3, 3) head and a sigmoid make the frames.
    decoder_from_encoder=True starts the decoder cells from the encoder cells' last states instead of zeros.
    """

    def __init__(self, nf, in_chan, kernel_size=3, backend="auto", peephole=False, out_chan=1,
                 decoder_from_encoder=False):
        super().__init__()
        cell = dict(hidden_dim=nf, kernel_size=kernel_size, bias=True, backend=backend, peephole=peephole)
        self.encoder_1_convlstm = ConvLSTMCell(input_dim=in_chan, **cell)
        self.encoder_2_convlstm = ConvLSTMCell(input_dim=nf, **cell)
        self.decoder_1_convlstm = ConvLSTMCell(input_dim=nf, **cell)
        self.decoder_2_convlstm = ConvLSTMCell(input_dim=nf, **cell)
        self.decoder_CNN = nn.Conv3d(in_channels=nf, out_channels=out_chan, kernel_size=(1, 3, 3),
                                     padding=(0, 1, 1))
        self.decoder_from_encoder = decoder_from_encoder
        self.backend = backend
        self._choose_head()

    def _choose_head(self):
        # Fused cells: the head runs on each frame as it is made, not on their stack (conv_frame.py: the same
        # values, a training step's largest temporaries gone). Decided when built or moved, as the cells' backend.
        self.head_per_frame = self.decoder_2_convlstm.fused

    def _apply(self, fn, *args, **kwargs):
        module = super()._apply(fn, *args, **kwargs)  # the cells rebind their backend first
        self._choose_head()
        return module

    def autoencoder(self, x, seq_len, future_step, h_t, c_t, h_t2, c_t2, h_t3, c_t3, h_t4, c_t4):
        for t in range(seq_len):
            h_t, c_t = self.encoder_1_convlstm(input_tensor=x[:, t], cur_state=[h_t, c_t])
            h_t2, c_t2 = self.encoder_2_convlstm(input_tensor=h_t, cur_state=[h_t2, c_t2])
        if self.decoder_from_encoder:
            h_t3, c_t3, h_t4, c_t4 = h_t, c_t, h_t2, c_t2
        encoder_vector = h_t2  # (B, nf, H, W)

        per_frame = self.head_per_frame and conv_frame_applies(self.decoder_CNN, [x, *self.parameters()])
        outputs = []
        for t in range(future_step):
            h_t3, c_t3 = self.decoder_1_convlstm(input_tensor=encoder_vector, cur_state=[h_t3, c_t3])
            h_t4, c_t4 = self.decoder_2_convlstm(input_tensor=h_t3, cur_state=[h_t4, c_t4])
            encoder_vector = h_t4
            outputs.append(conv_frame(h_t4, self.decoder_CNN) if per_frame else h_t4)
        if per_frame:
            return torch.sigmoid(torch.cat(outputs, 2))  # (B, out_chan, future, H, W)
        # The tutorial's code; rebinding `outputs` frees the list of frames before the convolution runs.
        outputs = torch.stack(outputs, 1).permute(0, 2, 1, 3, 4)  # (B, nf, future, H, W)
        return torch.sigmoid(self.decoder_CNN(outputs))

    def forward(self, x, future_seq=0, hidden_state=None):
        if x.dim() != 5:
            raise ValueError(f"EncoderDecoderConvLSTM expects x of shape (B, T, C, H, W), got {tuple(x.shape)}")
        if future_seq < 1:
            raise ValueError(f"future_seq must be at least 1, got {future_seq}")
        b, seq_len, _, h, w = x.size()
        states = [cell.init_hidden(batch_size=b, image_size=(h, w)) for cell in
                  (self.encoder_1_convlstm, self.encoder_2_convlstm, self.decoder_1_convlstm,
                   self.decoder_2_convlstm)]
        (h_t, c_t), (h_t2, c_t2), (h_t3, c_t3), (h_t4, c_t4) = states
        return self.autoencoder(x, seq_len, future_seq, h_t, c_t, h_t2, c_t2, h_t3, c_t3, h_t4, c_t4)


# The config keys each model reads (train.py's Config field names); "model" picks one, "tutorial" when absent.
MODELS = ("tutorial", "openstl_convlstm")
CONFIG_KEYS = {"tutorial": ("n_hidden_dim", "in_chan", "kernel_size", "peephole"),
               "openstl_convlstm": ("n_hidden_dim", "in_chan", "kernel_size", "n_steps_past", "n_steps_ahead")}


def model_name(config: dict) -> str:
    """config["model"] ("tutorial" when absent: configs from before OpenSTL's model), checked against MODELS."""
    name = config.get("model", "tutorial")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r} (choose from {', '.join(MODELS)})")
    return name


def model_from_config(config: dict, backend: str | None = None, frame_shape=None) -> nn.Module:
    """The model a train.py config dict describes, with fresh weights (load a state_dict next).

    config["model"]: "tutorial" (default) builds EncoderDecoderConvLSTM; "openstl_convlstm" OpenSTLConvLSTM with
    num_hidden = [n_hidden_dim] * num_layers (default 4), filter_size = kernel_size, patch_size (default 4),
    layer_norm, reverse_scheduled_sampling (default False), cell_output (default "tanh_c"), pre / aft =
    n_steps_past / n_steps_ahead and in_shape (n_steps_past, in_chan, H, W), (H, W) from frame_shape (C, H, W) when
    given, else (image_size, image_size). `backend` overrides config["backend"], e.g. "torch" to evaluate on the CPU
    a model trained with "triton". Both models predict frames of their input's channels.
    """
    backend = backend or config.get("backend", "auto")
    if model_name(config) == "tutorial":
        return EncoderDecoderConvLSTM(nf=config["n_hidden_dim"], in_chan=config["in_chan"],
                                      out_chan=config["in_chan"], kernel_size=config["kernel_size"],
                                      peephole=config["peephole"], backend=backend)
    height, width = (frame_shape[1:] if frame_shape is not None else [config["image_size"]] * 2)
    return OpenSTLConvLSTM(
        num_hidden=[config["n_hidden_dim"]] * config.get("num_layers", 4),
        in_shape=(config["n_steps_past"], config["in_chan"], int(height), int(width)),
        pre_seq_length=config["n_steps_past"], aft_seq_length=config["n_steps_ahead"],
        filter_size=config["kernel_size"], patch_size=config.get("patch_size", 4),
        layer_norm=config.get("layer_norm", False),
        reverse_scheduled_sampling=config.get("reverse_scheduled_sampling", False),
        cell_output=config.get("cell_output", "tanh_c"), backend=backend)


def preset_config(name: str) -> dict:
    """The config keys of OpenSTL's preset `name` ("convlstm_s", "convlstm_l": convlstm.openstl.PRESETS) for
    model_from_config: model, n_hidden_dim, num_layers, kernel_size, patch_size, layer_norm,
    reverse_scheduled_sampling, n_steps_past, n_steps_ahead, image_size (Moving MNIST's 64). Every preset's layers
    have one width."""
    preset = PRESETS[name]
    return dict(model="openstl_convlstm", n_hidden_dim=preset["num_hidden"][0], num_layers=len(preset["num_hidden"]),
                kernel_size=preset["filter_size"], patch_size=preset["patch_size"],
                layer_norm=bool(preset["layer_norm"]),
                reverse_scheduled_sampling=bool(preset["reverse_scheduled_sampling"]),
                n_steps_past=preset["pre_seq_length"], n_steps_ahead=preset["aft_seq_length"],
                image_size=preset["in_shape"][2])


def model_config(model: nn.Module) -> dict:
    """The config keys model_from_config reads that rebuild `model` (the inverse, for checkpoints that hold
    weights alone). Raises ValueError for an OpenSTLConvLSTM whose layers differ in width, which no config names."""
    if isinstance(model, OpenSTLConvLSTM):
        if len(set(model.num_hidden)) != 1:
            raise ValueError(f"its layers have different widths {model.num_hidden}; a config has one n_hidden_dim")
        cell = model.cell_list[0]
        _, channels, height, width = model.in_shape
        return dict(model="openstl_convlstm", n_hidden_dim=model.num_hidden[0], num_layers=model.num_layers,
                    kernel_size=cell.conv_x[0].kernel_size[0], patch_size=model.patch_size,
                    layer_norm=len(cell.conv_x) > 1, reverse_scheduled_sampling=model.reverse_scheduled_sampling,
                    cell_output=cell.cell_output, in_chan=channels, n_steps_past=model.pre_seq_length,
                    n_steps_ahead=model.aft_seq_length, image_size=height)
    cell = model.encoder_1_convlstm
    return dict(model="tutorial", n_hidden_dim=cell.hidden_dim, in_chan=cell.input_dim,
                kernel_size=cell.kernel_size[0], peephole=cell.peephole)


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DistributedDataParallel / DataParallel (.module) and torch.compile (._orig_mod) wrappers."""
    while True:
        inner = next((getattr(model, name) for name in ("module", "_orig_mod")
                      if isinstance(getattr(model, name, None), nn.Module)), None)
        if inner is None:
            return model
        model = inner


def forecast(model: nn.Module, x: torch.Tensor, n_out: int) -> torch.Tensor:
    """One inference call for both models: x (B, T_in, C, H, W) -> the next n_out frames (B, n_out, C, H, W).

    EncoderDecoderConvLSTM: to_btchw(model(x, future_seq=n_out)), values in (0, 1) (a sigmoid), called through
    any wrapper (torch.compile, DDP). OpenSTLConvLSTM: its predict(x, n_out) (OpenSTL's test-time path: inputs, then
    its own outputs fed back), unclipped, on the unwrapped module (predict is not forward). The dtype is the
    model's (autocast's under autocast). Gradients are tracked as usual: wrap in torch.no_grad() to infer.
    """
    inner = unwrap(model)
    if isinstance(inner, OpenSTLConvLSTM):
        return inner.predict(x, n_out)
    return to_btchw(model(x, future_seq=n_out))


def check_frame_size(model: nn.Module, height: int, width: int) -> None:
    """ValueError (one line) when `model` cannot predict frames of height x width: OpenSTLConvLSTM needs them to
    divide into its patches, and with layer_norm to be those it was built for. The tutorial's takes any size."""
    model = unwrap(model)
    if not isinstance(model, OpenSTLConvLSTM):
        return
    p = model.patch_size
    if height % p or width % p:
        raise ValueError(f"frames of {height}x{width} do not divide into the model's {p}x{p} patches")
    built = tuple(model.in_shape[2:])
    if len(model.cell_list[0].conv_x) > 1 and (height, width) != built:
        raise ValueError(f"the model has layer norm over {built[0]}x{built[1]} frames and cannot take "
                         f"{height}x{width}")


def to_btchw(output: torch.Tensor) -> torch.Tensor:
    """The model's output (B, C, T, H, W) (the tutorial's layout, kept for compatibility) as (B, T, C, H, W), the
    layout of the data and the metrics. A view: same dtype and storage."""
    return output.permute(0, 2, 1, 3, 4)
