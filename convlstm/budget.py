"""What a run needs in memory, estimated before anything is allocated, against what the device has: an absurd size
(--image_size 100000, --n_hidden_dim 1000000000, --num_train 1000000000000) is refused in one line naming the flags,
the estimate and the memory available, instead of allocating until it fails minutes later.

No fixed caps: every estimate is a lower bound, so a run that fits is never refused (4100x4100 frames on a large GPU
pass). The model is built and run on the meta device (shapes, no memory): its parameters, and the tensors autograd
saves for backward in a training step, counted storage by storage as convlstm.memory.saved_bytes counts them.
"""
from __future__ import annotations

import math
import os

import torch


class BudgetError(RuntimeError):
    """A configuration that cannot fit in memory; the message is one line naming the flags and both sizes."""


MAX_INT = 2**63 - 1  # what torch and numpy take as a size, a count or a seed (int64)


def oversized_int(values: dict) -> str | None:
    """"--name value: ..." for the first integer of `values` ({flag name: value}) beyond int64, else None: such a
    value overflows inside torch or numpy ("Overflow when unpacking long long") after files were written."""
    for name, value in values.items():
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            return f"--{name} {value}: must be at most {MAX_INT} (2^63 - 1)"
    return None


def available_bytes(device: torch.device) -> int:
    """The memory a run on `device` can have: a GPU's total memory; on the CPU what the OS reports available
    (MemAvailable), within the container's limit (cgroup v2 memory.max) where there is one."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    limits = []
    try:
        with open("/proc/meminfo") as handle:
            limits += [int(line.split()[1]) * 1024 for line in handle if line.startswith("MemAvailable:")]
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as handle, open("/sys/fs/cgroup/memory.current") as current:
            limits.append(int(handle.read()) - int(current.read()))
    except (OSError, ValueError):  # no cgroup v2, or "max": no limit
        pass
    if not limits:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return max(0, min(limits))


def human(size: float) -> str:
    """1.5 GiB, 3.0 PiB; sizes beyond EiB in bytes with an exponent."""
    if not math.isfinite(size):
        return "over 16 EiB"  # a size past 64 bits
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if size < 1024 or unit == "EiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.3g} bytes"


def training_bytes(config: dict, frame_shape, batch: int) -> tuple[float, float]:
    """(parameter bytes, bytes autograd saves for backward) of a training forward of the model a train.py config
    builds (convlstm.model.model_from_config, backend torch) for frames of frame_shape (C, H, W), on a batch of
    `batch` sequences of its n_steps_past frames predicting n_steps_ahead. Sizes past 64 bits are inf."""
    from .model import forecast, model_from_config  # the package's models, imported when first estimated

    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage._cdata] = storage.nbytes()  # views of one storage count once
        return tensor

    try:
        with torch.device("meta"):
            model = model_from_config(config, backend="torch", frame_shape=frame_shape)
        weights = {p.untyped_storage()._cdata for p in model.parameters()}
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        x = torch.empty(batch, config["n_steps_past"], *frame_shape, device="meta")
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            forecast(model, x, config["n_steps_ahead"])
    except (RuntimeError, TypeError, OverflowError) as error:  # "Storage size calculation overflowed ..."
        if "overflow" in str(error).lower():
            return math.inf, math.inf
        raise
    return float(params), float(sum(size for key, size in storages.items() if key not in weights))


def check_fits(parts: dict, device: torch.device, what: str) -> None:
    """parts: {what it is: (the flags and values behind it, bytes)}. BudgetError when their sum exceeds
    available_bytes(device), naming the flags of the largest part."""
    need = sum(size for _, size in parts.values())
    have = available_bytes(device)
    if need <= have:
        return
    named = sorted(parts.items(), key=lambda item: -item[1][1])
    detail = ", ".join(f"{name} {human(size)}" for name, (_, size) in named if size > 0)
    amount = f"at least {human(need)}" if math.isfinite(need) else "more than 16 EiB"
    raise BudgetError(f"{named[0][1][0]}: {what} needs {amount} of memory ({detail}), more than the "
                      f"{human(have)} available on {device.type}")
