"""Users' own sequences: arrays (.npy / .npz), folders of frames, video files.

A source is a list of sequences of frames with C channels. It knows each sequence's length and frame size (`sizes`,
(H, W); `frame_shape` is the first's (C, H, W)) and reads frames [start, stop) of sequence i as a numpy array
(t, C, H, W), uint8 (0-255) or float (0-1);
`convlstm.data.windows` turns sources into training windows. Everything is checked when the source is opened (shapes,
sizes, readable headers), so bad data stops a run before anything is written, with the file and the value named.
"""
from __future__ import annotations

import collections
import os
import re
import time
import zipfile

import numpy as np

from .errors import DataError  # (its home: convlstm.data.gridded raises it too, and this module opens that one)

LAYOUTS = ("NTCHW", "NTHWC", "NTHW", "TNHW")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg")
# NetCDF files, Zarr stores (folders), HDF5 files (convlstm.data.hdf5)
GRIDDED_EXTENSIONS = (".nc", ".nc4", ".netcdf", ".cdf", ".zarr", ".h5", ".hdf5", ".hdf")
STANDARD_SHAPE = (20, 64, 64)  # mnist_test_seq.npy is (20, N, 64, 64): (T, N, H, W)


def error_line(error: DataError) -> str:
    """The message of a DataError, also of one a DataLoader worker raised: torch raises it again in the training
    process with the worker's traceback as its message, whose last line is the original's."""
    text = str(error).strip()
    if "Traceback (most recent call last)" not in text:
        return text
    return text.splitlines()[-1].split(f"{DataError.__name__}: ", 1)[-1]


