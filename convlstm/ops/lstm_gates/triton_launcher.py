"""lstm_gates on Triton: launchers and the torch.library ops around triton_kernels.py.

Ops: `convlstm::lstm_gates_triton` (forward) and `convlstm::lstm_gates_triton_backward`, both `triton_op`s, so
torch.compile sees the kernels (no graph break) on a GPU; eager calls launch the same kernels through an
autograd.Function (op.fused_op says why). With TRITON_INTERPRET=1 they run on CPU tensors.
Importing this module needs Triton; backends.py is the one place that handles its absence.
"""
from __future__ import annotations

import torch
import triton
from torch import Tensor
from torch.library import triton_op, wrap_triton

from .triton_kernels import INTERPRETED, lstm_gates_bwd_kernel, lstm_gates_fwd_kernel
from .op import fused_op, gate_function, memory_format

# Elements per program: 1024 with 4 warps (8 per thread, 16-byte fp32 accesses), the common start for a memory-bound
# elementwise kernel. Untuned: no session has had a GPU to measure it (bench_gates on the H200 is where to).
BLOCK = 1024
NUM_WARPS = 4
MAX_GRID_Y = 65535  # CUDA's limit on the second grid dimension, which walks along a row


def _launcher(kernel):
    """The kernel as a triton_op body launches it: through wrap_triton, so torch.compile traces it on a GPU.
    In the interpreter the kernel is launched as is: torch < 2.13's wrap_triton refuses the interpreter's
    InterpretedFunction ("only works on functions annotated with triton.jit"; seen with torch 2.11), and there is
    nothing to trace there (torch.compile of a triton_op needs a GPU)."""
    return kernel if INTERPRETED else wrap_triton(kernel)


def _tiling(c_prev: Tensor, channels_last: bool) -> tuple[tuple[int, int], dict]:
    """The grid and the kernels' size arguments for c_prev seen as rows (triton_kernels.py): NCHW rows
    are (b, c) planes of H*W elements, channels_last rows are (b, h, w) positions of C channels. A tile is as
    many whole rows as fit in BLOCK elements when rows are short, else BLOCK columns of one row."""
    batch, channels, height, width = c_prev.shape
    rows, row_len = (batch * height * width, channels) if channels_last else (batch * channels, height * width)
    cols = min(triton.next_power_of_2(row_len), BLOCK)
    tile_rows = BLOCK // cols
    grid = (triton.cdiv(rows, tile_rows), triton.cdiv(row_len, cols))
    if grid[1] > MAX_GRID_Y:
        raise ValueError(f"lstm_gates (triton): rows of {row_len} elements ({'C' if channels_last else 'H*W'}) are "
                         f"more than the kernels' grid covers ({MAX_GRID_Y * BLOCK}); use the cuda or torch backend")
    return grid, dict(rows=rows, row_len=row_len, channels=channels, ROWS=tile_rows, COLS=cols)


def _forward(gates, c_prev, w_ci, w_cf, w_co, channels_last, o_slot, launch):
    """Launch the forward kernel through `launch` (wrap_triton inside the triton_op, the kernel itself eagerly)."""
    fmt = memory_format(channels_last)
    h_next, c_next = torch.empty_like(c_prev, memory_format=fmt), torch.empty_like(c_prev, memory_format=fmt)
    if c_prev.numel() == 0:
        return h_next, c_next
    grid, sizes = _tiling(c_prev, channels_last)
    peephole = w_ci is not None
    w_ci, w_cf, w_co = (w_ci, w_cf, w_co) if peephole else (c_prev, c_prev, c_prev)  # unread placeholders
    launch(lstm_gates_fwd_kernel)[grid](
        gates, c_prev, w_ci, w_cf, w_co, h_next, c_next, **sizes,
        CHANNELS_LAST=channels_last, HAS_PEEPHOLE=peephole, ACC_FP64=c_prev.dtype == torch.float64, O_SLOT=o_slot,
        num_warps=NUM_WARPS)
    return h_next, c_next


