"""lstm_gates_ref: the per-element math of one ConvLSTM step after the convolution, the spec of every backend.

Shapes: gates (B, 4C, H, W) is the conv output over concat([x, h]), its four channel blocks in the order i, f, o, g
as in the widely used ConvLSTMCell (gate_order="ifog"), or i, f, g, o as in OpenSTL's ConvLSTM ("ifgo");
c_prev (B, C, H, W); the optional peephole weights w_ci, w_cf, w_co are (C, 1, 1) (one weight per hidden channel,
so a cell works at any image size).
Returns (h_next, c_next), each (B, C, H, W), in the promoted dtype of gates and c_prev (as eager PyTorch).
This file imports nothing else of the package: it is what the tests compare the kernels to.
"""
from __future__ import annotations

import torch


# gate_order -> the channel block of gates that holds gate o (g holds the other of blocks 2 and 3): what the
# kernels are handed.
O_SLOT = {"ifog": 2, "ifgo": 3}


def o_slot_of(gate_order: str) -> int:
    """The kernels' o_slot for `gate_order`; ValueError naming it if it is not one of O_SLOT."""
    slot = O_SLOT.get(gate_order)
    if slot is None:
        raise ValueError(f"lstm_gates: unknown gate_order {gate_order!r}: expected one of "
                         f"{', '.join(map(repr, O_SLOT))}")
    return slot


def lstm_gates_ref(gates, c_prev, w_ci=None, w_cf=None, w_co=None, gate_order="ifog"):
    """Reference gate math. Peephole terms follow Shi et al. 2015, eq. (3):
    i and f look at c_prev, o looks at c_next (w_co acts on gate o wherever gate_order puts it)."""
    if o_slot_of(gate_order) == 2:
        cc_i, cc_f, cc_o, cc_g = torch.chunk(gates, 4, dim=1)
    else:
        cc_i, cc_f, cc_g, cc_o = torch.chunk(gates, 4, dim=1)
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


DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


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
        if tensor.dtype not in DTYPES:
            raise TypeError(f"lstm_gates: {name} has dtype {tensor.dtype}; expected one of "
                            f"{', '.join(str(t) for t in DTYPES)}")
        if tensor.device != gates.device:
            raise ValueError(f"lstm_gates: {name} is on {tensor.device} but gates is on {gates.device}")
