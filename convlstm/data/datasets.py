"""The training and validation sequences a Config names: Moving MNIST generated on the fly, or the user's own data
(--data, --val_data or --val_fraction), or datasets handed to train.main from Python. Each item is a float32
(T, C, H, W) tensor in [0, 1] with T = n_steps_past + n_steps_ahead."""
from __future__ import annotations

from .moving_mnist import MovingMNIST
from .gridded import gridded_options
from .sources import DataError, open_source, scan_source, usable
from .windows import Windows, parse_size, split_sequences


def build_datasets(cfg, train_set=None, val_set=None, before_reading=None):
    """(train_set, val_set, frame_shape (C, H, W), description). Raises DataError (or FileNotFoundError for MNIST
    digits) naming the problem; nothing is written before this has succeeded.

    before_reading(frame_shape, training sequences), when given, is called before any frame is made or read (for
    Moving MNIST before its digits are scaled; for datasets given from Python after their first item): train.py's
    memory estimate."""
    length = cfg.n_steps_past + cfg.n_steps_ahead
    check = before_reading or (lambda frame_shape, count: None)
    if train_set is not None:
        if val_set is None:
            raise DataError("train.main(train_dataset=...) needs a val_dataset too")
        check(_check(train_set, length, "training"), len(train_set))
        described = "datasets given from Python"
    elif cfg.data is None:
        check((1, cfg.image_size, cfg.image_size), cfg.num_train)
        common = dict(seq_len=length, image_size=cfg.image_size, num_digits=cfg.num_digits, digits=cfg.digits,
                      seed=cfg.seed, generator=cfg.generator)
        train_set = MovingMNIST("train", cfg.num_train, **common)
        val_set = MovingMNIST("test", cfg.num_val, **common)
        described = f"Moving MNIST generated ({cfg.num_train} training, {cfg.num_val} validation sequences of one " \
                    "window each)"
    else:
        train_set, val_set, described = _own_data(cfg, length)
        check(train_set.frame_shape, len(train_set))
    frame_shape, val_shape = _check(train_set, length, "training"), _check(val_set, length, "validation")
    if val_shape != frame_shape:
        raise DataError(f"validation frames are {val_shape} (C, H, W) but training frames are {frame_shape}: they "
                        "must match (--resize, --channels)")
    return train_set, val_set, frame_shape, described


def _own_data(cfg, length):
    options = dict(layout=cfg.layout, channels=cfg.channels, min_length=length, gridded=gridded_options(vars(cfg)))
    windows = dict(length=length, stride=cfg.stride or length, resize=parse_size(cfg.resize))
    source = open_source(cfg.data, **options)
    bad, scanned = scan_source(source, cfg.skip_bad_data)
    if cfg.val_data is not None:
        val_source = open_source(cfg.val_data, **options)
        val_bad, val_scanned = scan_source(val_source, cfg.skip_bad_data)
        train_set = Windows(source, sequences=usable(source, bad, "--data"), **windows)
        val_set = Windows(val_source, sequences=usable(val_source, val_bad, "--val_data"), **windows)
        return train_set, val_set, f"{cfg.data} ({len(train_set)} windows{scanned}{parts(train_set)}), validation " \
                                   f"{cfg.val_data} ({len(val_set)} windows{val_scanned}{parts(val_set)})"
    if cfg.val_fraction == 0:
        raise DataError("--val_fraction 0 without --val_data leaves no validation sequences: give one of them")
    kept, held = split_sequences(len(source.lengths), cfg.val_fraction, cfg.seed)
    usable(source, bad, "--data")
    kept, held = [i for i in kept if i not in bad], [i for i in held if i not in bad]
    if not kept or not held:
        raise DataError(f"--data {cfg.data}: the sequences left after --skip_bad_data's {len(bad)} do not split "
                        f"into training and --val_fraction {cfg.val_fraction} held-out ones; give --val_data")
    train_set, val_set = Windows(source, sequences=kept, **windows), Windows(source, sequences=held, **windows)
    return train_set, val_set, f"{cfg.data}: {len(kept)} sequences ({len(train_set)} windows{parts(train_set)}) " \
                               f"for training, {len(held)} sequences ({len(val_set)} windows{parts(val_set)}) held " \
                               f"out by --val_fraction {cfg.val_fraction}{scanned}"


def parts(windows) -> str:
    """For an archive split at gaps in time (convlstm.data.gridded), how many windows each part gave."""
    if not hasattr(windows.source, "parts") or (len(windows.source.lengths) < 2 and not windows.source.short):
        return ""
    counts = {}
    for sequence, _ in windows.index:
        counts[sequence] = counts.get(sequence, 0) + 1
    names, short = windows.source.names, windows.source.short
    return f"; split at gaps in time: {', '.join(f'{names[i]} {counts.get(i, 0)}' for i in sorted(counts))}" + \
        (f"; {short} part(s) shorter than a window left out" if short else "")


def _check(dataset, length, what):
    """The (C, H, W) of the dataset's first item, after checking its shape."""
    if len(dataset) == 0:
        raise DataError(f"the {what} data holds no sequence")
    item = dataset[0]
    if item.dim() != 4 or item.shape[0] < length:
        raise DataError(f"{what} items must be (T, C, H, W) with T >= n_in + n_out = {length}, got "
                        f"{tuple(item.shape)}")
    return tuple(item.shape[1:])
