"""OpenSTL's ConvLSTM, the model of its ConvLSTM-S / ConvLSTM-L benchmark rows, as a second model of the toolkit.

The same modules, parameter names and forward as OpenSTL's `ConvLSTM_Model` (openstl/models/convlstm_model.py) and
`ConvLSTMCell` (openstl/modules/convlstm_modules.py) of chengtan9907/OpenSTL (Apache-2.0), so state_dicts load
strictly either way and, with equal weights, outputs, loss and every gradient are equal (tests/test_openstl.py,
against the transcription in tests/openstl_reference.py). Beside the model: the patch reshape and the
scheduled-sampling masks of openstl/utils/predrnn_utils.py, and the configs/mmnist values as PRESETS.

What OpenSTL's code does that a reader may not expect:
  - The gates are conv_x(x) + conv_h(h), two bias-free convolutions, split in the order i, f, g, o (lstm_gates'
    own order is i, f, o, g; the fused path asks for gate_order="ifgo", so no weight is reordered). The cell sets
    `_forget_bias = 1.0` but never uses it: there is no forget bias, here either.
  - conv_o and the cell's conv_last are parameters that forward never touches. They are kept (strict loading; the
    published 33.8M of ConvLSTM-L counts them) and get no gradient, so DDP needs find_unused_parameters=True.
  - Before OpenSTL-Lightning (2023-12-08, OpenSTL issue #68) the cell returned h = o * g, not o * tanh(c): c never
    reached the output. The published Moving MNIST rows and the released weights (mmnist-weights, 2023-06-18,
    v0.2.0) come from that cell; cell_output="g" runs it (plain PyTorch only: the kernels compute o * tanh(c)).
  - The model runs pre + aft - 1 steps over all frames and its loss is the MSE over frames[1:], inputs included.
    Scheduled sampling feeds ground truth or the model's last output per (sample, step) by mask_true; the reverse
    variant also replaces input frames (steps 1 .. pre-1) by the model's own output with probability 1 - r_eta.
  - The first step of schedule_sampling already uses eta = 1 - changing_rate; `sampling_start_value` is in the
    configs but never read (OpenSTL starts eta at a hard-coded 1.0).
"""
from __future__ import annotations

import functools
import inspect
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cell import weight_memory_format
from .ops.lstm_gates import backends

CELL_OUTPUTS = ("tanh_c", "g")

# configs/mmnist/ConvLSTM.py and ConvLSTM-L.py, with the Moving MNIST shape (openstl/datasets/dataset_constant.py)
# and the defaults of openstl/utils/parser.py that the configs leave as they are. No cell_output here: the published
# rows ran "g" (OpenSTL v0.2.0), OpenSTL's code today runs "tanh_c" (the default); the caller says which.
_MMNIST = dict(in_shape=(10, 1, 64, 64), pre_seq_length=10, aft_seq_length=10, epoch=200, opt="adam",
               weight_decay=0.0, final_div_factor=1e4)
_CONVLSTM = dict(filter_size=5, stride=1, patch_size=4, layer_norm=0, lr=5e-4, batch_size=16, sched="onecycle",
                 scheduled_sampling=1, sampling_stop_iter=50000, sampling_start_value=1.0,
                 sampling_changing_rate=0.00002, reverse_scheduled_sampling=0, r_sampling_step_1=25000,
                 r_sampling_step_2=50000, r_exp_alpha=5000, **_MMNIST)
PRESETS = {
    "convlstm_s": dict(num_hidden=[128, 128, 128, 128], **_CONVLSTM),
    "convlstm_l": dict(num_hidden=[192, 192, 192, 192], **_CONVLSTM),
}
MODEL_KEYS = ("num_hidden", "in_shape", "pre_seq_length", "aft_seq_length", "filter_size", "stride", "patch_size",
              "layer_norm", "reverse_scheduled_sampling")


def lstm_gates_openstl(gates, c_prev, cell_output="tanh_c"):
    """OpenSTL's gate math in plain PyTorch, the spec of the fused path. gates (B, 4C, H, W) = conv_x(x) + conv_h(h)
    in the order i, f, g, o; c_prev (B, C, H, W). Returns (h_next, c_next), each (B, C, H, W);
    cell_output="g" gives OpenSTL v0.2.0's h_next = o * g."""
    i, f, g, o = torch.split(gates, c_prev.shape[1], dim=1)
    i_t, f_t, g_t = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g)
    c_next = f_t * c_prev + i_t * g_t
    o_t = torch.sigmoid(o)
    h_next = o_t * (g_t if cell_output == "g" else torch.tanh(c_next))
    return h_next, c_next


