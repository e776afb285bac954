"""The tutorial's sequence-to-sequence model, EncoderDecoderConvLSTM (--model tutorial, the default), drop-in
compatible, and its spec.

Same state_dict keys (encoder_1_convlstm, encoder_2_convlstm, decoder_1_convlstm, decoder_2_convlstm,
decoder_CNN), same forward(x, future_seq) and the same outputs for the same weights, so a checkpoint of the
tutorial's model loads unchanged. The options after `in_chan` default to the tutorial's behaviour.
"""
from __future__ import annotations

import torch
from torch import nn

from ..cell import ConvLSTMCell
from ..ops.conv_frame import conv_frame, conv_frame_applies
from .spec import Field, ModelSpec

FIRST_CONV = "encoder_1_convlstm.conv.weight"


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
        self.out_chan = out_chan
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


def to_btchw(output: torch.Tensor) -> torch.Tensor:
    """The model's output (B, C, T, H, W) (the tutorial's layout, kept for compatibility) as (B, T, C, H, W), the
    layout of the data and the metrics. A view: same dtype and storage."""
    return output.permute(0, 2, 1, 3, 4)


def forecast(model, x, n_out):
    """to_btchw(model(x, future_seq=n_out)): values in (0, 1) (a sigmoid), called through any wrapper."""
    return to_btchw(model(x, future_seq=n_out))


def build(config, frame_shape, backend):
    return EncoderDecoderConvLSTM(nf=config["n_hidden_dim"], in_chan=config["in_chan"], out_chan=config["in_chan"],
                                  kernel_size=config["kernel_size"], peephole=config.get("peephole", False),
                                  backend=backend)


def config_of(model):
    cell = model.encoder_1_convlstm
    return dict(model="tutorial", n_hidden_dim=cell.hidden_dim, in_chan=cell.input_dim,
                kernel_size=cell.kernel_size[0], peephole=cell.peephole)


def from_weights(weights, backend, channels=None, cell_output=None):
    """(the model a bare state_dict's shapes describe, None: any frame size, its input channels), or None: the
    first cell's conv (4 nf, in_chan + nf, kH, kW) and the head (out_chan, nf, 1, 3, 3)."""
    first, head = weights.get(FIRST_CONV), weights.get("decoder_CNN.weight")
    if not (isinstance(first, torch.Tensor) and first.dim() == 4 and isinstance(head, torch.Tensor)
            and head.dim() == 5):
        return None
    nf = first.shape[0] // 4
    try:
        return EncoderDecoderConvLSTM(nf=nf, in_chan=first.shape[1] - nf, kernel_size=tuple(first.shape[2:]),
                                      backend=backend, peephole="encoder_1_convlstm.w_ci" in weights,
                                      out_chan=head.shape[0]), None, first.shape[1] - nf
    except ValueError as error:
        raise ValueError(f"its weights describe no EncoderDecoderConvLSTM ({error})") from None


SPEC = ModelSpec(
    name="tutorial", model_class=EncoderDecoderConvLSTM, build=build, forecast=forecast,
    summary="the tutorial's encoder-decoder (2 + 2 cells, a Conv3d head)",
    fields={"peephole": Field(False, "add the peephole terms of Shi et al. (2015) to every cell")},
    weight_fields=("n_hidden_dim", "kernel_size", "peephole"), from_weights=from_weights, config_of=config_of,
    config_keys=("n_hidden_dim", "in_chan", "kernel_size"))
