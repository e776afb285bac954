"""What the fused backends of lstm_gates (triton, cuda, cpu_twin) share around their kernels.

Dtype policy (all backends, and the same as eager PyTorch / `lstm_gates_ref`):
  - h_next and c_next come out in torch.promote_types(gates.dtype, c_prev.dtype). Under autocast the conv makes
    gates fp16/bf16; with the float32 zero state of `init_hidden`, c (and h) therefore stay float32 for the whole
    sequence, as in the eager reference; with a bf16/fp16 state everything is stored in bf16/fp16.
  - The math inside the kernels is float32 for float16/bfloat16/float32 storage and float64 for float64.
  - Gradients come back in each input's own dtype (autograd casts across the conversions made here).
Kernels take gates in its own dtype and the C-sized tensors (c_prev, h, c, their gradients) in the output dtype;
gates is converted only for a pair the kernels do not take (e.g. float32 gates with a float64 state).
Layout: NCHW, or channels_last when gates is channels_last; anything else is made contiguous first.
Gate order: gate_order "ifog" or "ifgo" becomes the ops' `o_slot` (2 or 3, ref.O_SLOT), the channel block of gates the
kernels read gate o from (g from the other of blocks 2 and 3); grad_gates comes back in the same order.

Autograd, the same for the custom ops torch.compile traces and the autograd.Function eager calls use (`fused_op`):
the forward saves the pre-activation gates and c_prev (plus c_next with peephole, for the w_co gradient); the
backward recomputes the activations, so the bytes kept per step are those of (B, 4C, H, W) + (B, C, H, W) instead
of eager PyTorch's six or more activations (convlstm/ops/README.md).
The peephole weight gradients are per-channel sums done in torch from the gate gradients.
"""
from __future__ import annotations

import torch

from .ref import check_inputs, o_slot_of

# (gates dtype, state dtype) pairs the kernels take; others are converted to the output dtype. The one statement of
# the rule: csrc/lstm_gates_torch.h's supported_pair must agree (test_lstm_gates_dtype_rule_matches_cpp).
KERNEL_DTYPES = {(t, t) for t in (torch.float32, torch.float64, torch.float16, torch.bfloat16)} | {
    (torch.float16, torch.float32), (torch.bfloat16, torch.float32)}


def accumulate_dtype(state_dtype: torch.dtype) -> torch.dtype:
    """The kernels' math dtype (and the peephole weights' dtype inside the op)."""
    return torch.float64 if state_dtype == torch.float64 else torch.float32


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def prepare(gates, c_prev, w_ci, w_cf, w_co, gate_order="ifog"):
    """Apply the dtype and layout policy; returns the fused ops' arguments
    (gates, c_prev, w_ci, w_cf, w_co, channels_last, o_slot) with peephole weights flattened to (C,) in the math
    dtype. A gate_order other than "ifog" / "ifgo" is a ValueError naming it."""
    slot = o_slot_of(gate_order)
    out_dtype = torch.promote_types(gates.dtype, c_prev.dtype)
    if (gates.dtype, out_dtype) not in KERNEL_DTYPES:
        gates = gates.to(out_dtype)
    c_prev = c_prev.to(out_dtype)
    # A tensor with C == 1 or H*W == 1 counts as both layouts; NCHW wins then.
    channels_last = gates.is_contiguous(memory_format=torch.channels_last) and not gates.is_contiguous()
    fmt = memory_format(channels_last)
    gates = gates.contiguous(memory_format=fmt)
    c_prev = c_prev.contiguous(memory_format=fmt)
    if w_ci is not None:
        acc = accumulate_dtype(out_dtype)
        w_ci, w_cf, w_co = (w.reshape(-1).to(acc).contiguous() for w in (w_ci, w_cf, w_co))
    return gates, c_prev, w_ci, w_cf, w_co, channels_last, slot