def _unavailable(message, *args, **kwargs):
    raise RuntimeError(message)


def _takes_gate_order(gates_fn) -> bool:
    parameters = inspect.signature(gates_fn).parameters.values()
    return any(p.name == "gate_order" or p.kind is p.VAR_KEYWORD for p in parameters)


def _conv(in_channels, out_channels, filter_size, stride, layer_norm, height, width):
    """OpenSTL's nn.Sequential(conv[, LayerNorm over (C, H, W)]): state_dict keys `<name>.0.weight` (+ `.1.*`)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=filter_size, stride=stride, padding=filter_size // 2,
                     bias=False)
    return nn.Sequential(conv, nn.LayerNorm([out_channels, height, width])) if layer_norm else nn.Sequential(conv)


class OpenSTLConvLSTMCell(nn.Module):
    """OpenSTL's ConvLSTMCell: (x_t (B, in_channel, H, W), h_t, c_t (B, num_hidden, H, W)) -> (h_new, c_new).

    height and width are those of the patch grid; only layer_norm needs them (its weights are (4C, H, W)).
    With a fused backend the gate math runs through lstm_gates with gate_order="ifgo"; the backend is resolved when
    the cell is built or moved (as convlstm/cell.py's ConvLSTMCell), never per step. "auto" runs plain PyTorch
    where the chosen fused backend has no gate_order option yet; a backend named explicitly is an error then.
    """

    def __init__(self, in_channel, num_hidden, height, width, filter_size, stride, layer_norm,
                 cell_output="tanh_c", backend="auto"):
        super().__init__()
        if filter_size < 1 or filter_size % 2 == 0:
            raise ValueError(f"filter_size must be odd (OpenSTL pads by filter_size // 2), got {filter_size}")
        if stride != 1:
            raise ValueError(f"stride must be 1, got {stride}: with a larger stride conv_h(h) is smaller than h and "
                             f"OpenSTL's cell fails on its first step")
        if cell_output not in CELL_OUTPUTS:
            raise ValueError(f"cell_output must be one of {CELL_OUTPUTS}, got {cell_output!r}")
        self.backend = backends.check_backend_name(backend)
        if cell_output == "g" and backend in backends.FUSED:
            raise ValueError(f"cell_output='g' (OpenSTL v0.2.0's h = o * g) runs on backend 'torch' only; the "
                             f"{backend} kernels compute h = o * tanh(c)")
        self.num_hidden = num_hidden
        self.padding = filter_size // 2
        self.cell_output = cell_output
        conv = dict(filter_size=filter_size, stride=stride, layer_norm=layer_norm, height=height, width=width)
        self.conv_x = _conv(in_channel, num_hidden * 4, **conv)
        self.conv_h = _conv(num_hidden, num_hidden * 4, **conv)
        self.conv_o = _conv(num_hidden * 2, num_hidden, **conv)  # unused in forward, as OpenSTL's
        self.conv_last = nn.Conv2d(num_hidden * 2, num_hidden, kernel_size=1, stride=1, padding=0, bias=False)
        self._bind_backend()

    def _bind_backend(self):
        self.gates_fn = functools.partial(lstm_gates_openstl, cell_output=self.cell_output)
        self.fused = False
        if self.cell_output == "g" or self.backend == "torch":
            return
        try:
            name, gates_fn = backends.resolve(self.backend, self.conv_x[0].weight.device)
        except RuntimeError as error:
            self.gates_fn = functools.partial(_unavailable, str(error))
            return
        if name not in backends.FUSED:
            return
        if not _takes_gate_order(gates_fn):
            if self.backend != "auto":
                self.gates_fn = functools.partial(
                    _unavailable, f"backend {name!r}: its lstm_gates has no gate_order option, which OpenSTL's gate "
                                  f"order (i, f, g, o) needs; use backend 'torch'")
            return
        self.gates_fn = functools.partial(gates_fn, gate_order="ifgo")
        self.fused = True

    def _apply(self, fn, *args, **kwargs):
        module = super()._apply(fn, *args, **kwargs)
        self._bind_backend()
        return module

    def forward(self, x_t, h_t, c_t):
        gates = self.conv_x(x_t) + self.conv_h(h_t)  # (B, 4C, H, W), i, f, g, o
        return self.gates_fn(gates, c_t)


class OpenSTLConvLSTM(nn.Module):
    """OpenSTL's ConvLSTM_Model: a stack of OpenSTLConvLSTMCells and a 1x1 bias-free conv_last over patch frames.

    num_hidden: hidden channels per layer (OpenSTL's "128,128,128,128"); in_shape (T, C, H, W) of the input frames
    (T is not used; C, H, W size the patches); H and W must divide by patch_size. forward(frames, mask_true) is
    OpenSTL's training and evaluation path; predict(x, n_out) its test-time path on image frames.
    State_dict keys: cell_list.<k>.conv_x.0.weight, conv_h.0.weight, conv_o.0.weight (+ .1.weight / .1.bias of
    LayerNorm when layer_norm), cell_list.<k>.conv_last.weight, and conv_last.weight.
    """

    def __init__(self, num_hidden, in_shape=(10, 1, 64, 64), pre_seq_length=10, aft_seq_length=10, filter_size=5,
                 stride=1, patch_size=4, layer_norm=False, reverse_scheduled_sampling=False, cell_output="tanh_c",
                 backend="auto"):
        super().__init__()
        num_hidden = [int(n) for n in num_hidden]
        _, channels, height, width = in_shape
        if not num_hidden or min(num_hidden) < 1:
            raise ValueError(f"num_hidden must be a non-empty list of positive ints, got {num_hidden}")
        if pre_seq_length < 1 or aft_seq_length < 1:
            raise ValueError(f"pre_seq_length and aft_seq_length must be at least 1, got {pre_seq_length} and "
                             f"{aft_seq_length}")
        if height % patch_size or width % patch_size:
            raise ValueError(f"frames of {height}x{width} do not divide into patches of {patch_size}")
        self.in_shape = tuple(in_shape)
        self.num_hidden = num_hidden
        self.num_layers = len(num_hidden)
        self.pre_seq_length = pre_seq_length
        self.aft_seq_length = aft_seq_length
        self.patch_size = patch_size
        self.reverse_scheduled_sampling = bool(reverse_scheduled_sampling)
        self.frame_channel = patch_size * patch_size * channels
        self.cell_list = nn.ModuleList(
            OpenSTLConvLSTMCell(self.frame_channel if k == 0 else num_hidden[k - 1], num_hidden[k],
                                height // patch_size, width // patch_size, filter_size, stride, layer_norm,
                                cell_output=cell_output, backend=backend)
            for k in range(self.num_layers))
        self.conv_last = nn.Conv2d(num_hidden[-1], self.frame_channel, kernel_size=1, stride=1, padding=0, bias=False)

    @classmethod
    def from_preset(cls, name, **overrides):
        """The model of PRESETS[name] ("convlstm_s", "convlstm_l"); keyword arguments override or add
        constructor arguments (in_shape, backend, cell_output, ...)."""
        preset = PRESETS[name]
        return cls(**{**{key: preset[key] for key in MODEL_KEYS}, **overrides})

    def mask_length(self) -> int:
        """Steps of mask_true forward reads: aft - 1, or pre + aft - 2 with reverse scheduled sampling."""
        total = self.pre_seq_length + self.aft_seq_length
        return total - 2 if self.reverse_scheduled_sampling else self.aft_seq_length - 1

    def forward(self, frames_tensor, mask_true, return_loss=True):
        """frames_tensor (B, pre + aft, H/p, W/p, p*p*C), patch frames from reshape_patch; mask_true
        (B, mask_length(), H/p, W/p, p*p*C), 1 where ground truth is fed (schedule_sampling or
        reserve_schedule_sampling_exp in training, evaluation_mask when evaluating).
        Returns (next_frames (B, pre + aft - 1, H/p, W/p, p*p*C), the predictions of frames 1 .., and the MSE
        against frames_tensor[:, 1:], or None when return_loss=False), as OpenSTL's ConvLSTM_Model."""
        total = self.pre_seq_length + self.aft_seq_length
        if frames_tensor.dim() != 5 or frames_tensor.shape[1] != total:
            raise ValueError(f"frames_tensor must be (B, {total}, H/p, W/p, p*p*C), got {tuple(frames_tensor.shape)}")
        if mask_true.dim() != 5 or mask_true.shape[1] != self.mask_length():
            raise ValueError(f"mask_true must hold {self.mask_length()} steps ((B, T, H/p, W/p, p*p*C)), got "
                             f"{tuple(mask_true.shape)}")
        next_frames = self._rollout(frames_tensor, mask_true, self.pre_seq_length, total,
                                    self.reverse_scheduled_sampling)
        loss = F.mse_loss(next_frames, frames_tensor[:, 1:]) if return_loss else None
        return next_frames, loss

    def _rollout(self, frames_tensor, mask_true, pre_seq_length, total_length, reverse):
        # A model whose convolutions are channels_last (convlstm.training.memory_format) keeps frames and states so.
        fmt = weight_memory_format(self.cell_list[0].conv_x[0].weight)
        frames, mask_true = _frames(frames_tensor, fmt), _frames(mask_true, fmt)  # (B, T, p*p*C, H/p, W/p)
        batch, _, _, height, width = frames.shape
        # OpenSTL's zero state is in the default dtype; the parameters' dtype is the same for a float32 model and
        # also runs a float64 or bfloat16 one.
        dtype = self.conv_last.weight.dtype
        h_t = [torch.zeros(batch, n, height, width, dtype=dtype, device=frames.device).to(memory_format=fmt)
               for n in self.num_hidden]
        c_t = list(h_t)
        next_frames, x_gen = [], None
        for t in range(total_length - 1):
            k = t - 1 if reverse else t - pre_seq_length  # the mask step that decides the input
            if (reverse and t == 0) or (not reverse and t < pre_seq_length):
                net = frames[:, t]
            else:
                net = mask_true[:, k] * frames[:, t] + (1 - mask_true[:, k]) * x_gen
            h_t[0], c_t[0] = self.cell_list[0](net, h_t[0], c_t[0])
            for i in range(1, self.num_layers):
                h_t[i], c_t[i] = self.cell_list[i](h_t[i - 1], h_t[i], c_t[i])
            x_gen = self.conv_last(h_t[-1])  # (B, p*p*C, H/p, W/p)
            next_frames.append(x_gen)
        return torch.stack(next_frames, dim=1).permute(0, 1, 3, 4, 2).contiguous()

    def predict(self, x, n_out):
        """OpenSTL's test-time path (PredRNN.forward: a mask of zeros, so every step after the inputs is fed the
        model's last output) on image frames: x (B, T_in, C, H, W) -> (B, n_out, C, H, W), in the parameters'
        dtype, unclipped. Any T_in >= 1 and n_out >= 1 (the model runs T_in + n_out - 1 steps); with layer_norm,
        H and W must be those of in_shape. Gradients are tracked as usual: wrap in torch.no_grad() to infer."""
        if x.dim() != 5:
            raise ValueError(f"predict expects x of shape (B, T_in, C, H, W), got {tuple(x.shape)}")
        if n_out < 1:
            raise ValueError(f"n_out must be at least 1, got {n_out}")
        batch, t_in, channels, height, width = x.shape
        if channels != self.in_shape[1]:
            raise ValueError(f"the model takes {self.in_shape[1]}-channel frames, got {channels}")
        # The ground truth OpenSTL places after the inputs is multiplied by a zero mask: zeros give the same values.
        images = torch.cat([x, x.new_zeros(batch, n_out, channels, height, width)], dim=1)
        frames = reshape_patch(images.permute(0, 1, 3, 4, 2), self.patch_size)  # (B, T, H/p, W/p, p*p*C)
        # evaluation_mask's zeros, made in torch: a mask drawn in numpy fixes the batch size (torch.export).
        mask = frames.new_zeros(batch, n_out - 1, *frames.shape[2:])
        next_frames = self._rollout(frames, mask, t_in, t_in + n_out, reverse=False)
        images = reshape_patch_back(next_frames[:, -n_out:], self.patch_size)  # (B, n_out, H, W, C)
        return images.permute(0, 1, 4, 2, 3).contiguous()


def _frames(patches, memory_format):
    """(B, T, H/p, W/p, p*p*C) -> (B, T, p*p*C, H/p, W/p), each frame in memory_format: channels_last is the patch
    tensor's own layout, so a view of it; NCHW a copy, as OpenSTL's permute().contiguous()."""
    if memory_format == torch.channels_last:
        return patches.contiguous().permute(0, 1, 4, 2, 3)
    return patches.permute(0, 1, 4, 2, 3).contiguous()


def reshape_patch(img_tensor, patch_size):
    """(B, T, H, W, C) -> (B, T, H/p, W/p, p*p*C): each p x p patch becomes one position's channels, ordered
    (row in patch, column in patch, C) as OpenSTL's."""
    if img_tensor.dim() != 5:
        raise ValueError(f"reshape_patch expects (B, T, H, W, C), got {tuple(img_tensor.shape)}")
    batch, length, height, width, channels = img_tensor.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"frames of {height}x{width} do not divide into patches of {patch_size}")
    rows, cols = height // patch_size, width // patch_size
    patches = img_tensor.reshape(batch, length, rows, patch_size, cols, patch_size, channels).transpose(3, 4)
    return patches.reshape(batch, length, rows, cols, patch_size * patch_size * channels)


def reshape_patch_back(patch_tensor, patch_size):
    """(B, T, H/p, W/p, p*p*C) -> (B, T, H, W, C), the inverse of reshape_patch."""
    batch, length, rows, cols, patch_channels = patch_tensor.shape
    channels = patch_channels // (patch_size * patch_size)
    patches = patch_tensor.reshape(batch, length, rows, cols, patch_size, patch_size, channels).transpose(3, 4)
    return patches.reshape(batch, length, rows * patch_size, cols * patch_size, channels)


def _mask(true_token, in_shape, patch_size, device):
    """(B, T) booleans -> float32 mask (B, T, H/p, W/p, p*p*C) of ones where True."""
    _, channels, height, width = in_shape
    shape = (*true_token.shape, height // patch_size, width // patch_size, patch_size * patch_size * channels)
    return torch.from_numpy(true_token).to(device=device, dtype=torch.float32)[:, :, None, None, None].expand(
        shape).contiguous()


def schedule_sampling(eta, itr, batch_size, in_shape, patch_size, aft_seq_length, scheduled_sampling=1,
                      sampling_stop_iter=50000, sampling_changing_rate=0.00002, rng=None, device=None):
    """OpenSTL's schedule_sampling: returns (eta, mask_true (B, aft - 1, H/p, W/p, p*p*C) float32).

    eta is the state carried from call to call (OpenSTL starts it at 1.0); it drops by sampling_changing_rate
    before each draw until itr reaches sampling_stop_iter, then is 0; a (sample, step) is fed ground truth
    with probability eta. rng: anything with .random(size) (a np.random.Generator or RandomState); None draws from
    np.random's global state, as OpenSTL. scheduled_sampling=0 gives (0.0, zeros) (OpenSTL returns a numpy array
    there, which its model cannot take).
    """
    if not scheduled_sampling:
        return 0.0, _mask(np.zeros((batch_size, aft_seq_length - 1), dtype=bool), in_shape, patch_size, device)
    eta = eta - sampling_changing_rate if itr < sampling_stop_iter else 0.0
    rng = np.random if rng is None else rng
    true_token = rng.random((batch_size, aft_seq_length - 1)) < eta
    return eta, _mask(true_token, in_shape, patch_size, device)


def reserve_schedule_sampling_exp(itr, batch_size, in_shape, patch_size, pre_seq_length, aft_seq_length,
                                  r_sampling_step_1=25000, r_sampling_step_2=50000, r_exp_alpha=5000, rng=None,
                                  device=None):
    """OpenSTL's reverse scheduled sampling (its name, "reserve", kept for grep): mask_true
    (B, pre + aft - 2, H/p, W/p, p*p*C) float32. Input steps 1 .. pre-1 get ground truth with probability r_eta,
    0.5 rising to 1 (exponentially, time constant r_exp_alpha) between r_sampling_step_1 and _2; output steps
    with probability eta, 0.5 falling linearly to 0 over the same iterations. rng as in schedule_sampling;
    the input draws come first, as OpenSTL's."""
    if itr < r_sampling_step_1:
        r_eta, eta = 0.5, 0.5
    elif itr < r_sampling_step_2:
        r_eta = 1.0 - 0.5 * math.exp(-float(itr - r_sampling_step_1) / r_exp_alpha)
        eta = 0.5 - (0.5 / (r_sampling_step_2 - r_sampling_step_1)) * (itr - r_sampling_step_1)
    else:
        r_eta, eta = 1.0, 0.0
    rng = np.random if rng is None else rng
    r_true_token = rng.random((batch_size, pre_seq_length - 1)) < r_eta
    true_token = rng.random((batch_size, aft_seq_length - 1)) < eta
    return _mask(np.concatenate([r_true_token, true_token], axis=1), in_shape, patch_size, device)


def evaluation_mask(batch_size, in_shape, patch_size, pre_seq_length, aft_seq_length, reverse=False, device=None,
                   dtype=torch.float32):
    """The mask_true OpenSTL evaluates with (PredRNN.forward): zeros, so each step after the inputs is fed the
    model's own output; with reverse, ones over the input steps. (B, aft - 1 or pre + aft - 2, H/p, W/p, p*p*C)."""
    steps = pre_seq_length - 1 if reverse else 0
    true_token = np.zeros((batch_size, steps + aft_seq_length - 1), dtype=bool)
    true_token[:, :steps] = True
    return _mask(true_token, in_shape, patch_size, device).to(dtype)

