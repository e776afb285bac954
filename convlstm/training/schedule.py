"""Learning-rate schedules over a run's optimizer steps (--lr_schedule): constant, the default; cosine with linear
warmup, nanoGPT's; onecycle, torch's OneCycleLR as OpenSTL configures it (max_lr --lr, final_div_factor 1e4, torch's
other defaults: 30% warmup from lr / 25, Adam's beta_1 cycled between 0.95 and 0.85).

train.py steps the scheduler once per optimizer step, after it, so optimizer step s (0-based) runs at the schedule's
value at s. An fp16 step that the GradScaler skips still advances the schedule, as torch's AMP examples do (the
schedule follows the step count, which every rank agrees on without a host sync; a skipped step is rare once the
scale has settled). A resume rebuilds the schedule from the run's config and places it at the checkpoint's step
(`build_scheduler(..., done_steps)`): every schedule here computes its value from the step alone, so that continues
bit for bit, and a --lr or schedule changed on resume takes over from that step.
"""
from __future__ import annotations

import functools
import math
import warnings

import torch

from ..config import LR_SCHEDULES as SCHEDULES
ONECYCLE_DIV = 25  # OneCycleLR's div_factor (torch's default, OpenSTL's): it starts at lr / 25


def highest_lr(cfg) -> float:
    """The largest learning rate cfg's schedule reaches: --lr, or onecycle's last, lr / 25 / --onecycle_final_div,
    when a final_div below 1/25 ends it above its peak (warmup and cosine stay within [min_lr, lr])."""
    if cfg.lr_schedule == "onecycle":
        return max(cfg.lr, cfg.lr / ONECYCLE_DIV / cfg.onecycle_final_div)
    return cfg.lr


def warmup_constant(step: int, warmup_steps: int) -> float:
    """The factor of --lr at optimizer step `step` (0-based): linear warmup, (step + 1) / (warmup_steps + 1), then 1."""
    return (step + 1) / (warmup_steps + 1) if step < warmup_steps else 1.0


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """The factor of --lr at optimizer step `step` (0-based), nanoGPT's get_lr(step) / lr: linear warmup as
    warmup_constant, then a cosine from 1 down to min_ratio (= min_lr / lr) at total_steps, and min_ratio after."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if step >= total_steps:
        return min_ratio
    decay = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_ratio + 0.5 * (1.0 + math.cos(math.pi * decay)) * (1.0 - min_ratio)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, total_steps: int,
                    done_steps: int = 0) -> torch.optim.lr_scheduler.LRScheduler:
    """The scheduler of cfg.lr_schedule over `total_steps` optimizer steps, placed after `done_steps` of them (a
    resume; the optimizer's param groups must then hold the keys a fresh build of the same schedule set). It sets the
    optimizer's lr (and for onecycle beta_1) to the value of optimizer step `done_steps`."""
    last_epoch = min(done_steps, total_steps) - 1  # -1: a fresh start
    if cfg.lr_schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total_steps,
                                                   div_factor=ONECYCLE_DIV, final_div_factor=cfg.onecycle_final_div,
                                                   last_epoch=last_epoch)
    if cfg.lr_schedule == "cosine":
        factor = functools.partial(warmup_cosine, warmup_steps=cfg.warmup_steps, total_steps=total_steps,
                                   min_ratio=cfg.min_lr / cfg.lr)
    elif cfg.lr_schedule == "constant":
        factor = functools.partial(warmup_constant, warmup_steps=cfg.warmup_steps)
    else:
        raise ValueError(f"lr_schedule={cfg.lr_schedule!r}: expected one of {', '.join(SCHEDULES)}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch=last_epoch)


def advance(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """scheduler.step() after an optimizer step, also one the fp16 GradScaler skipped."""
    with warnings.catch_warnings():
        # torch warns once when the first step() follows no optimizer.step(): here a skipped fp16 step, on purpose.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        scheduler.step()
