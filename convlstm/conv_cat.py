"""conv_cat: a ConvLSTM step's convolution over concat([x, h]), keeping less for backward.

`conv_cat_ref(x, h, conv)` is the spec, the tutorial's `conv(torch.cat([x, h], dim=1))`. Autograd then keeps the
concatenation for the weight gradient: a copy of h per consumer, and h of a cell feeds two convolutions (its own
next step and the cell above it), under autocast in the autocast dtype. `conv_cat` computes the same values
(the same cat, cast and convolution: outputs and input gradients bit for bit the reference's) but keeps x and h
themselves, or under autocast one copy of each in the autocast dtype shared by all its consumers, and rebuilds
the concatenation in backward (one copy of (Cin + C) channels, small beside the convolution's work).
Differences: under autocast the weight gradients of the steps add up in float32 (the reference adds them in bf16
on autocast's cached bf16 weight); without autocast, changing x or h in place before backward is autograd's
"modified by an inplace operation" error, as for any op that keeps its input (the reference keeps a copy).

Why: per hidden-state element of a bf16 training step with x and h of equal width, the fused path keeps gates
(8 B), c_prev (4 B) and the concatenation (4 B); sharing h's bf16 copy makes the last 2 B: 16 B -> 14 B, where
eager PyTorch keeps 20 B. Whole model, measured on the CPU: kernels/README.md, "Memory kept for backward".
Host cost: the Python forward and backward of _ConvCat, ~60 us per call here (forward+backward at a negligible
size on this 2-core Xeon, 1 thread: 153 us against the reference's 94-101 us), 40 calls per training step of
the tutorial's model; the GPU step it runs beside should take tens of ms, so the host would stay ahead
(bench_train measures the whole step).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary


def conv_cat_ref(x, h, conv):
    """conv(cat([x, h], dim=1)): the tutorial's ConvLSTM convolution."""
    return conv(torch.cat([x, h], dim=1))


# tensor -> (its version when copied, its copy in the autocast dtype). Entries go with their tensor, so a hidden
# state's copy lives as long as the state or a backward that saved it.
_LOW_PRECISION_COPIES = WeakIdKeyDictionary()


def as_conv_reads(tensor, dtype):
    """`tensor` as the convolution reads it: itself (detached: the gradient goes to `tensor` through _ConvCat), or,
    with autocast's `dtype`, its copy in that dtype, made once per tensor (and version) for all its consumers."""
    if dtype is None or tensor.dtype in (dtype, torch.float64):  # autocast leaves float64 alone
        return tensor.detach()
    cached = _LOW_PRECISION_COPIES.get(tensor)
    if cached is not None and cached[0] == tensor._version and cached[1].dtype == dtype:
        return cached[1]
    copy = tensor.detach().to(dtype)
    _LOW_PRECISION_COPIES[tensor] = (tensor._version, copy)
    return copy


def cast_for_conv(tensor, dtype):
    """`tensor` cast to autocast's `dtype` as a step of autograd (its gradient flows back through the cast), and made
    the copy that as_conv_reads gives later consumers of `tensor`. Itself where autocast leaves it alone."""
    if dtype is None or tensor.dtype in (dtype, torch.float64):
        return tensor
    copy = tensor.to(dtype)
    _LOW_PRECISION_COPIES[tensor] = (tensor._version, copy.detach())
    return copy


def records_autograd(conv, inputs):
    """Whether conv over `inputs` records autograd that conv_cat / conv_frame keep less for: not under no_grad,
    while torch.compile traces (Inductor plans its own memory), for padding other than zeros, or when nothing needs
    a gradient."""
    weight, bias = conv.weight, conv.bias
    return not (torch.compiler.is_compiling() or not torch.is_grad_enabled() or conv.padding_mode != "zeros"
                or not (any(t.requires_grad for t in inputs) or weight.requires_grad
                        or (bias is not None and bias.requires_grad)))


def autocast_dtype(tensor):
    """The dtype autocast computes in on `tensor`'s device, or None when it is off there."""
    device = tensor.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


def conv_backward_args(conv):
    """stride, padding, dilation, transposed, output_padding, groups of `conv`, as convolution_backward takes them."""
    return conv.stride, conv.padding, conv.dilation, False, [0] * len(conv.stride), conv.groups


def conv_backward(grad_out, conv_input, weight, bias_dtype, conv_args, needs_input, needs_weight, needs_bias):
    """Gradients of input, weight and bias of a convolution that read `conv_input` (the weight cast to its dtype, as
    autocast does); weight and bias gradients in their parameters' dtypes, as autocast's casts give them back."""
    # .default: the overload itself, not resolved from the packet on every call (~4 us less here)
    grad_in, grad_weight, grad_bias = torch.ops.aten.convolution_backward.default(
        grad_out, conv_input, weight.to(conv_input.dtype), None if bias_dtype is None else [weight.shape[0]],
        *conv_args, [needs_input, needs_weight, bias_dtype is not None and needs_bias])
    if grad_weight is not None:
        grad_weight = grad_weight.to(weight.dtype)
    if grad_bias is not None:
        grad_bias = grad_bias.to(bias_dtype)
    return grad_in, grad_weight, grad_bias


class _ConvCat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h, x_read, h_read, weight, bias, conv):
        # Autocast is on here as around the call: conv2d casts weight and bias (autocast caches the weight's cast)
        # and reads x_read, h_read, already in its dtype.
        out = F.conv2d(torch.cat([x_read, h_read], dim=1), weight, bias, conv.stride, conv.padding, conv.dilation,
                       conv.groups)
        ctx.save_for_backward(x_read, h_read, weight)
        ctx.conv_args = conv_backward_args(conv)
        ctx.dtypes = x.dtype, h.dtype, None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x_read, h_read, weight = ctx.saved_tensors
        x_dtype, h_dtype, bias_dtype = ctx.dtypes
        needs = ctx.needs_input_grad
        grad_in, grad_weight, grad_bias = conv_backward(grad_out, torch.cat([x_read, h_read], dim=1), weight,
                                                        bias_dtype, ctx.conv_args, needs[0] or needs[1], needs[4],
                                                        needs[5])
        grad_x = grad_h = None
        if grad_in is not None:  # each in its input's dtype, as autocast's casts give back (float32 under bf16)
            split = x_read.shape[1]
            grad_x, grad_h = grad_in[:, :split].to(x_dtype), grad_in[:, split:].to(h_dtype)
        return grad_x, grad_h, None, None, grad_weight, grad_bias, None


def conv_cat(x, h, conv):
    """`conv_cat_ref(x, h, conv)`, keeping for backward x and h (or their autocast-dtype copies, one per tensor)
    instead of the concatenation. x (B, Cin, H, W), h (B, C, H, W), conv an nn.Conv2d over Cin + C channels with
    zero padding. Without autograd to record (no_grad, no input needing a gradient) or while torch.compile traces
    (Inductor plans its own memory), it is the reference."""
    if not records_autograd(conv, (x, h)):
        return conv_cat_ref(x, h, conv)
    dtype = autocast_dtype(x)
    return _ConvCat.apply(x, h, as_conv_reads(x, dtype), as_conv_reads(h, dtype), conv.weight, conv.bias, conv)
