"""The one place that decides which implementation of `lstm_gates` runs.

"torch" is the reference (always there). "triton" and "cuda" are the fused kernels; they are registered here when
their modules import, so the package works without Triton and without the compiled extension. "auto" picks the
fastest available for the tensor's device; a backend asked for by name that cannot run is an error, never a silent
fallback.
"""
from __future__ import annotations

import torch

BACKENDS = ("auto", "torch", "triton", "cuda")


def _torch_gates(gates, c_prev, w_ci, w_cf, w_co):
    from .lstm_gates import lstm_gates_ref
    return lstm_gates_ref(gates, c_prev, w_ci, w_cf, w_co)


def available_backends(device) -> list[str]:
    """Backends that can run on `device` now, fastest first."""
    device = torch.device(device)
    found = []
    # Filled in by the kernel modules (issue 3): "cuda" before "triton" on CUDA tensors.
    found.append("torch")
    return found


def check_backend_name(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    return backend


def resolve_backend(backend: str, device) -> str:
    """Turn "auto" into a concrete backend for `device`; check a named one can run there."""
    check_backend_name(backend)
    available = available_backends(device)
    if backend == "auto":
        return available[0]
    if backend not in available:
        raise RuntimeError(f"backend {backend!r} is not available for device {torch.device(device)}: "
                           f"available are {', '.join(available)}")
    return backend


def gate_function(name: str):
    return {"torch": _torch_gates}[name]
