"""conv_cat: a ConvLSTM step's convolution over concat([x, h]), keeping x and h for backward, not the concatenation.

Spec: `conv_cat_ref`, the tutorial's `conv(cat([x, h]))`, whose autograd keeps the concatenation: a copy of h per
consumer (h feeds two convolutions). conv_cat runs the same ops (outputs and input gradients bit for bit) with
saved-tensor hooks that keep x and h, or under autocast one low-precision copy of each shared by all consumers
(bf16 step: 16 -> 14 B kept per hidden element, eager 20 B). Differences: autocast's weight cast is per call, so the
steps' weight gradients add up in float32; an in-place change of x, h or the weight before backward is an error.
Why hooks, not an autograd.Function: host time, ~50 us per call forward+backward against ~145 us (2-core VM, float32;
benchmarks/bench_dispatch.py, op "cell").
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
    """What conv_cat keeps of `tensor`: itself, or under autocast the copy cast_for_conv made of this version."""
    if dtype is None or tensor.dtype in (dtype, torch.float64):  # autocast leaves float64 alone
        return tensor.detach()
    return _LOW_PRECISION_COPIES[tensor][1]  # cast_for_conv ran on this version in the same conv_cat call


def cast_for_conv(tensor, dtype):
    """`tensor` cast to autocast's `dtype` through autograd, as autocast casts a convolution's input; the first copy
    of each version is remembered for as_conv_reads. Itself where autocast leaves it alone."""
    if dtype is None or tensor.dtype in (dtype, torch.float64):
        return tensor
    copy = tensor.to(dtype)
    cached = _LOW_PRECISION_COPIES.get(tensor)
    if cached is None or cached[0] != tensor._version or cached[1].dtype != dtype:
        _LOW_PRECISION_COPIES[tensor] = (tensor._version, copy.detach())
    return copy


def records_autograd(conv, inputs):
    """Whether conv over `inputs` records autograd to keep less for: not under no_grad, nor while torch.compile traces
    (Inductor plans its own memory), nor for non-zero padding, nor when nothing needs a gradient."""
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
    """`conv_cat_ref(x, h, conv)` keeping x and h for backward. x (B, Cin, H, W), h (B, C, H, W), conv an nn.Conv2d
    over Cin + C channels. The reference itself where records_autograd is False. Returns (B, out, H, W)."""
    if _TOP_HOOKS is None or not records_autograd(conv, (x, h)):
        return conv_cat_ref(x, h, conv)
    outer = _TOP_HOOKS(False)  # the caller's hooks: what conv_cat keeps goes through them
    dtype = autocast_dtype(x)
    weight, bias = conv.weight, conv.bias
    if dtype is not None and torch.promote_types(x.dtype, h.dtype) != torch.float64:  # autocast leaves float64 alone
        # Autocast's cast of the concatenation, made of x and h instead (same values, 10 B of traffic per element
        # instead of 14) so the hooks know the copies; weight and bias cast per call: float32 gradients per step.
        x_in, h_in = cast_for_conv(x, dtype), cast_for_conv(h, dtype)
        weight, bias = weight.to(dtype), None if bias is None else bias.to(dtype)
    else:
        dtype, x_in, h_in = None, x, h  # x and h are kept as they are
    cat = torch.cat([x_in, h_in], dim=1)
    # Autograd keeps the pack hook alive: a dict emptied after the call, not closure variables, so cat, x and h die.
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
