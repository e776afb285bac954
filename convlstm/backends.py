"""The one place that decides which implementation of `lstm_gates` runs.

Backends:
  "torch"    `lstm_gates_ref`, eager PyTorch: always there, any device.
  "cuda"     the CUDA extension (convlstm/lstm_gates_cuda.py): CUDA tensors, prebuilt by setup.py or JIT-built.
  "triton"   the Triton kernels (convlstm/lstm_gates_triton.py): CUDA tensors; CPU tensors too when
             TRITON_INTERPRET=1 was set before triton was imported (the interpreter, for tests).
  "cpu_twin" the CUDA kernels' thread bodies compiled for the CPU with g++ (convlstm/lstm_gates_cpu_twin.py):
             a test/debug path, built on first use.
  "auto"     CUDA tensors: cuda if it loads, else triton, else torch. CPU tensors: torch (the interpreter and the
             twin are for tests, not speed).
A backend module that fails to import (no Triton) or cannot run on a device is reported here with the reason; a
backend asked for by name that cannot run is an error, never a silent fallback.
"""
from __future__ import annotations

import functools
import importlib

import torch

BACKENDS = ("auto", "torch", "triton", "cuda", "cpu_twin")

# The order "auto" tries them in, per device type; the first that can run wins.
_PREFERENCE = {"cuda": ("cuda", "triton", "torch")}
_PREFERENCE_OTHER = ("torch", "triton", "cpu_twin", "cuda")


@functools.cache
def _module(name: str):
    """(module, None), or (None, why it does not import)."""
    try:
        return importlib.import_module(f"convlstm.lstm_gates_{name}"), None
    except ImportError as error:
        return None, f"convlstm.lstm_gates_{name} does not import: {error}"


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


# Functions of the backends resolved so far: a plain dict, so torch.compile looks them up without a graph break.
_GATE_FUNCTIONS = {}


def resolve_backend(backend: str, device) -> str:
    """Turn "auto" into a concrete backend for `device`; check a named one can run there."""
    check_backend_name(backend)
    device = torch.device(device)
    name = available_backends(device)[0] if backend == "auto" else backend
    reason = unavailable_reason(name, device)
    if reason is not None:
        raise RuntimeError(f"backend {backend!r} is not available for device {device}: {reason} "
                           f"(available: {', '.join(available_backends(device))})")
    if name not in _GATE_FUNCTIONS:
        if name == "torch":
            from .lstm_gates import lstm_gates_ref
            _GATE_FUNCTIONS[name] = lstm_gates_ref
        else:
            _GATE_FUNCTIONS[name] = getattr(_module(name)[0], f"lstm_gates_{name}")
    return name


# torch.compile runs resolve_backend once while tracing and keeps the answer (the choice depends only on the backend
# name and the device, both fixed in a compiled graph), instead of tracing the imports and builds behind it. This is
# what @torch.compiler.assume_constant_result does (it sets this one attribute, torch 2.0 to 2.13), but importing it
# pulls in torch._dynamo: +2.0 s on every `import convlstm` here (4.1 s vs 2.3 s), paid by every train.py process.
# The fullgraph torch.compile tests in tests/test_lstm_gates.py fail if this ever stops working.
resolve_backend._dynamo_marked_constant = True


def gate_function(name: str):
    """The function (gates, c_prev, w_ci, w_cf, w_co) -> (h_next, c_next) of a backend `resolve_backend` gave."""
    return _GATE_FUNCTIONS[name]


def fused_run(name: str):
    """The callable a fused backend's gate function ends in (lstm_gates_op.fused_op): its `.custom_op` is what
    torch.compile traces, its `.forward_impl` / `.backward_impl` what the kernels are handed (for benchmarks and
    tests). `name` must be a fused backend that imports here."""
    module, reason = _module(name)
    if module is None:
        raise RuntimeError(reason)
    return getattr(module, f"lstm_gates_{name}_run")
