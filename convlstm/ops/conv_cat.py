"""conv_cat: a ConvLSTM step's convolution over concat([x, h]), keeping less for backward.

`conv_cat_ref(x, h, conv)` is the spec, the tutorial's `conv(torch.cat([x, h], dim=1))`. Autograd then keeps the
concatenation for the weight gradient: a copy of h per consumer, and h of a cell feeds two convolutions (its own
next step and the cell above it), under autocast in the autocast dtype. `conv_cat` runs the same cat, cast and
convolution through PyTorch's own autograd (outputs and input gradients bit for bit the reference's), with
saved-tensor hooks that keep, in place of the concatenation, x and h themselves, or under autocast one copy of
each in the autocast dtype shared by all its consumers; backward rebuilds the concatenation from them.
Differences: under autocast the weight and bias are cast per call, so the steps' gradients add up in float32 (the
reference adds them in bf16 on autocast's cached casts); changing x, h or the weight in place between forward and
backward is an error (`_check_version`), where the reference keeps a copy.
Saved-tensor hooks of the caller's (memory measurement, torch.utils.checkpoint, offloading) see what conv_cat
keeps: x's and h's reads and the float32 weight, not the concatenation.

Why: per hidden-state element of a bf16 training step with x and h of equal width, the fused path keeps gates
(8 B), c_prev (4 B) and the concatenation (4 B); sharing h's bf16 copy makes the last 2 B: 16 B -> 14 B, where
eager PyTorch keeps 20 B. Whole model, measured on the CPU: convlstm/ops/README.md, "Memory kept for backward".
Why hooks and not an autograd.Function: host time. A Function's Python forward and backward cost ~145 us per
call forward+backward over the reference's 175-190 us here (float32, one-element state, 2-core Xeon VM, 1 thread,
interleaved medians); the hooks ~50 us; bf16 +230 us against +145 us (the casts are CPU work here). 40 calls per
training step of the tutorial's model, beside GPU work of about 10 ms (benchmarks/bench_dispatch.py, op "cell").
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
    """What conv_cat keeps of `tensor` for backward: itself (detached), or, with autocast's `dtype`, the copy that
    cast_for_conv made of it (of this version) for its first consumer, shared by all its consumers."""
    if dtype is None or tensor.dtype in (dtype, torch.float64):  # autocast leaves float64 alone
        return tensor.detach()
    return _LOW_PRECISION_COPIES[tensor][1]  # cast_for_conv ran on this version in the same conv_cat call


def cast_for_conv(tensor, dtype):
    """`tensor` cast to autocast's `dtype` as a step of autograd (its gradient flows back through the cast, in
    `tensor`'s dtype), as autocast casts a convolution's input; the first such copy of `tensor` (and version) is also
    the one as_conv_reads gives for keeping. Itself where autocast leaves it alone."""
    if dtype is None or tensor.dtype in (dtype, torch.float64):
        return tensor
    copy = tensor.to(dtype)
    cached = _LOW_PRECISION_COPIES.get(tensor)
    if cached is None or cached[0] != tensor._version or cached[1].dtype != dtype:
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


# Looked up once: without it (a torch that lacks this private call) conv_cat cannot see the caller's hooks and runs
# the reference.
_TOP_HOOKS = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)


def _check_version(name, tensor, version):
    if tensor._version != version:
        raise RuntimeError(f"conv_cat: {name} was modified in place between the forward and the backward (version "
                           f"{version}, now {tensor._version}); its gradient would use the new values. Change a "
                           f"copy instead.")


def conv_cat(x, h, conv):
    """`conv_cat_ref(x, h, conv)`, keeping for backward x and h (or their autocast-dtype copies, one per tensor)
    instead of the concatenation. x (B, Cin, H, W), h (B, C, H, W), conv an nn.Conv2d over Cin + C channels with
    zero padding. Without autograd to record (no_grad, no input needing a gradient) or while torch.compile traces
    (Inductor plans its own memory), it is the reference."""
    if _TOP_HOOKS is None or not records_autograd(conv, (x, h)):
        return conv_cat_ref(x, h, conv)
    outer = _TOP_HOOKS(False)  # the caller's hooks: what conv_cat keeps goes through them
    dtype = autocast_dtype(x)
    weight, bias = conv.weight, conv.bias
    if dtype is not None and torch.promote_types(x.dtype, h.dtype) != torch.float64:  # autocast leaves float64 alone
        # The cast autocast makes of the concatenation inside conv2d, made here of x and h before concatenating (the
        # same values; 10 B of traffic per element and channel instead of 14), so that the hooks know the result;
        # the weight and bias cast per call so that their gradients come back in float32, one per step.
        x_in, h_in = cast_for_conv(x, dtype), cast_for_conv(h, dtype)
        weight, bias = weight.to(dtype), None if bias is None else bias.to(dtype)
    else:
        dtype, x_in, h_in = None, x, h  # x and h are kept as they are
    cat = torch.cat([x_in, h_in], dim=1)
    # The convolution saves its input (cat) and weight. Autograd keeps the pack hook, so it holds these through a
    # dict emptied after the convolution, not as closure variables (those would keep cat, x and h alive).
    pending = dict(cat=cat, weight=weight, x=x, h=h)

    def pack(tensor):
        if tensor is pending.get("cat"):  # x's and h's reads; cat(reads) is cat bit for bit
            kept = ("x", as_conv_reads(pending["x"], dtype)), ("h", as_conv_reads(pending["h"], dtype))
        elif tensor is pending.get("weight"):  # the parameter or this call's cast of it: keep the parameter
            kept = (("weight", conv.weight),)  # (unpack casts it again)
        else:
            kept = ((None, tensor),)
        if outer is not None:
            return True, tensor.dtype, [(name, outer[0](t)) for name, t in kept]
        return False, tensor.dtype, [(name, t, t._version) for name, t in kept]

    def unpack(packed):
        through_outer, saved_dtype, kept = packed
        if through_outer:  # the caller's hooks own what they packed (e.g. a copy on the CPU): no version to check
            tensors = [outer[1](t) for _, t in kept]
        else:
            for name, t, version in kept:
                if name is not None:
                    _check_version(name, t, version)
            tensors = [t for _, t, _ in kept]
        if len(tensors) == 2:
            return torch.cat(tensors, dim=1)
        return tensors[0].to(saved_dtype)

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        try:
            return F.conv2d(cat, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        finally:
            pending.clear()
