"""ConvLSTMCell and the multi-layer ConvLSTM, drop-in for the widely used implementation.

Same constructor, parameter names (`conv.weight`, `conv.bias`, `cell_list.<k>.conv.*`), forward signatures and
outputs; the gate math runs on the backend the user picks, and with a fused backend the convolution through
`conv_cat` (the same values, less kept for backward). The backend is resolved when the cell is built and again when
it is moved to another device (`_apply`, what .to() / .cuda() call), never per step: forward calls what was bound.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from .ops.conv_cat import conv_cat, conv_cat_ref
from .ops.lstm_gates import backends


def _pair(kernel_size):
    if isinstance(kernel_size, int):
        kernel_size = (kernel_size, kernel_size)
    kernel_size = tuple(kernel_size)
    if len(kernel_size) != 2 or any(k < 1 or k % 2 == 0 for k in kernel_size):
        raise ValueError(f"kernel_size must be two odd positive ints (same padding), got {kernel_size}")
    return kernel_size


def _unavailable(message, *args, **kwargs):
    raise RuntimeError(message)


def weight_memory_format(weight: torch.Tensor) -> torch.memory_format:
    """torch.channels_last when a Conv2d weight (O, I, kH, kW) is stored so, else torch.contiguous_format. The models
    make their zero states (and OpenSTL's its frames) in their weights' format, as the convolutions' outputs come out
    in it: a model put in channels_last (convlstm.training.memory_format) stays so from the first step. A 1x1 kernel
    reads as contiguous: both layouts have the same strides there."""
    channels_last = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


class ConvLSTMCell(nn.Module):
    """One ConvLSTM step: gates = conv(concat([x, h])) (B, 4*hidden_dim, H, W), split i, f, o, g.

    peephole=True adds the W_ci∘c, W_cf∘c, W_co∘c terms of Shi et al. (2015) with weights `w_ci`, `w_cf`, `w_co`
    of shape (hidden_dim, 1, 1): one weight per hidden channel, shared over positions, so the cell keeps working at
    any image size. They start at zero, so a fresh peephole cell computes what the plain cell does.
    """

    def __init__(self, input_dim, hidden_dim, kernel_size, bias, backend="auto", peephole=False):
        super().__init__()
        if input_dim < 1 or hidden_dim < 1:
            raise ValueError(f"input_dim and hidden_dim must be positive, got {input_dim} and {hidden_dim}")
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        self.kernel_size = _pair(kernel_size)
        self.padding = self.kernel_size[0] // 2, self.kernel_size[1] // 2
        self.bias = bias
        self.backend = backends.check_backend_name(backend)
        self.peephole = peephole
        self.conv = nn.Conv2d(in_channels=input_dim + hidden_dim, out_channels=4 * hidden_dim,
                              kernel_size=self.kernel_size, padding=self.padding, bias=bias)
        if peephole:
            self.w_ci = nn.Parameter(torch.zeros(hidden_dim, 1, 1))
            self.w_cf = nn.Parameter(torch.zeros(hidden_dim, 1, 1))
            self.w_co = nn.Parameter(torch.zeros(hidden_dim, 1, 1))
        self._bind_backend()

    def _bind_backend(self):
        """Resolve the backend for the device of the weights; bind the gate function and the convolution to run.
        A backend that cannot run there is bound as an error raised on use, so a cell built on the CPU for "cuda"
        can still be moved to the GPU."""
        try:
            name, self.gates_fn = backends.resolve(self.backend, self.conv.weight.device)
        except RuntimeError as error:
            name, self.gates_fn = None, functools.partial(_unavailable, str(error))
        # "torch" runs the tutorial's code; fused gates keep h once for backward, not the concatenation (conv_cat.py).
        self.fused = name in backends.FUSED
        self.conv_fn = conv_cat if self.fused else conv_cat_ref

    def _apply(self, fn, *args, **kwargs):
        module = super()._apply(fn, *args, **kwargs)
        self._bind_backend()
        return module

    def forward(self, input_tensor, cur_state):
        """input_tensor (B, input_dim, H, W); cur_state (h_cur, c_cur), each (B, hidden_dim, H, W).
        Returns (h_next, c_next), each (B, hidden_dim, H, W)."""
        h_cur, c_cur = cur_state
        peephole = (self.w_ci, self.w_cf, self.w_co) if self.peephole else (None, None, None)
        gates = self.conv_fn(input_tensor, h_cur, self.conv)  # (B, 4C, H, W)
        return self.gates_fn(gates, c_cur, *peephole)

    def init_hidden(self, batch_size, image_size):
        """Zeros (h, c), each (B, hidden_dim, H, W) float32 on the weight's device and in its memory format (an NCHW
        state would turn a channels_last model's first steps NCHW: torch.cat of mixed layouts is contiguous)."""
        height, width = image_size
        weight = self.conv.weight
        fmt = weight_memory_format(weight)
        return (torch.zeros(batch_size, self.hidden_dim, height, width, device=weight.device).to(memory_format=fmt),
                torch.zeros(batch_size, self.hidden_dim, height, width, device=weight.device).to(memory_format=fmt))


def _per_layer(value, num_layers, name):
    values = value if isinstance(value, list) else [value] * num_layers
    if len(values) != num_layers:
        raise ValueError(f"{name} has {len(values)} entries for {num_layers} layers: {value}")
    return values


class ConvLSTM(nn.Module):
    """A stack of ConvLSTMCells run over a sequence, with the widely used implementation's defaults
    (ndrplz/ConvLSTM_pytorch): batch_first=False, return_all_layers=False.

    input_tensor (T, B, C, H, W), or (B, T, C, H, W) with batch_first=True; hidden_dim and kernel_size may be one
    value or a list with one entry per layer. forward returns (layer_output_list, last_state_list): the last layer's
    outputs (B, T, hidden, H, W), batch first whatever the input, and its last (h, c); return_all_layers=True gives
    every layer's.
    """

    def __init__(self, input_dim, hidden_dim, kernel_size, num_layers, batch_first=False, bias=True,
                 return_all_layers=False, backend="auto", peephole=False):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        hidden_dim = _per_layer(hidden_dim, num_layers, "hidden_dim")
        kernel_size = _per_layer(kernel_size, num_layers, "kernel_size")
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        self.kernel_size = kernel_size
        self.num_layers = num_layers
        self.batch_first = batch_first
        self.bias = bias
        self.return_all_layers = return_all_layers
        self.cell_list = nn.ModuleList(
            ConvLSTMCell(input_dim if k == 0 else hidden_dim[k - 1], hidden_dim[k], kernel_size[k], bias,
                         backend=backend, peephole=peephole)
            for k in range(num_layers))

    def forward(self, input_tensor, hidden_state=None):
        if input_tensor.dim() != 5:
            raise ValueError(f"ConvLSTM expects a 5-D input ({'B, T' if self.batch_first else 'T, B'}, C, H, W), got "
                             f"shape {tuple(input_tensor.shape)}")
        if not self.batch_first:
            input_tensor = input_tensor.permute(1, 0, 2, 3, 4)
        b, seq_len, _, h, w = input_tensor.shape
        if hidden_state is None:
            hidden_state = [cell.init_hidden(b, (h, w)) for cell in self.cell_list]
        elif len(hidden_state) != self.num_layers:
            raise ValueError(f"hidden_state has {len(hidden_state)} entries for {self.num_layers} layers")

        layer_output_list, last_state_list = [], []
        layer_input = input_tensor
        for cell, (h_t, c_t) in zip(self.cell_list, hidden_state):
            outputs = []
            for t in range(seq_len):
                h_t, c_t = cell(layer_input[:, t], [h_t, c_t])
                outputs.append(h_t)
            layer_input = torch.stack(outputs, dim=1)  # (B, T, hidden, H, W)
            layer_output_list.append(layer_input)
            last_state_list.append([h_t, c_t])
        if not self.return_all_layers:
            layer_output_list, last_state_list = layer_output_list[-1:], last_state_list[-1:]
        return layer_output_list, last_state_list