def fake_forward(gates, c_prev, w_ci, w_cf, w_co, channels_last, o_slot):
    """Shapes, dtypes and strides of (h_next, c_next), for torch.compile's fake tensors."""
    fmt = memory_format(channels_last)
    return torch.empty_like(c_prev, memory_format=fmt), torch.empty_like(c_prev, memory_format=fmt)


def fake_backward(gates, c_prev, w_ci, w_cf, w_co, grad_h, grad_c, channels_last, o_slot):
    """Shapes, dtypes and strides of (grad_gates, grad_c_prev)."""
    fmt = memory_format(channels_last)
    return torch.empty_like(gates, memory_format=fmt), torch.empty_like(c_prev, memory_format=fmt)


def _setup_context(ctx, inputs, output):
    """What the backward needs: the pre-activation gates and c_prev (and, with peephole, the weights and c_next)."""
    gates, c_prev, w_ci, w_cf, w_co, channels_last, o_slot = inputs
    ctx.channels_last, ctx.o_slot = channels_last, o_slot
    ctx.peephole = w_ci is not None
    # An output that gets no gradient (c_next after the last step) arrives as None instead of a zero tensor
    # that the kernel would have to read.
    ctx.set_materialize_grads(False)
    if ctx.peephole:
        ctx.save_for_backward(gates, c_prev, w_ci, w_cf, w_co, output[1])
    else:
        ctx.save_for_backward(gates, c_prev)


def _backward(ctx, grad_h, grad_c, backward_impl):
    """Gradients of (gates, c_prev, w_ci, w_cf, w_co, channels_last, o_slot) from those of (h_next, c_next)."""
    if grad_h is None and grad_c is None:
        return None, None, None, None, None, None, None
    if ctx.peephole:
        gates, c_prev, w_ci, w_cf, w_co, c_next = ctx.saved_tensors
    else:
        (gates, c_prev), w_ci, w_cf, w_co = ctx.saved_tensors, None, None, None
    fmt = memory_format(ctx.channels_last)
    grad_h = None if grad_h is None else grad_h.contiguous(memory_format=fmt)
    grad_c = None if grad_c is None else grad_c.contiguous(memory_format=fmt)
    grad_gates, grad_c_prev = backward_impl(gates, c_prev, w_ci, w_cf, w_co, grad_h, grad_c, ctx.channels_last,
                                            ctx.o_slot)
    grad_w = [None, None, None]
    if ctx.peephole:
        grad_blocks = grad_gates.to(w_ci.dtype).chunk(4, dim=1)  # in the order of gates
        grad_i, grad_f, grad_o = grad_blocks[0], grad_blocks[1], grad_blocks[ctx.o_slot]
        c_prev_acc, c_next_acc = c_prev.to(w_ci.dtype), c_next.to(w_ci.dtype)
        for k, (grad_pre, state) in enumerate(((grad_i, c_prev_acc), (grad_f, c_prev_acc), (grad_o, c_next_acc))):
            if ctx.needs_input_grad[2 + k]:
                grad_w[k] = (grad_pre * state).sum(dim=(0, 2, 3))  # (C,)
    return grad_gates, grad_c_prev, *grad_w, None, None


