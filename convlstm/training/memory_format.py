"""--channels_last in one place: train.py passes its model and every batch through one MemoryFormat.

channels_last (NHWC) is the layout cuDNN's tensor-core convolutions (bf16, fp16) run in; with NCHW tensors it adds
layout conversions around them or picks other kernels. Here the Conv2d weights and each frame of the batch are put in
it; the models follow their weights from there (convlstm.cell.weight_memory_format): the cells' zero states and
OpenSTL's patch frames are made channels_last, each convolution's output is channels_last as its weight is, and the
gate math keeps its input's layout (lstm_gates' fused op keeps channels_last gates channels_last; the plain-PyTorch
gates follow their operands). The values are those of the NCHW model up to the rounding of a different convolution
algorithm. OpenSTL's --layer_norm returns NCHW (torch's LayerNorm does), so its states fall back to NCHW.
"""
from __future__ import annotations

import torch
from torch import nn


class MemoryFormat:
    """channels_last=False leaves the model and batches as they are: NCHW, as built."""

    def __init__(self, channels_last: bool):
        self.channels_last = channels_last

    def model(self, model: nn.Module) -> nn.Module:
        """`model` with each Conv2d weight in torch.channels_last (in place; parameters keep their identity, so an
        optimizer built before or after sees them). A Conv3d, the tutorial's head, stays as it is, not
        channels_last_3d: its input stack(frames).permute(0, 2, 1, 3, 4) is in neither layout (torch.stack lays
        channels_last frames out (B, H, W, T, C)), so it is copied either way, once per sequence for nf -> C
        channels; the fused backends run it per frame as a Conv2d (conv_frame), whose output follows its
        channels_last frame."""
        if self.channels_last:
            for module in model.modules():
                if isinstance(module, nn.Conv2d):
                    module.to(memory_format=torch.channels_last)
        return model

    def batch(self, batch: torch.Tensor) -> torch.Tensor:
        """batch (B, T, C, H, W), the same values with each frame batch[:, t] (B, C, H, W) in channels_last: laid
        out (B, T, H, W, C). A copy made with clone, not contiguous(): with C = 1 (Moving MNIST) the NCHW frame
        already passes as channels_last, yet torch.cat of it and a channels_last state is NCHW, and conv(cat([x, h]))
        then converts every step."""
        if not self.channels_last:
            return batch
        return batch.permute(0, 1, 3, 4, 2).clone(memory_format=torch.contiguous_format).permute(0, 1, 4, 2, 3)
