"""conv_frame: the model's Conv3d head on each decoder frame as it is made; spec `conv_stack_ref`, on their stack.

A kernel one frame deep makes output frame t from input frame t alone: the same values, without the step's largest
temporary, the stack (convlstm/ops/README.md, "Memory kept for backward").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .conv_cat import autocast_dtype, cast_for_conv, records_autograd


def conv_stack_ref(frames, conv):
    """conv(stack(frames, 1).permute(0, 2, 1, 3, 4)): the tutorial's Conv3d head over T frames."""
    return conv(torch.stack(frames, 1).permute(0, 2, 1, 3, 4))


def conv_frame_applies(conv, inputs):
    """Whether the head `conv` may run per frame: one frame deep along T, and autograd to record (records_autograd)."""
    return (conv.kernel_size[0] == 1 and conv.stride[0] == 1 and conv.padding[0] == 0
            and records_autograd(conv, inputs))


def conv_frame(frame, conv):
    """Output frame (B, out, 1, H, W) of the Conv3d `conv` over frame (B, C, H, W), where conv_frame_applies.
    Under autocast the frame's cast is the one conv_cat keeps too (cast_for_conv)."""
    dtype = autocast_dtype(frame)
    read = cast_for_conv(frame, dtype)
    # Conv2d, not Conv3d on one frame: the CPU's bf16 Conv3d weight gradient is NaN for 1-6 frames at 64 channels,
    # 64x64 (torch 2.11 and 2.13, one thread; test_conv_frame_bf16_weight_gradient_on_one_cpu_thread).
    weight, bias = conv.weight[:, :, 0], conv.bias
    if dtype is not None and read.dtype == dtype:
        # Cast per call, not autocast's cached cast: the frames' weight gradients then add up in float32.
        weight, bias = weight.to(dtype), None if bias is None else bias.to(dtype)
    out = F.conv2d(read, weight, bias, conv.stride[1:], conv.padding[1:], conv.dilation[1:], conv.groups)
    return out.unsqueeze(2)
