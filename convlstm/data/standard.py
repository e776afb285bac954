"""The fixed Moving MNIST benchmark file mnist_test_seq.npy, read through a memory map."""
import operator
import os

import numpy as np
import torch
from torch.utils.data import Dataset

SUBSETS = ("all", "val", "test")
SHAPE = (20, 64, 64)  # frames, height, width; the file is (20, N, 64, 64)


class StandardMovingMNIST(Dataset):
    """The 10000 fixed sequences of mnist_test_seq.npy (uint8, shape (20, N, 64, 64)).

    Item i is arr[:, i] / 255 as a float32 tensor (20, 1, 64, 64). The file is memory-mapped, never loaded whole, and
    reopened in each process that unpickles the dataset (spawned DataLoader workers) instead of being copied.

    Args:
        path: the .npy file.
        subset: "all" (every sequence), "val" (the first num_val) or "test" (the rest), so a validation split stays
            apart from the sequences that are reported.
        num_val: sequences in "val"; 0 <= num_val <= N.
    """

    def __init__(self, path, subset="all", num_val=0):
        if subset not in SUBSETS:
            raise ValueError(f"subset={subset!r}: expected one of {SUBSETS}")
        self.path = os.fspath(path)
        self.subset = subset
        array = self.array  # opens and checks the file
        total = array.shape[1]
        if isinstance(num_val, bool) or not isinstance(num_val, (int, np.integer)) or not 0 <= num_val <= total:
            raise ValueError(f"num_val={num_val!r}: expected an integer in [0, {total}] (sequences in {self.path})")
        self.num_val = int(num_val)
        self.start, self.stop = {"all": (0, total), "val": (0, self.num_val), "test": (self.num_val, total)}[subset]

    @property
    def array(self):
        """The whole file as a read-only memory map, uint8 (20, N, 64, 64)."""
        if getattr(self, "_array", None) is None:
            self._array = _open(self.path)
        return self._array

    def __len__(self):
        return self.stop - self.start

    def __getitem__(self, index):
        index = operator.index(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for the {len(self)} sequences of subset {self.subset!r}")
        frames = self.array[:, self.start + index % len(self)].astype(np.float32) / np.float32(255)
        return torch.from_numpy(frames).unsqueeze(1)  # (20, 1, 64, 64)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_array"] = None  # pickling a memmap would copy the whole file into the pickle
        return state

    def __repr__(self):
        return f"StandardMovingMNIST({self.path!r}, subset={self.subset!r}, num_val={self.num_val}): {len(self)} sequences"


def _open(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist; expected the Moving MNIST file mnist_test_seq.npy")
    if not os.path.isfile(path):
        raise ValueError(f"{path} is not a file; expected the Moving MNIST file mnist_test_seq.npy")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npy file ({e}); expected mnist_test_seq.npy") from e
    if not isinstance(array, np.ndarray):  # an .npz archive
        array.close()
        raise ValueError(f"{path}: holds {type(array).__name__}, expected a single .npy array as mnist_test_seq.npy")
    if array.dtype != np.uint8 or array.ndim != 4 or (array.shape[0], *array.shape[2:]) != SHAPE or not array.shape[1]:
        raise ValueError(f"{path}: array of shape {array.shape} and dtype {array.dtype}; expected uint8 of shape "
                         f"(20, N, 64, 64) with N >= 1, as mnist_test_seq.npy")
    return array
