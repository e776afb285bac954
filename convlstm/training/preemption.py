"""Preemption: SIGTERM (what schedulers and torchrun send first) and SIGINT (Ctrl-C) stop a run after a whole step,
with a checkpoint.

The handler only notes the signal. After every step all ranks agree on it, an all-reduce of the signal number over
gloo on the CPU (no device sync), so they stop after the same step and no rank waits alone on a collective; rank 0
writes a checkpoint and every rank exits with exit_code(signum) = 128 + signum, 143 for SIGTERM and 130 for SIGINT,
what a shell reports for a process the signal ended. A second signal ends the process at once, without a checkpoint.
DataLoader workers ignore both signals (a terminal's Ctrl-C and a scheduler's SIGTERM reach the whole process group),
so the step under way still gets its batch; their parent stops them, at the latest at exit (stop_workers_at_exit).
"""
from __future__ import annotations

import atexit
import multiprocessing
import signal
import threading

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_code(signum: int) -> int:
    return 128 + signum


class Stopped(Exception):
    """The run stopped for a signal after a checkpoint; `code` is the exit status, `announce` whether this rank
    prints the message (rank 0). Every rank raises it after the same step (`agreed`), so they leave the process
    group together (convlstm.runtime)."""

    all_ranks = True

    def __init__(self, message: str, signum: int, announce: bool):
        super().__init__(message)
        self.code, self.announce = exit_code(signum), announce


class StopSignals:
    """While entered (in the main thread), SIGTERM and SIGINT are noted instead of ending the process; `agreed()`
    tells every rank whether any rank got one."""

    def __init__(self):
        self.signum = 0
        self.distributed = dist.is_initialized()
        # A CPU flag over gloo: on NCCL a device tensor would make every step wait for the GPU.
        self.group = dist.new_group(backend="gloo") if self.distributed and dist.get_backend() != "gloo" else None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._note) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _note(self, signum, frame):
        if self.signum:  # the second signal: as if no handler were installed (SIGTERM ends, SIGINT interrupts)
            self.__exit__()
            signal.raise_signal(signum)
            return
        self.signum = signum

    def agreed(self) -> int:
        """The signal number any rank has noted, 0 for none: a collective on every rank when distributed."""
        return self._agree(False)[0]

    def failed_rank(self, failed: bool) -> int | None:
        """The lowest rank that says `failed` (a read of bad data), None for none: a collective on every rank when
        distributed, over the same CPU group."""
        return self._agree(failed)[1]

    def _agree(self, failed: bool) -> tuple[int, int | None]:
        if not self.distributed:
            return self.signum, 0 if failed else None
        world = dist.get_world_size()
        flags = torch.tensor([self.signum, world - dist.get_rank() if failed else 0], dtype=torch.int32)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.group)  # the lowest failed rank: the largest flag
        return int(flags[0]), (world - int(flags[1]) if flags[1] else None)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker_init_fn: leave SIGTERM and SIGINT to the training process."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


_exit_handler_registered = False


def stop_workers_at_exit() -> None:
    """Kill daemonic child processes (DataLoader workers) at interpreter exit. multiprocessing's own exit handler
    stops them with SIGTERM, which they ignore, then joins them: after an uncaught exception left a DataLoader alive
    the process hung there forever. atexit runs handlers last-registered first, so this one (registered after
    multiprocessing's, which it registers on import) runs before it. Idempotent."""
    global _exit_handler_registered
    if not _exit_handler_registered:
        atexit.register(_kill_daemonic_children)
        _exit_handler_registered = True


def _kill_daemonic_children() -> None:
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()
            child.join(timeout=5)
