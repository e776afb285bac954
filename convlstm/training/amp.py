"""Mixed precision as one object, so fp32, bf16 and fp16 run the same training lines.

`Precision.autocast()` is torch.autocast for bf16/fp16 (a no-op context for "none"); the GradScaler is enabled only for
fp16, where it scales the loss so small gradients survive in half precision. `Precision.backward` (once per
micro-batch) and `Precision.step` (once per optimizer step) keep the order that makes clipping correct: scale ->
backward (x N micro-batches) -> unscale_ -> clip -> step -> update. Unscaling before the clip matters: clipping scaled
gradients would compare a norm 2^16 times too large against --grad_clip. The scale stays the same over the N backward
passes of one step (only `update` changes it), so their scaled gradients add up as the unscaled ones do.
"""
from __future__ import annotations

import contextlib
import math

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    def __init__(self, amp: str, device: torch.device):
        if amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp={amp!r}: expected 'none', 'bf16' or 'fp16' (resolve 'auto' first)")
        self.amp = amp
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def autocast(self):
        if self.amp == "none":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=DTYPES[self.amp])

    def backward(self, loss: torch.Tensor) -> None:
        """Backward the (scaled) `loss`, adding to the gradients since the last `step`: with gradient accumulation,
        each micro-batch's share of the step's loss."""
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, parameters, grad_clip: float) -> torch.Tensor:
        """Unscale the gradients accumulated by `backward`, clip them, step `optimizer` and zero them. Returns the
        gradient norm before clipping (a 0-dim tensor, unscaled; inf or nan on an fp16 step the scaler skips).
        grad_clip 0 measures the norm without clipping."""
        parameters = list(parameters)
        self.scaler.unscale_(optimizer)
        # max_norm=inf leaves every gradient unchanged (clip coefficient clamped to exactly 1.0).
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip if grad_clip > 0 else math.inf)
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.scaler.is_enabled() and state:
            self.scaler.load_state_dict(state)


class NonFiniteWatch:
    """Remembers, on the device, the first step whose loss was inf or nan (no host sync per step).

    Off under fp16, where an overflowing step is the GradScaler's business: it skips the step and lowers the scale.
    """

    NONE = torch.iinfo(torch.int64).max

    def __init__(self, enabled: bool, device: torch.device):
        self.enabled = enabled
        self.first_bad = torch.full((), self.NONE, dtype=torch.int64, device=device)

    def observe(self, loss: torch.Tensor, step: int) -> None:
        if self.enabled:
            self.first_bad = torch.minimum(self.first_bad, torch.where(torch.isfinite(loss), self.NONE, step))

    def first_bad_step(self, all_reduce_min) -> int | None:
        """The earliest bad step over all ranks (a collective), or None."""
        if not self.enabled:
            return None
        step = all_reduce_min(self.first_bad.clone()).item()
        return None if step == self.NONE else step


class SkippedSteps:
    """fp16 only: the longest run of consecutive steps the GradScaler skipped, kept on the device (no host sync per
    step). A skipped step is one whose gradient norm is inf or nan: the scaler then skips it and halves the scale."""

    def __init__(self, enabled: bool, device: torch.device):
        self.enabled = enabled
        self.current = torch.zeros((), dtype=torch.int64, device=device)
        self.longest = torch.zeros((), dtype=torch.int64, device=device)

    def observe(self, grad_norm: torch.Tensor) -> None:
        if self.enabled:
            self.current = torch.where(torch.isfinite(grad_norm), 0, self.current + 1)
            self.longest = torch.maximum(self.longest, self.current)

    def longest_run(self, all_reduce_max) -> int:
        """The longest run so far over all ranks (a collective when enabled)."""
        if not self.enabled:
            return 0
        return int(all_reduce_max(self.longest.clone()).item())
