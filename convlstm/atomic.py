"""Files written whole or not at all, and the one mark their temp names carry.

A file is written to a temp name beside it and renamed over it once complete (`write_file`); a set of outputs
(evaluate.py's, predict.py's) is written into a staging folder inside the output folder and moved into place at the
end (`staged`), so a full disk or a kill leaves the old files or the new ones, never half of either. Every temp name
holds PARTIAL, which no person types: train.py's sweep of leftovers at a run's start removes those and nothing a user
named (`notes.tmp.png`, `backup.tmp.1` stay).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil

PARTIAL = "convlstm-partial"
_PARTIAL_NAME = re.compile(r"^\..*\b" + PARTIAL + r"-\d+$")


class WriteError(RuntimeError):
    """An output that cannot be written; the message is one line naming the path and the cause."""


def temp_path(path: str) -> str:
    """`dir/.name.convlstm-partial-<pid>` for `dir/name`: hidden, in the same folder (a rename never crosses file
    systems), one per process."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.{PARTIAL}-{os.getpid()}")


def is_partial(name: str) -> bool:
    """Whether a file or folder name is one of temp_path's or staged's (a write cut short left it)."""
    return bool(_PARTIAL_NAME.match(name))


def describe(error: OSError, path: str) -> str:
    """One line for a failed write of `path`."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left writing {path}" + (" (disk quota exceeded)" if error.errno == errno.EDQUOT else "")
    where = f" ({error.filename})" if error.filename and os.fspath(error.filename) != os.fspath(path) else ""
    return f"cannot write {path}: {error.strerror or error}{where}"


def write_file(path: str, write, fsync: bool = False) -> None:
    """Call write(handle) on a binary file at temp_path(path), then rename it over `path`. fsync: flush it to the
    disk before the rename (checkpoints: a crash then leaves the old file or the whole new one). On failure the temp
    file is removed and an OSError becomes a WriteError."""
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(error, OSError):
            raise WriteError(describe(error, path)) from error
        raise


def check_writable_dir(path: str, flag: str = "") -> None:
    """Raise WriteError (naming `flag`, if any, and `path`) unless files can be made in the folder `path`: tried for
    real, with a temp file, since permission bits say nothing of a read-only mount, /proc, or root. Folders it had
    to make for the try are removed again, so nothing is left behind."""
    made, named = [], f"{flag} {path}".strip()
    probe = os.path.join(path, f".probe.{PARTIAL}-{os.getpid()}")
    try:
        missing, parent = [], os.path.abspath(path)
        while not os.path.exists(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise WriteError(f"{named}: {parent} is not a directory")
        for folder in reversed(missing):
            os.mkdir(folder)
            made.append(folder)
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as error:
        raise WriteError(f"{named}: cannot write there ({error.strerror or error})") from None
    finally:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(folder)


class Stage:
    """The staging folder `staged` yields: write(name, fn) calls fn(path) for the output `name` (may hold folders)
    there; a failure is a WriteError naming where the file was going, not its staging copy."""

    def __init__(self, folder: str, out_dir: str):
        self.folder, self.out_dir = folder, out_dir

    def write(self, name: str, write) -> None:
        path = os.path.join(self.folder, name)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write(path)
        except OSError as error:
            raise WriteError(describe(error, os.path.join(self.out_dir, name))) from None


@contextlib.contextmanager
def staged(out_dir: str):
    """Yield a Stage in a folder inside `out_dir` to write outputs into; on leaving without an exception move each of
    its files to the same place under `out_dir` (replacing files of the same names), else remove it. An OSError on
    the way becomes a WriteError naming the file."""
    stage = os.path.join(out_dir, f".{PARTIAL}-{os.getpid()}")
    try:
        os.makedirs(stage, exist_ok=True)
        yield Stage(stage, out_dir)
        for root, _, files in os.walk(stage):
            target = os.path.join(out_dir, os.path.relpath(root, stage))
            os.makedirs(target, exist_ok=True)
            for name in files:
                os.replace(os.path.join(root, name), os.path.join(target, name))
    except OSError as error:
        raise WriteError(describe(error, error.filename or out_dir)) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
