"""What training and inference share to run: the device and process group of one process (`python train.py`) or
many (`torchrun ... train.py`), the collectives they agree by, and how a script ends (exit codes).

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE (and MASTER_ADDR/PORT); without them this is one process and no process
group is made, so a single process needs no rendezvous. Each rank takes the GPU of its LOCAL_RANK, set before the
process group starts (NCCL binds to the current device); NCCL on GPUs, gloo on the CPU.

Exit codes, the same in train.py, evaluate.py and predict.py: 0 done, 1 an error (one line on stderr), 2 a bad flag
(argparse's usage line, or one line naming the flag), 128 + signum for a run stopped by a signal.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import sys
import time
import uuid
from dataclasses import dataclass

import torch
import torch.distributed as dist

EXIT_ERROR = 1
EXIT_BAD_FLAG = 2


def terminal_bar(total: int, unit: str, enabled: bool, initial: int = 0):
    """tqdm on stderr, only on a terminal: in a file (a cluster job's log, CI) its carriage-return redraws pile up into
    one huge line per update, and the scripts write plain lines there instead."""
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit=unit, file=sys.stderr, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))


# A script writing to a file (a cluster job's log, CI) is never silent longer than this: a progress line (rate, ETA).
PROGRESS_SECONDS = 60.0


class Progress:
    """How far a long loop is, for the scripts: a tqdm bar on a terminal; elsewhere (a file, a cluster log) a plain
    line on stderr every PROGRESS_SECONDS, with the count, the rate and what is left. Rank 0 alone speaks."""

    def __init__(self, total: int, unit: str, prog: str, enabled: bool = True):
        self.total, self.unit, self.prog, self.every, self.done = total, unit, prog, PROGRESS_SECONDS, 0
        self.enabled = enabled and launch_rank() == 0
        self.bar = terminal_bar(total, unit, self.enabled)
        self.lines = self.enabled and self.bar.disable
        self.start = self.last = time.perf_counter()

    def update(self, count: int) -> None:
        self.done += count
        self.bar.update(count)
        now = time.perf_counter()
        if self.lines and now - self.last >= self.every and self.done < self.total:
            self.last, rate = now, self.done / max(now - self.start, 1e-9)
            left = datetime.timedelta(seconds=round((self.total - self.done) / max(rate, 1e-9)))
            print(f"{self.prog}: {self.done}/{self.total} {self.unit}s, {rate:.1f}/s, {left} left", file=sys.stderr,
                  flush=True)

    def close(self) -> None:
        self.bar.close()


def add_loading_flags(parser) -> None:
    """What a checkpoint's weights cannot say, for evaluate.py and predict.py (convlstm.load_model's options)."""
    from .openstl import CELL_OUTPUTS
    parser.add_argument("--model", default=None,
                        help="the model of a checkpoint that names a plug-in, named again as train.py's --model "
                             "FILE.py:Class or package.module:Class (code named in a checkpoint is never imported); "
                             "a registered name checks that the checkpoint holds that model")
    parser.add_argument("--openstl_channels", type=int, default=None,
                        help="frame channels of OpenSTL's own weights, which give only patch_size^2 x channels "
                             "(default 1)")
    parser.add_argument("--cell_output", default=None, choices=CELL_OUTPUTS,
                        help="OpenSTL's cell: tanh_c (default, OpenSTL today) or g (v0.2.0's h = o * g, the cell of "
                             "its published Moving MNIST rows and released weights)")


def add_frame_flags(parser, what: str) -> None:
    """How the frames of `what` (--data, --input) are read, for evaluate.py and predict.py (as train.py's flags)."""
    from .data.sources import LAYOUTS
    parser.add_argument("--layout", default=None, choices=LAYOUTS,
                        help=f"axis order of an array in {what} (default: detected where unambiguous)")
    parser.add_argument("--channels", type=int, default=None, choices=(1, 3),
                        help="read images and videos as grey (1) or RGB (3) (default: as in training, else as "
                             "stored)")
    parser.add_argument("--resize", default=None,
                        help=f"resize the frames of {what} to HxW, e.g. 64 or 48x64 (default: the size the model "
                             "was trained on where the script needs it)")


class SetupError(RuntimeError):
    """The launch environment cannot work (no GPU for --device cuda, a malformed torchrun variable)."""


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()


def _env_int(name, default):
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise SetupError(f"environment variable {name}={value!r} is not an integer") from None


def launch_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun), before any process group exists: who alone
    speaks and writes."""
    return _env_int("RANK", 0)


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    """The one device choice of every script. "auto": cuda:LOCAL_RANK when CUDA is available, else the CPU; "cuda":
    cuda:LOCAL_RANK; "cuda:N" that GPU (one process); "cuda" without a GPU, or anything else, is a SetupError."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    try:
        asked = torch.device("cuda" if requested == "auto" else requested)
    except (RuntimeError, TypeError) as error:
        raise SetupError(f"--device {requested!r}: {error}") from None
    if asked.type != "cuda":
        raise SetupError(f"--device {requested!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise SetupError(f"--device {requested}: CUDA is not available in this process (torch.cuda.is_available() "
                         "is False)")
    index = local_rank if asked.index is None else asked.index
    if index >= torch.cuda.device_count():
        where = f"--device {requested}" if asked.index is not None else f"LOCAL_RANK={local_rank}"
        raise SetupError(f"{where} but this machine shows {torch.cuda.device_count()} GPU(s): use --nproc_per_node "
                         "no larger than the GPU count")
    return torch.device("cuda", index)


@contextlib.contextmanager
def distributed(requested_device: str = "auto"):
    """Yield a DistInfo; under torchrun start the process group and destroy it on every way out of Python (return,
    exception, sys.exit). A signal that ends the process (torchrun's SIGTERM to the survivors when a worker fails)
    needs no teardown: the process and its sockets are gone.

    On a normal way out, and on an exception every rank raises at the same point (`all_ranks`: train.py's stop
    after a signal, its agreed non-finite-loss and checkpoint failures), every rank first waits at a barrier, so
    no rank tears the group down while another still works in it: a rank whose last collective returned early
    (the sender of a gather_object, evaluate.py's rank 1) would otherwise destroy its side while rank 0 was still
    receiving or writing results. Another exception gets no barrier: the other ranks may never reach one. A barrier
    that fails (a rank left on an error of its own, which it reports) does not hide this rank's result. That the
    group is really gone afterwards, its worker threads with it, is the torch._dynamo import below.
    """
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    device = pick_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if launched:
        # Imported before the group exists: torch._dynamo (which the fused ops import) takes 10 references to the
        # default group when imported after it (torch 2.13), so destroy_process_group cannot free it, and its gloo
        # worker threads outlive the interpreter; one of them releasing a gather's tensors during finalization
        # aborted the process ("terminate called without an active exception"; evaluate.py's rank 1, 1 run in 6
        # to 40).
        import torch._dynamo  # noqa: F401
        store = _store_of_this_attempt(rank, world_size) if _agent_store_shared() else None
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", store=store,
                                rank=rank if store else -1, world_size=world_size if store else -1,
                                device_id=device if device.type == "cuda" else None)
    info = DistInfo(rank, local_rank, world_size, device)
    try:
        yield info
    except BaseException as error:
        if launched and dist.is_initialized():
            _leave(info, together=getattr(error, "all_ranks", False))
        raise
    if launched and dist.is_initialized():
        _leave(info, together=True)