def _backward(gates, c_prev, w_ci, w_cf, w_co, grad_h, grad_c, channels_last, o_slot, launch):
    fmt = memory_format(channels_last)
    grad_gates = torch.empty_like(gates, memory_format=fmt)
    grad_c_prev = torch.empty_like(c_prev, memory_format=fmt)
    if c_prev.numel() == 0:
        return grad_gates, grad_c_prev
    grid, sizes = _tiling(c_prev, channels_last)
    peephole = w_ci is not None
    w_ci, w_cf, w_co = (w_ci, w_cf, w_co) if peephole else (c_prev, c_prev, c_prev)
    launch(lstm_gates_bwd_kernel)[grid](
        gates, c_prev, w_ci, w_cf, w_co, c_prev if grad_h is None else grad_h, c_prev if grad_c is None else grad_c,
        grad_gates, grad_c_prev, **sizes,
        CHANNELS_LAST=channels_last, HAS_PEEPHOLE=peephole, HAS_GRAD_H=grad_h is not None,
        HAS_GRAD_C=grad_c is not None, ACC_FP64=c_prev.dtype == torch.float64, O_SLOT=o_slot, num_warps=NUM_WARPS)
    return grad_gates, grad_c_prev


@triton_op("convlstm::lstm_gates_triton", mutates_args=())
def lstm_gates_triton_op(gates: Tensor, c_prev: Tensor, w_ci: Tensor | None, w_cf: Tensor | None,
                         w_co: Tensor | None, channels_last: bool, o_slot: int) -> tuple[Tensor, Tensor]:
    """Forward: gates (B, 4C, H, W), c_prev (B, C, H, W) in the layout `channels_last` says, peephole weights
    (C,) in the math dtype or None, o_slot the block of gates holding gate o (2: i, f, o, g; 3: i, f, g, o)
    -> (h_next, c_next), each like c_prev. Call through `lstm_gates_triton`."""
    return _forward(gates, c_prev, w_ci, w_cf, w_co, channels_last, o_slot, _launcher)


@triton_op("convlstm::lstm_gates_triton_backward", mutates_args=())
def lstm_gates_triton_backward_op(gates: Tensor, c_prev: Tensor, w_ci: Tensor | None, w_cf: Tensor | None,
                                  w_co: Tensor | None, grad_h: Tensor | None, grad_c: Tensor | None,
                                  channels_last: bool, o_slot: int) -> tuple[Tensor, Tensor]:
    """Backward: -> (grad_gates (B, 4C, H, W) like gates and in its gate order, grad_c_prev like c_prev); grad_h /
    grad_c may be None."""
    return _backward(gates, c_prev, w_ci, w_cf, w_co, grad_h, grad_c, channels_last, o_slot, _launcher)


def _direct(kernel):
    return kernel


def _on_tensors_device(impl):
    """impl(gates, c_prev, ...) launched on the tensors' GPU. Triton launches on the current device, not the
    tensors': a model on cuda:1 without torch.cuda.set_device(1) would run on GPU 0 with GPU 1's pointers. (Compiled
    graphs get their device guard from Inductor; one check per call here, a context switch only when needed.)"""
    def launch_on_device(gates, *args, **kwargs):
        device = gates.device
        if device.type == "cuda" and device.index != torch.cuda.current_device():
            with torch.cuda.device(device):
                return impl(gates, *args, **kwargs)
        return impl(gates, *args, **kwargs)
    return launch_on_device


lstm_gates_triton_run = fused_op(
    lstm_gates_triton_op, lstm_gates_triton_backward_op,
    _on_tensors_device(lambda *args: _forward(*args, launch=_direct)),
    _on_tensors_device(lambda *args: _backward(*args, launch=_direct)))


def runs_on(device: torch.device) -> str | None:
    """None if the Triton kernels can run on `device`, else the reason they cannot."""
    if device.type == "cuda":
        return None if torch.cuda.is_available() else "no CUDA device in this process (torch.cuda.is_available())"
    if INTERPRETED:
        return None
    return (f"Triton compiles kernels for GPUs only; for {device} tensors set TRITON_INTERPRET=1 before triton is "
            f"first imported (the slow interpreter, for tests)")


# `lstm_gates_ref` on the Triton kernels: gates (B, 4C, H, W), c_prev (B, C, H, W), peephole weights (C, 1, 1) or
# None, gate_order "ifog" or "ifgo" -> (h_next, c_next) in torch.promote_types(gates.dtype, c_prev.dtype).
lstm_gates_triton = gate_function(lstm_gates_triton_run)