def fused_op(forward_op, backward_op, forward_impl, backward_impl):
    """The callable a fused backend runs: (gates, c_prev, w_ci, w_cf, w_co, channels_last, o_slot) -> (h_next, c_next).

    forward_op / backward_op are the registered custom ops over the kernels; forward_impl / backward_impl call the
    same kernels directly. Under torch.compile the custom ops are used (autograd registered on them here), so the
    graph keeps them without a break. Eagerly, a plain autograd.Function over the direct calls runs instead, with the
    same saved tensors and backward: a custom op with autograd spends far longer in Python dispatch per call
    (benchmarks/bench_dispatch.py; results/dispatch_*.json), and the training step makes 80 gate calls each way
    per batch at the tutorial's configuration, where on a GPU the host can be what bounds the step.
    """
    torch.library.register_autograd(forward_op, lambda ctx, grad_h, grad_c: _backward(ctx, grad_h, grad_c,
                                                                                      backward_op),
                                    setup_context=_setup_context)

    class EagerFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            output = run.forward_impl(*inputs)
            _setup_context(ctx, inputs, output)
            return output

        @staticmethod
        def backward(ctx, grad_h, grad_c):
            return _backward(ctx, grad_h, grad_c, run.backward_impl)

    def run(gates, c_prev, w_ci, w_cf, w_co, channels_last, o_slot):
        if torch.compiler.is_compiling():
            return forward_op(gates, c_prev, w_ci, w_cf, w_co, channels_last, o_slot)
        return EagerFunction.apply(gates, c_prev, w_ci, w_cf, w_co, channels_last, o_slot)

    # Looked up at call time, so tests can watch what the kernels are handed on either path.
    run.custom_op, run.forward_impl, run.backward_impl = forward_op, forward_impl, backward_impl
    return run


def define_extension_ops(backend: str, device_type: str, extension):
    """Define and register `convlstm::lstm_gates_<backend>` (forward) and `..._backward` as custom ops over a
    compiled extension with `forward(gates, c_prev, w_ci, w_cf, w_co, channels_last, o_slot) -> [h_next, c_next]`
    and `backward(gates, c_prev, w_ci, w_cf, w_co, grad_h, grad_c, channels_last, o_slot) -> [grad_gates,
    grad_c_prev]`.
    `extension()` returns the loaded module (it may build it on first call). Returns `fused_op` over them."""

    def forward_impl(gates, c_prev, w_ci, w_cf, w_co, channels_last, o_slot):
        h_next, c_next = extension().forward(gates, c_prev, w_ci, w_cf, w_co, channels_last, o_slot)
        return h_next, c_next

    def backward_impl(gates, c_prev, w_ci, w_cf, w_co, grad_h, grad_c, channels_last, o_slot):
        grad_gates, grad_c_prev = extension().backward(gates, c_prev, w_ci, w_cf, w_co, grad_h, grad_c,
                                                       channels_last, o_slot)
        return grad_gates, grad_c_prev

    @torch.library.custom_op(f"convlstm::lstm_gates_{backend}", mutates_args=(), device_types=device_type)
    def forward_op(gates: torch.Tensor, c_prev: torch.Tensor, w_ci: torch.Tensor | None,
                   w_cf: torch.Tensor | None, w_co: torch.Tensor | None,
                   channels_last: bool, o_slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        return forward_impl(gates, c_prev, w_ci, w_cf, w_co, channels_last, o_slot)

    @torch.library.custom_op(f"convlstm::lstm_gates_{backend}_backward", mutates_args=(), device_types=device_type)
    def backward_op(gates: torch.Tensor, c_prev: torch.Tensor, w_ci: torch.Tensor | None,
                    w_cf: torch.Tensor | None, w_co: torch.Tensor | None, grad_h: torch.Tensor | None,
                    grad_c: torch.Tensor | None, channels_last: bool,
                    o_slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        return backward_impl(gates, c_prev, w_ci, w_cf, w_co, grad_h, grad_c, channels_last, o_slot)

    forward_op.register_fake(fake_forward)
    backward_op.register_fake(fake_backward)
    return fused_op(forward_op, backward_op, forward_impl, backward_impl)


def gate_function(run):
    """The public function of a fused backend over its `run` (fused_op): (gates, c_prev, w_ci, w_cf, w_co,
    gate_order="ifog") -> (h_next, c_next), arguments checked, then the dtype and layout policy applied."""
    def gates_fn(gates, c_prev, w_ci=None, w_cf=None, w_co=None, gate_order="ifog"):
        check_inputs(gates, c_prev, w_ci, w_cf, w_co)
        return run(*prepare(gates, c_prev, w_ci, w_cf, w_co, gate_order))
    return gates_fn