def all_ranks(error: BaseException) -> BaseException:
    """Mark `error` as raised by every rank at the same point (after a collective they agree by), so `distributed()`
    lets them leave the process group together."""
    error.all_ranks = True
    return error


def _leave(info: DistInfo, together: bool) -> None:
    try:
        if together:
            barrier(info)
    except RuntimeError:  # (torch.distributed.DistBackendError too) another rank left on an error it reports
        pass
    finally:
        dist.destroy_process_group()


def _agent_store_shared() -> bool:
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and "MASTER_ADDR" in os.environ


def _store_of_this_attempt(rank: int, world_size: int, timeout=datetime.timedelta(minutes=10)):
    """torchrun's key-value store, under a prefix that only this attempt's workers share.

    torchrun (torch 2.13, c10d rendezvous) hands one store to every attempt: after a restart, the failed attempt's
    process-group keys are still there and a new worker may wait forever on a dead peer's address (seen here: both
    ranks stuck in gloo's connectFullMesh; pytorch/pytorch#135712). TORCHELASTIC_RESTART_COUNT cannot name the
    attempt (each machine counts its own restarts), so rank 0 draws a fresh token and answers each peer under a key
    holding that peer's fresh nonce, which no earlier attempt can have written.
    """
    base = dist.TCPStore(os.environ["MASTER_ADDR"], _env_int("MASTER_PORT", 0), world_size, is_master=False,
                         timeout=timeout)
    if rank == 0:
        token, answered, pending = uuid.uuid4().hex, {}, set(range(1, world_size))
        deadline = time.monotonic() + timeout.total_seconds()
        while pending:
            for peer in sorted(pending):
                if base.check([f"convlstm/joined/{token}/{peer}"]):
                    pending.discard(peer)
                elif base.check([f"convlstm/hello/{peer}"]):
                    nonce = base.get(f"convlstm/hello/{peer}").decode()
                    if answered.get(peer) != nonce:  # a stale nonce is answered too; nobody waits on that key
                        base.set(f"convlstm/welcome/{peer}/{nonce}", token)
                        answered[peer] = nonce
            if time.monotonic() > deadline:
                raise SetupError(f"ranks {sorted(pending)} did not join within {timeout}")
            time.sleep(0.01)
    else:
        nonce = uuid.uuid4().hex
        base.set(f"convlstm/hello/{rank}", nonce)
        token = base.get(f"convlstm/welcome/{rank}/{nonce}").decode()  # waits until rank 0 answers
        base.set(f"convlstm/joined/{token}/{rank}", "1")
    return dist.PrefixStore(f"convlstm/{token}/", base)


def barrier(info: DistInfo) -> None:
    if dist.is_initialized():
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def all_reduce(tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce when there is a process group; a no-op for one process."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=op)
    return tensor


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s `obj` on every rank (a small picklable value)."""
    if not dist.is_initialized():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def first_failure(message: str | None, info: DistInfo) -> str | None:
    """The `message` of the lowest rank that has one, on every rank (None when no rank has): a collective when
    distributed, so that a rank whose read failed does not leave the others waiting in the next one."""
    if not dist.is_initialized():
        return message
    flag = torch.tensor([info.world_size - info.rank if message is not None else 0], device=info.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # the lowest failed rank gives the largest flag
    return broadcast_object(message, src=info.world_size - int(flag)) if int(flag) else None


def restart_count() -> int:
    """How often torchrun has restarted this worker group (0 on the first attempt and outside torchrun)."""
    return _env_int("TORCHELASTIC_RESTART_COUNT", 0)
