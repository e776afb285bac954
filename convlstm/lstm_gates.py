"""lstm_gates: the per-element math of one ConvLSTM step, after the convolution.

`lstm_gates_ref` is the spec: short, readable PyTorch that the Triton and CUDA kernels are tested against and
that runs wherever they do not. `lstm_gates` is the public op: it picks a backend (see `backends.py`) and calls it.

Shapes: gates (B, 4C, H, W) is the conv output over concat([x, h]), split in the order i, f, o, g as in the
widely used ConvLSTMCell; c_prev (B, C, H, W); the optional peephole weights w_ci, w_cf, w_co are (C, 1, 1)
(one weight per hidden channel, so a cell works at any image size).
Returns (h_next, c_next), each (B, C, H, W), in the promoted dtype of gates and c_prev (as eager PyTorch).
"""
from __future__ import annotations

import torch


def lstm_gates_ref(gates, c_prev, w_ci=None, w_cf=None, w_co=None):
    """Reference gate math. Peephole terms follow Shi et al. 2015, eq. (3):
    i and f look at c_prev, o looks at c_next."""
    cc_i, cc_f, cc_o, cc_g = torch.chunk(gates, 4, dim=1)
    if w_ci is not None:
        cc_i = cc_i + w_ci * c_prev
        cc_f = cc_f + w_cf * c_prev
    i = torch.sigmoid(cc_i)
    f = torch.sigmoid(cc_f)
    g = torch.tanh(cc_g)
    c_next = f * c_prev + i * g
    if w_co is not None:
        cc_o = cc_o + w_co * c_next
    o = torch.sigmoid(cc_o)
    h_next = o * torch.tanh(c_next)
    return h_next, c_next


_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_inputs(gates, c_prev, w_ci=None, w_cf=None, w_co=None):
    """Raise ValueError (TypeError for a dtype) naming the problem and the value if the arguments of `lstm_gates`
    do not fit together."""
    peephole = (w_ci, w_cf, w_co)
    if any(w is None for w in peephole) and any(w is not None for w in peephole):
        raise ValueError("lstm_gates: give all three peephole weights (w_ci, w_cf, w_co) or none")
    if gates.dim() != 4 or c_prev.dim() != 4 or gates.shape[1] != 4 * c_prev.shape[1] \
            or gates.shape[0] != c_prev.shape[0] or gates.shape[2:] != c_prev.shape[2:]:
        raise ValueError(f"lstm_gates: expected gates (B, 4C, H, W) and c_prev (B, C, H, W), "
                         f"got {tuple(gates.shape)} and {tuple(c_prev.shape)}")
    tensors = {"gates": gates, "c_prev": c_prev}
    if w_ci is not None:
        tensors.update(w_ci=w_ci, w_cf=w_cf, w_co=w_co)
        channels = c_prev.shape[1]
        for name in ("w_ci", "w_cf", "w_co"):
            if tuple(tensors[name].shape) != (channels, 1, 1):
                raise ValueError(f"lstm_gates: {name} must have shape (C, 1, 1) = ({channels}, 1, 1), "
                                 f"got {tuple(tensors[name].shape)}")
    for name, tensor in tensors.items():
        if tensor.dtype not in _DTYPES:
            raise TypeError(f"lstm_gates: {name} has dtype {tensor.dtype}; expected one of "
                            f"{', '.join(str(t) for t in _DTYPES)}")
        if tensor.device != gates.device:
            raise ValueError(f"lstm_gates: {name} is on {tensor.device} but gates is on {gates.device}")


def lstm_gates(gates, c_prev, w_ci=None, w_cf=None, w_co=None, backend="auto"):
    """The gate math of `lstm_gates_ref` on the chosen backend: "auto", "torch", "triton", "cuda" or "cpu_twin"
    (see backends.py). gates (B, 4C, H, W), c_prev (B, C, H, W), peephole weights (C, 1, 1) or None.
    Returns (h_next, c_next), each (B, C, H, W) in torch.promote_types(gates.dtype, c_prev.dtype) on every
    backend; the fused ones compute in float32 (float64 for float64) whatever the storage dtype."""
    from .backends import gate_function, resolve_backend

    check_inputs(gates, c_prev, w_ci, w_cf, w_co)
    name = resolve_backend(backend, gates.device)
    return gate_function(name)(gates, c_prev, w_ci, w_cf, w_co)
