"""Windows of `length` frames cut from a source's sequences (convlstm.data.sources), as float32 (T, C, H, W) in [0, 1].

Splits are made of whole sequences (never windows of one sequence on both sides), drawn by a seeded permutation.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .sources import DataError


def parse_size(text):
    """"64" -> (64, 64); "48x64" -> (48, 64) (height x width); None stays None."""
    if text is None:
        return None
    try:
        parts = [int(part) for part in str(text).lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise DataError(f"--resize {text!r}: expected a size such as 64 or 48x64 (height x width)")
    return (parts[0], parts[-1])


class Windows(Dataset):
    """Every window of `length` frames starting at 0, stride, 2*stride, ... in each sequence of `source` listed in
    `sequences` (default all). resize: (H, W) or None. Item: float32 (length, C, H, W) in [0, 1]."""

    def __init__(self, source, length, stride=None, sequences=None, resize=None):
        self.source, self.length, self.stride, self.resize = source, length, stride or length, resize
        if self.stride < 1:
            raise DataError(f"--stride {stride}: must be at least 1")
        sequences = range(len(source.lengths)) if sequences is None else sequences
        short = [(source.names[i], source.lengths[i]) for i in sequences if source.lengths[i] < length]
        if short:
            name, frames = short[0]
            raise DataError(f"{name} has {frames} frames, shorter than one window of {length} (n_in + n_out); "
                            f"{len(short)} sequence(s) this short")
        sizes = sorted({source.sizes[i] for i in sequences})
        if resize is None and len(sizes) > 1:
            names = [next(source.names[i] for i in sequences if source.sizes[i] == size) for size in sizes[:2]]
            raise DataError(f"frames of {sizes[0][0]}x{sizes[0][1]} in {names[0]} and {sizes[1][0]}x{sizes[1][1]} "
                            f"in {names[1]} (H x W): sequences of several sizes need --resize")
        self.index = [(i, start) for i in sequences for start in range(0, source.lengths[i] - length + 1, self.stride)]
        channels, height, width = source.frame_shape
        self.frame_shape = (channels, *(resize or (height, width)))

    def __len__(self):
        return len(self.index)

    def __getitem__(self, item):
        sequence, start = self.index[item]
        clip = self.source.frames(sequence, start, start + self.length)
        if len(clip) != self.length:
            raise DataError(f"{self.source.names[sequence]}: read {len(clip)} frames from {start}, expected "
                            f"{self.length} (the file is shorter than its header said)")
        return to_frames(clip, self.resize)


def to_frames(clip, resize=None):
    """A source's clip, numpy (T, C, H, W) uint8 0-255 or float 0-1, as float32 in [0, 1], resized to (H, W)."""
    frames = torch.from_numpy(clip)
    frames = frames.float().div_(255) if frames.dtype == torch.uint8 else frames.float()
    if resize is not None and tuple(frames.shape[-2:]) != tuple(resize):
        frames = F.interpolate(frames, size=tuple(resize), mode="bilinear", antialias=True, align_corners=False)
        frames = frames.clamp_(0, 1)
    return frames


def split_sequences(count, fraction, seed):
    """(kept, held_out) sequence indices: round(fraction * count) held out (at least one, and one kept) by a
    permutation seeded with `seed`."""
    if not 0 < fraction < 1:
        raise DataError(f"--val_fraction {fraction}: must be in (0, 1)")
    if count < 2:
        raise DataError(f"--val_fraction needs two or more sequences to split, got {count}; pass --val_data")
    held = min(count - 1, max(1, round(fraction * count)))
    order = np.random.default_rng(seed).permutation(count)
    return sorted(order[held:].tolist()), sorted(order[:held].tolist())