def _natural_key(name):
    """Name order with numbers compared as numbers: frame_2 before frame_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class ArraySource:
    """Sequences in one .npy or .npz array, memory-mapped (an uncompressed .npz member too; a compressed one is read
    into memory). layout: one of LAYOUTS, or None to detect it from the shape where that is unambiguous: 5-D is
    NTCHW; 4-D is the standard file's TNHW for shape (20, N, 64, 64), else the axis shorter than `min_length` cannot
    be T. uint8 is 0-255, floats 0-1 (checked per read)."""

    def __init__(self, path, layout=None, min_length=None):
        self.path = os.fspath(path)
        array = self._array()
        if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
            raise DataError(f"{self.path}: dtype {array.dtype}; expected uint8 (0-255) or float (0-1)")
        if layout is not None and layout not in LAYOUTS:
            raise DataError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
        self.layout = layout or detect_layout(array.shape, min_length, self.path)
        if len(self.layout) != array.ndim:
            raise DataError(f"{self.path}: shape {array.shape} has {array.ndim} dims, layout {self.layout} needs "
                            f"{len(self.layout)}")
        sizes = dict(zip(self.layout, array.shape))
        sizes.setdefault("C", 1)
        if sizes["N"] < 1 or sizes["T"] < 1:
            raise DataError(f"{self.path}: shape {array.shape} ({self.layout}) holds no sequence")
        self.lengths = [sizes["T"]] * sizes["N"]
        self.sizes = [(sizes["H"], sizes["W"])] * sizes["N"]
        self.frame_shape = (sizes["C"], sizes["H"], sizes["W"])
        self.names = [f"{os.path.basename(self.path)}[{i}]" for i in range(sizes["N"])]

    def _array(self):
        if getattr(self, "_cached", None) is None:
            self._cached = open_array(self.path)
        return self._cached

    def frames(self, index, start, stop):
        array, layout = self._array(), self.layout
        if layout == "TNHW":
            clip = array[start:stop, index][:, None]
        else:
            clip = array[index, start:stop]
            clip = clip[:, None] if layout == "NTHW" else clip
            clip = np.moveaxis(clip, -1, 1) if layout == "NTHWC" else clip
        clip = np.array(clip)  # a copy: what the memory map holds stays read-only
        if clip.dtype != np.uint8 and clip.size and not ((clip >= 0) & (clip <= 1)).all():
            raise DataError(self._describe(index))
        return clip

    def scan(self, full=False):
        """{sequence: what is wrong} for the sequences of a float array holding values outside [0, 1] (NaN and inf
        included), read in blocks of about SCAN_BYTES along the first axis (a memory map: nothing held). uint8 has
        nothing to check. `full` changes nothing: every value is read either way."""
        array = self._array()
        if array.dtype == np.uint8 or not array.size:
            return {}
        axis = self.layout.index("N")  # 0, or 1 for TNHW
        row_bytes = array[:1].nbytes
        block = max(1, SCAN_BYTES // max(1, row_bytes))
        bad = np.zeros(array.shape[axis], dtype=bool)
        for start in range(0, array.shape[0], block):
            chunk = np.asarray(array[start:start + block])
            outside = ~((chunk >= 0) & (chunk <= 1))  # NaN compares false both ways
            if axis == 0:
                bad[start:start + len(chunk)] |= outside.reshape(len(chunk), -1).any(axis=1)
            else:
                bad |= np.moveaxis(outside, 1, 0).reshape(array.shape[1], -1).any(axis=1)
        return {int(i): self._describe(int(i)) for i in np.flatnonzero(bad)}

    def _describe(self, index):
        values = np.asarray(self._array()[index] if self.layout.index("N") == 0 else self._array()[:, index])
        finite = values[np.isfinite(values)]
        problems = [f"{count} {name}" for name, count in (("NaN", int(np.isnan(values).sum())),
                                                          ("inf", int(np.isinf(values).sum()))) if count]
        if finite.size and (finite.min() < 0 or finite.max() > 1):
            problems.insert(0, f"float values in [{finite.min():g}, {finite.max():g}]")
        return f"{self.path}: sequence {index} has {' and '.join(problems)}; float arrays must hold 0-1 (or store " \
               "uint8 0-255)"

    def __getstate__(self):  # a memory map is reopened in each worker, not copied into the pickle
        return {**self.__dict__, "_cached": None}


# Values a scan reads at a time: a block's comparisons need about 2 bytes of temporaries per value besides.
SCAN_BYTES = 64 * 2**20


def detect_layout(shape, min_length, path):
    if len(shape) == 5:
        return "NTCHW"
    if len(shape) != 4:
        raise DataError(f"{path}: array of shape {tuple(shape)}; expected (N, T, C, H, W), (N, T, H, W) or "
                        "(T, N, H, W)")
    if (shape[0], *shape[2:]) == STANDARD_SHAPE and shape[1] != shape[0]:
        return "TNHW"
    if min_length is not None:
        if shape[0] < min_length <= shape[1]:
            return "NTHW"
        if shape[1] < min_length <= shape[0]:
            return "TNHW"
    raise DataError(f"{path}: the layout of shape {tuple(shape)} is ambiguous (either of the first two axes could be "
                    "time); pass --layout NTHW or --layout TNHW")


def open_array(path):
    """A .npy file memory-mapped, or the one array of an .npz (memory-mapped when stored uncompressed)."""
    if not os.path.isfile(path):
        raise DataError(f"{path} does not exist" if not os.path.exists(path) else f"{path} is not a file")
    try:
        loaded = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DataError(f"{path}: not a readable .npy / .npz file ({error})") from error
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        keys = list(loaded.keys())
        if len(keys) != 1:
            raise DataError(f"{path}: an .npz of {len(keys)} arrays ({', '.join(keys) or 'none'}); expected exactly "
                            "one, shaped (N, T, C, H, W), (N, T, H, W) or (T, N, H, W)")
        if keys[0] + ".npy" not in loaded.zip.namelist():
            raise DataError(f"{path}: its member {keys[0]!r} is not an .npy array")
        try:
            mapped = _map_npz_member(path, keys[0] + ".npy")
            array = mapped if mapped is not None else loaded[keys[0]]
        except DataError:
            raise
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise DataError(f"{path}: its array {keys[0]!r} is unreadable ({error})") from error
    return array


def _map_npz_member(path, member):
    """A memory map of an uncompressed .npz member, or None if it is compressed. An object dtype (pickled Python
    objects, never unpickled here) is a DataError."""
    with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
        info = archive.getinfo(member)
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        handle.seek(info.header_offset + 26)  # the local header: 30 bytes, then the name and the extra field
        name_length, extra_length = np.frombuffer(handle.read(4), dtype="<u2")
        handle.seek(info.header_offset + 30 + int(name_length) + int(extra_length))
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
        if dtype.hasobject:
            raise DataError(f"{path}: its array holds Python objects (dtype {dtype}); expected uint8 or float")
        return np.memmap(path, dtype=dtype, mode="r", offset=handle.tell(), shape=shape,
                         order="F" if fortran else "C")


def _image_channels(mode):
    return 1 if mode in ("L", "I", "I;16", "F", "1") else 3


class FrameFolders:
    """A folder of sequences: one sub-folder per sequence, its frames PNG/JPEG files in name order (numbers compared
    as numbers). Grey images give 1 channel, any other mode RGB (3); `channels` forces 1 or 3."""

    def __init__(self, root, channels=None):
        from PIL import Image, UnidentifiedImageError

        self.root = os.fspath(root)
        folders = sorted((e for e in os.scandir(self.root) if e.is_dir()), key=lambda e: _natural_key(e.name))
        if not folders:
            raise DataError(f"{self.root}: no sub-folders; expected one folder of frames per sequence")
        self.files, self.sizes, modes = [], [], set()
        for folder in folders:
            size = None
            files = sorted((e.path for e in os.scandir(folder.path) if e.name.lower().endswith(IMAGE_EXTENSIONS)),
                           key=lambda p: _natural_key(os.path.basename(p)))
            if not files:
                raise DataError(f"{folder.path}: no PNG or JPEG frames")
            for file in files:
                try:
                    with Image.open(file) as image:
                        frame_size, mode = image.size, image.mode
                except (UnidentifiedImageError, OSError) as error:
                    raise DataError(f"{file}: not a readable image ({error})") from error
                if size is None:
                    size, first = frame_size, file
                elif frame_size != size:
                    raise DataError(f"{file}: frame of {frame_size[0]}x{frame_size[1]} (WxH) where {first} is "
                                    f"{size[0]}x{size[1]}: the frames of a sequence must have one size")
                modes.add(mode)
            self.files.append(files)
            self.sizes.append((size[1], size[0]))
        self.channels = channels or max(_image_channels(mode) for mode in modes)
        self.frame_shape = (self.channels, *self.sizes[0])
        self.lengths = [len(files) for files in self.files]
        self.names = [folder.name for folder in folders]

    def scan(self, full=False):
        """{sequence: what is wrong}: with `full`, every frame decoded (a truncated PNG opens, and fails only when
        its pixels are read); else nothing (the headers were read when the folder opened)."""
        bad = {}
        for index in range(len(self.files) if full else 0):
            try:
                self.frames(index, 0, self.lengths[index])
            except DataError as error:
                bad[index] = f"{error} (sequence {index}, {self.names[index]})"
        return bad

    def frames(self, index, start, stop):
        from PIL import Image

        clip = []
        for file in self.files[index][start:stop]:
            try:
                with Image.open(file) as image:
                    pixels = np.asarray(image.convert("L" if self.channels == 1 else "RGB"))
            except OSError as error:
                raise DataError(f"{file}: not a readable image ({error})") from error
            clip.append(pixels[None] if self.channels == 1 else pixels.transpose(2, 0, 1))
        return np.stack(clip)


def _av():
    try:
        import av
    except ImportError:
        raise DataError("reading videos needs PyAV: pip install -e '.[video]' (or pip install av)") from None
    return av


class VideoFiles:
    """Video files (mp4, avi, ... as KTH), one sequence each, decoded with PyAV; RGB (3 channels), or grey with
    channels=1. Frame counts are read when the source opens; a worker decodes a video once and keeps the last few."""

    def __init__(self, paths, channels=None):
        av = _av()
        self.paths = [os.fspath(p) for p in paths]
        if not self.paths:
            raise DataError("no video files given")
        self.channels = channels or 3
        self.lengths, self.sizes = [], []
        for path in self.paths:
            try:
                with av.open(path) as container:
                    if not container.streams.video:
                        raise DataError(f"{path}: holds no video stream")
                    stream = container.streams.video[0]
                    frame_size = (stream.codec_context.width, stream.codec_context.height)
                    # The container's count, else the packets (one per frame; no decoding). Windows check the count.
                    count = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
            except av.error.FFmpegError as error:
                raise DataError(f"{path}: not a readable video ({error})") from error
            self.lengths.append(count)
            self.sizes.append((frame_size[1], frame_size[0]))
        self.frame_shape = (self.channels, *self.sizes[0])
        self.names = [os.path.basename(p) for p in self.paths]

    def scan(self, full=False):
        """{sequence: what is wrong}: with `full`, every video decoded, and one that decodes fewer frames than its
        header counts is bad; else nothing (the headers were read when the files opened)."""
        bad = {}
        for index in range(len(self.paths) if full else 0):
            try:
                frames = len(self.frames(index, 0, self.lengths[index]))
            except DataError as error:
                bad[index] = str(error)
                continue
            if frames < self.lengths[index]:
                bad[index] = f"{self.paths[index]}: decodes {frames} frames where its header says {self.lengths[index]}"
        return bad

    def frames(self, index, start, stop):
        key = (self.paths[index], self.channels)
        clip = _DECODED.pop(key, None)
        if clip is None:
            clip = _decode(*key)
        _DECODED[key] = clip  # most recently used last
        while sum(c.nbytes for c in _DECODED.values()) > VIDEO_CACHE_BYTES and len(_DECODED) > 1:
            _DECODED.pop(next(iter(_DECODED)))
        return clip[start:stop]


# Decoded videos kept per process (each DataLoader worker has its own), least recently used dropped first. Shuffled
# windows hit a video again only if many are kept: bench_data's 24 videos with 4 kept missed 88 of 96 windows, each
# miss a whole decode (12-17 ms for 80 frames of 64x64).
VIDEO_CACHE_BYTES = 256 * 2**20
_DECODED = collections.OrderedDict()


def _decode(path, channels):
    """All frames of a video, uint8 (T, C, H, W)."""
    av = _av()
    fmt = "gray" if channels == 1 else "rgb24"
    try:
        with av.open(path) as container:
            frames = [frame.to_ndarray(format=fmt) for frame in container.decode(video=0)]
    except av.error.FFmpegError as error:
        raise DataError(f"{path}: video decoding failed ({error})") from error
    clip = np.stack(frames)
    return clip[:, None] if channels == 1 else clip.transpose(0, 3, 1, 2)


def is_gridded(path) -> bool:
    """Whether `path` names a NetCDF, Zarr or HDF5 archive (convlstm.data.gridded, convlstm.data.hdf5)."""
    return os.fspath(path).lower().rstrip("/").endswith(GRIDDED_EXTENSIONS)


def open_source(path, layout=None, channels=None, min_length=None, gridded=None):
    """The source `path` names: an .npy / .npz array, a video file, a folder of video files, a folder of frame
    folders, or a NetCDF, Zarr or HDF5 archive (with `gridded`: GriddedSource's options: variable, transform, ...).
    A file system error on the way (a symlink loop, a folder that cannot be listed) is a DataError."""
    try:
        if is_gridded(path):  # (imported here: xarray and h5py only for archives)
            from .gridded import GriddedSource
            from .hdf5 import EXTENSIONS, HDF5Source
            kind = HDF5Source if os.fspath(path).lower().endswith(EXTENSIONS) else GriddedSource
            return kind(os.fspath(path), **(gridded or {}), min_length=min_length)
        return _open_source(os.fspath(path), layout, channels, min_length)
    except OSError as error:
        raise DataError(f"{error.filename or path}: {error.strerror or error}") from error


def _open_source(path, layout, channels, min_length):
    lower = path.lower()
    if lower.endswith((".npy", ".npz")):
        return ArraySource(path, layout, min_length)
    if lower.endswith(VIDEO_EXTENSIONS):
        if not os.path.isfile(path):
            raise DataError(f"{path} does not exist")
        return VideoFiles([path], channels)
    if not os.path.isdir(path):
        raise DataError(f"{path} does not exist" if not os.path.exists(path) else
                        f"{path}: expected an .npy / .npz array, a video file or a folder")
    entries = sorted(os.scandir(path), key=lambda e: _natural_key(e.name))
    videos = [e.path for e in entries if e.is_file() and e.name.lower().endswith(VIDEO_EXTENSIONS)]
    if videos:
        return VideoFiles(videos, channels)
    if any(e.name.lower().startswith(("train-images-idx3", "t10k-images-idx3")) for e in entries):
        raise DataError(f"{path} holds MNIST IDX digit files: pass it as --digits (the digits Moving MNIST is made "
                        "of), not as --data")
    return FrameFolders(path, channels)


def scan_source(source, skip_bad):
    """(the bad sequences {index: what is wrong}, a note for the log) of the source's scan: an array's values always
    (cheap: one streaming read), every frame of images and videos too with --skip_bad_data (a decode of
    everything). Without --skip_bad_data the first bad sequence is a DataError: found here, before
    anything is written, not mid-run. Every process scans alike, so all leave out the same sequences."""
    started = time.perf_counter()
    bad = source.scan(full=skip_bad)
    seconds = time.perf_counter() - started
    if bad and not skip_bad:
        first = next(iter(bad.values()))
        raise DataError(f"{first} ({len(bad)} such sequence(s); --skip_bad_data leaves them out)")
    note = f"; scanned in {seconds:.1f} s" if seconds >= 0.05 or skip_bad else ""
    if bad:
        shown = "; ".join(list(bad.values())[:3]) + ("; ..." if len(bad) > 3 else "")
        note += f"; {len(bad)} bad sequence(s) left out by --skip_bad_data: {shown}"
    return bad, note


def usable(source, bad, flag):
    """The indices of the source's sequences not in `bad`; a DataError when none is left."""
    kept = [i for i in range(len(source.lengths)) if i not in bad]
    if not kept:
        raise DataError(f"{flag}: all {len(bad)} sequences are bad (--skip_bad_data left none): "
                        + next(iter(bad.values())))
    return kept
