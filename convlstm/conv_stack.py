"""conv_stack: the model's Conv3d head over the decoder's stacked outputs, keeping less for backward.

`conv_stack_ref(frames, conv)` is the spec, the tutorial's `conv(torch.stack(frames, 1).permute(0, 2, 1, 3, 4))`
for frames (B, C, H, W) -> a (B, C, T, H, W) input. Autograd keeps that stacked input (under autocast its bf16
cast), a second copy of frames that conv_cat already keeps, and the forward holds the float32 stack on top.
`conv_stack` runs the same stack, permute and convolution on the frames as the convolution reads them (under
autocast their bf16 copies, shared with conv_cat through `as_conv_reads`), keeps those, and restacks in backward.
Outputs and frame gradients are bit for bit the reference's on the CPU; under autocast the weight gradient is the
float32 cast of the one call's bf16 gradient, as the reference's.

Why: at the tutorial's configuration the stack is 126 MB in float32 and 63 MB in bf16, at the end of the forward,
where a training step's memory peaks (kernels/README.md, "Memory kept for backward").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .conv_cat import as_conv_reads, autocast_dtype, conv_backward, conv_backward_args, records_autograd


def _stacked(frames):
    return torch.stack(frames, 1).permute(0, 2, 1, 3, 4)  # (B, C, T, H, W)


def conv_stack_ref(frames, conv):
    """conv(stack(frames, 1).permute(0, 2, 1, 3, 4)): the tutorial's Conv3d head over T frames."""
    return conv(_stacked(frames))


class _ConvStack(torch.autograd.Function):
    @staticmethod
    def forward(ctx, conv, count, weight, bias, *frames_and_reads):
        frames, reads = frames_and_reads[:count], frames_and_reads[count:]
        # Autocast casts weight and bias here as around the call; the reads are already in its dtype.
        out = F.conv3d(_stacked(reads), weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        ctx.save_for_backward(weight, *reads)
        ctx.conv_args = conv_backward_args(conv)
        ctx.dtypes = [frame.dtype for frame in frames], None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        weight, *reads = ctx.saved_tensors
        frame_dtypes, bias_dtype = ctx.dtypes
        needs = ctx.needs_input_grad
        grad_in, grad_weight, grad_bias = conv_backward(grad_out, _stacked(reads), weight, bias_dtype, ctx.conv_args,
                                                        any(needs[4:4 + len(reads)]), needs[2], needs[3])
        grad_frames = [None] * len(reads)
        if grad_in is not None:  # frame t's gradient, in its dtype (float32 under bf16 autocast)
            grad_frames = [grad_in[:, :, t].to(dtype) for t, dtype in enumerate(frame_dtypes)]
        return (None, None, grad_weight, grad_bias, *grad_frames, *[None] * len(reads))


def conv_stack(frames, conv):
    """`conv_stack_ref(frames, conv)`, keeping for backward the frames as the convolution reads them, not their
    stack. frames: T tensors (B, C, H, W); conv an nn.Conv3d with zero padding. Without autograd to record, or
    while torch.compile traces, it is the reference."""
    if not records_autograd(conv, frames):
        return conv_stack_ref(frames, conv)
    dtype = autocast_dtype(frames[0])
    reads = [as_conv_reads(frame, dtype) for frame in frames]
    return _ConvStack.apply(conv, len(frames), conv.weight, conv.bias, *frames, *reads)
