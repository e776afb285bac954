"""Process-group setup for one process (`python train.py`) or many (`torchrun ... train.py`).

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE (and MASTER_ADDR/PORT); without them this is one process and no process
group is made, so a single process needs no rendezvous. Each rank takes the GPU of its LOCAL_RANK, set before the
process group starts (NCCL binds to the current device); NCCL on GPUs, gloo on the CPU.
"""
from __future__ import annotations

import contextlib
import datetime
import itertools
import os
import signal
import time
import uuid
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


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


def pick_device(requested: str, local_rank: int) -> torch.device:
    """"auto": cuda:LOCAL_RANK when CUDA is available, else the CPU; "cuda" without a GPU is an error."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SetupError("--device cuda: CUDA is not available in this process (torch.cuda.is_available() is False)")
    if local_rank >= torch.cuda.device_count():
        raise SetupError(f"LOCAL_RANK={local_rank} but this machine shows {torch.cuda.device_count()} GPU(s): "
                           "use --nproc_per_node no larger than the GPU count")
    return torch.device("cuda", local_rank)


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


# Test-only fault injection: CONVLSTM_FAULT_KILL="<rank>:<step>[:<signal>]" makes that rank send itself the signal
# (default SIGKILL) when it is about to take that optimizer step, on the first attempt only, so a restarted group
# runs to the end.
FAULT_ENV = "CONVLSTM_FAULT_KILL"


def parse_fault(info: DistInfo) -> tuple[int | None, int | None]:
    """(step, signal number) of this rank's injected fault, or (None, None)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec or restart_count() > 0:
        return None, None
    rank, step, *name = spec.split(":")
    signum = signal.Signals[name[0]] if name else signal.SIGKILL
    return (int(step), signum) if int(rank) == info.rank else (None, None)


def kill_self(signum: int = signal.SIGKILL) -> None:
    os.kill(os.getpid(), signum)


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffled, drop_last) that can start an epoch part-way through.

    Every rank draws from the same global permutation of epoch `e` (seeded by seed + e) and takes every
    world_size-th index; the global batch k is therefore permutation[k*W*b : (k+1)*W*b] for W ranks of batch b, the
    same sequences a single process with batch W*b takes, and an optimizer step of N accumulated batches takes
    N*W*b consecutive entries, as one process with batch N*W*b does. `set_epoch(e, samples_seen)` skips the first
    `samples_seen` entries of that permutation (samples_seen / W on each rank), which is how a resumed run continues
    mid-epoch with the batches the uninterrupted run would have taken.
    """

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0

    def set_epoch(self, epoch: int, samples_seen: int = 0) -> None:
        if samples_seen % self.num_replicas:
            raise ValueError(f"cannot resume {samples_seen} samples into an epoch on {self.num_replicas} ranks: "
                             "the count must divide evenly among them")
        super().set_epoch(epoch)
        self.skip = samples_seen // self.num_replicas

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return max(0, self.num_samples - self.skip)


def start_epoch(sampler: ResumableSampler, loader, epoch: int, samples_seen: int, warn,
                batches_per_step: int = 1) -> tuple[int, int]:
    """Set `sampler` `samples_seen` sequences into `epoch` and return the (epoch, samples_seen) the loop starts at.
    An optimizer step takes `batches_per_step` batches of `loader` (gradient accumulation).

    A resume on fewer sequences per epoch than the checkpoint's run (a smaller --num_train), or on a position at the
    epoch's very end, leaves `loader` no full step: that epoch is over, so the next one starts (said through `warn`)
    and the training loop always makes progress. A position the processes cannot share evenly is a SetupError.
    """
    try:
        sampler.set_epoch(epoch, samples_seen)
    except ValueError as error:
        raise SetupError(f"the checkpoint is {samples_seen} sequences into epoch {epoch}, which "
                         f"{sampler.num_replicas} processes cannot share evenly: resume with a process count that "
                         f"divides {samples_seen}") from error
    if len(loader) >= batches_per_step:
        return epoch, samples_seen
    step_batch = loader.batch_size * sampler.num_replicas * batches_per_step
    warn(f"epoch {epoch} holds no further batch of {step_batch} after the checkpoint's {samples_seen} sequences "
         f"({len(sampler.dataset)} per epoch now): starting epoch {epoch + 1}")
    sampler.set_epoch(epoch + 1, 0)
    return epoch + 1, 0
