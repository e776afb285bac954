"""The one place that decides which implementation of `lstm_gates` runs.

Backends:
  "torch"    `lstm_gates_ref`, eager PyTorch: always there, any device.
  "cuda"     the CUDA extension (cuda.py, csrc/): CUDA tensors, prebuilt by setup.py or JIT-built.
  "triton"   the Triton kernels (triton_launcher.py): CUDA tensors; CPU tensors too when TRITON_INTERPRET=1 was set
             before triton was imported (the interpreter, for tests).
  "cpu_twin" the CUDA kernels' thread bodies compiled for the CPU with g++ (cpu_twin.py): a test/debug path, built on
             first use.
  "auto"     CUDA tensors: cuda if it loads, else triton, else torch. CPU tensors: torch (the interpreter and the
             twin are for tests, not speed).
A backend module that fails to import (no Triton) or cannot run on a device is reported here with the reason; a
backend asked for by name that cannot run is an error, never a silent fallback. Modules call `resolve` once, when
built or moved to a device (cell.py), not per step.
"""
from __future__ import annotations

import functools
import importlib
import logging

import torch

from .ref import lstm_gates_ref

BACKENDS = ("auto", "torch", "triton", "cuda", "cpu_twin")
FUSED = ("triton", "cuda", "cpu_twin")

_MODULES = {"triton": "triton_launcher", "cuda": "cuda", "cpu_twin": "cpu_twin"}
# The order "auto" tries them in, per device type; the first that can run wins.
_PREFERENCE = {"cuda": ("cuda", "triton", "torch")}
_PREFERENCE_OTHER = ("torch", "triton", "cpu_twin", "cuda")
log = logging.getLogger(__name__)


@functools.cache
def _module(name: str):
    """(module, None), or (None, why it does not import)."""
    path = f"{__package__}.{_MODULES[name]}"
    try:
        return importlib.import_module(path), None
    except ImportError as error:
        return None, f"{path} does not import: {error}"


@functools.cache
def unavailable_reason(name: str, device: torch.device) -> str | None:
    """None if backend `name` can run on `device`, else why not. Cached: the answer (and any build) is found once."""
    if name == "torch":
        return None
    module, reason = _module(name)
    if module is None:
        return reason
    try:
        return module.runs_on(device)
    except Exception as error:  # a failed JIT build or extension load: report it as the reason
        return f"the {name} backend failed to load: {type(error).__name__}: {error}"


def available_backends(device) -> list[str]:
    """Backends that can run on `device` now, in the order "auto" prefers them (its choice first)."""
    device = torch.device(device)
    order = _PREFERENCE.get(device.type, _PREFERENCE_OTHER)
    return [name for name in order if unavailable_reason(name, device) is None]


def check_backend_name(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    return backend


def resolve(backend: str, device) -> tuple[str, callable]:
    """(name, gate function) of `backend` on `device`: "auto" made concrete, a named one checked to run there.
    The function is (gates, c_prev, w_ci=None, w_cf=None, w_co=None, gate_order="ifog") -> (h_next, c_next), with
    the arguments of `lstm_gates`."""
    check_backend_name(backend)
    device = torch.device(device)
    name = available_backends(device)[0] if backend == "auto" else backend
    if backend == "auto":
        _log_fallback(device, name)
    reason = unavailable_reason(name, device)
    if reason is not None:
        raise RuntimeError(f"backend {backend!r} is not available for device {device}: {reason} "
                           f"(available: {', '.join(available_backends(device))})")
    if name == "torch":
        return name, lstm_gates_ref
    return name, getattr(_module(name)[0], f"lstm_gates_{name}")


@functools.cache
def _log_fallback(device: torch.device, chosen: str) -> None:
    """Say once per process why "auto" passed over the backends it prefers to `chosen` on `device` (a cuda
    extension whose kernels do not launch on this GPU, no nvcc for its build, no Triton)."""
    order = _PREFERENCE.get(device.type, _PREFERENCE_OTHER)
    for name in order[:order.index(chosen)]:
        log.warning("lstm_gates: backend auto runs %s on %s: %s is unavailable: %s", chosen, device, name,
                    unavailable_reason(name, device))


def fused_run(name: str):
    """The callable a fused backend's gate function ends in (op.fused_op): its `.custom_op` is what torch.compile
    traces, its `.forward_impl` / `.backward_impl` what the kernels are handed (for benchmarks and tests)."""
    module, reason = _module(name)
    if module is None:
        raise RuntimeError(reason)
    return getattr(module, f"lstm_gates_{name}_run")
