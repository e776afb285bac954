"""conv_frame: the model's Conv3d head run on each decoder frame as it is made, instead of on their stack.

`conv_stack_ref(frames, conv)` is the spec, the tutorial's `conv(torch.stack(frames, 1).permute(0, 2, 1, 3, 4))`
for frames (B, C, H, W) -> a (B, C, T, H, W) input. With a kernel one frame deep (the model's (1, 3, 3), no
padding or stride along T) output frame t depends on input frame t only, so `conv_frame(frames[t], conv)` is
slice t of it: `torch.cat([conv_frame(f, conv) for f in frames], 2)` equals `conv_stack_ref(frames, conv)` up to
the convolution's summation order (a 2-D convolution with the kernel's one frame instead of a Conv3d over T).

Why: the stack is a training step's largest temporary at the end of the forward. At the tutorial's configuration
the reference holds the list of float32 frames (126 MB), their stack, under autocast its bf16 cast (63 MB, kept
for backward) and the contiguous copy the convolution makes of the permuted stack (63 MB); its backward makes the
gradient of all T frames at once (63 MB bf16, then 126 MB float32) while everything the forward kept is still
alive. Run per frame as the decoder makes it, the head keeps only what conv_cat keeps already (each frame's
autocast copy, shared), no frame outlives the step after it, and in backward frame t's gradient is made just
before the decoder step that needs it. Measured: convlstm/ops/README.md, "Memory kept for backward".
Weight and bias gradients under autocast add up over the frames in float32 (the reference: one bf16 gradient of
the one call).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .conv_cat import autocast_dtype, cast_for_conv, records_autograd


def conv_stack_ref(frames, conv):
    """conv(stack(frames, 1).permute(0, 2, 1, 3, 4)): the tutorial's Conv3d head over T frames."""
    return conv(torch.stack(frames, 1).permute(0, 2, 1, 3, 4))


def conv_frame_applies(conv, inputs):
    """Whether the head `conv` may run per frame and keep less: its kernel, stride and padding cover one frame along
    T, and there is autograd to record (else the reference keeps nothing either; see conv_cat.records_autograd)."""
    return (conv.kernel_size[0] == 1 and conv.stride[0] == 1 and conv.padding[0] == 0
            and records_autograd(conv, inputs))


def conv_frame(frame, conv):
    """Output frame (B, out, 1, H, W) of the Conv3d `conv` over input frame (B, C, H, W), for a conv for which
    conv_frame_applies. Under autocast the frame is cast once, as conv_cat reads it too (one copy, kept by both)."""
    dtype = autocast_dtype(frame)
    read = cast_for_conv(frame, dtype)
    # A 2-D convolution with the kernel's one frame: a Conv3d over a one-frame input is the same sum, but on the CPU
    # (torch 2.11 and 2.13, one thread) its bf16 weight gradient comes out NaN for inputs 1 to 6 frames deep at 64
    # channels, 64x64 (400-550 of 576 entries, a different count each run); the 2-D one is right.
    weight, bias = conv.weight[:, :, 0], conv.bias
    if dtype is not None and read.dtype == dtype:
        # A cast per call, not autocast's one cached cast for all T calls: the frames' weight and bias gradients
        # then add up in float32.
        weight, bias = weight.to(dtype), None if bias is None else bias.to(dtype)
    out = F.conv2d(read, weight, bias, conv.stride[1:], conv.padding[1:], conv.dilation[1:], conv.groups)
    return out.unsqueeze(2)
