"""Memory of a training step, for the benchmarks and the tests: what autograd keeps for backward (saved_bytes) and the
peak allocated while it runs (peak_mem_mb)."""
from __future__ import annotations

import torch


def saved_bytes(fn, held=()):
    """Run fn() and return the bytes of the distinct storages autograd saved for backward while it ran, leaving out
    those of the tensors in `held` (held anyway, such as parameters)."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    for tensor in held:
        storages.pop(tensor.untyped_storage().data_ptr(), None)
    return sum(storages.values())


def peak_mem_mb(fn, device):
    """MiB allocated at most during one fn() call above what was allocated when it began. On a GPU, the caching
    allocator's peak statistics; on the CPU (no such statistics) the profiler's record of every allocation and free,
    replayed in time order."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile
    from torch._C._profiler import _EventType

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    sizes = []  # (time, +bytes allocated / -bytes freed)

    def walk(events):
        for event in events:
            if event.tag == _EventType.Allocation:
                sizes.append((event.start_time_ns, event.extra_fields.alloc_size))
            walk(event.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    live = peak = 0
    for _, size in sorted(sizes):
        live += size
        peak = max(peak, live)
    return peak / 2**20
