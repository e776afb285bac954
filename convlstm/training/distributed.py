"""What train.py adds to the runtime (convlstm.runtime: the process group and its collectives): the shared
shuffled order that can start mid-epoch, and the tests' injected faults."""
from __future__ import annotations

import itertools
import os
import signal

from torch.utils.data import DistributedSampler

from ..runtime import DistInfo, SetupError, restart_count


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


def inject_fault(loader, info: DistInfo, start_step: int, batches_per_step: int):
    """`loader` as it is, or, when FAULT_ENV names this rank, a view of it that sends the signal as the first batch
    of that optimizer step is asked for: the moment the loop is about to take the step, kept out of the loop."""
    step, signum = parse_fault(info)
    if step is None or step < start_step:
        return loader
    return _FaultAt(loader, (step - start_step) * batches_per_step, signum)


class _FaultAt:
    def __init__(self, loader, batches_before, signum):
        self.loader, self.left, self.signum = loader, batches_before, signum

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if self.left == 0:
                os.kill(os.getpid(), self.signum)
            self.left -= 1
            yield batch


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
