"""One run per run_dir: rank 0 holds an exclusive lock on <run_dir>/train.lock for the run's life.

A kernel lock, not a pid file: it goes when the holder's process ends in any way (return, exception, SIGKILL, a
crash), so a dead run never blocks the next. A POSIX record lock (fcntl.lockf) rather than flock: a flock is shared
with the DataLoader workers rank 0 forks, which outlive a killed rank 0 by up to 5 s and would refuse torchrun's
restart; a POSIX lock belongs to one process and is not inherited. On NFS it is a lock on the server, so runs on
different machines exclude each other too. The process must not open and close train.lock elsewhere: closing any of
its descriptors of the file drops a POSIX lock.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket

from ..checkpoint import CheckpointError

LOCK_FILE = "train.lock"


def lock_run_dir(run_dir: str):
    """Take the lock without waiting; return the open file that holds it (closing it releases the lock). A run_dir
    another process holds is a CheckpointError naming that process."""
    path = os.path.join(run_dir, LOCK_FILE)
    try:
        os.makedirs(run_dir, exist_ok=True)
        handle = open(path, "a+b", buffering=0)  # unbuffered: nothing left to flush at close on a full disk
    except OSError as error:
        raise CheckpointError(f"cannot create the lock file {path}: {error.strerror}") from error
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        handle.seek(0)
        holder = handle.read().decode(errors="replace").strip() or "unknown process"
        handle.close()
        if error.errno not in (errno.EACCES, errno.EAGAIN):
            raise CheckpointError(f"cannot lock {path}: {error.strerror}") from error
        raise CheckpointError(f"--run_dir {run_dir} is in use by another run ({holder}): wait for it to end, or "
                              "choose another --run_dir") from None
    with contextlib.suppress(OSError):  # who holds it, for the message above; on a full disk the lock holds anyway
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    return handle
