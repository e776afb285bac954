"""EncoderDecoderConvLSTM: the tutorial's sequence-to-sequence model, drop-in compatible.

Same state_dict keys (encoder_1_convlstm, encoder_2_convlstm, decoder_1_convlstm, decoder_2_convlstm,
decoder_CNN), same forward(x, future_seq) and the same outputs for the same weights, so a checkpoint of the
tutorial's model loads unchanged. The options after `in_chan` default to the tutorial's behaviour.
"""
from __future__ import annotations

import torch
from torch import nn

from .cell import ConvLSTMCell
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


def model_from_config(config: dict, backend: str | None = None) -> EncoderDecoderConvLSTM:
    """The EncoderDecoderConvLSTM a train.py config dict describes, with fresh weights (load a state_dict next).

    `backend` overrides config["backend"], e.g. "torch" to evaluate on the CPU a model trained with "triton".
    The model predicts frames of its input's channels (out_chan = in_chan: grey in, grey out; RGB in, RGB out).
    """
    return EncoderDecoderConvLSTM(nf=config["n_hidden_dim"], in_chan=config["in_chan"], out_chan=config["in_chan"],
                                  kernel_size=config["kernel_size"], peephole=config["peephole"],
                                  backend=backend or config["backend"])


def to_btchw(output: torch.Tensor) -> torch.Tensor:
    """The model's output (B, C, T, H, W) (the tutorial's layout, kept for compatibility) as (B, T, C, H, W), the
    layout of the data and the metrics. A view: same dtype and storage."""
    return output.permute(0, 2, 1, 3, 4)
